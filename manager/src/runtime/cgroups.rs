//! The cgroups of pods and containers as crustd lays them out, for both drivers: where a
//! container's cgroup is, whether the kernel's OOM killer struck in it, and removing a pod's
//! cgroup (which crustd made) once its containers are gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crust_proto::cri::LinuxContainerResources;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{ManagerError, Result};

/// The prefix of the systemd scope units runc makes for crustd's containers.
pub const SYSTEMD_PREFIX: &str = "crust";
/// How long a pod cgroup's removal retries while killed processes leave it.
const REMOVE_LIMIT: Duration = Duration::from_secs(5);

/// The `cgroupsPath` of task `id` in a pod whose cgroup is `parent`, as runc takes it.
pub fn cgroups_path(parent: &str, id: &str, systemd: bool) -> String {
    if systemd {
        // slice:prefix:name, as containerd and runc spell a systemd unit.
        format!("{parent}:{SYSTEMD_PREFIX}:{id}")
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

/// Where runc puts task `id`'s cgroup below each hierarchy's root.
pub fn task_cgroup(parent: &str, id: &str, systemd: bool) -> PathBuf {
    if systemd {
        expand_slice(parent).join(format!("{SYSTEMD_PREFIX}-{id}.scope"))
    } else {
        PathBuf::from(parent.trim_start_matches('/')).join(id)
    }
}

/// A systemd slice's path in the cgroup tree: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`
/// (systemd's rule; `-.slice` is the root).
pub fn expand_slice(slice: &str) -> PathBuf {
    let name = slice.trim_matches('/');
    let Some(stem) = name.strip_suffix(".slice") else {
        // Not a slice name: a plain path (runc refuses it under systemd anyway).
        return PathBuf::from(name);
    };
    if stem == "-" || stem.is_empty() {
        return PathBuf::new();
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

/// The mounted cgroup hierarchies: (mount point, is cgroup v2, v1 controllers).
fn hierarchies() -> Vec<(PathBuf, bool, Vec<String>)> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut fields = after.split_whitespace();
            let kind = fields.next()?;
            let mount_point = PathBuf::from(before.split_whitespace().nth(4)?);
            match kind {
                "cgroup2" => Some((mount_point, true, Vec::new())),
                "cgroup" => {
                    let options = fields.nth(1).unwrap_or_default();
                    let controllers = options.split(',').map(str::to_string).collect();
                    Some((mount_point, false, controllers))
                }
                _ => None,
            }
        })
        .collect()
}

/// v1 controller name → the root of its hierarchy.
pub type V1Roots = std::collections::HashMap<String, PathBuf>;

/// Where the cgroup hierarchies are, as runc uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchies {
    /// cgroup v2 alone, at this root.
    Unified(PathBuf),
    /// cgroup v1 (also on a hybrid host, where runc uses v1).
    V1(V1Roots),
}

/// The hierarchies mounted now.
pub fn mounted() -> Hierarchies {
    let all = hierarchies();
    if let Some((root, _, _)) = all
        .iter()
        .find(|(root, v2, _)| *v2 && root == Path::new("/sys/fs/cgroup"))
    {
        return Hierarchies::Unified(root.clone());
    }
    let mut roots = V1Roots::new();
    for (root, v2, controllers) in all {
        if v2 {
            continue;
        }
        for controller in controllers {
            roots.entry(controller).or_insert_with(|| root.clone());
        }
    }
    Hierarchies::V1(roots)
}

/// Whether the host runs cgroup v2 alone: the unified hierarchy is what is mounted at
/// /sys/fs/cgroup, which is how runc decides it (a hybrid host has it elsewhere).
pub fn unified_mode() -> bool {
    hierarchies()
        .into_iter()
        .any(|(root, v2, _)| v2 && root == Path::new("/sys/fs/cgroup"))
}

/// Whether a cgroup controller is usable: a v1 hierarchy of it, or in the root's
/// `cgroup.controllers` on a v2-only host.
pub fn has_controller(controller: &str) -> bool {
    hierarchies().into_iter().any(|(root, v2, controllers)| {
        if v2 {
            root == Path::new("/sys/fs/cgroup")
                && fs::read_to_string(root.join("cgroup.controllers"))
                    .is_ok_and(|list| list.split_whitespace().any(|c| c == controller))
        } else {
            controllers.iter().any(|c| c == controller)
        }
    })
}

/// Whether cgroup v1's memory controller accounts swap (`memory.memsw.*`, off unless the
/// kernel was booted with swap accounting).
pub fn has_swap_accounting() -> bool {
    hierarchies().into_iter().any(|(root, v2, controllers)| {
        !v2 && controllers.iter().any(|c| c == "memory")
            && root.join("memory.memsw.limit_in_bytes").exists()
    })
}

/// Whether the kernel counted an OOM kill in the cgroup at `relative` (v1 memory controller
/// or v2). The cgroup must still exist: runc removes it when the task is deleted.
pub fn oom_killed(relative: &Path) -> bool {
    hierarchies().into_iter().any(|(root, v2, controllers)| {
        let file = if v2 {
            "memory.events"
        } else if controllers.iter().any(|c| c == "memory") {
            "memory.oom_control"
        } else {
            return false;
        };
        fs::read_to_string(root.join(relative).join(file))
            .is_ok_and(|text| oom_kill_count(&text) > 0)
    })
}

/// The `oom_kill` counter of a `memory.events` or `memory.oom_control` file.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Removes the cgroup `relative` and everything below it from every hierarchy. Processes
/// still inside are killed first (they belong to containers already deleted, so nobody else
/// owns them); a cgroup that stays busy is an error, so the pod is kept and removal retried.
pub async fn remove_tree(relative: &str) -> Result<()> {
    let relative = relative.trim_start_matches('/').to_string();
    if relative.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + REMOVE_LIMIT;
    loop {
        let relative = relative.clone();
        let left = super::store::blocking(move || Ok(remove_everywhere(&relative))).await?;
        match left {
            None => return Ok(()),
            Some(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// What a pod cgroup crustd owns is limited to: kubelet's pod-level resources (the sum of
/// its containers') plus the pod's overhead, as the CRI defines both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// Bytes; 0 for none.
    pub memory: i64,
    /// CPU shares; 0 for the default.
    pub cpu_shares: i64,
    /// CFS quota in µs per `cpu_period`; 0 for none.
    pub cpu_quota: i64,
    /// CFS period in µs (100 ms when a quota is set without one).
    pub cpu_period: i64,
}

impl PodLimits {
    /// The limits of `resources` plus `overhead`; None when neither limits anything.
    pub fn of(
        resources: Option<&LinuxContainerResources>,
        overhead: Option<&LinuxContainerResources>,
    ) -> Option<Self> {
        let resources = resources.cloned().unwrap_or_default();
        let overhead = overhead.cloned().unwrap_or_default();
        // An unlimited dimension stays unlimited whatever the overhead adds.
        let sum = |a: i64, b: i64| if a > 0 { a.saturating_add(b.max(0)) } else { 0 };
        let cpu_period = [resources.cpu_period, overhead.cpu_period]
            .into_iter()
            .find(|p| *p > 0)
            .unwrap_or(100_000);
        let limits = PodLimits {
            memory: sum(
                resources.memory_limit_in_bytes,
                overhead.memory_limit_in_bytes,
            ),
            cpu_shares: sum(resources.cpu_shares, overhead.cpu_shares),
            cpu_quota: sum(resources.cpu_quota, overhead.cpu_quota),
            cpu_period,
        };
        (limits.memory > 0 || limits.cpu_shares > 0 || limits.cpu_quota > 0).then_some(limits)
    }

    /// The cgroup file writes that set them, in both versions.
    fn writes(&self) -> LimitWrites {
        let mut v1 = Vec::new();
        let mut v2 = Vec::new();
        if self.memory > 0 {
            v1.push(("memory", "memory.limit_in_bytes", self.memory.to_string()));
            v2.push(("memory.max", self.memory.to_string()));
        }
        if self.cpu_shares > 0 {
            v1.push(("cpu", "cpu.shares", self.cpu_shares.to_string()));
            // runc's conversion of shares (2..262144) to a weight (1..10000).
            let weight = 1 + ((self.cpu_shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
            v2.push(("cpu.weight", weight.to_string()));
        }
        if self.cpu_quota > 0 {
            v1.push(("cpu", "cpu.cfs_period_us", self.cpu_period.to_string()));
            v1.push(("cpu", "cpu.cfs_quota_us", self.cpu_quota.to_string()));
            v2.push(("cpu.max", format!("{} {}", self.cpu_quota, self.cpu_period)));
        }
        (v1, v2)
    }
}

/// (v1 controller, file, value) writes, and (v2 file, value) writes.
type LimitWrites = (
    Vec<(&'static str, &'static str, String)>,
    Vec<(&'static str, String)>,
);

/// Makes the pod cgroup `relative` in every hierarchy that limits what `limits` sets, and
/// sets them, before runc puts the pod's first process below it.
pub fn apply_pod_limits(relative: &str, limits: &PodLimits) -> Result<()> {
    let (v1_writes, v2_writes) = limits.writes();
    let write = |file: PathBuf, value: &str| {
        fs::write(&file, value)
            .map_err(|e| ManagerError::io(format!("write {value} to {}", file.display()), e))
    };
    for (root, v2, controllers) in hierarchies() {
        let dir = root.join(relative.trim_start_matches('/'));
        if v2 {
            // Only a v2-only host has the memory and cpu controllers on the unified tree.
            if root != Path::new("/sys/fs/cgroup") || v2_writes.is_empty() {
                continue;
            }
            fs::create_dir_all(&dir)
                .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))?;
            // Each level must hand the controllers down to the next.
            for level in dir.ancestors().skip(1).take_while(|p| p.starts_with(&root)) {
                let _ = fs::write(level.join("cgroup.subtree_control"), "+memory +cpu");
            }
            for (file, value) in &v2_writes {
                write(dir.join(file), value)?;
            }
            continue;
        }
        let mine: Vec<_> = v1_writes
            .iter()
            .filter(|(controller, _, _)| controllers.iter().any(|c| c == controller))
            .collect();
        if mine.is_empty() {
            continue;
        }
        fs::create_dir_all(&dir)
            .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))?;
        for (_, file, value) in mine {
            write(dir.join(file), value)?;
        }
    }
    Ok(())
}

/// One pass over every hierarchy; the first error left, if any.
fn remove_everywhere(relative: &str) -> Option<ManagerError> {
    let mut left = None;
    for (root, _, _) in hierarchies() {
        let dir = root.join(relative);
        if dir.is_dir()
            && let Err(e) = remove_dir_tree(&dir)
        {
            left = Some(ManagerError::io(
                format!("remove cgroup {}", dir.display()),
                e,
            ));
        }
    }
    left
}

/// Depth first: child cgroups, then processes left in this one, then the directory.
fn remove_dir_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir_tree(&entry.path())?;
        }
    }
    for pid in fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        log::warn!("killing pid {pid}, left in cgroup {}", dir.display());
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_cgroups_follow_the_driver() {
        assert_eq!(cgroups_path("/crust/p1", "c1", false), "/crust/p1/c1");
        assert_eq!(
            task_cgroup("/crust/p1", "c1", false),
            Path::new("crust/p1/c1")
        );
        assert_eq!(
            cgroups_path("kubepods-besteffort-podx.slice", "c1", true),
            "kubepods-besteffort-podx.slice:crust:c1"
        );
        assert_eq!(
            task_cgroup("kubepods-besteffort-podx.slice", "c1", true),
            Path::new(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/crust-c1.scope"
            )
        );
        assert_eq!(
            task_cgroup("system.slice", "c1", true),
            Path::new("system.slice/crust-c1.scope")
        );
        assert_eq!(expand_slice("-.slice"), PathBuf::new());
    }

    #[test]
    fn pod_limits_are_the_pods_resources_plus_its_overhead() {
        let resources = LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            ..Default::default()
        };
        let overhead = LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            cpu_quota: 10_000,
            cpu_shares: 2,
            ..Default::default()
        };
        let limits = PodLimits::of(Some(&resources), Some(&overhead)).unwrap();
        assert_eq!(
            limits,
            PodLimits {
                memory: 288 << 20,
                cpu_shares: 514,
                cpu_quota: 60_000,
                cpu_period: 100_000
            }
        );
        let (v1, v2) = limits.writes();
        assert!(v1.contains(&(
            "memory",
            "memory.limit_in_bytes",
            (288u64 << 20).to_string()
        )));
        assert!(v1.contains(&("cpu", "cpu.cfs_quota_us", "60000".to_string())));
        assert!(v2.contains(&("cpu.max", "60000 100000".to_string())));
        assert!(v2.contains(&("cpu.weight", "20".to_string())));
        // Overhead alone limits nothing that the pod leaves unlimited.
        assert_eq!(PodLimits::of(None, Some(&overhead)), None);
        assert_eq!(PodLimits::of(None, None), None);
    }

    #[test]
    fn oom_kill_counters_are_read_from_either_file() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom 3\noom_kill 0\n"), 0);
        assert_eq!(oom_kill_count(""), 0);
    }

    #[test]
    fn this_machine_has_cgroup_hierarchies() {
        assert!(
            !hierarchies().is_empty(),
            "no cgroup mounts in /proc/self/mountinfo"
        );
    }
}
