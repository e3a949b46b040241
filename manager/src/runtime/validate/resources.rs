//! A container's cgroup limits and OOM score, within the bounds the kernel takes: out of them,
//! runc fails (an Internal error after the container's record, bundle and layer exist) or,
//! worse, a value is silently cut to another one.

use std::collections::HashMap;

use crust_proto::cri::{HugepageLimit, LinuxContainerResources};

use super::cpuset::{self, MAX_CPUS, MAX_NODES};
use super::invalid;
use crate::error::{ManagerError, Result};

/// The kernel's bounds of `oom_score_adj` (OOM_SCORE_ADJ_MIN, OOM_SCORE_ADJ_MAX).
const OOM_SCORE_ADJ: std::ops::RangeInclusive<i64> = -1000..=1000;
/// The kernel's bounds of `cpu.shares` (MIN_SHARES, MAX_SHARES); 0 means unset.
const CPU_SHARES: std::ops::RangeInclusive<i64> = 2..=262_144;
/// The kernel's bounds of a CFS period in µs (1 ms to 1 s); 0 means unset.
const CPU_PERIOD: std::ops::RangeInclusive<i64> = 1000..=1_000_000;
/// The kernel's bounds of a CFS quota in µs: at least 1 ms, at most what its bandwidth
/// arithmetic holds (2^44 - 1); 0 or -1 mean unlimited.
const CPU_QUOTA: std::ops::RangeInclusive<i64> = 1000..=(1 << 44) - 1;

fn out_of(field: &str, value: i64, allowed: &str) -> ManagerError {
    invalid(format!("{field} {value} is out of range: {allowed}"))
}

fn oom_score_adj(value: i64) -> Result<()> {
    if !OOM_SCORE_ADJ.contains(&value) {
        return Err(out_of("oom_score_adj", value, "-1000 to 1000"));
    }
    Ok(())
}

fn cpu(resources: &LinuxContainerResources) -> Result<()> {
    let shares = resources.cpu_shares;
    if shares != 0 && !CPU_SHARES.contains(&shares) {
        return Err(out_of("cpu_shares", shares, "0 (unset) or 2 to 262144"));
    }
    let period = resources.cpu_period;
    if period != 0 && !CPU_PERIOD.contains(&period) {
        return Err(out_of(
            "cpu_period",
            period,
            "0 (unset) or 1000 to 1000000 µs",
        ));
    }
    let quota = resources.cpu_quota;
    if quota != 0 && quota != -1 && !CPU_QUOTA.contains(&quota) {
        return Err(out_of(
            "cpu_quota",
            quota,
            "0 or -1 (unlimited), or at least 1000 µs",
        ));
    }
    Ok(())
}

/// The kernel takes any memory limit (it rounds it up to a page), so only a negative one is
/// refused: 0 is kubelet's "no limit". Swap is memory plus swap, as in cgroup v1 and runc:
/// -1 is unlimited, 0 unset, and otherwise it cannot be below the memory limit.
fn memory(resources: &LinuxContainerResources) -> Result<()> {
    let memory = resources.memory_limit_in_bytes;
    if memory < 0 {
        return Err(out_of(
            "memory_limit_in_bytes",
            memory,
            "0 (no limit) or more",
        ));
    }
    let swap = resources.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(out_of(
            "memory_swap_limit_in_bytes",
            swap,
            "-1 (unlimited), 0 (unset) or more",
        ));
    }
    if memory > 0 && swap > 0 && swap < memory {
        return Err(invalid(format!(
            "memory_swap_limit_in_bytes {swap} is below memory_limit_in_bytes {memory}: it \
             counts memory and swap together"
        )));
    }
    Ok(())
}

/// Whether `size` is a huge page size as the hugetlb controller names its files and kubelet
/// sends them: a power of two followed by KB, MB or GB (`2MB`, `1GB`).
fn is_page_size(size: &str) -> bool {
    let Some(number) = ["KB", "MB", "GB"]
        .iter()
        .find_map(|unit| size.strip_suffix(unit))
    else {
        return false;
    };
    number.bytes().all(|b| b.is_ascii_digit())
        && !number.starts_with('0')
        && number.parse::<u32>().is_ok_and(u32::is_power_of_two)
}

fn hugepages(limits: &[HugepageLimit]) -> Result<()> {
    match limits.iter().find(|l| !is_page_size(&l.page_size)) {
        Some(bad) => Err(invalid(format!(
            "hugepage_limits page size {:?} is not a power of two followed by KB, MB or GB",
            bad.page_size
        ))),
        None => Ok(()),
    }
}

/// cgroup v2 settings: only on a cgroup v2 host (runc refuses them on v1), and each key a
/// file of the container's cgroup, `<controller>.<file>`, never a path elsewhere.
fn unified(settings: &HashMap<String, String>, cgroup_v2: bool) -> Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    if !cgroup_v2 {
        let mut keys: Vec<&str> = settings.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(invalid(format!(
            "unified {keys:?} is cgroup v2 only, and this host runs cgroup v1"
        )));
    }
    for key in settings.keys() {
        let well_formed = key.split_once('.').is_some_and(|(controller, file)| {
            !controller.is_empty()
                && controller
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !file.is_empty()
        }) && !key.contains("..")
            && !key.contains('/')
            && !key.chars().any(|c| c.is_control() || c.is_whitespace());
        if !well_formed {
            return Err(invalid(format!(
                "unified key {key:?} is not a cgroup file <controller>.<file>"
            )));
        }
    }
    Ok(())
}

/// Refuses limits the kernel would not take, or take as another value. `cgroup_v2` is whether
/// the host runs cgroup v2 alone, where `unified` settings apply.
pub fn check(resources: &LinuxContainerResources, cgroup_v2: bool) -> Result<()> {
    oom_score_adj(resources.oom_score_adj)?;
    cpu(resources)?;
    memory(resources)?;
    cpuset::check("cpuset_cpus", &resources.cpuset_cpus, MAX_CPUS)?;
    cpuset::check("cpuset_mems", &resources.cpuset_mems, MAX_NODES)?;
    hugepages(&resources.hugepage_limits)?;
    unified(&resources.unified, cgroup_v2)
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    /// What kubelet sends for a Burstable container with a 500m/1 CPU and 128Mi/256Mi
    /// memory request/limit, pinned by the CPU manager.
    fn kubelet() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 100_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            oom_score_adj: 968,
            cpuset_cpus: "0-3,6".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0,
                },
            ],
            unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
            memory_swap_limit_in_bytes: 256 << 20,
        }
    }

    fn with(change: impl FnOnce(&mut LinuxContainerResources)) -> LinuxContainerResources {
        let mut resources = kubelet();
        change(&mut resources);
        resources
    }

    #[test]
    fn kubelets_limits_and_unset_ones_pass() {
        check(&kubelet(), true).unwrap();
        check(&LinuxContainerResources::default(), false).unwrap();
        let accepted = [
            with(|r| r.oom_score_adj = -997),
            with(|r| r.oom_score_adj = -1000),
            with(|r| r.oom_score_adj = 1000),
            with(|r| r.cpu_shares = 2),
            with(|r| r.cpu_shares = 262_144),
            with(|r| r.cpu_quota = -1),
            with(|r| r.cpu_quota = 0),
            with(|r| r.cpu_quota = 1000),
            with(|r| r.cpu_quota = 64_000_000),
            with(|r| r.cpu_period = 0),
            with(|r| r.cpu_period = 1000),
            with(|r| r.cpu_period = 1_000_000),
            with(|r| r.memory_limit_in_bytes = 1),
            with(|r| r.memory_swap_limit_in_bytes = -1),
            with(|r| r.memory_swap_limit_in_bytes = 0),
            with(|r| r.memory_swap_limit_in_bytes = 512 << 20),
            with(|r| {
                r.memory_limit_in_bytes = 0;
                r.memory_swap_limit_in_bytes = 1 << 20;
            }),
            with(|r| r.hugepage_limits[0].page_size = "64KB".into()),
            with(|r| {
                r.unified = [
                    ("memory.high".to_string(), "1M".to_string()),
                    ("memory.swap.max".to_string(), "0".to_string()),
                    ("hugetlb.2MB.max".to_string(), "0".to_string()),
                    ("io.bfq.weight".to_string(), "100".to_string()),
                ]
                .into()
            }),
        ];
        for resources in accepted {
            check(&resources, true).unwrap_or_else(|e| panic!("{resources:?}: {e}"));
        }
    }

    #[test]
    fn each_value_out_of_bounds_is_refused_naming_its_field() {
        let refused = [
            (with(|r| r.oom_score_adj = 4_294_966_296), "oom_score_adj"),
            (with(|r| r.oom_score_adj = -1001), "oom_score_adj"),
            (with(|r| r.oom_score_adj = 1001), "oom_score_adj"),
            (with(|r| r.cpu_shares = 1), "cpu_shares"),
            (with(|r| r.cpu_shares = -2), "cpu_shares"),
            (with(|r| r.cpu_shares = 262_145), "cpu_shares"),
            (with(|r| r.cpu_quota = 999), "cpu_quota"),
            (with(|r| r.cpu_quota = -2), "cpu_quota"),
            (with(|r| r.cpu_quota = 1 << 44), "cpu_quota"),
            (with(|r| r.cpu_period = 999), "cpu_period"),
            (with(|r| r.cpu_period = 1_000_001), "cpu_period"),
            (with(|r| r.cpu_period = -1), "cpu_period"),
            (
                with(|r| r.memory_limit_in_bytes = -1),
                "memory_limit_in_bytes",
            ),
            (
                with(|r| r.memory_swap_limit_in_bytes = -2),
                "memory_swap_limit_in_bytes",
            ),
            (
                with(|r| r.memory_swap_limit_in_bytes = 128 << 20),
                "memory_swap_limit_in_bytes",
            ),
            (with(|r| r.cpuset_cpus = "3-1".into()), "cpuset_cpus"),
            (with(|r| r.cpuset_mems = "0,x".into()), "cpuset_mems"),
        ];
        for (resources, field) in refused {
            refused_for(check(&resources, true), field);
        }
    }

    #[test]
    fn hugepage_sizes_must_be_what_the_kernel_names() {
        for size in [
            "", "2", "2M", "2mb", "2 MB", "02MB", "3MB", "0MB", "-2MB", "2MiB", "1TB",
        ] {
            let resources = with(|r| r.hugepage_limits[1].page_size = size.into());
            refused_for(check(&resources, true), "hugepage_limits");
        }
    }

    #[test]
    fn unified_is_cgroup_v2_only_and_names_cgroup_files() {
        refused_for(check(&kubelet(), false), "cgroup v2 only");
        for key in [
            "memory",
            ".high",
            "memory.",
            "Memory.high",
            "memory/../x.max",
            "../memory.max",
            "memory..max",
            "memory.high\n",
            "memory. high",
        ] {
            let resources = with(|r| r.unified = [(key.to_string(), "1".to_string())].into());
            refused_for(check(&resources, true), "unified key");
        }
    }
}
