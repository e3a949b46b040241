//! A container's devices and cgroup limits.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crust_proto::cri::{Device, HugepageLimit, LinuxContainerResources};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxHugepageLimit, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxResources,
};

use super::{check_path, spec_error};
use crate::error::{ManagerError, Result};
use crate::runtime::host::HostSupport;

/// Device cgroup rules: deny everything, then allow `allowed` (and every device when
/// privileged). runc adds the standard devices (null, zero, tty, …) itself.
pub fn device_rules(allowed: &[LinuxDeviceCgroup], privileged: bool) -> Result<LinuxResources> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(spec_error)?,
    ];
    rules.extend_from_slice(allowed);
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(rules));
    Ok(resources)
}

/// Directories under `/dev`, at any depth, whose entries are not the host's devices (runc
/// mounts its own pts, shm and mqueue; fd links to the process's own files; the rest are
/// other managers' private state), as runc's own host device walk skips them.
const NOT_HOST_DEVICES: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every character and block device under `dev`, as a privileged container gets them (as
/// containerd gives them). The console is the container's own.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut found = Vec::new();
    let mut pending = vec![dev.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if kind.is_dir() {
                if !NOT_HOST_DEVICES.iter().any(|n| name == *n) {
                    pending.push(path);
                }
                continue;
            }
            if !(kind.is_char_device() || kind.is_block_device()) || name == "console" {
                continue;
            }
            let requested = Device {
                host_path: path.display().to_string(),
                ..Default::default()
            };
            // A device that vanished meanwhile is simply not given.
            if let Ok((device, _)) = device(&requested) {
                found.push(device);
            }
        }
    }
    found.sort_by(|a, b| a.path().cmp(b.path()));
    found
}

/// A host device given to the container, and the cgroup rule that lets it use it.
pub fn device(spec: &Device) -> Result<(LinuxDevice, LinuxDeviceCgroup)> {
    check_path("device host path", &spec.host_path)?;
    let container_path = if spec.container_path.is_empty() {
        &spec.host_path
    } else {
        &spec.container_path
    };
    check_path("device container path", container_path)?;
    let permissions = if spec.permissions.is_empty() {
        "rwm"
    } else {
        &spec.permissions
    };
    if !permissions.chars().all(|c| "rwm".contains(c)) {
        return Err(ManagerError::InvalidArgument(format!(
            "device permissions {permissions:?} must be made of r, w and m"
        )));
    }
    let metadata = std::fs::metadata(&spec.host_path)
        .map_err(|e| ManagerError::InvalidArgument(format!("device {}: {e}", spec.host_path)))?;
    let typ = if metadata.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if metadata.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(ManagerError::InvalidArgument(format!(
            "{} is not a device",
            spec.host_path
        )));
    };
    let rdev = metadata.rdev();
    let (major, minor) = (
        i64::from(nix::sys::stat::major(rdev) as u32),
        i64::from(nix::sys::stat::minor(rdev) as u32),
    );
    let linux_device = LinuxDeviceBuilder::default()
        .path(container_path)
        .typ(typ)
        .major(major)
        .minor(minor)
        .file_mode(metadata.mode() & 0o777)
        .uid(metadata.uid())
        .gid(metadata.gid())
        .build()
        .map_err(spec_error)?;
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .major(major)
        .minor(minor)
        .access(permissions)
        .build()
        .map_err(spec_error)?;
    Ok((linux_device, rule))
}

/// Sets `limits` on `resources` as containerd does on `host`: CPU shares, quota, period and
/// cpusets; the memory limit with swap equal to it unless kubelet gives swap (no swap use by
/// default, Kubernetes' rule) where the host can limit swap at all; hugepage limits in sizes
/// the host has; `unified` as given (v2 only, checked earlier).
pub fn apply_limits(
    resources: &mut LinuxResources,
    limits: &LinuxContainerResources,
    host: &HostSupport,
) -> Result<()> {
    let mut cpu = LinuxCpuBuilder::default();
    if limits.cpu_shares > 0 {
        cpu = cpu.shares(limits.cpu_shares as u64);
    }
    if limits.cpu_quota != 0 {
        cpu = cpu.quota(limits.cpu_quota);
    }
    if limits.cpu_period > 0 {
        cpu = cpu.period(limits.cpu_period as u64);
    }
    if !limits.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(limits.cpuset_cpus.clone());
    }
    if !limits.cpuset_mems.is_empty() {
        cpu = cpu.mems(limits.cpuset_mems.clone());
    }
    resources.set_cpu(Some(cpu.build().map_err(spec_error)?));
    if limits.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(limits.memory_limit_in_bytes);
        if host.swap_limits {
            let swap = if limits.memory_swap_limit_in_bytes != 0 {
                limits.memory_swap_limit_in_bytes
            } else {
                limits.memory_limit_in_bytes
            };
            memory = memory.swap(swap);
        }
        resources.set_memory(Some(memory.build().map_err(spec_error)?));
    } else {
        resources.set_memory(None);
    }
    resources.set_hugepage_limits(hugepage_limits(&limits.hugepage_limits, host)?);
    resources.set_unified((!limits.unified.is_empty()).then(|| limits.unified.clone()));
    Ok(())
}

/// Hugepage limits in sizes the host has; none on a host without the hugetlb controller
/// that tolerates that, and a refusal on one that does not.
fn hugepage_limits(
    asked: &[HugepageLimit],
    host: &HostSupport,
) -> Result<Option<Vec<LinuxHugepageLimit>>> {
    if asked.is_empty() {
        return Ok(None);
    }
    for limit in asked {
        if !host.hugepage_sizes.contains(&limit.page_size) {
            return Err(ManagerError::InvalidArgument(format!(
                "hugepage size {:?} is not one this host has ({})",
                limit.page_size,
                host.hugepage_sizes.join(", ")
            )));
        }
    }
    match host.hugetlb {
        Some(true) => asked
            .iter()
            .map(|limit| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(limit.page_size.clone())
                    .limit(i64::try_from(limit.limit).unwrap_or(i64::MAX))
                    .build()
                    .map_err(spec_error)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        None => {
            log::info!("hugepage limits dropped: this host has no hugetlb cgroup controller");
            Ok(None)
        }
        Some(false) => Err(ManagerError::FailedPrecondition(
            "hugepage limits asked for, but this host has no hugetlb cgroup controller \
             (tolerate_missing_hugetlb_controller is off)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::host::test_host;

    #[test]
    fn host_devices_are_every_device_but_the_containers_own() {
        let devices = host_devices(Path::new("/dev"));
        let paths: Vec<&Path> = devices.iter().map(|d| d.path().as_path()).collect();
        assert!(paths.contains(&Path::new("/dev/null")), "{paths:?}");
        assert!(!paths.contains(&Path::new("/dev/console")));
        assert!(
            !paths.iter().any(|p| p.starts_with("/dev/pts")),
            "{paths:?}"
        );
        assert!(host_devices(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn everything_is_denied_unless_allowed_or_privileged() {
        let rules = device_rules(&[], false).unwrap();
        let rules = rules.devices().clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        let privileged = device_rules(&[], true).unwrap().devices().clone().unwrap();
        assert!(privileged[0].allow());
    }

    #[test]
    fn devices_are_checked_and_typed() {
        let (null, rule) = device(&Device {
            host_path: "/dev/null".into(),
            container_path: "/dev/mynull".into(),
            permissions: "rw".into(),
        })
        .unwrap();
        assert_eq!(null.path(), std::path::Path::new("/dev/mynull"));
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(rule.access().as_deref(), Some("rw"));
        // The node's own mode bits (crw-rw-rw-), without the file type, and owner.
        assert_eq!(
            (null.file_mode(), null.uid(), null.gid()),
            (Some(0o666), Some(0), Some(0))
        );
        for (host, permissions) in [
            ("/etc/hostname", ""),
            ("/dev/null", "rwx"),
            ("dev/null", ""),
        ] {
            assert!(
                matches!(
                    device(&Device {
                        host_path: host.into(),
                        container_path: String::new(),
                        permissions: permissions.into(),
                    }),
                    Err(ManagerError::InvalidArgument(_))
                ),
                "{host} {permissions}"
            );
        }
    }

    #[test]
    fn limits_land_where_runc_reads_them() {
        let mut resources = LinuxResources::default();
        apply_limits(
            &mut resources,
            &LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: 128 << 20,
                ..Default::default()
            },
            &test_host(),
        )
        .unwrap();
        let cpu = resources.cpu().clone().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        let memory = resources.memory().unwrap();
        assert_eq!(
            (memory.limit(), memory.swap()),
            (Some(64 << 20), Some(128 << 20))
        );
    }

    #[test]
    fn zero_and_empty_limits_are_left_out() {
        let mut resources = LinuxResources::default();
        apply_limits(
            &mut resources,
            &LinuxContainerResources::default(),
            &test_host(),
        )
        .unwrap();
        let cpu = resources.cpu().clone().unwrap();
        assert_eq!(
            (
                cpu.shares(),
                cpu.quota(),
                cpu.period(),
                cpu.cpus(),
                cpu.mems()
            ),
            (None, None, None, &None, &None)
        );
        assert!(resources.memory().is_none() && resources.unified().is_none());

        // A memory limit without swap, cpusets and cgroup v2 settings.
        let mut resources = LinuxResources::default();
        apply_limits(
            &mut resources,
            &LinuxContainerResources {
                memory_limit_in_bytes: 1,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                unified: [("memory.high".to_string(), "1M".to_string())].into(),
                ..Default::default()
            },
            &test_host(),
        )
        .unwrap();
        let cpu = resources.cpu().clone().unwrap();
        assert_eq!(
            (cpu.cpus().as_deref(), cpu.mems().as_deref()),
            (Some("0-1"), Some("0"))
        );
        let memory = resources.memory().unwrap();
        assert_eq!(
            (memory.limit(), memory.swap()),
            (Some(1), Some(1)),
            "no swap beyond the limit unless asked"
        );
        assert_eq!(resources.unified().as_ref().unwrap()["memory.high"], "1M");
    }

    #[test]
    fn swap_is_left_out_where_the_host_cannot_limit_it() {
        let host = HostSupport {
            swap_limits: false,
            ..test_host()
        };
        let mut resources = LinuxResources::default();
        let limits = LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            ..Default::default()
        };
        apply_limits(&mut resources, &limits, &host).unwrap();
        assert_eq!(resources.memory().unwrap().swap(), None);
    }

    #[test]
    fn hugepage_limits_in_the_hosts_sizes_and_as_the_controller_allows() {
        let asked = |size: &str| LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit {
                page_size: size.into(),
                limit: 4 << 21,
            }],
            ..Default::default()
        };
        let mut resources = LinuxResources::default();
        apply_limits(&mut resources, &asked("2MB"), &test_host()).unwrap();
        let limits = resources.hugepage_limits().clone().unwrap();
        assert_eq!(
            (limits[0].page_size().as_str(), limits[0].limit()),
            ("2MB", 4 << 21)
        );
        match apply_limits(&mut resources, &asked("64KB"), &test_host()) {
            Err(ManagerError::InvalidArgument(why)) => assert!(why.contains("64KB"), "{why}"),
            other => panic!("{other:?}"),
        }
        let tolerant = HostSupport {
            hugetlb: None,
            ..test_host()
        };
        apply_limits(&mut resources, &asked("2MB"), &tolerant).unwrap();
        assert!(resources.hugepage_limits().is_none(), "dropped");
        let strict = HostSupport {
            hugetlb: Some(false),
            ..test_host()
        };
        assert!(matches!(
            apply_limits(&mut resources, &asked("2MB"), &strict),
            Err(ManagerError::FailedPrecondition(_))
        ));
    }
}
