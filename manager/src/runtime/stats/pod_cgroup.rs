//! A pod's own usage, read from its cgroup (where the pod has one of its own): the kernel's
//! counters there keep the CPU time of containers that have exited, which a sum over the
//! running tasks loses (the pod's cumulative CPU would go down when one exits).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::super::cgroups;
use super::super::records::PodRecord;
use super::usage::{CgroupUsage, MemoryFigures};

/// The pod's own cgroup below each hierarchy's root, when it has one: crustd's per-pod cgroup,
/// or the one kubelet names (a slice with the systemd driver). None when the pod's tasks sit in
/// a shared parent (systemd's `system.slice` when nobody names one).
pub fn pod_cgroup(pod: &PodRecord) -> Option<PathBuf> {
    let named = pod
        .config
        .linux
        .as_ref()
        .is_some_and(|l| !l.cgroup_parent.is_empty());
    if !pod.owns_cgroup && !named {
        return None;
    }
    Some(cgroups::expand_slice(&pod.cgroup_parent))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
fn keyed(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A limit file's value when it limits anything (v1's huge number and v2's "max" do not).
fn limit(path: &Path) -> Option<u64> {
    read_u64(path).filter(|&v| v != 0 && v < 1 << 62)
}

/// The memory.stat keys of one cgroup version: inactive file, anonymous, page cache, faults,
/// major faults.
struct MemoryStatKeys([&'static str; 5]);

const V1_KEYS: MemoryStatKeys = MemoryStatKeys([
    "total_inactive_file",
    "total_rss",
    "total_cache",
    "total_pgfault",
    "total_pgmajfault",
]);
const V2_KEYS: MemoryStatKeys =
    MemoryStatKeys(["inactive_file", "anon", "file", "pgfault", "pgmajfault"]);

/// Memory figures from `usage`, the `stat_file` read with `keys`, and the `limit_file`.
fn memory_figures(
    usage: u64,
    stat_file: &Path,
    keys: &MemoryStatKeys,
    limit_file: &Path,
) -> MemoryFigures {
    let stat = keyed(stat_file);
    let [inactive_file, rss, cache, faults, major_faults] =
        keys.0.map(|key| stat.get(key).copied().unwrap_or(0));
    MemoryFigures {
        usage,
        working_set: usage.saturating_sub(inactive_file),
        rss,
        cache,
        page_faults: faults,
        major_page_faults: major_faults,
        limit: limit(limit_file),
    }
}

/// The usage of cgroup `relative` on a v1 host: cpuacct, memory and pids hierarchies.
fn read_v1(roots: &cgroups::V1Roots, relative: &Path) -> Option<CgroupUsage> {
    let cpu_dir = roots.get("cpuacct").map(|root| root.join(relative));
    let memory_dir = roots.get("memory").map(|root| root.join(relative));
    let pids_dir = roots.get("pids").map(|root| root.join(relative));
    let cpu_nanos = cpu_dir
        .as_ref()
        .and_then(|d| read_u64(&d.join("cpuacct.usage")));
    cpu_nanos?;
    let memory = memory_dir.as_ref().and_then(|dir| {
        let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
        Some(memory_figures(
            usage,
            &dir.join("memory.stat"),
            &V1_KEYS,
            &dir.join("memory.limit_in_bytes"),
        ))
    });
    Some(CgroupUsage {
        cpu_nanos,
        cpu_user_nanos: cpu_dir
            .as_ref()
            .and_then(|d| read_u64(&d.join("cpuacct.usage_user"))),
        cpu_system_nanos: cpu_dir
            .as_ref()
            .and_then(|d| read_u64(&d.join("cpuacct.usage_sys"))),
        memory,
        processes: pids_dir.and_then(|d| read_u64(&d.join("pids.current"))),
    })
}

/// The usage of the cgroup at `dir` on a v2-only host.
fn read_v2(dir: &Path) -> Option<CgroupUsage> {
    let cpu = keyed(&dir.join("cpu.stat"));
    let usage_usec = *cpu.get("usage_usec")?;
    let memory = read_u64(&dir.join("memory.current")).map(|usage| {
        memory_figures(
            usage,
            &dir.join("memory.stat"),
            &V2_KEYS,
            &dir.join("memory.max"),
        )
    });
    let micros = |key: &str| cpu.get(key).map(|v| v.saturating_mul(1000));
    Some(CgroupUsage {
        cpu_nanos: Some(usage_usec.saturating_mul(1000)),
        cpu_user_nanos: micros("user_usec"),
        cpu_system_nanos: micros("system_usec"),
        memory,
        processes: read_u64(&dir.join("pids.current")),
    })
}

/// The usage of each of `pods`' own cgroups, where it has one that can be read (the mount
/// table read once for them all).
pub fn read(pods: &[PodRecord]) -> Vec<Option<CgroupUsage>> {
    let mounted = cgroups::mounted();
    pods.iter()
        .map(|pod| {
            let relative = pod_cgroup(pod)?;
            match &mounted {
                cgroups::Hierarchies::Unified(root) => read_v2(&root.join(&relative)),
                cgroups::Hierarchies::V1(roots) => read_v1(roots, &relative),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_files_give_cpu_memory_and_processes() {
        let root = tempfile::tempdir().unwrap();
        let mut roots = cgroups::V1Roots::new();
        for controller in ["cpuacct", "memory", "pids"] {
            let dir = root.path().join(controller).join("pod");
            fs::create_dir_all(&dir).unwrap();
            roots.insert(controller.to_string(), root.path().join(controller));
        }
        let at = |c: &str, f: &str| root.path().join(c).join("pod").join(f);
        fs::write(at("cpuacct", "cpuacct.usage"), "5000000000\n").unwrap();
        fs::write(at("memory", "memory.usage_in_bytes"), "1000\n").unwrap();
        fs::write(
            at("memory", "memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        fs::write(
            at("memory", "memory.stat"),
            "cache 1\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\n",
        )
        .unwrap();
        fs::write(at("pids", "pids.current"), "4\n").unwrap();
        let usage = read_v1(&roots, Path::new("pod")).unwrap();
        assert_eq!(usage.cpu_nanos, Some(5_000_000_000));
        let memory = usage.memory.unwrap();
        assert_eq!(
            (memory.working_set, memory.rss, memory.page_faults),
            (700, 600, 7)
        );
        assert_eq!(memory.limit, None, "v1's huge limit is none");
        assert_eq!(usage.processes, Some(4));
        assert!(read_v1(&roots, Path::new("missing")).is_none());
    }

    #[test]
    fn v2_files_give_cpu_memory_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n",
        )
        .unwrap();
        fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        fs::write(
            dir.path().join("memory.stat"),
            "anon 1024\ninactive_file 96\n",
        )
        .unwrap();
        let usage = read_v2(dir.path()).unwrap();
        assert_eq!(
            (usage.cpu_nanos, usage.cpu_user_nanos),
            (Some(2_000_000), Some(1_500_000))
        );
        let memory = usage.memory.unwrap();
        assert_eq!((memory.working_set, memory.limit), (4000, None));
    }
}
