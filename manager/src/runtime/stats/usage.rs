//! CPU, memory and process figures out of a task's cgroup metrics (v1 or v2), and the CPU
//! rate (nano cores) computed over the window between two samples of a cumulative counter.

use std::collections::HashMap;
use std::sync::Mutex;

use super::super::lock;
use super::super::shim::TaskMetrics;

/// A v1 limit at or above this is "no limit": the kernel reports unlimited as the largest
/// page-aligned i64 (0x7FFFFFFFFFFFF000), and v2's "max" arrives as u64::MAX.
const UNLIMITED: u64 = 1 << 62;

/// The memory figures kubelet uses, in bytes (faults in counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    /// All memory charged to the cgroup, page cache included.
    pub usage: u64,
    /// usage − inactive file pages (not below 0): what eviction acts on.
    pub working_set: u64,
    /// Anonymous memory (and swap cache).
    pub rss: u64,
    /// Page cache.
    pub cache: u64,
    /// Page faults, cumulative.
    pub page_faults: u64,
    /// Major page faults, cumulative.
    pub major_page_faults: u64,
    /// The limit, when one is set.
    pub limit: Option<u64>,
}

impl MemoryFigures {
    /// What is left below the limit, when one is set.
    pub fn available(&self) -> Option<u64> {
        self.limit
            .map(|limit| limit.saturating_sub(self.working_set))
    }
}

/// What one cgroup (or a sum of cgroups) uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time, cumulative, in ns.
    pub cpu_nanos: Option<u64>,
    /// User CPU time, cumulative, in ns.
    pub cpu_user_nanos: Option<u64>,
    /// System CPU time, cumulative, in ns.
    pub cpu_system_nanos: Option<u64>,
    /// Memory.
    pub memory: Option<MemoryFigures>,
    /// Processes (tasks) in the cgroup.
    pub processes: Option<u64>,
}

fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

fn limit(value: u64) -> Option<u64> {
    (value != 0 && value < UNLIMITED).then_some(value)
}

impl From<&TaskMetrics> for CgroupUsage {
    fn from(metrics: &TaskMetrics) -> Self {
        match metrics {
            TaskMetrics::V1(m) => {
                let cpu = m.cpu.as_ref().and_then(|c| c.usage.as_ref());
                Self {
                    cpu_nanos: cpu.map(|u| u.total),
                    cpu_user_nanos: cpu.map(|u| u.user),
                    cpu_system_nanos: cpu.map(|u| u.kernel),
                    memory: m.memory.as_ref().map(|memory| {
                        let usage = memory.usage.as_ref().map(|u| u.usage).unwrap_or(0);
                        MemoryFigures {
                            usage,
                            // The total_ figures include the cgroup's descendants, as usage does.
                            working_set: working_set(usage, memory.total_inactive_file),
                            rss: memory.total_rss,
                            cache: memory.total_cache,
                            page_faults: memory.total_pg_fault,
                            major_page_faults: memory.total_pg_maj_fault,
                            limit: memory.usage.as_ref().and_then(|u| limit(u.limit)),
                        }
                    }),
                    processes: m.pids.as_ref().map(|p| p.current),
                }
            }
            TaskMetrics::V2(m) => {
                let cpu = m.cpu.as_ref();
                Self {
                    cpu_nanos: cpu.map(|c| c.usage_usec.saturating_mul(1000)),
                    cpu_user_nanos: cpu.map(|c| c.user_usec.saturating_mul(1000)),
                    cpu_system_nanos: cpu.map(|c| c.system_usec.saturating_mul(1000)),
                    memory: m.memory.as_ref().map(|memory| MemoryFigures {
                        usage: memory.usage,
                        working_set: working_set(memory.usage, memory.inactive_file),
                        rss: memory.anon,
                        cache: memory.file,
                        page_faults: memory.pgfault,
                        major_page_faults: memory.pgmajfault,
                        limit: limit(memory.usage_limit),
                    }),
                    processes: m.pids.as_ref().map(|p| p.current),
                }
            }
        }
    }
}

fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}

impl CgroupUsage {
    /// The sum of `self` and `other` (a pod's usage from its cgroups'); a sum has no limit.
    pub fn plus(&self, other: &CgroupUsage) -> CgroupUsage {
        let memory = match (self.memory, other.memory) {
            (Some(a), Some(b)) => Some(MemoryFigures {
                usage: a.usage.saturating_add(b.usage),
                working_set: a.working_set.saturating_add(b.working_set),
                rss: a.rss.saturating_add(b.rss),
                cache: a.cache.saturating_add(b.cache),
                page_faults: a.page_faults.saturating_add(b.page_faults),
                major_page_faults: a.major_page_faults.saturating_add(b.major_page_faults),
                limit: None,
            }),
            (a, b) => a.or(b).map(|m| MemoryFigures { limit: None, ..m }),
        };
        CgroupUsage {
            cpu_nanos: add(self.cpu_nanos, other.cpu_nanos),
            cpu_user_nanos: add(self.cpu_user_nanos, other.cpu_user_nanos),
            cpu_system_nanos: add(self.cpu_system_nanos, other.cpu_system_nanos),
            memory,
            processes: add(self.processes, other.processes),
        }
    }
}

/// Samples closer together than this give no new rate: the previous one is repeated, so
/// two callers a moment apart (kubelet's ListPodSandboxStats right after ListContainerStats)
/// do not get a rate over a window of a few milliseconds.
const MIN_WINDOW_NANOS: i64 = 500_000_000;
/// How many samples are kept at most (containers plus pods); the oldest goes first.
const MAX_SAMPLES: usize = 16_384;

/// The last CPU sample of a container or pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    /// When, ns since the epoch.
    at: i64,
    /// Cumulative CPU time then, ns.
    usage: u64,
    /// The rate computed when this sample was taken.
    nano_cores: Option<u64>,
}

/// What a new sample makes of the previous one: the rate, and the sample to keep (none to
/// keep the previous one).
fn next_sample(
    previous: Option<&CpuSample>,
    at: i64,
    usage: u64,
) -> (Option<u64>, Option<CpuSample>) {
    let fresh = |nano_cores| CpuSample {
        at,
        usage,
        nano_cores,
    };
    let Some(previous) = previous else {
        // The first sample has no window, as containerd and cAdvisor report it.
        return (None, Some(fresh(None)));
    };
    if usage < previous.usage || at < previous.at {
        // The counter went back (a new cgroup under the same id), or the clock did (set
        // back): no window to measure over, a new start.
        return (None, Some(fresh(None)));
    }
    let window = at - previous.at;
    if window < MIN_WINDOW_NANOS {
        return (previous.nano_cores, None);
    }
    let used = (usage - previous.usage) as u128;
    let rate = used * 1_000_000_000 / window as u128;
    let rate = u64::try_from(rate).unwrap_or(u64::MAX);
    (Some(rate), Some(fresh(Some(rate))))
}

/// The last CPU sample per container and pod id.
#[derive(Debug, Default)]
pub struct CpuSamples(Mutex<HashMap<String, CpuSample>>);

impl CpuSamples {
    /// Records `usage` (cumulative ns) of `id` at `at`; returns the rate since the previous
    /// sample, in nano cores.
    pub fn nano_cores(&self, id: &str, at: i64, usage: u64) -> Option<u64> {
        let mut samples = lock(&self.0);
        let (rate, keep) = next_sample(samples.get(id), at, usage);
        if let Some(keep) = keep {
            if samples.len() >= MAX_SAMPLES && !samples.contains_key(id) {
                let oldest = samples
                    .iter()
                    .min_by_key(|(_, s)| s.at)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    samples.remove(&oldest);
                }
            }
            samples.insert(id.to_string(), keep);
        }
        rate
    }

    /// Drops `id`'s sample (it was removed).
    pub fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cgroups::{v1, v2};
    use crust_proto::protobuf::MessageField;

    const MIB: u64 = 1 << 20;

    fn v1_metrics(usage: u64, inactive_file: u64, limit: u64) -> TaskMetrics {
        let m = v1::Metrics {
            memory: MessageField::some(v1::MemoryStat {
                total_inactive_file: inactive_file,
                // The cgroup's own figure, without descendants: not what is used.
                inactive_file: 1,
                total_rss: 7 * MIB,
                total_cache: 3 * MIB,
                total_pg_fault: 11,
                total_pg_maj_fault: 2,
                usage: MessageField::some(v1::MemoryEntry {
                    usage,
                    limit,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            cpu: MessageField::some(v1::CPUStat {
                usage: MessageField::some(v1::CPUUsage {
                    total: 5_000,
                    user: 3_000,
                    kernel: 2_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            pids: MessageField::some(v1::PidsStat {
                current: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        TaskMetrics::V1(Box::new(m))
    }

    fn v2_metrics(usage: u64, inactive_file: u64, limit: u64) -> TaskMetrics {
        let m = v2::Metrics {
            memory: MessageField::some(v2::MemoryStat {
                usage,
                inactive_file,
                usage_limit: limit,
                anon: 7 * MIB,
                file: 3 * MIB,
                pgfault: 11,
                pgmajfault: 2,
                ..Default::default()
            }),
            cpu: MessageField::some(v2::CPUStat {
                usage_usec: 5,
                user_usec: 3,
                system_usec: 2,
                ..Default::default()
            }),
            pids: MessageField::some(v2::PidsStat {
                current: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        TaskMetrics::V2(Box::new(m))
    }

    #[test]
    fn working_set_is_usage_less_inactive_file_in_both_versions() {
        for metrics in [
            v1_metrics(100 * MIB, 30 * MIB, 0x7FFF_FFFF_FFFF_F000),
            v2_metrics(100 * MIB, 30 * MIB, u64::MAX),
        ] {
            let usage = CgroupUsage::from(&metrics);
            let memory = usage.memory.unwrap();
            assert_eq!(memory.usage, 100 * MIB, "{metrics:?}");
            assert_eq!(memory.working_set, 70 * MIB);
            assert_eq!(memory.rss, 7 * MIB);
            assert_eq!(memory.cache, 3 * MIB);
            assert_eq!((memory.page_faults, memory.major_page_faults), (11, 2));
            // Unlimited: no available bytes.
            assert_eq!(memory.limit, None);
            assert_eq!(memory.available(), None);
            assert_eq!(usage.cpu_nanos, Some(5_000));
            assert_eq!(usage.cpu_user_nanos, Some(3_000));
            assert_eq!(usage.cpu_system_nanos, Some(2_000));
            assert_eq!(usage.processes, Some(4));
        }
    }

    #[test]
    fn working_set_never_goes_below_zero_and_a_limit_gives_available_bytes() {
        for metrics in [
            v1_metrics(10 * MIB, 30 * MIB, 64 * MIB),
            v2_metrics(10 * MIB, 30 * MIB, 64 * MIB),
        ] {
            let memory = CgroupUsage::from(&metrics).memory.unwrap();
            assert_eq!(memory.working_set, 0);
            assert_eq!(memory.available(), Some(64 * MIB));
        }
        let memory = CgroupUsage::from(&v2_metrics(80 * MIB, 10 * MIB, 64 * MIB))
            .memory
            .unwrap();
        assert_eq!(memory.available(), Some(0), "above the limit: nothing left");
    }

    #[test]
    fn metrics_without_controllers_give_no_figures() {
        let usage = CgroupUsage::from(&TaskMetrics::V1(Box::default()));
        assert_eq!(usage, CgroupUsage::default());
    }

    #[test]
    fn sums_add_what_each_has_and_drop_limits() {
        let a = CgroupUsage::from(&v1_metrics(10 * MIB, 0, 64 * MIB));
        let b = CgroupUsage {
            cpu_nanos: Some(1),
            ..Default::default()
        };
        let sum = a.plus(&a).plus(&b);
        assert_eq!(sum.cpu_nanos, Some(10_001));
        assert_eq!(sum.processes, Some(8));
        let memory = sum.memory.unwrap();
        assert_eq!(memory.usage, 20 * MIB);
        assert_eq!(memory.limit, None);
        assert_eq!(b.plus(&b).memory, None);
    }

    #[test]
    fn nano_cores_come_from_the_window_between_samples() {
        let samples = CpuSamples::default();
        // Wall-clock seconds (i64, as timestamps) and CPU seconds (u64, as counters).
        let at = |seconds: i64| seconds * 1_000_000_000;
        let cpu = |seconds: u64| seconds * 1_000_000_000;
        assert_eq!(samples.nano_cores("c", at(10), 0), None, "first sample");
        // One CPU second over two seconds: half a core.
        assert_eq!(samples.nano_cores("c", at(12), cpu(1)), Some(500_000_000));
        // A moment later: the same rate again, the window not restarted.
        assert_eq!(
            samples.nano_cores("c", at(12) + 1_000, cpu(2)),
            Some(500_000_000)
        );
        // Two full cores over the next second (from the kept sample at 12 s).
        assert_eq!(samples.nano_cores("c", at(13), cpu(3)), Some(2_000_000_000));
        // The counter reset (a new cgroup under the id): no rate, a new start.
        assert_eq!(samples.nano_cores("c", at(14), 1_000), None);
        assert_eq!(
            samples.nano_cores("c", at(15), 1_000 + cpu(1) / 4),
            Some(250_000_000)
        );
        // The clock set back: no rate (not a huge or negative one), a new start.
        assert_eq!(samples.nano_cores("c", 0, cpu(2)), None);
        assert_eq!(samples.nano_cores("c", at(1), cpu(3)), Some(1_000_000_000));
        // Others are separate; forgetting starts over.
        assert_eq!(samples.nano_cores("d", at(15), 7), None);
        samples.forget("c");
        assert_eq!(samples.nano_cores("c", at(16), cpu(2)), None);
    }

    #[test]
    fn samples_are_bounded() {
        let samples = CpuSamples::default();
        for i in 0..MAX_SAMPLES + 10 {
            samples.nano_cores(&format!("c{i}"), i as i64, 1);
        }
        assert_eq!(samples.len(), MAX_SAMPLES);
        // The oldest went.
        assert!(!lock(&samples.0).contains_key("c0"));
        assert!(lock(&samples.0).contains_key(&format!("c{}", MAX_SAMPLES + 9)));
    }
}
