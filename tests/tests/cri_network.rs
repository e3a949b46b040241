//! Pod networking through crustd with Debian's CNI plugins (bridge, host-local, portmap,
//! loopback): pod IPs, pod-to-pod, host-to-pod and hostPort traffic, NetworkReady following
//! the watched config directory, plugin failures with their messages, and nothing left behind
//! after churn, a crash between ADD and the infra start, and a restart.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crust_proto::cri::tonic::Code;
use crust_proto::cri::*;
use crust_tests::cleanup;
use crust_tests::cri::{self, Client, exec, start};
use crust_tests::crustd::{Crustd, WithImage};

fn pod_config(name: &str, setup: &WithImage) -> PodSandboxConfig {
    cri::pod_config(name, "net", setup.logs.path())
}

async fn run_pod(client: &mut Client, config: &PodSandboxConfig) -> Result<String, Code> {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
        .map_err(|s| {
            eprintln!("RunPodSandbox: {}", s.message());
            s.code()
        })
}

async fn run_container(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    name: &str,
    image: &str,
    command: &[&str],
) -> String {
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cri::container_config(
                name,
                image,
                command,
                &format!("{name}.log"),
            )),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("create container")
        .into_inner()
        .container_id;
    start(client, &id).await.expect("start container");
    id
}

async fn pod_status(client: &mut Client, id: &str) -> PodSandboxStatusResponse {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("pod status")
        .into_inner()
}

fn pod_ip(status: &PodSandboxStatusResponse) -> String {
    status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

async fn network_condition(client: &mut Client) -> RuntimeCondition {
    client
        .status(StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner()
        .status
        .and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.r#type == "NetworkReady")
        })
        .expect("a NetworkReady condition")
}

/// Waits for NetworkReady to become `ready`; the last condition seen.
async fn wait_network_ready(client: &mut Client, ready: bool) -> RuntimeCondition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let condition = network_condition(client).await;
        if condition.status == ready || Instant::now() > deadline {
            return condition;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until NetworkReady is false with a message containing `text`; that message.
async fn wait_not_ready_because(client: &mut Client, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let condition = network_condition(client).await;
        if (!condition.status && condition.message.contains(text)) || Instant::now() > deadline {
            assert_eq!(condition.reason, "NetworkPluginNotReady", "{condition:?}");
            return condition.message;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP GET of `/` at `address`, retried until it answers or 15 s pass; the response.
fn http_get(address: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => return response,
            _ if Instant::now() > deadline => return format!("no answer: {attempt:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn remove_pod(client: &mut Client, id: &str) {
    cri::stop_pod(client, id).await.expect("stop pod");
    cri::remove_pod(client, id).await.expect("remove pod");
}

/// Asserts crustd and the network hold nothing for pods: no namespaces, cache entries,
/// addresses, veths or port-mapping rules.
fn assert_nothing_left(crustd: &Crustd, when: &str) {
    // A veth goes with its namespace, which the kernel frees a moment after the unmount.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leaks = crustd.network_leaks(&HashSet::new());
    while !leaks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        leaks = crustd.network_leaks(&HashSet::new());
    }
    assert!(leaks.is_empty(), "{when}: left {leaks:?}");
    let mounts = cleanup::mounts_below(&crustd.state().join("netns"));
    assert!(mounts.is_empty(), "{when}: netns mounts {mounts:?}");
}

const PAGE: &str = "mkdir -p /tmp/www && echo served-by-$(hostname) > /tmp/www/index.html && exec busybox httpd -f -p 8080 -h /tmp/www";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_ips_and_reach_each_other_the_host_and_host_ports() {
    let setup = WithImage::started(true).await;
    let mut client = setup.crustd.runtime().await;
    let network = setup.crustd.network();
    let ready = wait_network_ready(&mut client, true).await;
    assert!(ready.status, "{ready:?}");

    let host_port = free_port();
    let mut server_config = pod_config("server", &setup);
    server_config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port.into(),
        host_ip: String::new(),
    }];
    let server = run_pod(&mut client, &server_config)
        .await
        .expect("run server pod");
    run_container(
        &mut client,
        &server,
        &server_config,
        "httpd",
        &setup.image,
        &["sh", "-c", PAGE],
    )
    .await;
    let status = pod_status(&mut client, &server).await;
    let server_ip = pod_ip(&status);
    let prefix = network.subnet.trim_end_matches("0/24");
    assert!(
        server_ip.starts_with(prefix),
        "{server_ip} not in {}",
        network.subnet
    );
    assert!(
        status
            .info
            .get("netns")
            .is_some_and(|p| p.contains("/netns/")),
        "{:?}",
        status.info
    );

    // From another pod, by pod IP.
    let client_config = pod_config("client", &setup);
    let other = run_pod(&mut client, &client_config)
        .await
        .expect("run client pod");
    let other_ip = pod_ip(&pod_status(&mut client, &other).await);
    assert!(
        other_ip.starts_with(prefix) && other_ip != server_ip,
        "{other_ip}"
    );
    let shell = run_container(
        &mut client,
        &other,
        &client_config,
        "shell",
        &setup.image,
        &["sleep", "3600"],
    )
    .await;
    let url = format!("http://{server_ip}:8080/");
    let mut fetched = String::new();
    for _ in 0..50 {
        let out = exec(
            &mut client,
            &shell,
            &["busybox", "wget", "-q", "-O", "-", &url],
            10,
        )
        .await
        .expect("exec wget");
        fetched = String::from_utf8_lossy(&out.stdout).into_owned();
        if fetched.contains("served-by-server") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fetched.contains("served-by-server"),
        "pod to pod: {fetched:?}"
    );
    // The pod's own interfaces: eth0 with its IP, lo up.
    let out = exec(&mut client, &shell, &["busybox", "ip", "-o", "addr"], 10)
        .await
        .expect("exec ip");
    let addresses = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        addresses.contains(&format!("eth0    inet {other_ip}/24"))
            || addresses.contains(&format!("inet {other_ip}/24")),
        "{addresses}"
    );
    assert!(addresses.contains("lo    inet 127.0.0.1/8"), "{addresses}");

    // From the host, by pod IP and by host port.
    let by_ip = http_get(format!("{server_ip}:8080").parse().expect("address"));
    assert!(by_ip.contains("served-by-server"), "host to pod: {by_ip}");
    let by_port = http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)));
    assert!(
        by_port.contains("served-by-server"),
        "hostPort {host_port}: {by_port}"
    );
    assert!(!network.port_mapping_rules().is_empty());

    remove_pod(&mut client, &other).await;
    remove_pod(&mut client, &server).await;
    assert_nothing_left(&setup.crustd, "after removing both pods");
    let refused = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
        Duration::from_secs(1),
    );
    assert!(refused.is_err(), "the host port still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_the_config_directory_and_failures_say_why() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let network = setup.crustd.network();
    assert!(wait_network_ready(&mut client, true).await.status);
    let config_file = network.conf_dir.join("10-test.conflist");

    // No config: not ready, and pods are refused with the reason.
    std::fs::remove_file(&config_file).expect("remove config");
    let condition = wait_network_ready(&mut client, false).await;
    assert!(!condition.status);
    assert_eq!(condition.reason, "NetworkPluginNotReady");
    assert!(
        condition.message.contains("no network config found"),
        "{}",
        condition.message
    );
    let refused = run_pod(&mut client, &pod_config("early", &setup)).await;
    assert_eq!(refused, Err(Code::FailedPrecondition));

    // Back: ready without a restart.
    network.write_config("10-test.conflist", false);
    assert!(wait_network_ready(&mut client, true).await.status);

    // A broken file (first in lexical order): named, with the parse error.
    let broken = network.conf_dir.join("05-broken.conflist");
    std::fs::write(&broken, "{\"cniVersion\": ").expect("write");
    let condition = wait_network_ready(&mut client, false).await;
    assert!(
        condition.message.contains("05-broken.conflist")
            && condition.message.contains("invalid JSON"),
        "{}",
        condition.message
    );
    std::fs::remove_file(&broken).expect("remove");

    // A plugin binary that is not there.
    let mut missing = network.conflist(false);
    missing["plugins"][0]["type"] = "no-such-plugin".into();
    std::fs::write(&config_file, missing.to_string()).expect("write");
    let message = wait_not_ready_because(&mut client, "no-such-plugin").await;
    assert!(
        message.contains("\"no-such-plugin\"") && message.contains("not found"),
        "{message}"
    );

    // A plugin that fails ADD (host-local refuses a range with no room): RunPodSandbox names
    // the plugin and says why, and nothing of the pod stays.
    let mut full = network.conflist(false);
    full["plugins"][0]["ipam"]["ranges"][0][0]["rangeStart"] = network.gateway.clone().into();
    full["plugins"][0]["ipam"]["ranges"][0][0]["rangeEnd"] = network.gateway.clone().into();
    std::fs::write(&config_file, full.to_string()).expect("write");
    assert!(wait_network_ready(&mut client, true).await.status);
    let failed = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("unlucky", &setup)),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("ADD fails");
    assert!(
        failed
            .message()
            .contains("CNI plugin \"bridge\" failed ADD")
            && failed.message().contains(&network.name),
        "{}",
        failed.message()
    );
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "the failed pod was rolled back: {pods:?}");
    assert_nothing_left(&setup.crustd, "after a failed ADD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_a_crash_between_add_and_infra_and_a_restart_leave_nothing() {
    let setup = WithImage::started(true).await;
    let mut client = setup.crustd.runtime().await;
    assert!(wait_network_ready(&mut client, true).await.status);

    // 50 pods, each with a host port, started then removed.
    let mut pods = Vec::new();
    for n in 0..50 {
        let mut config = pod_config(&format!("churn-{n}"), &setup);
        config.port_mappings = vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: 80,
            host_port: 20000 + n,
            host_ip: "127.0.0.1".into(),
        }];
        pods.push(run_pod(&mut client, &config).await.expect("run pod"));
    }
    let network = setup.crustd.network();
    assert_eq!(network.allocated_ips().len(), 50);
    assert_eq!(network.bridge_ports().len(), 50);
    for pod in &pods {
        remove_pod(&mut client, pod).await;
    }
    assert_nothing_left(&setup.crustd, "after 50 pods");

    // crustd SIGKILLed after ADD, before the infra process: Stop and Remove after the
    // restart release everything.
    setup.crustd.arm_crash_point("pod-after-network");
    let mut client = setup.crustd.runtime().await;
    let mut config = pod_config("crashed", &setup);
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 21000,
        host_ip: String::new(),
    }];
    assert!(run_pod(&mut client, &config).await.is_err());
    assert!(
        setup.crustd.died_of_sigkill(Duration::from_secs(15)),
        "crustd did not crash"
    );
    assert_eq!(setup.crustd.network().allocated_ips().len(), 1, "ADD ran");
    setup.crustd.start_again();
    let mut client = setup.crustd.runtime().await;
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
    assert_nothing_left(&setup.crustd, "after the crash");

    // Pods running across a restart are torn down with their cached results.
    let mut kept = Vec::new();
    for n in 0..5 {
        kept.push(
            run_pod(&mut client, &pod_config(&format!("kept-{n}"), &setup))
                .await
                .expect("run pod"),
        );
    }
    setup.crustd.restart();
    let mut client = setup.crustd.runtime().await;
    // CHECK runs in the background after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = pod_status(&mut client, &kept[0]).await;
    while !status.info.contains_key("networkCheck") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = pod_status(&mut client, &kept[0]).await;
    }
    assert_eq!(
        status.info.get("networkCheck").map(String::as_str),
        Some("ok"),
        "{:?}",
        status.info
    );
    cri::remove_all_pods(&mut client)
        .await
        .expect("remove pods");
    assert_nothing_left(&setup.crustd, "after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_keep_the_nodes_network() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let mut config = pod_config("hostnet", &setup);
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&mut client, &config)
        .await
        .expect("run host-network pod");
    let status = pod_status(&mut client, &pod).await;
    assert_eq!(pod_ip(&status), "", "no pod IP for a host-network pod");
    assert!(!status.info.contains_key("netns"));
    let shell = run_container(
        &mut client,
        &pod,
        &config,
        "shell",
        &setup.image,
        &["sleep", "3600"],
    )
    .await;
    let out = exec(&mut client, &shell, &["ls", "/sys/class/net"], 10)
        .await
        .expect("exec ls");
    let seen: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // The node's own interfaces (not the veths other tests add and remove meanwhile).
    let node: HashSet<String> = std::fs::read_dir("/sys/class/net")
        .expect("read /sys/class/net")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("veth") && !name.starts_with("crt"))
        .collect();
    assert!(node.is_subset(&seen), "node {node:?}, pod {seen:?}");
    assert_eq!(
        setup.crustd.network().allocated_ips().len(),
        0,
        "no CNI for host network"
    );
    remove_pod(&mut client, &pod).await;
    assert_nothing_left(&setup.crustd, "after the host-network pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_test_leaves_is_released_by_the_fixture() {
    // A pod with a host port, left running as a test that panics would leave it.
    let crustd = Crustd::start_with_port_mapping("");
    let mut client = crustd.runtime().await;
    assert!(wait_network_ready(&mut client, true).await.status);
    let mut config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "abandoned".into(),
            namespace: "net".into(),
            uid: "uid-abandoned".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: free_port().into(),
        host_ip: String::new(),
    }];
    run_pod(&mut client, &config).await.expect("run pod");
    let name = crustd.network().name.clone();
    let bridge = crustd.network().bridge.clone();
    assert!(!crustd.network().port_mapping_rules().is_empty());
    drop(client);
    drop(crustd);
    let rules = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains(&format!("\\\"{name}\\\"")),
        "port mapping rules left: {rules}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} left"
    );
}
