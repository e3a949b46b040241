//! The seccomp filter of a container, chosen as containerd's CRI plugin chooses it: from the
//! container's `seccomp` security profile, else from the deprecated `seccomp_profile_path`.
//!
//! Both crust's default profile ([`default_profile`]) and a node's localhost profiles
//! ([`localhost`]) are read into one rule model ([`rules`]), which is fitted to the host's
//! architecture and kernel and to the container's capabilities by one conversion.

mod default_profile;
mod localhost;
mod rules;

use crust_proto::cri::LinuxContainerSecurityContext;
use crust_proto::cri::security_profile::ProfileType;
use oci_spec::runtime::{Capabilities, LinuxSeccomp};

use self::rules::{KernelVersion, Profile, Target};
use super::check_path;
use crate::error::{ManagerError, Result};

/// The file of the running kernel's release (`uname -r`).
const OS_RELEASE: &str = "/proc/sys/kernel/osrelease";

/// The seccomp filter of a container, or None for none.
///
/// `capabilities` is the container's final bounding set: rules of the profile that depend on
/// capabilities are kept or dropped by it.
pub fn container_seccomp(
    security: &LinuxContainerSecurityContext,
    capabilities: &Capabilities,
) -> Result<Option<LinuxSeccomp>> {
    let Some(profile) = chosen_profile(security)? else {
        return Ok(None);
    };
    let target = Target {
        arch: rules::native_arch(),
        kernel: running_kernel()?,
        capabilities,
    };
    Ok(Some(rules::to_oci(&profile, &target)))
}

/// Which profile the container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    Unconfined,
    RuntimeDefault,
    /// A profile file on the node.
    Localhost(String),
}

/// The profile of the container, None for no filter.
fn chosen_profile(security: &LinuxContainerSecurityContext) -> Result<Option<Profile>> {
    // A privileged container may do anything, so it gets no filter whatever it asked for.
    if security.privileged {
        return Ok(None);
    }
    match choice(security)? {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => default_profile::default_profile().map(|p| Some(p.clone())),
        Choice::Localhost(path) => localhost::load(&path),
    }
}

fn choice(security: &LinuxContainerSecurityContext) -> Result<Choice> {
    if let Some(profile) = &security.seccomp {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(ProfileType::Localhost) => {
                check_path("seccomp localhost_ref", &profile.localhost_ref)?;
                Ok(Choice::Localhost(profile.localhost_ref.clone()))
            }
            Err(_) => Err(ManagerError::InvalidArgument(format!(
                "seccomp profile_type {} is unknown (RuntimeDefault, Unconfined or Localhost)",
                profile.profile_type
            ))),
        };
    }
    // The field before `seccomp`, which kubelet no longer sets but other clients may.
    #[allow(deprecated)]
    let legacy = security.seccomp_profile_path.as_str();
    match legacy {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        _ => match legacy.strip_prefix("localhost/") {
            Some(path) => {
                check_path("seccomp_profile_path's localhost profile", path)?;
                Ok(Choice::Localhost(path.to_string()))
            }
            None => Err(ManagerError::InvalidArgument(format!(
                "unknown seccomp profile {legacy:?} in seccomp_profile_path (\"\", \
                 \"unconfined\", \"runtime/default\", \"docker/default\" or \
                 \"localhost/<absolute path>\")"
            ))),
        },
    }
}

/// The running kernel's version, which rules with a minimal kernel are compared with.
fn running_kernel() -> Result<KernelVersion> {
    let release =
        std::fs::read_to_string(OS_RELEASE).map_err(|e| ManagerError::io(OS_RELEASE, e))?;
    KernelVersion::of_release(&release).ok_or_else(|| {
        ManagerError::io(
            OS_RELEASE,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("kernel release {release:?} is not <version>.<major>..."),
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)] // seccomp_profile_path is resolved as containerd still does.

    use std::str::FromStr;

    use crust_proto::cri::SecurityProfile;
    use oci_spec::runtime::{Arch, Capability, LinuxSeccompAction, LinuxSeccompOperator};

    use super::*;

    fn with_profile(
        profile_type: ProfileType,
        localhost_ref: &str,
    ) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: profile_type as i32,
                localhost_ref: localhost_ref.to_string(),
            }),
            ..Default::default()
        }
    }

    fn with_path(path: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp_profile_path: path.to_string(),
            ..Default::default()
        }
    }

    fn capabilities(names: &[&str]) -> Capabilities {
        names
            .iter()
            .map(|name| Capability::from_str(name).unwrap())
            .collect()
    }

    /// The filter on an x86_64 host running kernel 6.1, whatever this host is.
    fn filter(
        security: &LinuxContainerSecurityContext,
        caps: &Capabilities,
    ) -> Option<LinuxSeccomp> {
        let profile = chosen_profile(security).unwrap()?;
        let target = Target {
            arch: Some(Arch::ScmpArchX86_64),
            kernel: KernelVersion::parse("6.1").unwrap(),
            capabilities: caps,
        };
        Some(rules::to_oci(&profile, &target))
    }

    fn refusal(security: &LinuxContainerSecurityContext) -> String {
        match chosen_profile(security) {
            Err(ManagerError::InvalidArgument(e)) => e,
            other => panic!("{security:?}: {other:?}"),
        }
    }

    /// The rules of `filter` that name `syscall`.
    fn rules_for<'a>(
        filter: &'a LinuxSeccomp,
        syscall: &str,
    ) -> Vec<&'a oci_spec::runtime::LinuxSyscall> {
        filter
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.names().iter().any(|name| name == syscall))
            .collect()
    }

    fn is_default(filter: Option<LinuxSeccomp>) -> bool {
        filter.is_some_and(|f| {
            f.default_action() == LinuxSeccompAction::ScmpActErrno
                && f.default_errno_ret() == Some(1)
                && !rules_for(&f, "read").is_empty()
        })
    }

    fn write_profile(dir: &tempfile::TempDir) -> String {
        let path = dir.path().join("profile.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_LOG",
                "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                             "subArchitectures": ["SCMP_ARCH_X86"]},
                            {"architecture": "SCMP_ARCH_AARCH64",
                             "subArchitectures": ["SCMP_ARCH_ARM"]}],
                "syscalls": [
                  {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                  {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                   "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                  {"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
                   "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                  {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                   "includes": {"arches": ["amd64"]}},
                  {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW",
                   "includes": {"arches": ["arm64"]}},
                  {"names": ["io_uring_setup"], "action": "SCMP_ACT_ALLOW",
                   "includes": {"minKernel": "9.0"}}
                ]}"#,
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn the_seccomp_field_chooses_the_profile() {
        let none = Capabilities::new();
        assert!(is_default(filter(
            &with_profile(ProfileType::RuntimeDefault, ""),
            &none
        )));
        assert!(filter(&with_profile(ProfileType::Unconfined, ""), &none).is_none());

        let dir = tempfile::tempdir().unwrap();
        let path = write_profile(&dir);
        let loaded = filter(&with_profile(ProfileType::Localhost, &path), &none).unwrap();
        assert_eq!(loaded.default_action(), LinuxSeccompAction::ScmpActLog);

        // It wins over the deprecated field.
        let mut both = with_profile(ProfileType::Unconfined, "");
        both.seccomp_profile_path = "runtime/default".to_string();
        assert!(filter(&both, &none).is_none());
    }

    #[test]
    fn a_localhost_ref_must_be_an_absolute_path_without_dot_dot() {
        for (reference, message) in [
            ("", "seccomp localhost_ref \"\" must be an absolute path"),
            (
                "profiles/a.json",
                "seccomp localhost_ref \"profiles/a.json\" must be an absolute path",
            ),
            (
                "/var/lib/../a.json",
                "seccomp localhost_ref \"/var/lib/../a.json\" must not contain \"..\"",
            ),
        ] {
            assert_eq!(
                refusal(&with_profile(ProfileType::Localhost, reference)),
                message
            );
        }
    }

    #[test]
    fn an_unknown_profile_type_is_refused() {
        let mut security = with_profile(ProfileType::RuntimeDefault, "");
        if let Some(profile) = security.seccomp.as_mut() {
            profile.profile_type = 7;
        }
        assert_eq!(
            refusal(&security),
            "seccomp profile_type 7 is unknown (RuntimeDefault, Unconfined or Localhost)"
        );
    }

    #[test]
    fn the_deprecated_path_chooses_the_profile_without_the_seccomp_field() {
        let none = Capabilities::new();
        assert!(filter(&with_path(""), &none).is_none());
        assert!(filter(&with_path("unconfined"), &none).is_none());
        assert!(is_default(filter(&with_path("runtime/default"), &none)));
        assert!(is_default(filter(&with_path("docker/default"), &none)));

        let dir = tempfile::tempdir().unwrap();
        let path = write_profile(&dir);
        let loaded = filter(&with_path(&format!("localhost/{path}")), &none).unwrap();
        assert_eq!(loaded.default_action(), LinuxSeccompAction::ScmpActLog);

        assert_eq!(
            refusal(&with_path("localhost/profiles/a.json")),
            "seccomp_profile_path's localhost profile \"profiles/a.json\" must be an absolute path"
        );
        assert_eq!(
            refusal(&with_path("localhost//a/../b.json")),
            "seccomp_profile_path's localhost profile \"/a/../b.json\" must not contain \"..\""
        );
        assert!(
            refusal(&with_path("docker/strict"))
                .starts_with("unknown seccomp profile \"docker/strict\" in seccomp_profile_path")
        );
    }

    #[test]
    fn a_privileged_container_gets_no_filter() {
        let mut security = with_profile(ProfileType::RuntimeDefault, "");
        security.privileged = true;
        assert!(
            container_seccomp(&security, &Capabilities::new())
                .unwrap()
                .is_none()
        );
        // Not even the refusal of a profile it may not have.
        let mut security = with_path("localhost/relative");
        security.privileged = true;
        assert!(
            container_seccomp(&security, &Capabilities::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_localhost_profile_is_fitted_to_the_host_and_the_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let security = with_profile(ProfileType::Localhost, &write_profile(&dir));

        let plain = filter(&security, &capabilities(&["CHOWN"])).unwrap();
        assert_eq!(
            plain.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let names = |f: &LinuxSeccomp| -> Vec<String> {
            f.syscalls()
                .iter()
                .flatten()
                .flat_map(|r| r.names().clone())
                .collect()
        };
        // mount needs SYS_ADMIN, set_tls is arm64's, io_uring_setup needs a kernel to come.
        assert_eq!(names(&plain), ["mkdir", "unshare", "arch_prctl"]);
        assert_eq!(rules_for(&plain, "mkdir")[0].errno_ret(), Some(13));

        let admin = filter(&security, &capabilities(&["CHOWN", "SYS_ADMIN"])).unwrap();
        assert_eq!(names(&admin), ["mkdir", "mount", "arch_prctl"]);
    }

    #[test]
    fn the_default_profile_grants_sys_admin_calls_only_with_sys_admin() {
        let default = with_profile(ProfileType::RuntimeDefault, "");
        let plain = filter(&default, &capabilities(&["CHOWN", "NET_RAW"])).unwrap();
        let admin = filter(&default, &capabilities(&["CHOWN", "SYS_ADMIN"])).unwrap();

        for call in ["mount", "umount2", "unshare", "setns", "bpf"] {
            assert!(
                rules_for(&plain, call).is_empty(),
                "{call} without SYS_ADMIN"
            );
            assert!(!rules_for(&admin, call).is_empty(), "{call} with SYS_ADMIN");
        }
        // Without it clone may not make namespaces, and clone3 says it does not exist.
        let clone = rules_for(&plain, "clone");
        assert_eq!(clone.len(), 1);
        let flags = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (flags.index(), flags.op(), flags.value(), flags.value_two()),
            (0, LinuxSeccompOperator::ScmpCmpMaskedEq, 0x7e02_0000, None)
        );
        let clone3 = rules_for(&plain, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));
        // With it both are allowed outright.
        for call in ["clone", "clone3"] {
            let rules = rules_for(&admin, call);
            assert_eq!(rules.len(), 1, "{call}");
            assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
            assert!(rules[0].args().is_none(), "{call}");
        }
        // Other capabilities' calls follow their capability; x86_64's own calls are there,
        // other architectures' are not; ptrace needs kernel 4.8, which 6.1 is.
        assert!(rules_for(&plain, "reboot").is_empty());
        assert!(
            !rules_for(
                &filter(&default, &capabilities(&["SYS_BOOT"])).unwrap(),
                "reboot"
            )
            .is_empty()
        );
        assert!(!rules_for(&plain, "arch_prctl").is_empty());
        assert!(rules_for(&plain, "s390_runtime_instr").is_empty());
        assert!(!rules_for(&plain, "ptrace").is_empty());
    }

    #[test]
    fn the_filter_serializes_as_runc_reads_it() {
        let default = with_profile(ProfileType::RuntimeDefault, "");
        let plain = filter(&default, &capabilities(&["CHOWN"])).unwrap();
        let json = serde_json::to_value(&plain).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let syscalls = json["syscalls"].as_array().unwrap();
        assert_eq!(syscalls[0]["action"], "SCMP_ACT_ALLOW");
        assert!(
            syscalls[0]["names"]
                .as_array()
                .unwrap()
                .contains(&"read".into())
        );
        let clone = syscalls
            .iter()
            .find(|rule| rule["names"] == serde_json::json!(["clone"]))
            .unwrap();
        assert_eq!(
            clone["args"],
            serde_json::json!([{"index": 0, "value": 0x7e02_0000_u64, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = syscalls
            .iter()
            .find(|rule| rule["names"] == serde_json::json!(["clone3"]))
            .unwrap();
        assert_eq!(
            clone3,
            &serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );

        // And every architecture's name is the one runc knows.
        for (native, compat) in rules::ARCH_FAMILIES {
            for arch in std::iter::once(native).chain(compat.iter()) {
                let name = serde_json::to_value(arch).unwrap();
                let name = name.as_str().unwrap();
                assert!(name.starts_with("SCMP_ARCH_"), "{name}");
                assert_eq!(Arch::from_str(name).ok(), Some(*arch));
            }
        }
        assert_eq!(
            serde_json::to_value(Arch::ScmpArchMipsel64n32).unwrap(),
            "SCMP_ARCH_MIPSEL64N32"
        );
    }

    #[test]
    fn the_filter_on_this_host_covers_its_architecture() {
        let security = with_profile(ProfileType::RuntimeDefault, "");
        let filter = container_seccomp(&security, &capabilities(&["CHOWN"]))
            .unwrap()
            .unwrap();
        let native = rules::native_arch().unwrap();
        assert_eq!(filter.architectures().as_ref().unwrap()[0], native);
    }
}
