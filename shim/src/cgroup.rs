//! The cgroup a container runs in: where it is on this host, and its metrics in containerd's
//! `io.containerd.cgroups.v1.Metrics` / `io.containerd.cgroups.v2.Metrics` form.
//!
//! On a hybrid host (v1 controllers plus a cgroup2 mount, like this project's CI) runc puts
//! resources in the v1 controllers, so a process with any v1 controller is read as v1.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crust_proto::cgroups::{v1, v2};
use crust_proto::protobuf::MessageField;
use crust_proto::typeurl;
use crust_proto::wellknown::Any;

use crate::error::{Result, ShimError};

/// USER_HZ: the unit of `cpuacct.stat`.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// A container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1: one directory per controller.
    V1 {
        /// Controller name → the container's directory in that hierarchy.
        controllers: HashMap<String, PathBuf>,
    },
    /// cgroup v2: one directory.
    V2 {
        /// The container's directory.
        dir: PathBuf,
    },
}

impl Cgroup {
    /// The cgroup `pid` is in.
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        let membership = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        Self::resolve(&membership, &mountinfo)
            .ok_or_else(|| io::Error::other(format!("pid {pid} is in no mounted cgroup")))
    }

    /// Resolves `/proc/<pid>/cgroup` against the mount table.
    pub fn resolve(membership: &str, mountinfo: &str) -> Option<Self> {
        let mounts = CgroupMounts::parse(mountinfo);
        let mut controllers = HashMap::new();
        let mut unified = None;
        for line in membership.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(names), Some(path)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if names.is_empty() {
                unified = mounts
                    .v2
                    .as_ref()
                    .map(|(root, mount)| join_below(mount, root, path));
                continue;
            }
            for name in names.split(',').filter(|n| !n.starts_with("name=")) {
                if let Some((root, mount)) = mounts.v1.get(name) {
                    controllers.insert(name.to_string(), join_below(mount, root, path));
                }
            }
        }
        if !controllers.is_empty() {
            Some(Cgroup::V1 { controllers })
        } else {
            unified.map(|dir| Cgroup::V2 { dir })
        }
    }

    /// The directory holding the memory controller's files.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1 { controllers } => controllers.get("memory").map(PathBuf::as_path),
            Cgroup::V2 { dir } => Some(dir),
        }
    }

    /// Whether the cgroup still exists.
    pub fn exists(&self) -> bool {
        match self {
            Cgroup::V1 { controllers } => controllers.values().any(|dir| dir.is_dir()),
            Cgroup::V2 { dir } => dir.is_dir(),
        }
    }

    /// The cgroup's metrics, packed as containerd packs them.
    pub fn metrics(&self) -> Result<Any> {
        if !self.exists() {
            return Err(ShimError::NotFound(
                "the container's cgroup no longer exists".into(),
            ));
        }
        let packed = match self {
            Cgroup::V1 { controllers } => {
                typeurl::pack(typeurl::CGROUPS_V1_METRICS, &v1_metrics(controllers))
            }
            Cgroup::V2 { dir } => typeurl::pack(typeurl::CGROUPS_V2_METRICS, &v2_metrics(dir)),
        };
        packed.map_err(|e| ShimError::InvalidArgument(format!("encode metrics: {e}")))
    }
}

/// Moves `pid` into the cgroup at `path` (relative to the hierarchy roots) in every
/// hierarchy that has it: the v1 controllers, or the cgroup2 tree on a pure v2 host.
pub fn add_process(path: &str, pid: u32) -> io::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = CgroupMounts::parse(&mountinfo);
    let relative = path.trim_start_matches('/');
    let mut dirs: Vec<PathBuf> = mounts
        .v1
        .values()
        .map(|(_, mount)| mount.join(relative))
        .collect();
    if dirs.is_empty() {
        dirs.extend(mounts.v2.iter().map(|(_, mount)| mount.join(relative)));
    }
    dirs.sort();
    dirs.dedup();
    let mut added = false;
    for dir in dirs.iter().filter(|dir| dir.is_dir()) {
        fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        added = true;
    }
    if added {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cgroup {path} exists in no hierarchy"),
        ))
    }
}

/// `mount` + (`path` − `root`): where a cgroup path is, given the hierarchy's mount.
fn join_below(mount: &Path, root: &str, path: &str) -> PathBuf {
    let relative = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    mount.join(relative)
}

/// cgroup mount points: v1 by controller, and the cgroup2 mount (root, mount point).
#[derive(Debug, Default)]
struct CgroupMounts {
    v1: HashMap<String, (String, PathBuf)>,
    v2: Option<(String, PathBuf)>,
}

impl CgroupMounts {
    fn parse(mountinfo: &str) -> Self {
        let mut mounts = CgroupMounts::default();
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = before.split(' ').collect();
            let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
                continue;
            };
            let mut after = after.split(' ');
            let (Some(fs_type), _, Some(options)) = (after.next(), after.next(), after.next())
            else {
                continue;
            };
            let entry = (root.to_string(), PathBuf::from(mount));
            match fs_type {
                "cgroup2" => mounts.v2 = Some(entry),
                "cgroup" => {
                    for option in options.split(',') {
                        if !matches!(option, "rw" | "ro") && !option.contains('=') {
                            mounts.v1.insert(option.to_string(), entry.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// A `key value` file such as `memory.stat`, `cpu.stat`, `memory.events`.
fn read_flat(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(' ')?;
                    Some((key.to_string(), value.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A cgroup v2 limit file: `max` ("no limit") reads as `u64::MAX`, as containerd's cgroups
/// library reports it for v2 (for v1, whose `pids.max` also says `max`, it reports 0, which
/// `read_u64` gives).
fn read_v2_limit(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    match text.trim() {
        "max" => u64::MAX,
        number => number.parse().unwrap_or(0),
    }
}

fn v1_metrics(controllers: &HashMap<String, PathBuf>) -> v1::Metrics {
    let mut metrics = v1::Metrics::default();
    if let Some(dir) = controllers.get("pids") {
        metrics.pids = MessageField::some(v1::PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_u64(&dir.join("pids.max")),
            ..Default::default()
        });
    }
    let mut cpu = v1::CPUStat::default();
    if let Some(dir) = controllers.get("cpuacct") {
        let ticks = read_flat(&dir.join("cpuacct.stat"));
        let nanos = |ticks: u64| ticks * 1_000_000_000 / CLOCK_TICKS_PER_SECOND;
        cpu.usage = MessageField::some(v1::CPUUsage {
            total: read_u64(&dir.join("cpuacct.usage")),
            user: nanos(ticks.get("user").copied().unwrap_or(0)),
            kernel: nanos(ticks.get("system").copied().unwrap_or(0)),
            per_cpu: fs::read_to_string(dir.join("cpuacct.usage_percpu"))
                .map(|text| {
                    text.split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        });
    }
    if let Some(dir) = controllers.get("cpu") {
        let stat = read_flat(&dir.join("cpu.stat"));
        let get = |key: &str| stat.get(key).copied().unwrap_or(0);
        cpu.throttling = MessageField::some(v1::Throttle {
            periods: get("nr_periods"),
            throttled_periods: get("nr_throttled"),
            throttled_time: get("throttled_time"),
            ..Default::default()
        });
    }
    if cpu.usage.is_some() || cpu.throttling.is_some() {
        metrics.cpu = MessageField::some(cpu);
    }
    if let Some(dir) = controllers.get("memory") {
        let stat = read_flat(&dir.join("memory.stat"));
        let get = |key: &str| stat.get(key).copied().unwrap_or(0);
        let entry = |prefix: &str| v1::MemoryEntry {
            usage: read_u64(&dir.join(format!("{prefix}usage_in_bytes"))),
            max: read_u64(&dir.join(format!("{prefix}max_usage_in_bytes"))),
            limit: read_u64(&dir.join(format!("{prefix}limit_in_bytes"))),
            failcnt: read_u64(&dir.join(format!("{prefix}failcnt"))),
            ..Default::default()
        };
        metrics.memory = MessageField::some(v1::MemoryStat {
            cache: get("cache"),
            rss: get("rss"),
            rss_huge: get("rss_huge"),
            mapped_file: get("mapped_file"),
            dirty: get("dirty"),
            writeback: get("writeback"),
            pg_pg_in: get("pgpgin"),
            pg_pg_out: get("pgpgout"),
            pg_fault: get("pgfault"),
            pg_maj_fault: get("pgmajfault"),
            inactive_anon: get("inactive_anon"),
            active_anon: get("active_anon"),
            inactive_file: get("inactive_file"),
            active_file: get("active_file"),
            unevictable: get("unevictable"),
            hierarchical_memory_limit: get("hierarchical_memory_limit"),
            hierarchical_swap_limit: get("hierarchical_memsw_limit"),
            total_cache: get("total_cache"),
            total_rss: get("total_rss"),
            total_rss_huge: get("total_rss_huge"),
            total_mapped_file: get("total_mapped_file"),
            total_dirty: get("total_dirty"),
            total_writeback: get("total_writeback"),
            total_pg_pg_in: get("total_pgpgin"),
            total_pg_pg_out: get("total_pgpgout"),
            total_pg_fault: get("total_pgfault"),
            total_pg_maj_fault: get("total_pgmajfault"),
            total_inactive_anon: get("total_inactive_anon"),
            total_active_anon: get("total_active_anon"),
            total_inactive_file: get("total_inactive_file"),
            total_active_file: get("total_active_file"),
            total_unevictable: get("total_unevictable"),
            usage: MessageField::some(entry("memory.")),
            swap: MessageField::some(entry("memory.memsw.")),
            kernel: MessageField::some(entry("memory.kmem.")),
            kernel_tcp: MessageField::some(entry("memory.kmem.tcp.")),
            ..Default::default()
        });
        let oom = read_oom_control(dir);
        metrics.memory_oom_control = MessageField::some(v1::MemoryOomControl {
            oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
            under_oom: oom.get("under_oom").copied().unwrap_or(0),
            oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(dir) = controllers.get("blkio") {
        metrics.blkio = MessageField::some(v1::BlkIOStat {
            io_service_bytes_recursive: blkio_entries(&dir.join("blkio.throttle.io_service_bytes")),
            io_serviced_recursive: blkio_entries(&dir.join("blkio.throttle.io_serviced")),
            ..Default::default()
        });
    }
    metrics
}

/// `memory.oom_control` of a v1 memory cgroup.
pub fn read_oom_control(memory_dir: &Path) -> HashMap<String, u64> {
    read_flat(&memory_dir.join("memory.oom_control"))
}

/// Lines `major:minor Op value` of a blkio file.
fn blkio_entries(path: &Path) -> Vec<v1::BlkIOEntry> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, op, value) = (fields.next()?, fields.next()?, fields.next()?);
            let (major, minor) = device.split_once(':')?;
            Some(v1::BlkIOEntry {
                op: op.to_string(),
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let cpu = read_flat(&dir.join("cpu.stat"));
    let memory = read_flat(&dir.join("memory.stat"));
    let events = read_flat(&dir.join("memory.events"));
    let cpu_get = |key: &str| cpu.get(key).copied().unwrap_or(0);
    let get = |key: &str| memory.get(key).copied().unwrap_or(0);
    let event = |key: &str| events.get(key).copied().unwrap_or(0);
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_v2_limit(&dir.join("pids.max")),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: cpu_get("usage_usec"),
            user_usec: cpu_get("user_usec"),
            system_usec: cpu_get("system_usec"),
            nr_periods: cpu_get("nr_periods"),
            nr_throttled: cpu_get("nr_throttled"),
            throttled_usec: cpu_get("throttled_usec"),
            nr_bursts: cpu_get("nr_bursts"),
            burst_usec: cpu_get("burst_usec"),
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: get("anon"),
            file: get("file"),
            kernel_stack: get("kernel_stack"),
            slab: get("slab"),
            sock: get("sock"),
            shmem: get("shmem"),
            file_mapped: get("file_mapped"),
            file_dirty: get("file_dirty"),
            file_writeback: get("file_writeback"),
            anon_thp: get("anon_thp"),
            inactive_anon: get("inactive_anon"),
            active_anon: get("active_anon"),
            inactive_file: get("inactive_file"),
            active_file: get("active_file"),
            unevictable: get("unevictable"),
            slab_reclaimable: get("slab_reclaimable"),
            slab_unreclaimable: get("slab_unreclaimable"),
            pgfault: get("pgfault"),
            pgmajfault: get("pgmajfault"),
            workingset_refault: get("workingset_refault"),
            workingset_activate: get("workingset_activate"),
            workingset_nodereclaim: get("workingset_nodereclaim"),
            pgrefill: get("pgrefill"),
            pgscan: get("pgscan"),
            pgsteal: get("pgsteal"),
            pgactivate: get("pgactivate"),
            pgdeactivate: get("pgdeactivate"),
            pglazyfree: get("pglazyfree"),
            pglazyfreed: get("pglazyfreed"),
            thp_fault_alloc: get("thp_fault_alloc"),
            thp_collapse_alloc: get("thp_collapse_alloc"),
            usage: read_u64(&dir.join("memory.current")),
            usage_limit: read_v2_limit(&dir.join("memory.max")),
            swap_usage: read_u64(&dir.join("memory.swap.current")),
            swap_limit: read_v2_limit(&dir.join("memory.swap.max")),
            max_usage: read_u64(&dir.join("memory.peak")),
            swap_max_usage: read_u64(&dir.join("memory.swap.peak")),
            ..Default::default()
        }),
        memory_events: MessageField::some(v2::MemoryEvents {
            low: event("low"),
            high: event("high"),
            max: event("max"),
            oom: event("oom"),
            oom_kill: event("oom_kill"),
            oom_group_kill: event("oom_group_kill"),
            ..Default::default()
        }),
        io: MessageField::some(v2::IOStat {
            usage: io_entries(&dir.join("io.stat")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Lines `major:minor rbytes=… wbytes=… rios=… wios=… …` of `io.stat`.
fn io_entries(path: &Path) -> Vec<v2::IOEntry> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut entry = v2::IOEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for field in fields {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                let value = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => entry.rbytes = value,
                    "wbytes" => entry.wbytes = value,
                    "rios" => entry.rios = value,
                    "wios" => entry.wios = value,
                    _ => {}
                }
            }
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crust_proto::protobuf::Message;

    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hosts_resolve_to_v1_controllers() {
        let membership = "9:name=systemd:/\n4:memory:/ns/c1\n2:cpuacct:/ns/c1\n1:cpu:/ns/c1\n8:pids:/ns/c1\n0::/\n";
        let cgroup = Cgroup::resolve(membership, HYBRID_MOUNTINFO).unwrap();
        let Cgroup::V1 { controllers } = &cgroup else {
            panic!("{cgroup:?}");
        };
        assert_eq!(
            controllers["memory"],
            Path::new("/sys/fs/cgroup/memory/ns/c1")
        );
        assert_eq!(
            controllers["cpuacct"],
            Path::new("/sys/fs/cgroup/cpuacct/ns/c1")
        );
        assert!(!controllers.contains_key("name=systemd"));
        assert_eq!(
            cgroup.memory_dir(),
            Some(Path::new("/sys/fs/cgroup/memory/ns/c1"))
        );
    }

    #[test]
    fn pure_v2_hosts_resolve_to_the_unified_directory() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroup = Cgroup::resolve("0::/kubepods/pod1/c1\n", mountinfo).unwrap();
        assert_eq!(
            cgroup,
            Cgroup::V2 {
                dir: PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")
            }
        );
        // A cgroup namespace root below the mount is taken into account.
        let nested = "30 23 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Cgroup::resolve("0::/kubepods/pod1\n", nested),
            Some(Cgroup::V2 {
                dir: PathBuf::from("/sys/fs/cgroup/pod1")
            })
        );
    }

    #[test]
    fn mounts_name_v1_controllers_and_the_v2_mount_only() {
        let mounts = CgroupMounts::parse(HYBRID_MOUNTINFO);
        let mut controllers: Vec<&str> = mounts.v1.keys().map(String::as_str).collect();
        controllers.sort();
        // Neither the mount options (rw) nor named hierarchies (name=systemd) are controllers.
        assert_eq!(controllers, ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(
            mounts.v1["memory"],
            ("/".to_string(), PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mounts.v2,
            Some(("/".to_string(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let none = CgroupMounts::parse("31 23 0:28 / /sys rw - sysfs sysfs rw\nnot a line\n");
        assert!(none.v1.is_empty() && none.v2.is_none());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn v2_metrics_from_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "pids.current", "3\n");
        write(d, "pids.max", "max\n");
        write(
            d,
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        );
        write(d, "memory.current", "4194304\n");
        write(d, "memory.max", "16777216\n");
        write(d, "memory.stat", "anon 1048576\nfile 2097152\npgfault 99\n");
        write(
            d,
            "memory.events",
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n",
        );
        write(
            d,
            "io.stat",
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let any = Cgroup::V2 {
            dir: d.to_path_buf(),
        }
        .metrics()
        .unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(metrics.pids.current, 3);
        assert_eq!(metrics.pids.limit, u64::MAX, "max means unlimited");
        assert_eq!(metrics.cpu.usage_usec, 1500);
        assert_eq!(metrics.cpu.nr_throttled, 1);
        assert_eq!(metrics.memory.usage, 4194304);
        assert_eq!(metrics.memory.usage_limit, 16777216);
        assert_eq!(metrics.memory.anon, 1048576);
        assert_eq!(metrics.memory.pgfault, 99);
        assert_eq!(metrics.memory_events.oom_kill, 1);
        assert_eq!(metrics.memory_events.max, 7);
        assert_eq!(metrics.io.usage.len(), 1);
        assert_eq!(
            (metrics.io.usage[0].rbytes, metrics.io.usage[0].wios),
            (4096, 2)
        );
    }

    #[test]
    fn v1_metrics_from_a_fixture_tree() {
        let root = tempfile::tempdir().unwrap();
        let mut controllers = HashMap::new();
        for name in ["memory", "cpuacct", "cpu", "pids", "blkio"] {
            let dir = root.path().join(name);
            fs::create_dir_all(&dir).unwrap();
            controllers.insert(name.to_string(), dir);
        }
        write(&controllers["pids"], "pids.current", "2\n");
        write(&controllers["pids"], "pids.max", "100\n");
        write(&controllers["cpuacct"], "cpuacct.usage", "123456789\n");
        write(
            &controllers["cpuacct"],
            "cpuacct.usage_percpu",
            "100000000 23456789 \n",
        );
        write(
            &controllers["cpuacct"],
            "cpuacct.stat",
            "user 7\nsystem 3\n",
        );
        write(
            &controllers["cpu"],
            "cpu.stat",
            "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
        );
        let memory = &controllers["memory"];
        write(memory, "memory.usage_in_bytes", "2097152\n");
        write(memory, "memory.max_usage_in_bytes", "3145728\n");
        write(memory, "memory.limit_in_bytes", "33554432\n");
        write(memory, "memory.failcnt", "4\n");
        write(
            memory,
            "memory.stat",
            "cache 4096\nrss 8192\ntotal_rss 8192\npgmajfault 1\n",
        );
        write(
            memory,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            &controllers["blkio"],
            "blkio.throttle.io_service_bytes",
            "8:0 Read 512\n8:0 Write 1024\nTotal 1536\n",
        );
        let pids = controllers["pids"].clone();
        let cgroup = Cgroup::V1 { controllers };
        let any = cgroup.metrics().unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let metrics = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((metrics.pids.current, metrics.pids.limit), (2, 100));
        // v1 without a limit reads as 0, as containerd's cgroups library reports it there.
        write(&pids, "pids.max", "max\n");
        let unlimited = v1::Metrics::parse_from_bytes(&cgroup.metrics().unwrap().value).unwrap();
        assert_eq!(unlimited.pids.limit, 0);
        assert_eq!(metrics.cpu.usage.total, 123456789);
        assert_eq!(metrics.cpu.usage.per_cpu, [100000000, 23456789]);
        assert_eq!(metrics.cpu.usage.user, 70_000_000);
        assert_eq!(metrics.cpu.usage.kernel, 30_000_000);
        assert_eq!(metrics.cpu.throttling.throttled_periods, 2);
        assert_eq!(metrics.memory.usage.usage, 2097152);
        assert_eq!(metrics.memory.usage.limit, 33554432);
        assert_eq!(metrics.memory.usage.failcnt, 4);
        assert_eq!(metrics.memory.rss, 8192);
        assert_eq!(metrics.memory.total_rss, 8192);
        assert_eq!(metrics.memory_oom_control.oom_kill, 2);
        assert_eq!(metrics.blkio.io_service_bytes_recursive.len(), 2);
    }

    /// `key value` lines with a distinct value per key (1000 + its index), and those values.
    fn distinct(keys: &[&str]) -> (String, Vec<u64>) {
        let values: Vec<u64> = (0..keys.len() as u64).map(|i| 1000 + i).collect();
        let text = keys
            .iter()
            .zip(&values)
            .map(|(key, value)| format!("{key} {value}\n"))
            .collect();
        (text, values)
    }

    fn keys_of<F>(fields: &[(&'static str, F)]) -> Vec<&'static str> {
        fields.iter().map(|(key, _)| *key).collect()
    }

    type V1Field = fn(&v1::MemoryStat) -> u64;

    #[test]
    fn every_v1_memory_stat_key_lands_in_its_own_field() {
        // The kernel's memory.stat keys and containerd's v1 fields, as containerd's cgroups
        // library maps them.
        let fields: &[(&str, V1Field)] = &[
            ("cache", |m| m.cache),
            ("rss", |m| m.rss),
            ("rss_huge", |m| m.rss_huge),
            ("mapped_file", |m| m.mapped_file),
            ("dirty", |m| m.dirty),
            ("writeback", |m| m.writeback),
            ("pgpgin", |m| m.pg_pg_in),
            ("pgpgout", |m| m.pg_pg_out),
            ("pgfault", |m| m.pg_fault),
            ("pgmajfault", |m| m.pg_maj_fault),
            ("inactive_anon", |m| m.inactive_anon),
            ("active_anon", |m| m.active_anon),
            ("inactive_file", |m| m.inactive_file),
            ("active_file", |m| m.active_file),
            ("unevictable", |m| m.unevictable),
            ("hierarchical_memory_limit", |m| m.hierarchical_memory_limit),
            ("hierarchical_memsw_limit", |m| m.hierarchical_swap_limit),
            ("total_cache", |m| m.total_cache),
            ("total_rss", |m| m.total_rss),
            ("total_rss_huge", |m| m.total_rss_huge),
            ("total_mapped_file", |m| m.total_mapped_file),
            ("total_dirty", |m| m.total_dirty),
            ("total_writeback", |m| m.total_writeback),
            ("total_pgpgin", |m| m.total_pg_pg_in),
            ("total_pgpgout", |m| m.total_pg_pg_out),
            ("total_pgfault", |m| m.total_pg_fault),
            ("total_pgmajfault", |m| m.total_pg_maj_fault),
            ("total_inactive_anon", |m| m.total_inactive_anon),
            ("total_active_anon", |m| m.total_active_anon),
            ("total_inactive_file", |m| m.total_inactive_file),
            ("total_active_file", |m| m.total_active_file),
            ("total_unevictable", |m| m.total_unevictable),
        ];
        let (stat, values) = distinct(&keys_of(fields));
        let root = tempfile::tempdir().unwrap();
        let memory = root.path().to_path_buf();
        write(&memory, "memory.stat", &stat);
        // The four counter sets: usage, swap (memsw), kernel (kmem), kernel TCP.
        for (n, prefix) in [
            "memory.",
            "memory.memsw.",
            "memory.kmem.",
            "memory.kmem.tcp.",
        ]
        .iter()
        .enumerate()
        {
            let base = 100 * (n as u64 + 1);
            write(
                &memory,
                &format!("{prefix}usage_in_bytes"),
                &format!("{}", base + 1),
            );
            write(
                &memory,
                &format!("{prefix}max_usage_in_bytes"),
                &format!("{}", base + 2),
            );
            write(
                &memory,
                &format!("{prefix}limit_in_bytes"),
                &format!("{}", base + 3),
            );
            write(
                &memory,
                &format!("{prefix}failcnt"),
                &format!("{}", base + 4),
            );
        }
        write(
            &memory,
            "memory.oom_control",
            "oom_kill_disable 1\nunder_oom 5\noom_kill 9\n",
        );
        let metrics = v1_metrics(&[("memory".to_string(), memory)].into());
        for ((key, field), value) in fields.iter().zip(&values) {
            assert_eq!(field(&metrics.memory), *value, "memory.stat {key}");
        }
        let entries = [
            &metrics.memory.usage,
            &metrics.memory.swap,
            &metrics.memory.kernel,
            &metrics.memory.kernel_tcp,
        ];
        for (n, entry) in entries.into_iter().enumerate() {
            let base = 100 * (n as u64 + 1);
            assert_eq!(
                (entry.usage, entry.max, entry.limit, entry.failcnt),
                (base + 1, base + 2, base + 3, base + 4),
                "counter set {n}"
            );
        }
        let oom = &metrics.memory_oom_control;
        assert_eq!(
            (oom.oom_kill_disable, oom.under_oom, oom.oom_kill),
            (1, 5, 9)
        );
        assert!(metrics.cpu.is_none() && metrics.pids.is_none() && metrics.blkio.is_none());
    }

    #[test]
    fn v1_cpu_throttling_alone_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "cpu.stat",
            "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
        );
        let metrics = v1_metrics(&[("cpu".to_string(), dir.path().to_path_buf())].into());
        let throttling = &metrics.cpu.throttling;
        assert_eq!(
            (
                throttling.periods,
                throttling.throttled_periods,
                throttling.throttled_time
            ),
            (10, 2, 5000)
        );
        assert!(metrics.cpu.usage.is_none(), "no cpuacct controller");
    }

    #[test]
    fn v1_blkio_entries_keep_device_op_and_value() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "blkio.throttle.io_service_bytes",
            "8:0 Read 512\n8:16 Write 1024\nTotal 1536\n",
        );
        write(dir.path(), "blkio.throttle.io_serviced", "8:0 Read 3\n");
        let metrics = v1_metrics(&[("blkio".to_string(), dir.path().to_path_buf())].into());
        let bytes: Vec<_> = metrics
            .blkio
            .io_service_bytes_recursive
            .iter()
            .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
            .collect();
        assert_eq!(bytes, [(8, 0, "Read", 512), (8, 16, "Write", 1024)]);
        let serviced: Vec<_> = metrics
            .blkio
            .io_serviced_recursive
            .iter()
            .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
            .collect();
        assert_eq!(serviced, [(8, 0, "Read", 3)]);
    }

    type V2Memory = fn(&v2::MemoryStat) -> u64;
    type V2Cpu = fn(&v2::CPUStat) -> u64;
    type V2Events = fn(&v2::MemoryEvents) -> u64;

    #[test]
    fn every_v2_key_lands_in_its_own_field() {
        let memory_fields: &[(&str, V2Memory)] = &[
            ("anon", |m| m.anon),
            ("file", |m| m.file),
            ("kernel_stack", |m| m.kernel_stack),
            ("slab", |m| m.slab),
            ("sock", |m| m.sock),
            ("shmem", |m| m.shmem),
            ("file_mapped", |m| m.file_mapped),
            ("file_dirty", |m| m.file_dirty),
            ("file_writeback", |m| m.file_writeback),
            ("anon_thp", |m| m.anon_thp),
            ("inactive_anon", |m| m.inactive_anon),
            ("active_anon", |m| m.active_anon),
            ("inactive_file", |m| m.inactive_file),
            ("active_file", |m| m.active_file),
            ("unevictable", |m| m.unevictable),
            ("slab_reclaimable", |m| m.slab_reclaimable),
            ("slab_unreclaimable", |m| m.slab_unreclaimable),
            ("pgfault", |m| m.pgfault),
            ("pgmajfault", |m| m.pgmajfault),
            ("workingset_refault", |m| m.workingset_refault),
            ("workingset_activate", |m| m.workingset_activate),
            ("workingset_nodereclaim", |m| m.workingset_nodereclaim),
            ("pgrefill", |m| m.pgrefill),
            ("pgscan", |m| m.pgscan),
            ("pgsteal", |m| m.pgsteal),
            ("pgactivate", |m| m.pgactivate),
            ("pgdeactivate", |m| m.pgdeactivate),
            ("pglazyfree", |m| m.pglazyfree),
            ("pglazyfreed", |m| m.pglazyfreed),
            ("thp_fault_alloc", |m| m.thp_fault_alloc),
            ("thp_collapse_alloc", |m| m.thp_collapse_alloc),
        ];
        let cpu_fields: &[(&str, V2Cpu)] = &[
            ("usage_usec", |c| c.usage_usec),
            ("user_usec", |c| c.user_usec),
            ("system_usec", |c| c.system_usec),
            ("nr_periods", |c| c.nr_periods),
            ("nr_throttled", |c| c.nr_throttled),
            ("throttled_usec", |c| c.throttled_usec),
            ("nr_bursts", |c| c.nr_bursts),
            ("burst_usec", |c| c.burst_usec),
        ];
        let event_fields: &[(&str, V2Events)] = &[
            ("low", |e| e.low),
            ("high", |e| e.high),
            ("max", |e| e.max),
            ("oom", |e| e.oom),
            ("oom_kill", |e| e.oom_kill),
            ("oom_group_kill", |e| e.oom_group_kill),
        ];
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (memory_stat, memory_values) = distinct(&keys_of(memory_fields));
        let (cpu_stat, cpu_values) = distinct(&keys_of(cpu_fields));
        let (events, event_values) = distinct(&keys_of(event_fields));
        write(d, "memory.stat", &memory_stat);
        write(d, "cpu.stat", &cpu_stat);
        write(d, "memory.events", &events);
        for (file, value) in [
            ("memory.current", "11"),
            ("memory.max", "12"),
            ("memory.swap.current", "13"),
            ("memory.swap.max", "14"),
            ("memory.peak", "15"),
            ("memory.swap.peak", "16"),
            ("pids.current", "17"),
            ("pids.max", "18"),
        ] {
            write(d, file, &format!("{value}\n"));
        }
        let metrics = v2_metrics(d);
        for ((key, field), value) in memory_fields.iter().zip(&memory_values) {
            assert_eq!(field(&metrics.memory), *value, "memory.stat {key}");
        }
        for ((key, field), value) in cpu_fields.iter().zip(&cpu_values) {
            assert_eq!(field(&metrics.cpu), *value, "cpu.stat {key}");
        }
        for ((key, field), value) in event_fields.iter().zip(&event_values) {
            assert_eq!(field(&metrics.memory_events), *value, "memory.events {key}");
        }
        let m = &metrics.memory;
        assert_eq!(
            (
                m.usage,
                m.usage_limit,
                m.swap_usage,
                m.swap_limit,
                m.max_usage,
                m.swap_max_usage
            ),
            (11, 12, 13, 14, 15, 16)
        );
        assert_eq!((metrics.pids.current, metrics.pids.limit), (17, 18));
        // No limit ("max") reads as u64::MAX, as containerd's Go shim reports it.
        write(d, "memory.swap.max", "max\n");
        assert_eq!(v2_metrics(d).memory.swap_limit, u64::MAX);
    }

    #[test]
    fn io_stat_lines_keep_their_device_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io.stat");
        fs::write(
            &path,
            "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n259:1 wios=9\nbroken\n",
        )
        .unwrap();
        let entries: Vec<_> = io_entries(&path)
            .iter()
            .map(|e| (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios))
            .collect();
        assert_eq!(entries, [(8, 0, 1, 2, 3, 4), (259, 1, 0, 0, 0, 9)]);
        assert!(io_entries(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn flat_files_skip_what_is_not_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.stat");
        fs::write(&path, "a 1\nb x\nc\nd 4 \n").unwrap();
        let flat = read_flat(&path);
        assert_eq!(flat.len(), 2);
        assert_eq!((flat["a"], flat["d"]), (1, 4));
        assert!(read_flat(&dir.path().join("missing")).is_empty());
        assert_eq!(read_oom_control(dir.path()), HashMap::new());
    }

    #[test]
    fn a_removed_cgroup_is_not_found() {
        let gone = Cgroup::V2 {
            dir: PathBuf::from("/sys/fs/cgroup/does/not/exist"),
        };
        assert!(matches!(gone.metrics(), Err(ShimError::NotFound(_))));
    }
}
