//! crust's default profile: `default.profile` (its format is described at its top), parsed once
//! into the rule model that localhost profiles are also loaded into.

use std::str::FromStr;
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator,
};

use super::rules::{ArchSelection, Condition, KernelVersion, Profile, Rule, argument_condition};
use crate::error::{ManagerError, Result};

/// The profile's source, kept in the repository beside this file.
const SOURCE: &str = include_str!("default.profile");

/// The default profile. Its source is checked by the unit tests, so an error here is a bug of
/// the build, reported to the request rather than panicking crustd.
pub fn default_profile() -> Result<&'static Profile> {
    static PARSED: OnceLock<std::result::Result<Profile, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| parse(SOURCE).map(|file| file.profile))
        .as_ref()
        .map_err(|e| ManagerError::Config(format!("crust's default seccomp profile: {e}")))
}

/// A parsed profile file.
#[derive(Debug, Clone)]
pub struct ProfileFile {
    /// The profile.
    pub profile: Profile,
    /// For each rule, the architectures its `names-of` term says its names belong to (empty
    /// without one). Only the test of the names against syscall tables reads it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub names_of: Vec<Vec<Arch>>,
}

/// Parses a profile in crust's format; an error names the line and what is wrong with it.
pub fn parse(source: &str) -> std::result::Result<ProfileFile, String> {
    let mut default = None;
    let mut rules: Vec<Rule> = Vec::new();
    let mut names_of = Vec::new();
    for (index, full_line) in source.lines().enumerate() {
        let line = full_line.split('#').next().unwrap_or_default();
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", index + 1);
        if line.starts_with(char::is_whitespace) {
            let rule = rules
                .last_mut()
                .ok_or_else(|| at("syscall names before any rule".to_string()))?;
            rule.names
                .extend(line.split_whitespace().map(str::to_string));
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("default") => {
                if default.is_some() {
                    return Err(at("a second default".to_string()));
                }
                let (action, errno) = action(words.next().unwrap_or_default()).map_err(at)?;
                if let Some(extra) = words.next() {
                    return Err(at(format!("unexpected {extra:?} after the default action")));
                }
                default = Some((action, errno));
            }
            Some("rule") => {
                if let Some(empty) = rules.last().filter(|rule| rule.names.is_empty()) {
                    return Err(at(format!(
                        "the rule before ({:?}) names no syscall",
                        empty.action
                    )));
                }
                let (rule, rule_names_of) = rule(words).map_err(at)?;
                rules.push(rule);
                names_of.push(rule_names_of);
            }
            Some(other) => {
                return Err(at(format!("unknown statement {other:?} (default or rule)")));
            }
            None => {}
        }
    }
    if rules.last().is_some_and(|rule| rule.names.is_empty()) {
        return Err("the last rule names no syscall".to_string());
    }
    let (default_action, default_errno) = default.ok_or("no default action")?;
    Ok(ProfileFile {
        profile: Profile {
            default_action,
            default_errno,
            architectures: ArchSelection::HostFamily,
            flags: Vec::new(),
            rules,
        },
        names_of,
    })
}

/// A rule's header: its action and terms.
fn rule<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> std::result::Result<(Rule, Vec<Arch>), String> {
    let (action, errno) = action(words.next().unwrap_or_default())?;
    let mut rule = Rule {
        names: Vec::new(),
        action,
        errno,
        args: Vec::new(),
        only_if: Condition::default(),
        unless: Condition::default(),
    };
    let mut names_of = Vec::new();
    for term in words {
        if term.starts_with("arg") {
            rule.args.push(argument(term)?);
            continue;
        }
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| format!("term {term:?} is neither key=value nor argN<op>value"))?;
        match key {
            "caps" => rule.only_if.caps = capabilities(value)?,
            "not-caps" => rule.unless.caps = capabilities(value)?,
            "arch" => rule.only_if.arches = arches(value)?,
            "not-arch" => rule.unless.arches = arches(value)?,
            "min-kernel" => rule.only_if.min_kernel = Some(kernel(value)?),
            "kernel-below" => rule.unless.min_kernel = Some(kernel(value)?),
            "names-of" => names_of = arches(value)?,
            _ => return Err(format!("unknown term {key:?}")),
        }
    }
    Ok((rule, names_of))
}

/// `allow`, `errno(EPERM)`, ...: the action and the errno it returns.
fn action(word: &str) -> std::result::Result<(LinuxSeccompAction, Option<u32>), String> {
    let (name, errno) = match word.strip_suffix(')').and_then(|w| w.split_once('(')) {
        Some((name, errno)) => (name, Some(errno_number(errno)?)),
        None => (word, None),
    };
    let action = match name {
        "allow" => LinuxSeccompAction::ScmpActAllow,
        "errno" => LinuxSeccompAction::ScmpActErrno,
        "trace" => LinuxSeccompAction::ScmpActTrace,
        "kill-thread" => LinuxSeccompAction::ScmpActKillThread,
        "kill-process" => LinuxSeccompAction::ScmpActKillProcess,
        "trap" => LinuxSeccompAction::ScmpActTrap,
        "log" => LinuxSeccompAction::ScmpActLog,
        "notify" => LinuxSeccompAction::ScmpActNotify,
        _ => return Err(format!("unknown action {word:?}")),
    };
    let takes_errno = matches!(
        action,
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
    );
    if takes_errno != errno.is_some() {
        return Err(format!(
            "action {word:?}: errno and trace take an errno in parentheses, the others none"
        ));
    }
    Ok((action, errno))
}

fn errno_number(text: &str) -> std::result::Result<u32, String> {
    let number = match text {
        "EPERM" => libc::EPERM,
        "ENOSYS" => libc::ENOSYS,
        _ => text
            .parse()
            .map_err(|_| format!("errno {text:?} is neither EPERM, ENOSYS nor a number"))?,
    };
    u32::try_from(number).map_err(|_| format!("errno {text:?} is negative"))
}

/// `arg0==0x8`, `arg1&0x7e020000==0`, ...
fn argument(term: &str) -> std::result::Result<LinuxSeccompArg, String> {
    let rest = term.strip_prefix("arg").unwrap_or(term);
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let index: usize = rest[..digits]
        .parse()
        .map_err(|_| format!("{term:?}: argN needs the argument's number"))?;
    let comparison = &rest[digits..];
    let (op, value, value_two) = if let Some(masked) = comparison.strip_prefix('&') {
        let (mask, wanted) = masked
            .split_once("==")
            .ok_or_else(|| format!("{term:?}: a mask is compared with =="))?;
        // seccomp's masked equality takes the mask as its value and the wanted bits second.
        (
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            number(mask)?,
            number(wanted)?,
        )
    } else {
        const OPERATORS: &[(&str, LinuxSeccompOperator)] = &[
            ("==", LinuxSeccompOperator::ScmpCmpEq),
            ("!=", LinuxSeccompOperator::ScmpCmpNe),
            ("<=", LinuxSeccompOperator::ScmpCmpLe),
            (">=", LinuxSeccompOperator::ScmpCmpGe),
            ("<", LinuxSeccompOperator::ScmpCmpLt),
            (">", LinuxSeccompOperator::ScmpCmpGt),
        ];
        let (op, value) = OPERATORS
            .iter()
            .find_map(|(symbol, op)| comparison.strip_prefix(symbol).map(|value| (*op, value)))
            .ok_or_else(|| format!("{term:?}: unknown comparison (== != < <= > >= &M==)"))?;
        (op, number(value)?, 0)
    };
    argument_condition(index, op, value, value_two).map_err(|e| format!("{term:?}: {e}"))
}

fn number(text: &str) -> std::result::Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("{text:?} is not a number"))
}

fn capabilities(list: &str) -> std::result::Result<Vec<Capability>, String> {
    list.split(',')
        .map(|name| Capability::from_str(name).map_err(|_| format!("unknown capability {name:?}")))
        .collect()
}

fn arches(list: &str) -> std::result::Result<Vec<Arch>, String> {
    list.split(',')
        .map(|name| arch_named(name).ok_or_else(|| format!("unknown architecture {name:?}")))
        .collect()
}

/// An architecture by its seccomp name in lowercase (`x86_64` for SCMP_ARCH_X86_64).
pub fn arch_named(name: &str) -> Option<Arch> {
    Some(match name {
        "x86" => Arch::ScmpArchX86,
        "x86_64" => Arch::ScmpArchX86_64,
        "x32" => Arch::ScmpArchX32,
        "arm" => Arch::ScmpArchArm,
        "aarch64" => Arch::ScmpArchAarch64,
        "mips" => Arch::ScmpArchMips,
        "mipsel" => Arch::ScmpArchMipsel,
        "mips64" => Arch::ScmpArchMips64,
        "mips64n32" => Arch::ScmpArchMips64n32,
        "mipsel64" => Arch::ScmpArchMipsel64,
        "mipsel64n32" => Arch::ScmpArchMipsel64n32,
        "ppc" => Arch::ScmpArchPpc,
        "ppc64" => Arch::ScmpArchPpc64,
        "ppc64le" => Arch::ScmpArchPpc64le,
        "s390" => Arch::ScmpArchS390,
        "s390x" => Arch::ScmpArchS390x,
        "riscv64" => Arch::ScmpArchRiscv64,
        "loongarch64" => Arch::ScmpArchLoongarch64,
        _ => return None,
    })
}

fn kernel(text: &str) -> std::result::Result<KernelVersion, String> {
    KernelVersion::parse(text).ok_or_else(|| format!("kernel version {text:?} is not M.N"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::runtime::spec::seccomp::rules::ARCH_FAMILIES;

    fn parsed() -> ProfileFile {
        parse(SOURCE).unwrap_or_else(|e| panic!("default.profile: {e}"))
    }

    /// Whether `name` is a syscall of `arch` in the kernel's tables (the `syscalls` crate's).
    fn is_syscall_of(arch: Arch, name: &str) -> bool {
        use syscalls::{
            aarch64, arm, loongarch64, mips, mips64, powerpc, powerpc64, riscv64, s390x, x86,
            x86_64,
        };
        match arch {
            // x32 is x86_64's table with a flag bit on the numbers.
            Arch::ScmpArchX86_64 | Arch::ScmpArchX32 => x86_64::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchX86 => x86::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchAarch64 => aarch64::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchArm => arm::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchMips | Arch::ScmpArchMipsel => mips::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchMips64
            | Arch::ScmpArchMips64n32
            | Arch::ScmpArchMipsel64
            | Arch::ScmpArchMipsel64n32 => mips64::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchPpc => powerpc::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchPpc64 | Arch::ScmpArchPpc64le => powerpc64::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchS390 | Arch::ScmpArchS390x => s390x::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchRiscv64 => riscv64::Sysno::from_str(name).is_ok(),
            Arch::ScmpArchLoongarch64 => loongarch64::Sysno::from_str(name).is_ok(),
            _ => false,
        }
    }

    /// ARM's private syscalls, which the kernel numbers apart from its table (from
    /// __ARM_NR_BASE) and so the syscall tables do not list, but libseccomp knows by name.
    const ARM_PRIVATE_SYSCALLS: &[&str] = &["breakpoint", "cacheflush", "set_tls"];

    #[test]
    fn the_default_profile_parses_and_denies_with_eperm() {
        let file = parsed();
        assert_eq!(
            file.profile.default_action,
            LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(file.profile.default_errno, Some(1));
        assert_eq!(file.profile.architectures, ArchSelection::HostFamily);
        assert_eq!(file.names_of.len(), file.profile.rules.len());
        let profile = default_profile().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(profile.rules.len(), file.profile.rules.len());
    }

    #[test]
    fn every_name_is_a_syscall_of_an_architecture_the_profile_names() {
        let file = parsed();
        // The architectures the file names in its terms, and those its filter covers.
        let mut named: BTreeSet<u32> = ARCH_FAMILIES
            .iter()
            .flat_map(|(native, compat)| std::iter::once(*native).chain(compat.iter().copied()))
            .map(|arch| arch as u32)
            .collect();
        for (rule, names_of) in file.profile.rules.iter().zip(&file.names_of) {
            for arch in rule
                .only_if
                .arches
                .iter()
                .chain(&rule.unless.arches)
                .chain(names_of)
            {
                named.insert(*arch as u32);
            }
        }
        let arches: Vec<Arch> = [
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchArm,
            Arch::ScmpArchMips,
            Arch::ScmpArchMipsel,
            Arch::ScmpArchMips64,
            Arch::ScmpArchMips64n32,
            Arch::ScmpArchMipsel64,
            Arch::ScmpArchMipsel64n32,
            Arch::ScmpArchPpc,
            Arch::ScmpArchPpc64,
            Arch::ScmpArchPpc64le,
            Arch::ScmpArchS390,
            Arch::ScmpArchS390x,
            Arch::ScmpArchRiscv64,
            Arch::ScmpArchLoongarch64,
        ]
        .into_iter()
        .filter(|arch| named.contains(&(*arch as u32)))
        .collect();

        let mut unknown = Vec::new();
        for (rule, names_of) in file.profile.rules.iter().zip(&file.names_of) {
            // A rule that says whose names it lists must list names of those.
            let candidates = if names_of.is_empty() {
                &arches
            } else {
                names_of
            };
            for name in &rule.names {
                let known = candidates.iter().any(|arch| is_syscall_of(*arch, name))
                    || ARM_PRIVATE_SYSCALLS.contains(&name.as_str())
                        && rule.only_if.arches.contains(&Arch::ScmpArchArm);
                if !known {
                    unknown.push(name.clone());
                }
            }
        }
        assert!(unknown.is_empty(), "not syscalls: {unknown:?}");
    }

    #[test]
    fn every_unconditional_name_not_marked_for_other_architectures_is_an_x86_64_syscall() {
        let file = parsed();
        let mut checked = 0;
        let mut missing = Vec::new();
        for (rule, names_of) in file.profile.rules.iter().zip(&file.names_of) {
            let unconditional = rule.only_if == Condition::default()
                && rule.unless == Condition::default()
                && rule.args.is_empty()
                && rule.action == LinuxSeccompAction::ScmpActAllow;
            if !unconditional || !names_of.is_empty() {
                continue;
            }
            for name in &rule.names {
                checked += 1;
                if syscalls::x86_64::Sysno::from_str(name).is_err() {
                    missing.push(name.clone());
                }
            }
        }
        assert!(checked >= 300, "only {checked} names checked");
        assert!(missing.is_empty(), "not x86_64 syscalls: {missing:?}");
    }

    #[test]
    fn the_constants_in_argument_conditions_are_the_kernels() {
        assert_eq!((libc::AF_ALG, libc::AF_VSOCK), (38, 40));
        let namespaces = libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET;
        assert_eq!(namespaces, 0x7e02_0000);
        let clone_masks: Vec<u64> = parsed()
            .profile
            .rules
            .iter()
            .filter(|rule| rule.names == ["clone"] && !rule.args.is_empty())
            .map(|rule| rule.args[0].value())
            .collect();
        assert_eq!(clone_masks, vec![0x7e02_0000, 0x7e02_0000]);
    }

    #[test]
    fn terms_and_arguments_parse() {
        let file = parse(
            "default kill-process\n\
             rule errno(ENOSYS) caps=SYS_ADMIN,BPF not-caps=SYS_PTRACE arch=x86_64 \
             not-arch=s390x min-kernel=5.10 kernel-below=6.2 arg1&0xff==0x10 arg2<=7\n\
             \x20   one two  # a comment\n\
             \tthree\n\
             rule trace(5) names-of=arm\n  four\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            file.profile.default_action,
            LinuxSeccompAction::ScmpActKillProcess
        );
        let rule = &file.profile.rules[0];
        assert_eq!(rule.names, ["one", "two", "three"]);
        assert_eq!(rule.errno, Some(libc::ENOSYS as u32));
        assert_eq!(rule.only_if.caps, [Capability::SysAdmin, Capability::Bpf]);
        assert_eq!(rule.unless.caps, [Capability::SysPtrace]);
        assert_eq!(rule.only_if.arches, [Arch::ScmpArchX86_64]);
        assert_eq!(rule.unless.arches, [Arch::ScmpArchS390x]);
        assert_eq!(rule.only_if.min_kernel, KernelVersion::parse("5.10"));
        assert_eq!(rule.unless.min_kernel, KernelVersion::parse("6.2"));
        let masked = rule.args[0];
        assert_eq!(
            (
                masked.index(),
                masked.op(),
                masked.value(),
                masked.value_two()
            ),
            (1, LinuxSeccompOperator::ScmpCmpMaskedEq, 0xff, Some(0x10))
        );
        let at_most = rule.args[1];
        assert_eq!(
            (
                at_most.index(),
                at_most.op(),
                at_most.value(),
                at_most.value_two()
            ),
            (2, LinuxSeccompOperator::ScmpCmpLe, 7, None)
        );
        assert_eq!(file.profile.rules[1].errno, Some(5));
        assert_eq!(file.names_of[1], [Arch::ScmpArchArm]);
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        for (source, message) in [
            ("rule allow\n read\n", "no default action"),
            ("  read\n", "line 1: syscall names before any rule"),
            ("default allow\ndefault allow\n", "line 2: a second default"),
            ("default allow extra\n", "line 1: unexpected \"extra\""),
            ("default permit\n", "line 1: unknown action \"permit\""),
            (
                "default errno\n",
                "line 1: action \"errno\": errno and trace take",
            ),
            ("default allow(1)\n", "line 1: action \"allow(1)\""),
            (
                "default errno(EWHAT)\n",
                "line 1: errno \"EWHAT\" is neither",
            ),
            (
                "default allow\nallow\n",
                "line 2: unknown statement \"allow\"",
            ),
            (
                "default allow\nrule allow\nrule allow\n read\n",
                "line 3: the rule before",
            ),
            (
                "default allow\nrule allow\n",
                "the last rule names no syscall",
            ),
            (
                "default allow\nrule allow caps=SYS_WHAT\n",
                "line 2: unknown capability",
            ),
            (
                "default allow\nrule allow arch=vax\n",
                "line 2: unknown architecture \"vax\"",
            ),
            (
                "default allow\nrule allow min-kernel=4\n",
                "line 2: kernel version \"4\"",
            ),
            (
                "default allow\nrule allow colour=red\n",
                "line 2: unknown term \"colour\"",
            ),
            (
                "default allow\nrule allow caps\n",
                "line 2: term \"caps\" is neither",
            ),
            (
                "default allow\nrule allow arg6==0\n",
                "line 2: \"arg6==0\": argument 6",
            ),
            (
                "default allow\nrule allow argx==0\n",
                "line 2: \"argx==0\": argN needs",
            ),
            (
                "default allow\nrule allow arg0~0\n",
                "line 2: \"arg0~0\": unknown comparison",
            ),
            (
                "default allow\nrule allow arg0&1<2\n",
                "line 2: \"arg0&1<2\": a mask is",
            ),
            (
                "default allow\nrule allow arg0==zero\n",
                "line 2: \"zero\" is not a number",
            ),
        ] {
            match parse(source) {
                Ok(_) => panic!("{source:?} parsed"),
                Err(e) => assert!(e.starts_with(message), "{source:?}: {e:?}"),
            }
        }
    }
}
