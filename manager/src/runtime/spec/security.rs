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

/// The capability `name` (with or without `CAP_`), or None for a name this build does not
/// know: kubelet does not check names, and runc skips unknown ones with a warning, so a typo
/// or a capability newer than crustd must not fail the pod.
fn capability(name: &str) -> Option<Capability> {
    let bare = name.trim().to_ascii_uppercase();
    let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
    let known = Capability::from_str(bare).ok();
    if known.is_none() {
        log::warn!("ignoring unknown capability {name:?}");
    }
    known
}

fn is_all(list: &[String]) -> bool {
    list.iter().any(|c| c.trim().eq_ignore_ascii_case("ALL"))
}

/// What a container asks of capabilities.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapabilityRequest<'a> {
    /// Added to the default set (`ALL`: every capability the host has).
    pub add: &'a [String],
    /// Dropped from it (`ALL`: all but the ones added).
    pub drop: &'a [String],
    /// Raised as ambient capabilities, so that a process not run as root holds them too.
    pub ambient: &'a [String],
    /// Every capability the host has, whatever was asked.
    pub privileged: bool,
}

/// The capability sets from containerd's default set, `add` and `drop`, within `host` (the
/// host's bounding set: no process can be given a capability its parent's set lacks, and
/// runc fails the whole container if asked to). The default set and `ALL` quietly shrink
/// to what the host has; a capability asked for by name that the host lacks is refused.
pub fn capabilities(
    request: CapabilityRequest<'_>,
    host: &Capabilities,
) -> Result<LinuxCapabilities> {
    let mut set: Capabilities = if request.privileged || is_all(request.add) {
        host.clone()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|name| capability(name))
            .filter(|cap| host.contains(cap))
            .collect()
    };
    let named_adds = || {
        request
            .add
            .iter()
            .filter(|c| !is_all(std::slice::from_ref(c)))
    };
    // containerd's order: `ALL` dropped empties the set, named adds go in, named drops
    // come out (a capability both added and dropped is dropped).
    if !request.privileged {
        if is_all(request.drop) {
            set.clear();
        }
        for name in named_adds() {
            if let Some(cap) = held_by_host(name, host)? {
                set.insert(cap);
            }
        }
        for name in request
            .drop
            .iter()
            .filter(|c| !is_all(std::slice::from_ref(c)))
        {
            if let Some(cap) = capability(name) {
                set.remove(&cap);
            }
        }
    }
    let mut ambient = Capabilities::new();
    for name in request.ambient {
        let Some(cap) = capability(name) else {
            continue;
        };
        if !set.contains(&cap) {
            return Err(ManagerError::InvalidArgument(format!(
                "ambient capability {name:?} is not among the container's capabilities: add it too"
            )));
        }
        ambient.insert(cap);
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    // An ambient capability must also be inheritable, or the kernel drops it on exec.
    let ambient = (!ambient.is_empty()).then_some(ambient);
    caps.set_inheritable(ambient.clone());
    caps.set_ambient(ambient);
    Ok(caps)
}

fn held_by_host(name: &str, host: &Capabilities) -> Result<Option<Capability>> {
    let Some(cap) = capability(name) else {
        return Ok(None);
    };
    if !host.contains(&cap) {
        return Err(ManagerError::FailedPrecondition(format!(
            "capability {name:?} is not in this host's bounding set, so no container here can hold it"
        )));
    }
    Ok(Some(cap))
}

/// The container's capabilities as its security context asks, within `host`.
pub fn container_capabilities(
    security: &LinuxContainerSecurityContext,
    host: &Capabilities,
) -> Result<LinuxCapabilities> {
    let caps = security.capabilities.clone().unwrap_or_default();
    capabilities(
        CapabilityRequest {
            add: &caps.add_capabilities,
            drop: &caps.drop_capabilities,
            ambient: &caps.add_ambient_capabilities,
            privileged: security.privileged,
        },
        host,
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

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn set(caps: &[Capability]) -> Capabilities {
        caps.iter().copied().collect()
    }

    /// A host like this machine: everything but CAP_SYS_RESOURCE.
    fn reduced_host() -> Capabilities {
        let mut host = crate::runtime::host::test_host().bounding;
        host.remove(&Capability::SysResource);
        host
    }

    fn ask(
        add: &[&str],
        drop: &[&str],
        ambient: &[&str],
        privileged: bool,
    ) -> Result<LinuxCapabilities> {
        let (add, drop, ambient) = (names(add), names(drop), names(ambient));
        capabilities(
            CapabilityRequest {
                add: &add,
                drop: &drop,
                ambient: &ambient,
                privileged,
            },
            &reduced_host(),
        )
    }

    #[test]
    fn capabilities_add_drop_and_all() {
        let caps = ask(&["NET_ADMIN"], &["CAP_KILL"], &[], false).unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert!(bounding.contains(&Capability::NetAdmin));
        assert!(!bounding.contains(&Capability::Kill));
        assert!(bounding.contains(&Capability::Chown));
        assert_eq!(
            bounding.len(),
            DEFAULT_CAPABILITIES.len(),
            "one added, one dropped"
        );
        assert_eq!(caps.ambient(), &None);
        assert_eq!(caps.inheritable(), &None);

        let only = ask(&["CHOWN"], &["ALL"], &[], false).unwrap();
        assert_eq!(only.bounding().clone().unwrap(), set(&[Capability::Chown]));
        let dropped_wins = ask(&["NET_ADMIN"], &["NET_ADMIN"], &[], false).unwrap();
        assert!(
            !dropped_wins
                .bounding()
                .clone()
                .unwrap()
                .contains(&Capability::NetAdmin)
        );
        // Unknown names are skipped, as runc skips them: the rest still applies.
        let unknown = ask(
            &["NOT_A_CAP", "NET_ADMIN"],
            &["CAP_NEWER_THAN_US", "KILL"],
            &[],
            false,
        )
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
        assert!(unknown.contains(&Capability::NetAdmin) && !unknown.contains(&Capability::Kill));
    }

    #[test]
    fn all_and_privileged_mean_every_capability_the_host_has_and_no_more() {
        for caps in [
            ask(&["ALL"], &[], &[], false).unwrap(),
            ask(&[], &[], &[], true).unwrap(),
            ask(&["SYS_RESOURCE"], &["CHOWN"], &[], true).unwrap(),
        ] {
            assert_eq!(caps.bounding().clone().unwrap(), reduced_host());
            assert_eq!(caps.permitted().clone().unwrap(), reduced_host());
        }
        match ask(&["SYS_RESOURCE"], &[], &[], false) {
            Err(ManagerError::FailedPrecondition(why)) => {
                assert!(
                    why.contains("SYS_RESOURCE") && why.contains("bounding set"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // The default set shrinks quietly on a host without one of its capabilities.
        let mut no_raw = reduced_host();
        no_raw.remove(&Capability::NetRaw);
        let defaults = capabilities(CapabilityRequest::default(), &no_raw).unwrap();
        assert_eq!(
            defaults.bounding().as_ref().map(|s| s.len()),
            Some(DEFAULT_CAPABILITIES.len() - 1)
        );
    }

    #[test]
    fn ambient_capabilities_are_inheritable_and_must_be_held() {
        let caps = ask(
            &["NET_ADMIN"],
            &[],
            &["NET_ADMIN", "CAP_NET_BIND_SERVICE"],
            false,
        )
        .unwrap();
        let ambient = set(&[Capability::NetAdmin, Capability::NetBindService]);
        assert_eq!(caps.ambient(), &Some(ambient.clone()));
        assert_eq!(caps.inheritable(), &Some(ambient));
        match ask(&[], &[], &["SYS_ADMIN"], false) {
            Err(ManagerError::InvalidArgument(why)) => assert!(why.contains("SYS_ADMIN"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_containers_capabilities_come_from_its_security_context() {
        let security = LinuxContainerSecurityContext {
            capabilities: Some(crust_proto::cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                add_ambient_capabilities: vec!["NET_ADMIN".into()],
            }),
            ..Default::default()
        };
        let caps = container_capabilities(&security, &reduced_host()).unwrap();
        let only = set(&[Capability::NetAdmin]);
        assert_eq!(
            (
                caps.bounding(),
                caps.effective(),
                caps.permitted(),
                caps.ambient()
            ),
            (
                &Some(only.clone()),
                &Some(only.clone()),
                &Some(only.clone()),
                &Some(only)
            )
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
