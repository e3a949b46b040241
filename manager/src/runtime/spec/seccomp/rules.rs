//! The rule model that both profile sources (crust's default profile and a node's localhost
//! profile) produce, and its one conversion to the OCI filter for a given host and container.
//!
//! Rules carry conditions on the container's capabilities, the host's architecture and the
//! running kernel, as moby's profile format does; the conversion keeps the rules whose
//! conditions hold and drops the others, so the runtime gets a plain filter.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// A seccomp profile before it is fitted to a host and a container.
#[derive(Debug, Clone)]
pub struct Profile {
    /// What a syscall that no kept rule names gets.
    pub default_action: LinuxSeccompAction,
    /// The errno of `default_action` when it returns one.
    pub default_errno: Option<u32>,
    /// Which architectures the filter covers.
    pub architectures: ArchSelection,
    /// Flags given to seccomp(2) when the filter is loaded.
    pub flags: Vec<LinuxSeccompFilterFlag>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// Which architectures a filter covers. A filter must name the 32-bit ABIs a 64-bit kernel also
/// runs, or their binaries meet the runtime's bad-architecture action instead of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchSelection {
    /// None named: the runtime covers its native architecture only.
    Unnamed,
    /// The host's native architecture and its compat ABIs ([`ARCH_FAMILIES`]).
    HostFamily,
    /// These, of which the filter keeps those of the host's family.
    Listed(Vec<Arch>),
    /// Per native architecture, its sub-architectures; the host's entry is used.
    Map(Vec<(Arch, Vec<Arch>)>),
}

/// Syscalls that get one action, under conditions.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The syscalls' names; the runtime skips a name its architecture does not have.
    pub names: Vec<String>,
    /// What they get.
    pub action: LinuxSeccompAction,
    /// The errno of an errno (or trace) action.
    pub errno: Option<u32>,
    /// Conditions on the arguments, all of which must hold for the action to apply.
    pub args: Vec<LinuxSeccompArg>,
    /// The rule is kept only if all of this holds.
    pub only_if: Condition,
    /// The rule is dropped if any of this holds.
    pub unless: Condition,
}

/// Conditions on the host and the container. An empty part says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// Capabilities of the container's bounding set.
    pub caps: Vec<Capability>,
    /// The host's native architecture among these.
    pub arches: Vec<Arch>,
    /// The running kernel at least this version.
    pub min_kernel: Option<KernelVersion>,
}

/// A kernel's version and major revision ("6.1" of "6.1.0-18-amd64"), what moby's `minKernel`
/// compares: patch levels and distribution suffixes are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// The "6" of 6.1.
    pub version: u32,
    /// The "1" of 6.1.
    pub major: u32,
}

impl KernelVersion {
    /// Parses exactly `<version>.<major>`, as profiles write it.
    pub fn parse(text: &str) -> Option<Self> {
        let (version, major) = text.split_once('.')?;
        let parsed = Self {
            version: version.parse().ok()?,
            major: major.parse().ok()?,
        };
        // moby refuses 0.0, which would hold on every kernel.
        (parsed.version != 0 || parsed.major != 0).then_some(parsed)
    }

    /// The version of a kernel release string (`uname -r`), whatever follows its revision.
    pub fn of_release(release: &str) -> Option<Self> {
        let mut parts = release.trim().splitn(3, '.');
        let version = parts.next()?.parse().ok()?;
        let major_digits: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(Self {
            version,
            major: major_digits.parse().ok()?,
        })
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.version, self.major)
    }
}

/// A condition on argument `index` of a syscall. Like moby's JSON, a second value of 0 is left
/// out, which the runtime reads as 0.
pub fn argument_condition(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
) -> std::result::Result<LinuxSeccompArg, String> {
    // seccomp compares the six registers of a syscall's arguments.
    if index > 5 {
        return Err(format!(
            "argument {index} does not exist (a syscall has arguments 0 to 5)"
        ));
    }
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let builder = if value_two != 0 {
        builder.value_two(value_two)
    } else {
        builder
    };
    builder.build().map_err(|e| e.to_string())
}

/// Each native architecture with the compat ABIs its kernel also runs (moby's architecture map).
pub const ARCH_FAMILIES: &[(Arch, &[Arch])] = &[
    (
        Arch::ScmpArchX86_64,
        &[Arch::ScmpArchX86, Arch::ScmpArchX32],
    ),
    (Arch::ScmpArchAarch64, &[Arch::ScmpArchArm]),
    (
        Arch::ScmpArchMips64,
        &[Arch::ScmpArchMips, Arch::ScmpArchMips64n32],
    ),
    (
        Arch::ScmpArchMips64n32,
        &[Arch::ScmpArchMips, Arch::ScmpArchMips64],
    ),
    (
        Arch::ScmpArchMipsel64,
        &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64n32],
    ),
    (
        Arch::ScmpArchMipsel64n32,
        &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64],
    ),
    (Arch::ScmpArchS390x, &[Arch::ScmpArchS390]),
    (Arch::ScmpArchRiscv64, &[]),
    (Arch::ScmpArchLoongarch64, &[]),
];

/// The seccomp architecture crustd runs as, None where seccomp knows no such architecture.
pub fn native_arch() -> Option<Arch> {
    let little_endian = cfg!(target_endian = "little");
    Some(match std::env::consts::ARCH {
        "x86_64" => Arch::ScmpArchX86_64,
        "x86" => Arch::ScmpArchX86,
        "aarch64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "s390x" => Arch::ScmpArchS390x,
        "riscv64" => Arch::ScmpArchRiscv64,
        "loongarch64" => Arch::ScmpArchLoongarch64,
        "powerpc64" if little_endian => Arch::ScmpArchPpc64le,
        "powerpc64" => Arch::ScmpArchPpc64,
        "powerpc" => Arch::ScmpArchPpc,
        "mips64" if little_endian => Arch::ScmpArchMipsel64,
        "mips64" => Arch::ScmpArchMips64,
        "mips" if little_endian => Arch::ScmpArchMipsel,
        "mips" => Arch::ScmpArchMips,
        _ => return None,
    })
}

/// What the conditions of rules are checked against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The host's native architecture.
    pub arch: Option<Arch>,
    /// The running kernel.
    pub kernel: KernelVersion,
    /// The container's bounding set.
    pub capabilities: &'a Capabilities,
}

impl Target<'_> {
    fn has_arch_among(&self, arches: &[Arch]) -> bool {
        self.arch.is_some_and(|arch| arches.contains(&arch))
    }

    /// Whether every part of `condition` holds (a rule's includes).
    fn meets_all(&self, condition: &Condition) -> bool {
        (condition.arches.is_empty() || self.has_arch_among(&condition.arches))
            && condition
                .caps
                .iter()
                .all(|cap| self.capabilities.contains(cap))
            && condition.min_kernel.is_none_or(|min| self.kernel >= min)
    }

    /// Whether some part of `condition` holds (a rule's excludes).
    fn meets_any(&self, condition: &Condition) -> bool {
        self.has_arch_among(&condition.arches)
            || condition
                .caps
                .iter()
                .any(|cap| self.capabilities.contains(cap))
            || condition.min_kernel.is_some_and(|min| self.kernel >= min)
    }

    /// The host's family: its native architecture and compat ABIs.
    fn family(&self) -> Vec<Arch> {
        let Some(native) = self.arch else {
            return Vec::new();
        };
        let compat = ARCH_FAMILIES
            .iter()
            .find(|(arch, _)| *arch == native)
            .map_or(&[][..], |(_, compat)| compat);
        std::iter::once(native)
            .chain(compat.iter().copied())
            .collect()
    }

    fn architectures(&self, selection: &ArchSelection) -> Vec<Arch> {
        match selection {
            ArchSelection::Unnamed => Vec::new(),
            ArchSelection::HostFamily => self.family(),
            ArchSelection::Listed(listed) => {
                let family = self.family();
                listed
                    .iter()
                    .copied()
                    .filter(|arch| family.contains(arch))
                    .collect()
            }
            ArchSelection::Map(map) => map
                .iter()
                .find(|(native, _)| Some(*native) == self.arch)
                .map(|(native, sub)| std::iter::once(*native).chain(sub.iter().copied()))
                .into_iter()
                .flatten()
                .collect(),
        }
    }
}

/// The filter `profile` gives a container on `target`: the architectures of the host, the rules
/// whose conditions hold.
pub fn to_oci(profile: &Profile, target: &Target<'_>) -> LinuxSeccomp {
    let syscalls: Vec<LinuxSyscall> = profile
        .rules
        .iter()
        .filter(|rule| target.meets_all(&rule.only_if) && !target.meets_any(&rule.unless))
        .map(|rule| {
            let mut syscall = LinuxSyscall::default();
            syscall.set_names(rule.names.clone());
            syscall.set_action(rule.action);
            syscall.set_errno_ret(rule.errno);
            syscall.set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
            syscall
        })
        .collect();
    let architectures = target.architectures(&profile.architectures);

    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(profile.default_action);
    seccomp.set_default_errno_ret(profile.default_errno);
    seccomp.set_architectures((!architectures.is_empty()).then_some(architectures));
    seccomp.set_flags((!profile.flags.is_empty()).then(|| profile.flags.clone()));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_like_moby() {
        assert_eq!(
            KernelVersion::parse("4.8"),
            Some(KernelVersion {
                version: 4,
                major: 8
            })
        );
        assert_eq!(KernelVersion::parse("4"), None);
        assert_eq!(KernelVersion::parse("4.8.1"), None);
        assert_eq!(KernelVersion::parse("0.0"), None);
        for release in ["6.1.0-18-amd64", "6.1", "6.1-rc5", "6.1.25-gentoo\n"] {
            assert_eq!(
                KernelVersion::of_release(release),
                Some(KernelVersion {
                    version: 6,
                    major: 1
                }),
                "{release}"
            );
        }
        assert_eq!(KernelVersion::of_release("six"), None);
    }

    #[test]
    fn listed_architectures_are_narrowed_to_the_hosts_family() {
        let caps = Capabilities::new();
        let target = Target {
            arch: Some(Arch::ScmpArchX86_64),
            kernel: KernelVersion {
                version: 6,
                major: 1,
            },
            capabilities: &caps,
        };
        let listed = ArchSelection::Listed(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchX86,
        ]);
        assert_eq!(
            target.architectures(&listed),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]
        );
        assert_eq!(
            target.architectures(&ArchSelection::HostFamily),
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        assert!(target.architectures(&ArchSelection::Unnamed).is_empty());
    }
}
