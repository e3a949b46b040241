//! What this host lets containers have, read once when crustd starts: the capabilities in
//! crustd's own bounding set (no container can hold more), whether AppArmor and SELinux are
//! on, and what each runtime handler's binary supports (`runc features`). Security decisions
//! are made against these facts, never against what a typical host has.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use oci_spec::runtime::{Capabilities, Capability};

use crate::config::Config;

/// The Linux release that brought `mount_setattr`, which recursive read-only mounts need.
const MOUNT_SETATTR_RELEASE: (u32, u32) = (5, 12);

/// How long a runtime binary gets to describe its features.
const FEATURES_TIMEOUT: Duration = Duration::from_secs(5);

/// What one runtime handler's binary supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerSupport {
    /// It knows the `rro` mount option (and the kernel has `mount_setattr`).
    pub recursive_read_only: bool,
}

/// What the host supports.
#[derive(Debug, Clone)]
pub struct HostSupport {
    /// Capabilities in crustd's bounding set: the most any container may hold.
    pub bounding: Capabilities,
    /// AppArmor is usable: enabled in the kernel, its file system mounted, its parser
    /// installed, and crustd not itself in a container.
    pub apparmor: bool,
    /// cgroup v2 alone is mounted at /sys/fs/cgroup (hybrid hosts count as v1, as runc).
    pub cgroup_v2: bool,
    /// SELinux is enabled in the kernel.
    pub selinux: bool,
    /// Per runtime handler name, what its binary supports.
    pub handlers: BTreeMap<String, HandlerSupport>,
    /// Hugepage sizes the kernel offers, as the CRI names them ("2MB", "1GB").
    pub hugepage_sizes: Vec<String>,
    /// Whether hugepage limits are applied: the hugetlb cgroup controller exists. Without it,
    /// None when the config tolerates that (limits are dropped), else Some(false) (refused).
    pub hugetlb: Option<bool>,
    /// Whether memory+swap limits can be set (cgroup v2, or v1 with swap accounting).
    pub swap_limits: bool,
    /// The lowest `oom_score_adj` a container gets: crustd's own when restricted by the
    /// config or by a host that cannot lower a score; None when any score goes.
    pub oom_score_floor: Option<i64>,
    /// The handler an empty name means.
    pub default_handler: String,
}

impl HostSupport {
    /// Reads the host's facts, and asks every configured runtime binary for its features.
    pub fn probe(config: &Config) -> Self {
        let mount_setattr = kernel_release().is_some_and(|r| r >= MOUNT_SETATTR_RELEASE);
        let handlers = config
            .runtimes
            .iter()
            .map(|(name, handler)| {
                let options = runtime_mount_options(&handler.binary_name);
                let support = HandlerSupport {
                    recursive_read_only: mount_setattr && options.iter().any(|o| o == "rro"),
                };
                (name.clone(), support)
            })
            .collect();
        let bounding = bounding_set();
        let cgroup_v2 = super::cgroups::unified_mode();
        let hugetlb_controller = super::cgroups::has_controller("hugetlb");
        // Lowering a score needs CAP_SYS_RESOURCE; without it runc fails the container.
        let can_lower_oom_score = bounding.contains(&Capability::SysResource);
        if !can_lower_oom_score && !config.restrict_oom_score_adj {
            log::info!(
                "this host's bounding set lacks CAP_SYS_RESOURCE: containers' oom_score_adj is \
                 raised to crustd's own where they ask for less"
            );
        }
        let own_score = fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Self {
            hugepage_sizes: hugepage_sizes(Path::new("/sys/kernel/mm/hugepages")),
            hugetlb: match (
                hugetlb_controller,
                config.tolerate_missing_hugetlb_controller,
            ) {
                (true, _) => Some(true),
                (false, true) => None,
                (false, false) => Some(false),
            },
            swap_limits: cgroup_v2 || super::cgroups::has_swap_accounting(),
            oom_score_floor: (config.restrict_oom_score_adj || !can_lower_oom_score)
                .then_some(own_score),
            bounding,
            apparmor: apparmor_usable(),
            cgroup_v2,
            selinux: Path::new("/sys/fs/selinux/enforce").exists(),
            handlers,
            default_handler: config.default_runtime.clone(),
        }
    }

    /// What `handler` supports (the default's for ""; nothing for one crustd does not know).
    pub fn handler(&self, handler: &str) -> HandlerSupport {
        let name = if handler.is_empty() {
            &self.default_handler
        } else {
            handler
        };
        self.handlers.get(name).cloned().unwrap_or_default()
    }
}

/// The capabilities in crustd's bounding set, as the kernel reports them.
fn bounding_set() -> Capabilities {
    match caps::read(None, caps::CapSet::Bounding) {
        Ok(set) => set.into_iter().filter_map(to_oci).collect(),
        Err(e) => {
            log::warn!("reading crustd's capability bounding set: {e}; containers get none");
            Capabilities::new()
        }
    }
}

/// The hugepage sizes under `dir` (`hugepages-2048kB`, …) as the CRI names them.
fn hugepage_sizes(dir: &Path) -> Vec<String> {
    let mut sizes: Vec<(u64, String)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let kb: u64 = name
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    Some((kb, page_size_name(kb)))
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    sizes.into_iter().map(|(_, name)| name).collect()
}

/// A size in KiB as runc and the CRI write hugepage sizes: the largest whole unit.
fn page_size_name(kb: u64) -> String {
    match kb {
        kb if kb >= 1 << 20 && kb % (1 << 20) == 0 => format!("{}GB", kb >> 20),
        kb if kb >= 1 << 10 && kb % (1 << 10) == 0 => format!("{}MB", kb >> 10),
        kb => format!("{kb}KB"),
    }
}

/// The oci-spec name of a capability the kernel reports (None for one oci-spec lacks).
fn to_oci(cap: caps::Capability) -> Option<Capability> {
    let name = cap.to_string();
    Capability::from_str(name.strip_prefix("CAP_").unwrap_or(&name)).ok()
}

/// The checks containerd makes before it applies AppArmor: a kernel that says it is on is
/// not enough if its file system is not mounted (profiles cannot be listed or loaded), the
/// parser is missing (crustd's default cannot be loaded), or crustd runs in a container.
fn apparmor_usable() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|value| value.trim_start().starts_with('Y'))
        && Path::new("/sys/kernel/security/apparmor").is_dir()
        && super::apparmor::parser_installed()
        && std::env::var_os("container").is_none()
}

/// The running kernel's (major, minor) release.
fn kernel_release() -> Option<(u32, u32)> {
    parse_release(&fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The mount options `binary features` lists (none if it cannot say: an old runtime).
fn runtime_mount_options(binary: &str) -> Vec<String> {
    let output = match run_with_timeout(binary, &["features"], FEATURES_TIMEOUT) {
        Ok(output) => output,
        Err(why) => {
            log::info!("{binary} features: {why}; assuming none");
            return Vec::new();
        }
    };
    mount_options(&output)
}

fn mount_options(features_json: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Features {
        #[serde(default, rename = "mountOptions")]
        mount_options: Vec<String>,
    }
    serde_json::from_slice::<Features>(features_json)
        .map(|f| f.mount_options)
        .unwrap_or_default()
}

/// The standard output of `binary args`, if it exits 0 within `timeout` (killed after).
fn run_with_timeout(binary: &str, args: &[&str], timeout: Duration) -> Result<Vec<u8>, String> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
    // What is asked for is a short JSON document, well inside a pipe's buffer: the binary
    // never blocks on a full pipe before it exits.
    let mut output = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_end(&mut stdout, &mut output).map_err(|e| e.to_string())?;
    }
    Ok(output)
}

/// A host with every capability and nothing else, for tests of decisions made against it.
#[cfg(test)]
pub fn test_host() -> HostSupport {
    HostSupport {
        bounding: caps::all().into_iter().filter_map(to_oci).collect(),
        apparmor: false,
        cgroup_v2: false,
        selinux: false,
        handlers: BTreeMap::new(),
        default_handler: "runc".into(),
        hugepage_sizes: vec!["2MB".into(), "1GB".into()],
        hugetlb: Some(true),
        swap_limits: true,
        oom_score_floor: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_with_their_suffixes() {
        assert_eq!(parse_release("6.18.44-fc-v1147\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-21-amd64"), Some((5, 10)));
        assert_eq!(parse_release("5.12"), Some((5, 12)));
        assert_eq!(parse_release("garbage"), None);
        assert!((5, 10) < MOUNT_SETATTR_RELEASE && (6, 1) >= MOUNT_SETATTR_RELEASE);
    }

    #[test]
    fn hugepage_sizes_are_named_as_the_cri_names_them() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "hugepages-2048kB",
            "hugepages-1048576kB",
            "hugepages-64kB",
            "other",
        ] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(hugepage_sizes(dir.path()), ["64KB", "2MB", "1GB"]);
        assert!(hugepage_sizes(Path::new("/nonexistent")).is_empty());
        assert_eq!(page_size_name(32768), "32MB");
        assert_eq!(page_size_name(1536), "1536KB");
    }

    #[test]
    fn mount_options_come_from_the_features_document() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["bind","rro","ro"]}"#;
        assert_eq!(mount_options(json), ["bind", "rro", "ro"]);
        assert!(mount_options(b"not json").is_empty());
        assert!(mount_options(b"{}").is_empty());
    }

    #[test]
    fn this_processs_bounding_set_is_read() {
        // A bounding set is only ever shrunk from the full one; no host this runs on has
        // dropped CHOWN, which every container's default set needs.
        let set = bounding_set();
        assert!(set.contains(&Capability::Chown), "{set:?}");
    }

    #[test]
    fn a_runtime_that_hangs_or_fails_is_given_up_on() {
        let started = Instant::now();
        let hung = run_with_timeout("sleep", &["5"], Duration::from_millis(200));
        assert!(hung.is_err() && started.elapsed() < Duration::from_secs(3));
        assert!(run_with_timeout("false", &[], FEATURES_TIMEOUT).is_err());
        assert!(run_with_timeout("/nonexistent/runc", &[], FEATURES_TIMEOUT).is_err());
        assert_eq!(
            run_with_timeout("echo", &["hi"], FEATURES_TIMEOUT).unwrap(),
            b"hi\n"
        );
    }
}
