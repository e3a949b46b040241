//! The CNI protocol as crustd runs it, against scripted plugins that record every call. The
//! real plugins (Debian's containernetworking-plugins) are driven by the integration tests.

use std::os::unix::fs::PermissionsExt;

use crust_proto::cri::{PodSandboxMetadata, PortMapping};

use super::*;

/// A test's plugin directory, config directory and call log.
struct Fixture {
    dir: tempfile::TempDir,
}

/// One recorded plugin call.
#[derive(Debug)]
struct Call {
    plugin: String,
    command: String,
    ifname: String,
    netns: String,
    stdin: Value,
}

const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"fd00::5/64","interface":0},{"address":"10.9.0.5/24","interface":0}]}"#;

impl Fixture {
    fn new() -> Self {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(fixture.bin()).unwrap();
        std::fs::create_dir_all(fixture.conf()).unwrap();
        for kind in ["loopback", "first", "last"] {
            fixture.plugin(
                kind,
                &format!("[ \"$CNI_COMMAND\" = ADD ] && echo '{RESULT}'\nexit 0"),
            );
        }
        fixture
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// A plugin that logs its call and then runs `body`.
    fn plugin(&self, kind: &str, body: &str) {
        let log = self.dir.path().join("calls");
        let script = format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s\\t%s\\t%s\\t%s\\t%s\\n' {kind} \"$CNI_COMMAND\" \"$CNI_IFNAME\" \"$CNI_NETNS\" \"$input\" >> {}\n{body}\n",
            log.display()
        );
        let path = self.bin().join(kind);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn write_conf(&self, name: &str, text: &str) {
        std::fs::write(self.conf().join(name), text).unwrap();
    }

    fn network(&self, template: &str) -> Network {
        let config = CniConfig {
            bin_dir: self.bin().display().to_string(),
            conf_dir: self.conf(),
            conf_template: template.into(),
            plugin_timeout: "10s".into(),
            ..Default::default()
        };
        Network::new(&config, self.dir.path().join("cache"))
    }

    /// The calls so far, and forgets them.
    fn calls(&self) -> Vec<Call> {
        let path = self.dir.path().join("calls");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.splitn(5, '\t').collect();
                Call {
                    plugin: fields[0].into(),
                    command: fields[1].into(),
                    ifname: fields[2].into(),
                    netns: fields[3].into(),
                    stdin: serde_json::from_str(fields[4]).unwrap(),
                }
            })
            .collect()
    }

    fn cached(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("cache"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

const CHAIN: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"first","bridge":"b0"},{"type":"last","capabilities":{"portMappings":true}}]}"#;

fn pod_config() -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "u".into(),
            namespace: "ns".into(),
            attempt: 0,
        }),
        port_mappings: vec![PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        }],
        ..Default::default()
    }
}

fn summary(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {} {}", c.command, c.plugin, c.ifname))
        .collect()
}

#[tokio::test]
async fn attach_runs_loopback_then_the_chain_and_detach_undoes_it_in_reverse() {
    let fixture = Fixture::new();
    fixture.write_conf("10-pods.conflist", CHAIN);
    let network = fixture.network("");
    network.status().await.unwrap();
    let config = pod_config();
    let netns = Path::new("/proc/self/ns/net");
    let pod = Pod {
        id: "p1",
        netns,
        config: &config,
    };
    let ips = network.attach(pod).await.unwrap();
    assert_eq!(
        ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.9.0.5", "fd00::5"],
        "IPv4 first by default"
    );
    let calls = fixture.calls();
    assert_eq!(
        summary(&calls),
        ["ADD loopback lo", "ADD first eth0", "ADD last eth0"]
    );
    assert_eq!(calls[1].netns, "/proc/self/ns/net");
    // The first plugin: its own config with the list's name and version, no prevResult, and
    // no runtimeConfig (it declares no capability).
    assert_eq!(calls[1].stdin["name"], "pods");
    assert_eq!(calls[1].stdin["cniVersion"], "1.0.0");
    assert_eq!(calls[1].stdin["bridge"], "b0");
    assert!(calls[1].stdin.get("prevResult").is_none());
    assert!(calls[1].stdin.get("runtimeConfig").is_none());
    // The last: the first one's result, and the port mappings it asked for.
    assert_eq!(
        calls[2].stdin["prevResult"]["ips"][1]["address"],
        "10.9.0.5/24"
    );
    assert_eq!(
        calls[2].stdin["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert_eq!(fixture.cached(), 2, "loopback and eth0");

    network.detach(pod).await.unwrap();
    let calls = fixture.calls();
    assert_eq!(
        summary(&calls),
        ["DEL last eth0", "DEL first eth0", "DEL loopback lo"]
    );
    // 1.0.0 gets the cached result on DEL; 0.3.1 (loopback) does not.
    assert_eq!(
        calls[0].stdin["prevResult"]["ips"][1]["address"],
        "10.9.0.5/24"
    );
    assert!(calls[2].stdin.get("prevResult").is_none());
    assert_eq!(fixture.cached(), 0);

    // Again, with the namespace gone: the same DELs without a result, CNI_NETNS empty.
    let gone = Pod {
        netns: Path::new("/nonexistent/netns"),
        ..pod
    };
    network.detach(gone).await.unwrap();
    let calls = fixture.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.netns.is_empty()), "{calls:?}");
    assert!(calls[0].stdin.get("prevResult").is_none());
}

#[tokio::test]
async fn detach_uses_the_config_add_ran_even_after_it_changed() {
    let fixture = Fixture::new();
    fixture.write_conf("10-pods.conflist", CHAIN);
    let network = fixture.network("");
    let config = pod_config();
    let pod = Pod {
        id: "p2",
        netns: Path::new("/proc/self/ns/net"),
        config: &config,
    };
    network.attach(pod).await.unwrap();
    fixture.calls();
    fixture.write_conf(
        "10-pods.conflist",
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"last"}]}"#,
    );
    network.reload();
    network.detach(pod).await.unwrap();
    assert_eq!(
        summary(&fixture.calls()),
        ["DEL last eth0", "DEL first eth0", "DEL loopback lo"]
    );
}

#[tokio::test]
async fn a_failing_plugin_is_named_with_its_message_and_detach_reports_failures() {
    let fixture = Fixture::new();
    fixture.write_conf("10-pods.conflist", CHAIN);
    fixture.plugin(
        "last",
        "echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"bad subnet\"}'; exit 1",
    );
    let network = fixture.network("");
    let config = pod_config();
    let pod = Pod {
        id: "p3",
        netns: Path::new("/proc/self/ns/net"),
        config: &config,
    };
    let error = network.attach(pod).await.unwrap_err().to_string();
    assert!(
        error.contains("network \"pods\"")
            && error.contains("10-pods.conflist")
            && error.contains("CNI plugin \"last\" failed ADD: bad subnet")
            && error.contains("CNI error 7: invalid network config"),
        "{error}"
    );
    let error = network.detach(pod).await.unwrap_err().to_string();
    assert!(error.contains("failed DEL: bad subnet"), "{error}");
    // The other attachments were still released.
    assert_eq!(fixture.cached(), 0);
}

#[tokio::test]
async fn status_names_what_is_missing() {
    let fixture = Fixture::new();
    let network = fixture.network("");
    let why = network.status().await.unwrap_err();
    assert!(why.contains("no network config found"), "{why}");
    fixture.write_conf("10-bad.conflist", "{ not json");
    network.reload();
    let why = network.status().await.unwrap_err();
    assert!(
        why.contains("10-bad.conflist") && why.contains("invalid JSON"),
        "{why}"
    );
    std::fs::remove_file(fixture.conf().join("10-bad.conflist")).unwrap();
    fixture.write_conf(
        "10-pods.conflist",
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"absent"}]}"#,
    );
    network.reload();
    let why = network.status().await.unwrap_err();
    assert!(
        why.contains("\"absent\"") && why.contains("not found in"),
        "{why}"
    );
    // 1.1: the plugins' STATUS decides.
    fixture.plugin(
        "absent",
        "[ \"$CNI_COMMAND\" = STATUS ] && echo '{\"code\":50,\"msg\":\"no uplink\"}' && exit 1\nexit 0",
    );
    fixture.write_conf(
        "10-pods.conflist",
        r#"{"cniVersion":"1.1.0","name":"pods","plugins":[{"type":"absent"}]}"#,
    );
    network.reload();
    let why = network.status().await.unwrap_err();
    assert!(
        why.contains("failed STATUS: no uplink") && why.contains("plugin not available"),
        "{why}"
    );
    fixture.plugin("absent", "exit 0");
    network.status().await.unwrap();
    assert_eq!(summary(&fixture.calls()).last().unwrap(), "STATUS absent ");
}

#[tokio::test]
async fn check_runs_with_the_cached_result_where_the_version_has_it() {
    let fixture = Fixture::new();
    fixture.write_conf("10-pods.conflist", CHAIN);
    let network = fixture.network("");
    let config = pod_config();
    let pod = Pod {
        id: "p4",
        netns: Path::new("/proc/self/ns/net"),
        config: &config,
    };
    network.attach(pod).await.unwrap();
    fixture.calls();
    network.check(pod).await.unwrap();
    let calls = fixture.calls();
    assert_eq!(summary(&calls), ["CHECK first eth0", "CHECK last eth0"]);
    assert_eq!(
        calls[0].stdin["prevResult"]["ips"][1]["address"],
        "10.9.0.5/24"
    );
    fixture.plugin(
        "first",
        "echo '{\"code\":100,\"msg\":\"veth gone\"}'; exit 1",
    );
    let why = network.check(pod).await.unwrap_err();
    assert!(why.contains("failed CHECK: veth gone"), "{why}");
}

#[tokio::test]
async fn garbage_is_released_and_1_1_plugins_get_the_valid_attachments() {
    let fixture = Fixture::new();
    fixture.write_conf(
        "10-pods.conflist",
        r#"{"cniVersion":"1.1.0","name":"pods","plugins":[{"type":"last"}]}"#,
    );
    let network = fixture.network("");
    let config = pod_config();
    for id in ["kept", "forgotten"] {
        let pod = Pod {
            id,
            netns: Path::new("/proc/self/ns/net"),
            config: &config,
        };
        network.attach(pod).await.unwrap();
    }
    fixture.calls();
    let known = HashSet::from(["kept".to_string()]);
    network
        .collect_garbage(&known, |id| PathBuf::from(format!("/gone/{id}")))
        .await;
    let calls = fixture.calls();
    assert_eq!(
        summary(&calls),
        ["DEL last eth0", "DEL loopback lo", "GC last "],
        "the forgotten pod's attachments released, then GC"
    );
    let valid = calls[2].stdin["cni.dev/valid-attachments"]
        .as_array()
        .unwrap();
    let mut valid: Vec<String> = valid
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["containerID"].as_str().unwrap(),
                v["ifname"].as_str().unwrap()
            )
        })
        .collect();
    valid.sort();
    assert_eq!(valid, ["kept eth0", "kept lo"]);
    assert_eq!(fixture.cached(), 2);
}

#[tokio::test]
async fn the_template_is_rendered_with_the_pod_cidr_only_while_not_ready() {
    let fixture = Fixture::new();
    let template = r#"{"cniVersion":"1.0.0","name":"templated","plugins":[{"type":"first","ipam":{"subnet":"{{ .PodCIDR }}"}}]}"#;
    let network = fixture.network(template);
    assert!(network.status().await.is_err());
    assert!(!network.apply_pod_cidr("").await.unwrap());
    assert!(
        network
            .apply_pod_cidr("10.44.0.0/24,fd00:44::/64")
            .await
            .unwrap()
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(fixture.conf().join(TEMPLATE_FILE)).unwrap())
            .unwrap();
    assert_eq!(written["plugins"][0]["ipam"]["subnet"], "10.44.0.0/24");
    network.status().await.unwrap();
    // Ready now: a new CIDR does not overwrite what is there.
    assert!(!network.apply_pod_cidr("10.55.0.0/24").await.unwrap());
    assert_eq!(render_template("a{{.PodCIDR}}b", "c"), "acb");
}

#[tokio::test]
async fn a_config_written_later_is_picked_up_by_the_watch() {
    let fixture = Fixture::new();
    let network = Arc::new(fixture.network(""));
    assert!(network.status().await.is_err());
    // Whether the write comes before or after the watch is armed, the watch's first read or
    // its event sees it.
    let watch = tokio::spawn(Arc::clone(&network).watch());
    fixture.write_conf("10-pods.conflist", CHAIN);
    let mut ready = false;
    for _ in 0..100 {
        if network.status().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the watch did not see the new config");
    std::fs::remove_file(fixture.conf().join("10-pods.conflist")).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if network.status().await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
    assert!(gone, "the watch did not see the config go");
}
