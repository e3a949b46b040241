//! A node's own seccomp profile (Localhost), in the JSON format of moby and containerd that
//! Kubernetes users write, loaded into the rule model.

use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use serde::Deserialize;

use super::rules::{ArchSelection, Condition, KernelVersion, Profile, Rule, argument_condition};
use crate::error::{ManagerError, Result};

/// The profile in the file at `path`, None when it names neither a default action nor rules
/// (moby's way of writing "unconfined").
pub fn load(path: &str) -> Result<Option<Profile>> {
    let invalid = |what: String| {
        ManagerError::InvalidArgument(format!("seccomp localhost profile {path:?}: {what}"))
    };
    let text = std::fs::read_to_string(Path::new(path)).map_err(|e| invalid(e.to_string()))?;
    parse(&text).map_err(invalid)
}

/// Parses a profile in moby's JSON format; an error says what is wrong and where.
pub fn parse(text: &str) -> std::result::Result<Option<Profile>, String> {
    let json: MobyProfile =
        serde_json::from_str(text).map_err(|e| format!("not a seccomp profile: {e}"))?;
    let syscalls = json.syscalls.unwrap_or_default();
    if json.default_action.is_empty() && syscalls.is_empty() {
        return Ok(None);
    }
    if json.default_action.is_empty() {
        return Err("defaultAction is missing".to_string());
    }
    let default_action = action(&json.default_action).map_err(|e| format!("defaultAction: {e}"))?;

    let listed = json.architectures.unwrap_or_default();
    let map = json.arch_map.unwrap_or_default();
    let architectures = match (listed.is_empty(), map.is_empty()) {
        (false, false) => {
            return Err("both architectures and archMap are given; use one".to_string());
        }
        (false, true) => ArchSelection::Listed(
            listed
                .iter()
                .map(|name| scmp_arch(name).map_err(|e| format!("architectures: {e}")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        (true, false) => ArchSelection::Map(
            map.iter()
                .enumerate()
                .map(|(i, entry)| {
                    let at = |e| format!("archMap[{i}]: {e}");
                    let subs = entry.sub_architectures.as_deref().unwrap_or_default();
                    Ok((
                        scmp_arch(&entry.architecture).map_err(at)?,
                        subs.iter()
                            .map(|name| scmp_arch(name).map_err(at))
                            .collect::<std::result::Result<_, _>>()?,
                    ))
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
        (true, true) => ArchSelection::Unnamed,
    };

    let flags = json
        .flags
        .unwrap_or_default()
        .iter()
        .map(|flag| {
            LinuxSeccompFilterFlag::from_str(flag).map_err(|_| format!("unknown flag {flag:?}"))
        })
        .collect::<std::result::Result<_, _>>()?;

    let rules = syscalls
        .into_iter()
        .enumerate()
        .map(|(i, syscall)| rule(syscall).map_err(|e| format!("syscalls[{i}]: {e}")))
        .collect::<std::result::Result<_, _>>()?;

    Ok(Some(Profile {
        default_action,
        default_errno: json.default_errno_ret,
        architectures,
        flags,
        rules,
    }))
}

fn rule(syscall: MobySyscall) -> std::result::Result<Rule, String> {
    let mut names = syscall.names.unwrap_or_default();
    if !syscall.name.is_empty() {
        if !names.is_empty() {
            return Err("both name and names are given; use names".to_string());
        }
        names.push(syscall.name);
    }
    let args = syscall
        .args
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, arg)| argument(arg).map_err(|e| format!("args[{i}]: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    Ok(Rule {
        names,
        action: action(&syscall.action)?,
        errno: syscall.errno_ret,
        args,
        only_if: condition(syscall.includes).map_err(|e| format!("includes: {e}"))?,
        unless: condition(syscall.excludes).map_err(|e| format!("excludes: {e}"))?,
    })
}

fn argument(arg: &MobyArg) -> std::result::Result<LinuxSeccompArg, String> {
    let op =
        LinuxSeccompOperator::from_str(&arg.op).map_err(|_| format!("unknown op {:?}", arg.op))?;
    argument_condition(arg.index, op, arg.value, arg.value_two.unwrap_or(0))
}

fn condition(filter: Option<MobyFilter>) -> std::result::Result<Condition, String> {
    let Some(filter) = filter else {
        return Ok(Condition::default());
    };
    let caps = filter
        .caps
        .unwrap_or_default()
        .iter()
        .map(|name| {
            let bare = name.strip_prefix("CAP_").unwrap_or(name);
            Capability::from_str(bare).map_err(|_| format!("unknown capability {name:?}"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let arches = filter
        .arches
        .unwrap_or_default()
        .iter()
        .map(|name| go_arch(name).ok_or_else(|| format!("unknown architecture {name:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let min_kernel = match filter.min_kernel.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            KernelVersion::parse(text)
                .ok_or_else(|| format!("minKernel {text:?} is not <kernel>.<major>"))?,
        ),
    };
    Ok(Condition {
        caps,
        arches,
        min_kernel,
    })
}

fn action(name: &str) -> std::result::Result<LinuxSeccompAction, String> {
    LinuxSeccompAction::from_str(name).map_err(|_| format!("unknown action {name:?}"))
}

/// `SCMP_ARCH_X86_64` and the like.
fn scmp_arch(name: &str) -> std::result::Result<Arch, String> {
    Arch::from_str(name)
        .ok()
        .filter(|arch| *arch != Arch::ScmpArchNative)
        .ok_or_else(|| format!("unknown architecture {name:?}"))
}

/// The architecture names of moby's `includes.arches` and `excludes.arches`: libseccomp's names
/// as Go spells them (`amd64`, `arm64`, ...), including the misspelling moby's own table has.
fn go_arch(name: &str) -> Option<Arch> {
    Some(match name {
        "x86" => Arch::ScmpArchX86,
        "amd64" => Arch::ScmpArchX86_64,
        "x32" => Arch::ScmpArchX32,
        "arm" => Arch::ScmpArchArm,
        "arm64" => Arch::ScmpArchAarch64,
        "loong64" | "loongarch64" => Arch::ScmpArchLoongarch64,
        "mips" => Arch::ScmpArchMips,
        "mipsle" | "mipsel" => Arch::ScmpArchMipsel,
        "mips64" => Arch::ScmpArchMips64,
        "mips64n32" => Arch::ScmpArchMips64n32,
        "mipsel64" => Arch::ScmpArchMipsel64,
        "mips3l64n32" | "mipsel64n32" => Arch::ScmpArchMipsel64n32,
        "ppc" => Arch::ScmpArchPpc,
        "ppc64" => Arch::ScmpArchPpc64,
        "ppc64le" => Arch::ScmpArchPpc64le,
        "riscv64" => Arch::ScmpArchRiscv64,
        "s390" => Arch::ScmpArchS390,
        "s390x" => Arch::ScmpArchS390x,
        _ => return None,
    })
}

/// moby's profile JSON. Lists are optional because Go writes an empty one as `null`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobyProfile {
    #[serde(default)]
    default_action: String,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<String>>,
    arch_map: Option<Vec<MobyArchitecture>>,
    flags: Option<Vec<String>>,
    syscalls: Option<Vec<MobySyscall>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobyArchitecture {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobySyscall {
    names: Option<Vec<String>>,
    /// The single name of older profiles.
    #[serde(default)]
    name: String,
    action: String,
    errno_ret: Option<u32>,
    args: Option<Vec<MobyArg>>,
    includes: Option<MobyFilter>,
    excludes: Option<MobyFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobyArg {
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobyFilter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(text: &str) -> Profile {
        match parse(text) {
            Ok(Some(profile)) => profile,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn refusal(text: &str) -> String {
        match parse(text) {
            Err(e) => e,
            Ok(p) => panic!("{text} accepted: {p:?}"),
        }
    }

    #[test]
    fn a_moby_profile_loads_with_its_arch_map_and_conditions() {
        let loaded = profile(
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO",
              "defaultErrnoRet": 1,
              "archMap": [
                {"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
              ],
              "flags": ["SECCOMP_FILTER_FLAG_LOG"],
              "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                {"name": "personality", "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["amd64", "arm64"],
                              "minKernel": "4.8"}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]},
                 "includes": {}}
              ]
            }"#,
        );
        assert_eq!(loaded.default_action, LinuxSeccompAction::ScmpActErrno);
        assert_eq!(loaded.default_errno, Some(1));
        assert_eq!(
            loaded.architectures,
            ArchSelection::Map(vec![
                (
                    Arch::ScmpArchX86_64,
                    vec![Arch::ScmpArchX86, Arch::ScmpArchX32]
                ),
                (Arch::ScmpArchRiscv64, vec![]),
            ])
        );
        assert_eq!(loaded.flags, [LinuxSeccompFilterFlag::SeccompFilterFlagLog]);
        assert_eq!(loaded.rules.len(), 4);
        assert_eq!(loaded.rules[0].names, ["read", "write"]);
        assert_eq!(loaded.rules[1].names, ["personality"]);
        assert_eq!(loaded.rules[1].args[0].value(), 8);
        let mount = &loaded.rules[2];
        assert_eq!(mount.only_if.caps, [Capability::SysAdmin]);
        assert_eq!(
            mount.only_if.arches,
            [Arch::ScmpArchX86_64, Arch::ScmpArchAarch64]
        );
        assert_eq!(mount.only_if.min_kernel, KernelVersion::parse("4.8"));
        let clone3 = &loaded.rules[3];
        assert_eq!(clone3.errno, Some(38));
        assert_eq!(clone3.unless.caps, [Capability::SysAdmin]);
        assert_eq!(clone3.unless.arches, [Arch::ScmpArchS390x]);
        assert_eq!(clone3.only_if, Condition::default());
    }

    #[test]
    fn a_flat_architecture_list_is_kept_as_listed() {
        let loaded = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"]}"#,
        );
        assert_eq!(
            loaded.architectures,
            ArchSelection::Listed(vec![Arch::ScmpArchX86_64, Arch::ScmpArchAarch64])
        );
        assert!(loaded.rules.is_empty());
    }

    #[test]
    fn a_profile_without_default_action_or_rules_is_unconfined() {
        assert!(matches!(parse("{}"), Ok(None)));
        assert!(matches!(parse(r#"{"syscalls": null}"#), Ok(None)));
    }

    #[test]
    fn mistakes_are_refused_with_what_and_where() {
        for (text, message) in [
            ("{", "not a seccomp profile: EOF"),
            ("3", "not a seccomp profile: invalid type"),
            (
                r#"{"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
                "defaultAction is missing",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
                "defaultAction: unknown action \"SCMP_ACT_MAYBE\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                    "archMap": [{"architecture": "SCMP_ARCH_X86"}]}"#,
                "both architectures and archMap",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}"#,
                "architectures: unknown architecture \"SCMP_ARCH_VAX\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW",
                    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                                 "subArchitectures": ["x86"]}]}"#,
                "archMap[0]: unknown architecture \"x86\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}"#,
                "unknown flag \"SECCOMP_FILTER_FLAG_FAST\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_PERMIT"}]}"#,
                "syscalls[0]: unknown action \"SCMP_ACT_PERMIT\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"name": "read", "names": ["write"],
                                  "action": "SCMP_ACT_ALLOW"}]}"#,
                "syscalls[0]: both name and names",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
                "syscalls[0]: args[0]: unknown op \"SCMP_CMP_ABOUT\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0]: args[0]: argument 6 does not exist",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "includes": {"arches": ["vax"]}}]}"#,
                "syscalls[0]: includes: unknown architecture \"vax\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "excludes": {"caps": ["CAP_SYS_WHATEVER"]}}]}"#,
                "syscalls[0]: excludes: unknown capability \"CAP_SYS_WHATEVER\"",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "includes": {"minKernel": "4"}}]}"#,
                "syscalls[0]: includes: minKernel \"4\" is not",
            ),
        ] {
            let e = refusal(text);
            assert!(e.starts_with(message), "{text}: {e:?}");
        }
    }

    #[test]
    fn a_missing_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let path = path.to_str().unwrap();
        match load(path) {
            Err(ManagerError::InvalidArgument(e)) => {
                assert!(
                    e.starts_with(&format!("seccomp localhost profile {path:?}: No such file")),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("bad.json"), "{\"defaultAction\": 1}").unwrap();
        let bad = dir.path().join("bad.json");
        match load(bad.to_str().unwrap()) {
            Err(ManagerError::InvalidArgument(e)) => {
                assert!(
                    e.contains("bad.json\": not a seccomp profile: invalid type"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
