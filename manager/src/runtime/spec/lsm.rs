//! The Linux security module labels of a container's process: its AppArmor profile and its
//! SELinux label, decided from the request and from what the host has enabled.

use crust_proto::cri::security_profile::ProfileType;
use crust_proto::cri::{LinuxContainerSecurityContext, SecurityProfile};

use crate::error::{ManagerError, Result};

/// The AppArmor profile crustd loads and applies for `runtime/default`.
pub const DEFAULT_APPARMOR_PROFILE: &str = "crust-default";

/// What the container asks of AppArmor, from the field or the deprecated string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppArmorRequest {
    /// Nothing said.
    Unset,
    RuntimeDefault,
    Unconfined,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

// The deprecated string field is still what older kubelets send.
#[allow(deprecated)]
fn apparmor_request(security: &LinuxContainerSecurityContext) -> Result<AppArmorRequest> {
    if let Some(SecurityProfile {
        profile_type,
        localhost_ref,
    }) = &security.apparmor
    {
        return match ProfileType::try_from(*profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(AppArmorRequest::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(AppArmorRequest::Unconfined),
            Ok(ProfileType::Localhost) if !localhost_ref.trim().is_empty() => {
                Ok(AppArmorRequest::Localhost(localhost_ref.trim().to_string()))
            }
            Ok(ProfileType::Localhost) => Err(ManagerError::InvalidArgument(
                "apparmor: a Localhost profile needs localhost_ref, the profile's name".into(),
            )),
            Err(_) => Err(ManagerError::InvalidArgument(format!(
                "apparmor: unknown profile type {profile_type}"
            ))),
        };
    }
    match security.apparmor_profile.as_str() {
        "" => Ok(AppArmorRequest::Unset),
        "runtime/default" => Ok(AppArmorRequest::RuntimeDefault),
        "unconfined" => Ok(AppArmorRequest::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => Ok(AppArmorRequest::Localhost(name.to_string())),
            _ => Err(ManagerError::InvalidArgument(format!(
                "apparmor_profile {other:?} is none of runtime/default, unconfined, localhost/<name>"
            ))),
        },
    }
}

/// The AppArmor profile the container's process runs under, None for none. On a host
/// without AppArmor, only a request that cannot be met without it (a named profile) is
/// refused: the runtime default there is no profile, as containerd has it.
pub fn apparmor_profile(
    security: &LinuxContainerSecurityContext,
    host_apparmor: bool,
) -> Result<Option<String>> {
    let request = apparmor_request(security)?;
    if !host_apparmor {
        return match request {
            AppArmorRequest::Localhost(name) => Err(ManagerError::FailedPrecondition(format!(
                "apparmor profile {name:?} is required, but AppArmor is not enabled on this host"
            ))),
            _ => Ok(None),
        };
    }
    Ok(match request {
        AppArmorRequest::Unconfined => None,
        // Privileged containers run unconfined unless a named profile is asked for: the
        // runtime default's denials (mount) would break what they are privileged for.
        AppArmorRequest::Unset | AppArmorRequest::RuntimeDefault if security.privileged => None,
        AppArmorRequest::Unset | AppArmorRequest::RuntimeDefault => {
            Some(DEFAULT_APPARMOR_PROFILE.to_string())
        }
        AppArmorRequest::Localhost(name) => Some(name),
    })
}

/// The SELinux label of the process, on a host with SELinux: the parts kubelet gives over
/// the container defaults. A host without SELinux takes no label (runc would fail on one).
pub fn selinux_label(
    security: &LinuxContainerSecurityContext,
    host_selinux: bool,
) -> Option<String> {
    let options = security.selinux_options.as_ref()?;
    if !host_selinux {
        return None;
    }
    let part = |given: &str, default: &'static str| {
        if given.is_empty() {
            default.to_string()
        } else {
            given.to_string()
        }
    };
    Some(format!(
        "{}:{}:{}:{}",
        part(&options.user, "system_u"),
        part(&options.role, "system_r"),
        part(&options.r#type, "container_t"),
        part(&options.level, "s0"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::SeLinuxOption;

    fn with_profile(profile_type: ProfileType, name: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: name.into(),
            }),
            ..Default::default()
        }
    }

    #[allow(deprecated)]
    fn with_string(profile: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            apparmor_profile: profile.into(),
            ..Default::default()
        }
    }

    #[test]
    fn without_apparmor_on_the_host_only_a_named_profile_is_refused() {
        for security in [
            LinuxContainerSecurityContext::default(),
            with_profile(ProfileType::RuntimeDefault, ""),
            with_profile(ProfileType::Unconfined, ""),
            with_string("runtime/default"),
            with_string("unconfined"),
        ] {
            assert_eq!(
                apparmor_profile(&security, false).unwrap(),
                None,
                "{security:?}"
            );
        }
        for security in [
            with_profile(ProfileType::Localhost, "k8s-deny-write"),
            with_string("localhost/k8s-deny-write"),
        ] {
            match apparmor_profile(&security, false) {
                Err(ManagerError::FailedPrecondition(why)) => {
                    assert!(
                        why.contains("k8s-deny-write") && why.contains("not enabled"),
                        "{why}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn with_apparmor_the_default_applies_unless_privileged_or_unconfined() {
        let default = Some(DEFAULT_APPARMOR_PROFILE.to_string());
        assert_eq!(
            apparmor_profile(&LinuxContainerSecurityContext::default(), true).unwrap(),
            default
        );
        assert_eq!(
            apparmor_profile(&with_profile(ProfileType::RuntimeDefault, ""), true).unwrap(),
            default
        );
        let privileged = LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(apparmor_profile(&privileged, true).unwrap(), None);
        let privileged_default = LinuxContainerSecurityContext {
            privileged: true,
            ..with_profile(ProfileType::RuntimeDefault, "")
        };
        assert_eq!(apparmor_profile(&privileged_default, true).unwrap(), None);
        let privileged_named = LinuxContainerSecurityContext {
            privileged: true,
            ..with_profile(ProfileType::Localhost, "mine")
        };
        assert_eq!(
            apparmor_profile(&privileged_named, true).unwrap(),
            Some("mine".into())
        );
        assert_eq!(
            apparmor_profile(&with_string("unconfined"), true).unwrap(),
            None
        );
        assert_eq!(
            apparmor_profile(&with_string("localhost/mine"), true).unwrap(),
            Some("mine".into())
        );
    }

    #[test]
    fn malformed_apparmor_requests_are_refused() {
        for security in [
            with_string("mine"),
            with_string("localhost/"),
            with_profile(ProfileType::Localhost, " "),
            LinuxContainerSecurityContext {
                apparmor: Some(SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            },
        ] {
            for host in [true, false] {
                assert!(
                    matches!(
                        apparmor_profile(&security, host),
                        Err(ManagerError::InvalidArgument(why)) if why.contains("apparmor")
                    ),
                    "{security:?}"
                );
            }
        }
    }

    #[test]
    fn selinux_labels_only_where_the_host_has_selinux() {
        let security = LinuxContainerSecurityContext {
            selinux_options: Some(SeLinuxOption {
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(selinux_label(&security, false), None);
        assert_eq!(
            selinux_label(&security, true).as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert_eq!(
            selinux_label(&LinuxContainerSecurityContext::default(), true),
            None
        );
    }
}
