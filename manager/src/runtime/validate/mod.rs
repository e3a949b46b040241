//! What crustd accepts in a pod or container config: the fields it needs, caps on the size of
//! everything a client can make it store or echo, and values the kernel and runc take as
//! given. kubelet stays far inside them; a client that does not gets InvalidArgument naming
//! the field and the value, before anything of the pod or container exists, never a crustd
//! that grows or a runc that fails (or quietly does something else).
//!
//! This module checks sizes and puts the checks together; each kind of value has its module.

mod cgroup_parent;
mod cpuset;
mod hostname;
mod mounts;
mod process;
mod resources;
mod sysctl;

use std::collections::HashMap;

use crust_proto::cri::{ContainerConfig, PodSandboxConfig};

use super::sandbox::namespaces_of;
use super::spec::check_path;
use crate::error::{ManagerError, Result};

pub use mounts::volume;
pub use resources::check as container_resources;

/// Longest name, namespace or uid in metadata (a Kubernetes object name is at most 253).
pub const MAX_NAME: usize = 253;
/// Longest hostname the kernel takes (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// Most bytes of labels, and of annotations, on one object: twice Kubernetes' 256 KiB
/// annotation cap, as kubelet adds its own (`kubernetes.io/config.*`) to a pod at that cap.
pub const MAX_MAP_BYTES: usize = 512 * 1024;
/// Most bytes of a command line and environment together: what the kernel takes with the
/// default 8 MiB stack (a quarter of it). Large namespaces with service links come near.
pub const MAX_PROCESS_BYTES: usize = 2 * 1024 * 1024;
/// Most mounts, devices or DNS entries in one config.
pub const MAX_ENTRIES: usize = 1024;
/// Longest path crustd takes.
pub const MAX_PATH: usize = 4096;

fn invalid(why: String) -> ManagerError {
    ManagerError::InvalidArgument(why)
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes, more than the {max} crustd takes",
            value.len()
        )));
    }
    Ok(())
}

fn check_map(field: &str, map: &HashMap<String, String>) -> Result<()> {
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_MAP_BYTES {
        return Err(invalid(format!(
            "{field} take {bytes} bytes, more than the {MAX_MAP_BYTES} crustd takes"
        )));
    }
    if map.keys().any(|k| k.is_empty()) {
        return Err(invalid(format!("{field} have an empty key")));
    }
    Ok(())
}

fn check_count(field: &str, count: usize) -> Result<()> {
    if count > MAX_ENTRIES {
        return Err(invalid(format!(
            "{count} {field}, more than the {MAX_ENTRIES} crustd takes"
        )));
    }
    Ok(())
}

/// Refuses a pod config kubelet would never send.
pub fn pod_config(config: &PodSandboxConfig) -> Result<()> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("pod config has no metadata".into()))?;
    if metadata.name.is_empty() {
        return Err(invalid("pod metadata has no name".into()));
    }
    check_len("pod name", &metadata.name, MAX_NAME)?;
    check_len("pod namespace", &metadata.namespace, MAX_NAME)?;
    check_len("pod uid", &metadata.uid, MAX_NAME)?;
    check_len("pod hostname", &config.hostname, MAX_HOSTNAME)?;
    hostname::check(&config.hostname)?;
    check_map("pod labels", &config.labels)?;
    check_map("pod annotations", &config.annotations)?;
    if !config.log_directory.is_empty() {
        check_len("pod log directory", &config.log_directory, MAX_PATH)?;
        check_path("pod log directory", &config.log_directory)?;
    }
    if let Some(dns) = &config.dns_config {
        check_count(
            "DNS entries",
            dns.servers.len() + dns.searches.len() + dns.options.len(),
        )?;
    }
    if let Some(linux) = &config.linux {
        check_len("cgroup parent", &linux.cgroup_parent, MAX_PATH)?;
        cgroup_parent::check(&linux.cgroup_parent)?;
        check_map("sysctls", &linux.sysctls)?;
        sysctl::check(&linux.sysctls, namespaces_of(config))?;
    }
    Ok(())
}

/// Refuses a container config kubelet would never send. `cgroup_v2` is whether the host runs
/// cgroup v2 alone, which cgroup v2 settings (`unified`) need.
pub fn container_config(config: &ContainerConfig, cgroup_v2: bool) -> Result<()> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("container config has no metadata".into()))?;
    if metadata.name.is_empty() {
        return Err(invalid("container metadata has no name".into()));
    }
    check_len("container name", &metadata.name, MAX_NAME)?;
    check_map("container labels", &config.labels)?;
    check_map("container annotations", &config.annotations)?;
    check_len("log path", &config.log_path, MAX_PATH)?;
    check_len("working dir", &config.working_dir, MAX_PATH)?;
    process::working_dir(&config.working_dir)?;
    let process_bytes: usize = config
        .command
        .iter()
        .chain(&config.args)
        .map(String::len)
        .sum::<usize>()
        + config
            .envs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum::<usize>();
    if process_bytes > MAX_PROCESS_BYTES {
        return Err(invalid(format!(
            "command, args and environment take {process_bytes} bytes, more than the {MAX_PROCESS_BYTES} crustd takes"
        )));
    }
    process::environment(&config.envs)?;
    check_count("mounts", config.mounts.len())?;
    config.mounts.iter().try_for_each(volume)?;
    check_count("devices", config.devices.len())?;
    if let Some(resources) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        resources::check(resources, cgroup_v2)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::{
        ContainerMetadata, KeyValue, LinuxContainerConfig, LinuxContainerResources,
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
        PodSandboxMetadata,
    };

    fn pod() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn container() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    pub(super) fn refused_for(result: Result<()>, field: &str) {
        match result {
            Err(ManagerError::InvalidArgument(why)) => assert!(why.contains(field), "{why}"),
            other => panic!("{field}: {other:?}"),
        }
    }

    #[test]
    fn sane_configs_pass_and_each_cap_names_its_field() {
        pod_config(&pod()).unwrap();
        container_config(&container(), false).unwrap();

        let mut no_metadata = pod();
        no_metadata.metadata = None;
        refused_for(pod_config(&no_metadata), "metadata");
        let mut long_name = pod();
        long_name.metadata.as_mut().unwrap().name = "n".repeat(MAX_NAME + 1);
        refused_for(pod_config(&long_name), "pod name");
        let mut long_host = pod();
        long_host.hostname = "h".repeat(MAX_HOSTNAME + 1);
        refused_for(pod_config(&long_host), "hostname");
        let mut big_labels = pod();
        big_labels
            .labels
            .insert("k".into(), "v".repeat(MAX_MAP_BYTES));
        refused_for(pod_config(&big_labels), "pod labels");
        let mut empty_key = pod();
        empty_key.annotations.insert(String::new(), "v".into());
        refused_for(pod_config(&empty_key), "pod annotations");
        let mut relative = pod();
        relative.log_directory = "var/log".into();
        refused_for(pod_config(&relative), "log directory");

        let mut unnamed = container();
        unnamed.metadata.as_mut().unwrap().name.clear();
        refused_for(container_config(&unnamed, false), "name");
        let mut huge_env = container();
        huge_env.envs = vec![KeyValue {
            key: "A".into(),
            value: "x".repeat(MAX_PROCESS_BYTES),
        }];
        refused_for(container_config(&huge_env, false), "environment");
        let mut many_mounts = container();
        many_mounts.mounts = vec![Default::default(); MAX_ENTRIES + 1];
        refused_for(container_config(&many_mounts, false), "mounts");
    }

    /// A pod as kubelet sends it: its hostname, a cgroupfs parent and safe sysctls, on the
    /// node's network when `host_network`.
    fn kubelet_pod(host_network: bool) -> PodSandboxConfig {
        let network = if host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        PodSandboxConfig {
            hostname: "web-0".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/burstable/pod0f8d3e0a-4b1c-4d1e-9c6e-1b2a3c4d5e6f".into(),
                sysctls: [
                    ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                    (
                        "net.ipv4.ip_unprivileged_port_start".to_string(),
                        "0".to_string(),
                    ),
                ]
                .into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..pod()
        }
    }

    /// A container as kubelet sends it: environment, working dir, a volume and limits.
    fn kubelet_container() -> ContainerConfig {
        ContainerConfig {
            working_dir: "/srv".into(),
            envs: vec![KeyValue {
                key: "KUBERNETES_SERVICE_HOST".into(),
                value: "10.96.0.1".into(),
            }],
            mounts: vec![Mount {
                container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                host_path: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~projected/token".into(),
                readonly: true,
                ..Default::default()
            }],
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 512,
                    memory_limit_in_bytes: 128 << 20,
                    oom_score_adj: 968,
                    unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..container()
        }
    }

    fn resources(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
        config
            .linux
            .as_mut()
            .and_then(|l| l.resources.as_mut())
            .unwrap()
    }

    #[test]
    fn kubelets_configs_pass_and_each_value_check_is_wired_in() {
        pod_config(&kubelet_pod(false)).unwrap();
        container_config(&kubelet_container(), true).unwrap();
        // The host network pod keeps the node's hostname and drops its net sysctl.
        let mut on_host = kubelet_pod(true);
        on_host.hostname.clear();
        pod_config(&on_host).unwrap_err();
        if let Some(linux) = on_host.linux.as_mut() {
            linux.sysctls.remove("net.ipv4.ip_unprivileged_port_start");
        }
        pod_config(&on_host).unwrap();

        let mut bad_hostname = kubelet_pod(false);
        bad_hostname.hostname = "web_0".into();
        refused_for(pod_config(&bad_hostname), "pod hostname");
        let mut climbing = kubelet_pod(false);
        climbing.linux.as_mut().unwrap().cgroup_parent = "/kubepods/../..".into();
        refused_for(pod_config(&climbing), "cgroup parent");
        refused_for(
            pod_config(&kubelet_pod(true)),
            "net.ipv4.ip_unprivileged_port_start",
        );

        let mut bad_env = kubelet_container();
        bad_env.envs[0].key = "A=B".into();
        refused_for(container_config(&bad_env, true), "environment key");
        let mut relative_dir = kubelet_container();
        relative_dir.working_dir = "srv".into();
        refused_for(container_config(&relative_dir, true), "working dir");
        let mut over_root = kubelet_container();
        over_root.mounts[0].container_path = "//.".into();
        refused_for(container_config(&over_root, true), "mount container path");
        let mut cast = kubelet_container();
        resources(&mut cast).oom_score_adj = 4_294_966_296;
        refused_for(container_config(&cast, true), "oom_score_adj");
        refused_for(
            container_config(&kubelet_container(), false),
            "cgroup v2 only",
        );
    }
}
