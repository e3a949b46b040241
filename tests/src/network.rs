//! A private pod network per test, run by Debian's CNI plugins (containernetworking-plugins):
//! its own bridge, subnet, conf dir and IPAM data dir, and at the end its bridge removed,
//! `net.ipv4.ip_forward` restored, and every attachment crustd left released with the
//! plugins' own DEL.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;

use crate::cleanup::{self, names_in};
use serde_json::{Value, json};

/// Where Debian installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Live networks of this process and the `ip_forward` value from before the first.
static FORWARDING: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// One test's network.
#[derive(Debug)]
pub struct TestNetwork {
    /// The bridge's name.
    pub bridge: String,
    /// The network's name in its config.
    pub name: String,
    /// Its IPv4 subnet, `10.x.y.0/24`.
    pub subnet: String,
    /// The gateway (the bridge's address).
    pub gateway: String,
    /// The watched config directory.
    pub conf_dir: PathBuf,
    /// host-local's data dir: one file per allocated address.
    pub ipam_dir: PathBuf,
}

impl TestNetwork {
    /// A network under `dir`, with the port-mapping plugin chained when `port_mapping`.
    pub fn new(dir: &Path, port_mapping: bool) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let third = 128 + (pid % 64) as u32;
        let network = TestNetwork {
            bridge: format!("crt{}x{n}", pid % 100_000),
            name: format!("crust-test-{pid}-{n}"),
            subnet: format!("10.{third}.{}.0/24", n % 256),
            gateway: format!("10.{third}.{}.1", n % 256),
            conf_dir: dir.join("net.d"),
            ipam_dir: dir.join("ipam"),
        };
        {
            let mut forwarding = FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
            if forwarding.0 == 0 {
                forwarding.1 = fs::read_to_string(IP_FORWARD).ok();
            }
            forwarding.0 += 1;
        }
        fs::create_dir_all(&network.conf_dir).expect("create conf dir");
        network.write_config("10-test.conflist", port_mapping);
        network
    }

    /// The conflist of this network (bridge, host-local, optionally portmap).
    pub fn conflist(&self, port_mapping: bool) -> Value {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                "dataDir": self.ipam_dir,
            }
        })];
        if port_mapping {
            plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        }
        json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
    }

    /// Writes the conflist as `file` in the conf dir.
    pub fn write_config(&self, file: &str, port_mapping: bool) {
        let text = serde_json::to_vec_pretty(&self.conflist(port_mapping)).expect("json");
        fs::write(self.conf_dir.join(file), text).expect("write conflist");
    }

    /// crustd's `[cni]` section for this network.
    pub fn cni_section(&self) -> String {
        format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{PLUGIN_DIR}\"]\nplugin_timeout = \"30s\"\n",
            self.conf_dir.display()
        )
    }

    /// Addresses host-local has handed out and not taken back.
    pub fn allocated_ips(&self) -> Vec<String> {
        let mut names = names_in(self.ipam_dir.join(&self.name));
        names.retain(|name| name.parse::<std::net::IpAddr>().is_ok());
        names
    }

    /// Port-mapping (NAT) rules of this network, by the pod id in their comment.
    pub fn port_mapping_rules(&self) -> Vec<String> {
        let Ok(out) = Command::new("iptables-save").args(["-t", "nat"]).output() else {
            return Vec::new();
        };
        let ours = format!("name: \\\"{}\\\"", self.name);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| {
                line.contains(&ours) || line.contains(&format!("name: \"{}\"", self.name))
            })
            .map(str::to_string)
            .collect()
    }

    /// What this network holds that none of `pods` accounts for: addresses, bridge ports
    /// beyond one per pod, port-mapping rules.
    pub fn leaks(&self, pods: &std::collections::HashSet<String>) -> Vec<String> {
        let mut leaks = Vec::new();
        let dir = self.ipam_dir.join(&self.name);
        for ip in self.allocated_ips() {
            let owner = fs::read_to_string(dir.join(&ip)).unwrap_or_default();
            let owner = owner.lines().next().unwrap_or_default().trim().to_string();
            if !pods.contains(&owner) {
                leaks.push(format!("address {ip} (pod {owner})"));
            }
        }
        let ports = self.bridge_ports();
        if ports.len() > pods.len() {
            leaks.push(format!(
                "{} veths on {} for {} pods",
                ports.len(),
                self.bridge,
                pods.len()
            ));
        }
        for rule in self.port_mapping_rules() {
            if !pods.iter().any(|pod| rule.contains(pod.as_str())) {
                leaks.push(format!("port mapping rule {rule}"));
            }
        }
        leaks
    }

    /// Interfaces attached to the bridge (the pods' veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        names_in(format!("/sys/class/net/{}/brif", self.bridge))
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let mut forwarding = FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
        forwarding.0 = forwarding.0.saturating_sub(1);
        if forwarding.0 == 0
            && let Some(before) = forwarding.1.take()
        {
            let _ = fs::write(IP_FORWARD, before);
        }
    }
}

/// Runs DEL, with Debian's plugins, for every attachment in crustd's CNI cache under `root`
/// (what a failed test left: addresses, veths, port mappings); the cache entries go too.
pub fn release_cached_attachments(root: &Path) {
    release_attachments_cached_in(&root.join("cni").join("results"), |_| true);
}

/// libcni's cache of attachments, where containerd's CRI keeps them (shared by every
/// containerd of the host).
pub const LIBCNI_CACHE: &str = "/var/lib/cni/results";

/// One entry of a CNI cache: which network attached which container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAttachment {
    /// The network's name in its config.
    pub network: String,
    /// The container (a pod's sandbox) it attached.
    pub container_id: String,
}

/// A cache entry: the entry as stored, and the network config it names (decoded).
fn read_cache_entry(path: &Path) -> Option<(Value, Value)> {
    let cached: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    let config = cached["config"]
        .as_str()
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or_default();
    Some((cached, config))
}

fn attachment_of(cached: &Value, config: &Value) -> CachedAttachment {
    CachedAttachment {
        network: config["name"].as_str().unwrap_or_default().to_string(),
        container_id: cached["containerId"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The attachments in `cache` (crustd's and libcni's have one format).
pub fn cached_attachments(cache: &Path) -> Vec<CachedAttachment> {
    cleanup::names_in(cache)
        .iter()
        .filter_map(|name| read_cache_entry(&cache.join(name)))
        .map(|(cached, config)| attachment_of(&cached, &config))
        .collect()
}

/// As [`release_cached_attachments`] for the entries of `cache` (crustd's and libcni's have
/// one format) that are `wanted`.
pub fn release_attachments_cached_in(cache: &Path, wanted: impl Fn(&CachedAttachment) -> bool) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let Some((cached, config)) = read_cache_entry(&entry.path()) else {
            continue;
        };
        if !wanted(&attachment_of(&cached, &config)) {
            continue;
        }
        let plugins = config["plugins"].as_array().cloned().unwrap_or_default();
        for plugin in plugins.iter().rev() {
            let mut stdin = plugin.clone();
            stdin["name"] = config["name"].clone();
            stdin["cniVersion"] = config["cniVersion"].clone();
            if let Some(result) = cached.get("result") {
                stdin["prevResult"] = result.clone();
            }
            // The capability args the plugin declares (portmap finds its rules by them).
            if let Some(capabilities) = plugin["capabilities"].as_object() {
                let runtime_config: serde_json::Map<String, Value> = capabilities
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(name, _)| {
                        cached["capabilityArgs"]
                            .get(name)
                            .map(|value| (name.clone(), value.clone()))
                    })
                    .collect();
                stdin["runtimeConfig"] = Value::Object(runtime_config);
            }
            let kind = plugin["type"].as_str().unwrap_or_default();
            let child = Command::new(Path::new(PLUGIN_DIR).join(kind))
                .env("CNI_COMMAND", "DEL")
                .env(
                    "CNI_CONTAINERID",
                    cached["containerId"].as_str().unwrap_or_default(),
                )
                .env("CNI_IFNAME", cached["ifName"].as_str().unwrap_or_default())
                .env("CNI_PATH", PLUGIN_DIR)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut child) = child {
                if let Some(mut input) = child.stdin.take() {
                    let _ = input.write_all(stdin.to_string().as_bytes());
                }
                let _ = child.wait();
            }
        }
        let _ = fs::remove_file(entry.path());
    }
}
