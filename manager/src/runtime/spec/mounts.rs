//! The mounts of a container: runc's standard file systems, the pod's shared files, and the
//! volumes kubelet asks for (which win on the same path), with their propagation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crust_proto::cri::{ContainerConfig, Mount as CriMount, MountPropagation};
use oci_spec::runtime::{Mount, MountBuilder};

use super::{PodContext, spec_error};
use crate::error::{ManagerError, Result};
use crate::runtime::image_volumes::ImageVolume;
use crate::runtime::validate;

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// A bind mount of `source` at `destination`.
pub fn bind(destination: &str, source: &Path, readonly: bool, propagation: &str) -> Result<Mount> {
    let mode = if readonly { "ro" } else { "rw" };
    mount(destination, "bind", source, &["rbind", propagation, mode])
}

/// The mounts every container gets (runc's defaults), `/dev/shm` left to the caller.
pub fn standard(privileged: bool) -> Result<Vec<Mount>> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ])
}

/// The propagation of a CRI mount, and what the root file system needs for it.
fn propagation(value: i32) -> (&'static str, Option<&'static str>) {
    match MountPropagation::try_from(value).unwrap_or(MountPropagation::PropagationPrivate) {
        MountPropagation::PropagationPrivate => ("rprivate", None),
        MountPropagation::PropagationHostToContainer => ("rslave", Some("rslave")),
        MountPropagation::PropagationBidirectional => ("rshared", Some("rshared")),
    }
}

/// A recursive read-only volume must be read-only and private (a submount propagated in
/// later would escape it), and needs `rro` from the runtime and `mount_setattr` from the
/// kernel: without them it would be read-only only at its top, which is not what was asked.
fn check_recursive_read_only(pod: &PodContext<'_>, volume: &CriMount) -> Result<()> {
    let refused = |why: &str| {
        ManagerError::InvalidArgument(format!(
            "volume {}: a recursive read-only mount {why}",
            volume.container_path
        ))
    };
    if !volume.readonly {
        return Err(refused("must also be read-only"));
    }
    if volume.propagation != MountPropagation::PropagationPrivate as i32 {
        return Err(refused("must have private propagation"));
    }
    if !pod.handler.recursive_read_only {
        return Err(ManagerError::FailedPrecondition(format!(
            "volume {}: recursive read-only mounts are not supported here (the runtime \
             handler lacks the rro mount option or the kernel lacks mount_setattr)",
            volume.container_path
        )));
    }
    Ok(())
}

/// A container's mounts, and the root file system propagation its volumes need.
pub fn container(
    pod: &PodContext<'_>,
    config: &ContainerConfig,
    image_volumes: &[ImageVolume],
    privileged: bool,
    readonly_rootfs: bool,
) -> Result<(Vec<Mount>, Option<&'static str>)> {
    let mut mounts = standard(privileged)?;
    // Before the pod's files and kubelet's volumes, which may lie below them: runc mounts in
    // order, so a later mount lands on top. Always writable, also on a read-only root.
    for volume in image_volumes {
        mounts.retain(|m| m.destination() != Path::new(&volume.container_path));
        mounts.push(bind(
            &volume.container_path,
            &volume.host_path,
            false,
            "rprivate",
        )?);
    }
    let requested: HashSet<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/'))
        .collect();
    let files = [
        ("/etc/hostname", pod.files.hostname()),
        ("/etc/hosts", pod.files.hosts()),
        ("/etc/resolv.conf", pod.files.resolv_conf()),
    ];
    for (target, source) in files {
        if !requested.contains(target) {
            mounts.push(bind(target, &source, readonly_rootfs, "rprivate")?);
        }
    }
    if !requested.contains("/dev/shm") {
        let shm = if pod.namespaces.host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            pod.files.shm()
        };
        mounts.push(bind("/dev/shm", &shm, false, "rprivate")?);
    }
    let mut rootfs_propagation = None;
    for volume in &config.mounts {
        validate::volume(volume)?;
        let (mode, needs) = propagation(volume.propagation);
        if let Some(needed) = needs
            && rootfs_propagation != Some("rshared")
        {
            rootfs_propagation = Some(needed);
        }
        if !volume.uid_mappings.is_empty() || !volume.gid_mappings.is_empty() {
            return Err(ManagerError::InvalidArgument(format!(
                "volume {}: idmapped mounts need user namespaces, which crustd does not offer",
                volume.container_path
            )));
        }
        mounts.retain(|m| m.destination() != Path::new(&volume.container_path));
        let mut volume_mount = bind(
            &volume.container_path,
            Path::new(&volume.host_path),
            volume.readonly,
            mode,
        )?;
        if volume.recursive_read_only {
            check_recursive_read_only(pod, volume)?;
            let mut options = volume_mount.options().clone().unwrap_or_default();
            options.push("rro".into());
            volume_mount.set_options(Some(options));
        }
        mounts.push(volume_mount);
    }
    Ok((mounts, rootfs_propagation))
}

/// The host directories of `config`'s volumes that do not exist yet: containerd makes them
/// rather than failing, and so does crustd (the caller, which owns host side effects).
pub fn missing_sources(config: &ContainerConfig) -> Vec<PathBuf> {
    config
        .mounts
        .iter()
        .map(|m| PathBuf::from(&m.host_path))
        .filter(|path| !path.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_of_volumes_and_of_the_root() {
        assert_eq!(
            propagation(MountPropagation::PropagationPrivate as i32),
            ("rprivate", None)
        );
        assert_eq!(
            propagation(MountPropagation::PropagationHostToContainer as i32),
            ("rslave", Some("rslave"))
        );
        assert_eq!(
            propagation(MountPropagation::PropagationBidirectional as i32),
            ("rshared", Some("rshared"))
        );
        assert_eq!(propagation(99), ("rprivate", None), "unknown is private");
    }

    #[test]
    fn every_container_gets_runcs_standard_mounts_with_sys_read_only_unless_privileged() {
        for (privileged, sys_mode) in [(false, "ro"), (true, "rw")] {
            let mounts = standard(privileged).unwrap();
            let listed: Vec<(&str, &str)> = mounts
                .iter()
                .map(|m| {
                    (
                        m.destination().to_str().unwrap(),
                        m.typ().as_deref().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                listed,
                [
                    ("/proc", "proc"),
                    ("/dev", "tmpfs"),
                    ("/dev/pts", "devpts"),
                    ("/dev/mqueue", "mqueue"),
                    ("/sys", "sysfs"),
                    ("/sys/fs/cgroup", "cgroup"),
                ]
            );
            for sys in &mounts[4..] {
                let options = sys.options().as_ref().unwrap();
                assert!(options.iter().any(|o| o == sys_mode), "{options:?}");
            }
        }
    }

    #[test]
    fn missing_sources_are_listed_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not-yet");
        let config = ContainerConfig {
            mounts: vec![
                crust_proto::cri::Mount {
                    host_path: dir.path().display().to_string(),
                    container_path: "/a".into(),
                    ..Default::default()
                },
                crust_proto::cri::Mount {
                    host_path: missing.display().to_string(),
                    container_path: "/b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(missing_sources(&config), vec![missing.clone()]);
        assert!(!missing.exists());
    }
}
