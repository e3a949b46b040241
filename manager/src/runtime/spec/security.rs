//! Capabilities, privilege, masked and read-only paths of a container's process.

use std::str::FromStr;

use crust_proto::cri::{LinuxContainerSecurityContext, PodSandboxConfig};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use crate::error::{ManagerError, Result};

/// The capabilities a container gets unless it asks otherwise (containerd's default set).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability name oci-spec knows, for `ALL` and privileged containers.
const ALL_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

fn capability(name: &str) -> Result<Capability> {
    let bare = name.trim().to_ascii_uppercase();
    let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
    Capability::from_str(bare)
        .map_err(|_| ManagerError::InvalidArgument(format!("unknown capability {name:?}")))
}

fn capability_set(names: &[&str]) -> Capabilities {
    names.iter().filter_map(|n| capability(n).ok()).collect()
}

/// The capability set from the default, `add` and `drop` (either may say `ALL`).
pub fn capabilities(
    add: &[String],
    drop: &[String],
    privileged: bool,
) -> Result<LinuxCapabilities> {
    let is_all = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set = if privileged || is_all(add) {
        capability_set(ALL_CAPABILITIES)
    } else {
        let mut set = capability_set(DEFAULT_CAPABILITIES);
        for name in add {
            set.insert(capability(name)?);
        }
        set
    };
    if !privileged {
        if is_all(drop) {
            set.clear();
            for name in add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
                set.insert(capability(name)?);
            }
        } else {
            for name in drop {
                set.remove(&capability(name)?);
            }
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    Ok(caps)
}

/// The container's capabilities as its security context asks.
pub fn container_capabilities(
    security: &LinuxContainerSecurityContext,
) -> Result<LinuxCapabilities> {
    let caps = security.capabilities.clone().unwrap_or_default();
    capabilities(
        &caps.add_capabilities,
        &caps.drop_capabilities,
        security.privileged,
    )
}

/// A privileged container needs a privileged pod.
pub fn check_privilege(
    security: &LinuxContainerSecurityContext,
    pod: &PodSandboxConfig,
) -> Result<()> {
    let pod_privileged = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if security.privileged && !pod_privileged {
        return Err(ManagerError::InvalidArgument(
            "a privileged container needs a privileged pod".into(),
        ));
    }
    Ok(())
}

/// Masked and read-only paths: none for a privileged container, else the ones asked for, else
/// runc's defaults.
pub fn hidden_paths(security: &LinuxContainerSecurityContext) -> (Vec<String>, Vec<String>) {
    if security.privileged {
        return (Vec::new(), Vec::new());
    }
    let masked = if security.masked_paths.is_empty() {
        oci_spec::runtime::get_default_maskedpaths()
    } else {
        security.masked_paths.clone()
    };
    let readonly = if security.readonly_paths.is_empty() {
        oci_spec::runtime::get_default_readonly_paths()
    } else {
        security.readonly_paths.clone()
    };
    (masked, readonly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_add_drop_and_all() {
        let caps = capabilities(&["NET_ADMIN".into()], &["CAP_KILL".into()], false).unwrap();
        let set = caps.bounding().clone().unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(!set.contains(&Capability::Kill));
        assert!(set.contains(&Capability::Chown));
        assert_eq!(
            set.len(),
            DEFAULT_CAPABILITIES.len(),
            "one added, one dropped"
        );
        let only = capabilities(&["CHOWN".into()], &["ALL".into()], false).unwrap();
        assert_eq!(
            only.bounding().clone().unwrap(),
            [Capability::Chown].into_iter().collect()
        );
        assert!(matches!(
            capabilities(&["NOT_A_CAP".into()], &[], false),
            Err(ManagerError::InvalidArgument(_))
        ));
        let all = capabilities(&["ALL".into()], &[], false).unwrap();
        assert_eq!(
            all.bounding().clone().unwrap().len(),
            ALL_CAPABILITIES.len()
        );
    }

    #[test]
    fn a_containers_capabilities_come_from_its_security_context() {
        let security = LinuxContainerSecurityContext {
            capabilities: Some(crust_proto::cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = container_capabilities(&security).unwrap();
        let only: Capabilities = [Capability::NetAdmin].into_iter().collect();
        assert_eq!(
            (caps.bounding(), caps.effective(), caps.permitted()),
            (&Some(only.clone()), &Some(only.clone()), &Some(only))
        );
        let defaults = container_capabilities(&LinuxContainerSecurityContext::default()).unwrap();
        assert_eq!(
            defaults.bounding().as_ref().map(|set| set.len()),
            Some(DEFAULT_CAPABILITIES.len())
        );
    }

    #[test]
    fn privileged_containers_need_a_privileged_pod_and_hide_nothing() {
        let privileged = LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert!(matches!(
            check_privilege(&privileged, &PodSandboxConfig::default()),
            Err(ManagerError::InvalidArgument(why)) if why.contains("privileged pod")
        ));
        assert_eq!(hidden_paths(&privileged), (Vec::new(), Vec::new()));
        let plain = LinuxContainerSecurityContext::default();
        check_privilege(&plain, &PodSandboxConfig::default()).unwrap();
        let (masked, readonly) = hidden_paths(&plain);
        assert!(masked.contains(&"/proc/kcore".to_string()), "{masked:?}");
        assert!(readonly.contains(&"/proc/sys".to_string()), "{readonly:?}");
    }
}
