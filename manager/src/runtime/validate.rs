//! What crustd accepts in a pod or container config: the fields it needs, and caps on the
//! size of everything a client can make it store or echo. kubelet stays far inside them; a
//! client that does not gets InvalidArgument naming the field, never a crustd that grows.

use std::collections::HashMap;

use crust_proto::cri::{ContainerConfig, PodSandboxConfig};

use super::spec::check_path;
use crate::error::{ManagerError, Result};

/// Longest name, namespace or uid in metadata (a Kubernetes object name is at most 253).
pub const MAX_NAME: usize = 253;
/// Longest hostname the kernel takes (HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// Most bytes of labels, and of annotations, on one object (Kubernetes' annotation cap).
pub const MAX_MAP_BYTES: usize = 256 * 1024;
/// Most bytes of a command line and environment together (the kernel allows 2 MiB).
pub const MAX_PROCESS_BYTES: usize = 1024 * 1024;
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
        check_map("sysctls", &linux.sysctls)?;
    }
    Ok(())
}

/// Refuses a container config kubelet would never send.
pub fn container_config(config: &ContainerConfig) -> Result<()> {
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
    check_count("mounts", config.mounts.len())?;
    check_count("devices", config.devices.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::{ContainerMetadata, KeyValue, PodSandboxMetadata};

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

    fn refused_for(result: Result<()>, field: &str) {
        match result {
            Err(ManagerError::InvalidArgument(why)) => assert!(why.contains(field), "{why}"),
            other => panic!("{field}: {other:?}"),
        }
    }

    #[test]
    fn sane_configs_pass_and_each_cap_names_its_field() {
        pod_config(&pod()).unwrap();
        container_config(&container()).unwrap();

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
        refused_for(container_config(&unnamed), "name");
        let mut huge_env = container();
        huge_env.envs = vec![KeyValue {
            key: "A".into(),
            value: "x".repeat(MAX_PROCESS_BYTES),
        }];
        refused_for(container_config(&huge_env), "environment");
        let mut many_mounts = container();
        many_mounts.mounts = vec![Default::default(); MAX_ENTRIES + 1];
        refused_for(container_config(&many_mounts), "mounts");
    }
}
