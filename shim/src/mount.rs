//! Mounting a task's rootfs from the mounts containerd's snapshotter hands over.
//!
//! Options follow containerd's `mount` package: known words become mount flags, propagation
//! words are applied in a second call, everything else is passed to the filesystem as data.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crust_proto::task::Mount;

use crate::error::{Result, ShimError};

/// Largest mount data the kernel copies (one page); containerd keeps 512 bytes of slack.
const MAX_MOUNT_DATA: usize = 4096 - 512;

/// Propagation flags, which `mount(2)` only accepts on their own.
const PROPAGATION: MsFlags = MsFlags::MS_SHARED
    .union(MsFlags::MS_PRIVATE)
    .union(MsFlags::MS_SLAVE)
    .union(MsFlags::MS_UNBINDABLE);

/// `(option, flags, clears)`: an option either sets or clears its flags.
const FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("async", MsFlags::MS_SYNCHRONOUS, true),
    ("atime", MsFlags::MS_NOATIME, true),
    ("bind", MsFlags::MS_BIND, false),
    ("defaults", MsFlags::empty(), false),
    ("dev", MsFlags::MS_NODEV, true),
    ("diratime", MsFlags::MS_NODIRATIME, true),
    ("dirsync", MsFlags::MS_DIRSYNC, false),
    ("exec", MsFlags::MS_NOEXEC, true),
    ("mand", MsFlags::MS_MANDLOCK, false),
    ("noatime", MsFlags::MS_NOATIME, false),
    ("nodev", MsFlags::MS_NODEV, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, false),
    ("noexec", MsFlags::MS_NOEXEC, false),
    ("nomand", MsFlags::MS_MANDLOCK, true),
    ("norelatime", MsFlags::MS_RELATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, true),
    ("nosuid", MsFlags::MS_NOSUID, false),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC), false),
    ("relatime", MsFlags::MS_RELATIME, false),
    ("remount", MsFlags::MS_REMOUNT, false),
    ("ro", MsFlags::MS_RDONLY, false),
    ("rw", MsFlags::MS_RDONLY, true),
    ("strictatime", MsFlags::MS_STRICTATIME, false),
    ("suid", MsFlags::MS_NOSUID, true),
    ("sync", MsFlags::MS_SYNCHRONOUS, false),
    ("private", MsFlags::MS_PRIVATE, false),
    (
        "rprivate",
        MsFlags::MS_PRIVATE.union(MsFlags::MS_REC),
        false,
    ),
    ("shared", MsFlags::MS_SHARED, false),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC), false),
    ("slave", MsFlags::MS_SLAVE, false),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC), false),
    ("unbindable", MsFlags::MS_UNBINDABLE, false),
    (
        "runbindable",
        MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC),
        false,
    ),
];

/// One mount, checked and translated for `mount(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    fs_type: String,
    source: String,
    target: PathBuf,
    flags: MsFlags,
    data: String,
}

impl MountPlan {
    /// Checks `spec` and resolves it under `rootfs`.
    pub fn new(spec: &Mount, rootfs: &Path) -> Result<Self> {
        let fs_type = spec.type_.as_str();
        if fs_type.is_empty()
            || !fs_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ShimError::InvalidArgument(format!(
                "mount type {fs_type:?} is not a filesystem type"
            )));
        }
        let target = match spec.target.as_str() {
            "" | "/" => rootfs.to_path_buf(),
            relative => rootfs.join(checked_relative(relative)?),
        };
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for option in &spec.options {
            if option.contains('\0') {
                return Err(ShimError::InvalidArgument(format!(
                    "mount option {option:?} has a NUL byte"
                )));
            }
            match FLAG_OPTIONS.iter().find(|(name, _, _)| name == option) {
                Some((_, bits, true)) => flags.remove(*bits),
                Some((_, bits, false)) => flags.insert(*bits),
                None if option == "loop" => {
                    return Err(ShimError::InvalidArgument(
                        "loop mounts are not supported for task rootfs".into(),
                    ));
                }
                None => data.push(option.as_str()),
            }
        }
        if flags.contains(MsFlags::MS_BIND) && !Path::new(&spec.source).is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "bind mount source {:?} must be an absolute path",
                spec.source
            )));
        }
        if spec.source.contains('\0') {
            return Err(ShimError::InvalidArgument(
                "mount source has a NUL byte".into(),
            ));
        }
        Ok(Self {
            fs_type: fs_type.to_string(),
            source: spec.source.clone(),
            target,
            flags,
            data: data.join(","),
        })
    }

    /// Performs the mount.
    pub fn mount(&self) -> Result<()> {
        let plain = self.flags - PROPAGATION;
        let data = if self.data.len() > MAX_MOUNT_DATA && self.fs_type == "overlay" {
            return self.mount_overlay_compacted(plain);
        } else if self.data.len() > MAX_MOUNT_DATA {
            return Err(ShimError::InvalidArgument(format!(
                "mount options of {} are {} bytes, more than the kernel's page",
                self.target.display(),
                self.data.len()
            )));
        } else {
            (!self.data.is_empty()).then_some(self.data.as_str())
        };
        self.mount_with(plain, data)
    }

    fn mount_with(&self, plain: MsFlags, data: Option<&str>) -> Result<()> {
        let failed = |what: &str, e: Errno| {
            ShimError::io(
                format!(
                    "{what} {} on {} ({})",
                    self.source,
                    self.target.display(),
                    self.fs_type
                ),
                e,
            )
        };
        if !plain.contains(MsFlags::MS_REMOUNT) || data.is_some() {
            mount(
                Some(self.source.as_str()),
                &self.target,
                Some(self.fs_type.as_str()),
                plain,
                data,
            )
            .map_err(|e| failed("mount", e))?;
        }
        if self.flags.intersects(PROPAGATION) {
            let propagation = self.flags & (PROPAGATION | MsFlags::MS_REC);
            mount(
                None::<&str>,
                &self.target,
                None::<&str>,
                propagation,
                None::<&str>,
            )
            .map_err(|e| failed("set propagation of", e))?;
        }
        // A bind mount ignores MS_RDONLY until it is remounted.
        if plain.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
            mount(
                None::<&str>,
                &self.target,
                None::<&str>,
                plain | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| failed("remount read-only", e))?;
        }
        Ok(())
    }

    /// Overlays with many layers exceed a page of options; as containerd does, give `lowerdir`
    /// relative to the layers' common parent and mount from there.
    fn mount_overlay_compacted(&self, plain: MsFlags) -> Result<()> {
        let (parent, data) = compact_lowerdir(&self.data).ok_or_else(|| {
            ShimError::InvalidArgument(format!(
                "overlay options of {} are too long and the layers share no parent",
                self.target.display()
            ))
        })?;
        if data.len() > MAX_MOUNT_DATA {
            return Err(ShimError::InvalidArgument(format!(
                "overlay options of {} are {} bytes even with relative layer paths",
                self.target.display(),
                data.len()
            )));
        }
        let previous =
            fs::File::open(".").map_err(|e| ShimError::io("open working directory", e))?;
        // The shim is single-threaded and uses absolute paths everywhere else, so changing the
        // working directory for the duration of one mount call affects nothing in flight.
        nix::unistd::chdir(&parent)
            .map_err(|e| ShimError::io(format!("chdir {}", parent.display()), e))?;
        let result = self.mount_with(plain, Some(&data));
        if let Err(e) = nix::unistd::fchdir(&previous) {
            log::error!("cannot return to the working directory after an overlay mount: {e}");
        }
        result
    }
}

/// Rewrites `lowerdir=` of overlay options relative to the layers' common parent directory.
fn compact_lowerdir(data: &str) -> Option<(PathBuf, String)> {
    let options: Vec<&str> = data.split(',').collect();
    let lower = options.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    let layers: Vec<&Path> = lower.split(':').map(Path::new).collect();
    let mut common = layers.first()?.parent()?.to_path_buf();
    while !layers.iter().all(|layer| layer.starts_with(&common)) {
        common = common.parent()?.to_path_buf();
    }
    if common.as_os_str().len() <= 1 {
        return None;
    }
    let relative: Vec<String> = layers
        .iter()
        .map(|layer| layer.strip_prefix(&common).map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()
        .ok()?;
    let rewritten: Vec<String> = options
        .iter()
        .map(|o| {
            if o.starts_with("lowerdir=") {
                format!("lowerdir={}", relative.join(":"))
            } else {
                (*o).to_string()
            }
        })
        .collect();
    Some((common, rewritten.join(",")))
}

/// A relative path that stays below its base: no `..`, no root, no prefix.
fn checked_relative(path: &str) -> Result<&Path> {
    let candidate = Path::new(path.trim_start_matches('/'));
    if candidate
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(candidate)
    } else {
        Err(ShimError::InvalidArgument(format!(
            "mount target {path:?} escapes the rootfs"
        )))
    }
}

/// Mounts `mounts` on `<bundle>/rootfs` in order; on failure unmounts what was mounted.
///
/// Returns whether anything was mounted, so the caller knows to unmount at delete.
pub fn mount_rootfs(mounts: &[Mount], bundle: &Path) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    let plans: Vec<MountPlan> = mounts
        .iter()
        .map(|m| MountPlan::new(m, &rootfs))
        .collect::<Result<_>>()?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&rootfs)
        .map_err(|e| ShimError::io(format!("create {}", rootfs.display()), e))?;
    for plan in &plans {
        if let Err(e) = plan.mount() {
            unmount_all(&rootfs);
            return Err(e);
        }
    }
    Ok(true)
}

/// Unmounts everything mounted on or below `target`, including stacked mounts.
pub fn unmount_all(target: &Path) {
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            // Not (or no longer) a mount point: done.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return,
            Err(Errno::EBUSY) => {
                // Still held by exiting processes: detach it now, the kernel frees it later.
                if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                    log::warn!("lazy unmount of {} failed: {e}", target.display());
                    return;
                }
            }
            Err(e) => {
                log::warn!("unmount of {} failed: {e}", target.display());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fs_type: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: fs_type.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let plan = MountPlan::new(
            &spec(
                "overlay",
                "overlay",
                &["index=off", "ro", "nosuid", "rw", "lowerdir=/l", "rslave"],
            ),
            Path::new("/b/rootfs"),
        )
        .unwrap();
        assert_eq!(plan.data, "index=off,lowerdir=/l");
        assert!(plan.flags.contains(MsFlags::MS_NOSUID));
        assert!(!plan.flags.contains(MsFlags::MS_RDONLY), "rw clears ro");
        assert!(plan.flags.contains(MsFlags::MS_SLAVE | MsFlags::MS_REC));
        assert_eq!(plan.target, Path::new("/b/rootfs"));
    }

    #[test]
    fn refuses_escaping_targets_relative_binds_and_odd_types() {
        let root = Path::new("/b/rootfs");
        let mut escaping = spec("bind", "/src", &["rbind"]);
        escaping.target = "../../etc".into();
        for (why, refused) in [
            ("escaping target", MountPlan::new(&escaping, root)),
            (
                "relative bind source",
                MountPlan::new(&spec("none", "relative/src", &["bind"]), root),
            ),
            (
                "odd type",
                MountPlan::new(&spec("ext4;rm", "/dev/x", &[]), root),
            ),
            ("no type", MountPlan::new(&spec("", "/dev/x", &[]), root)),
            (
                "loop option",
                MountPlan::new(&spec("ext4", "/dev/x", &["loop"]), root),
            ),
        ] {
            assert!(
                matches!(refused, Err(ShimError::InvalidArgument(_))),
                "{why}: {refused:?}"
            );
        }
        let mut nested = spec("tmpfs", "tmpfs", &[]);
        nested.target = "/var/cache".into();
        assert_eq!(
            MountPlan::new(&nested, root).unwrap().target,
            Path::new("/b/rootfs/var/cache")
        );
    }

    #[test]
    fn long_lowerdirs_become_relative_to_their_common_parent() {
        let base = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let data = format!("index=off,lowerdir={base}/3/fs:{base}/2/fs:{base}/1/fs,upperdir=/u");
        let (parent, compacted) = compact_lowerdir(&data).unwrap();
        assert_eq!(parent, Path::new(base));
        assert_eq!(compacted, "index=off,lowerdir=3/fs:2/fs:1/fs,upperdir=/u");
        assert!(
            compact_lowerdir("lowerdir=/a:/b").is_none(),
            "only / in common"
        );
    }

    #[test]
    fn mounts_and_unmounts_a_tmpfs_rootfs() {
        // Needs CAP_SYS_ADMIN, as the shim itself does.
        let bundle = tempfile::tempdir().unwrap();
        let mounted = mount_rootfs(
            &[spec("tmpfs", "tmpfs", &["nosuid", "size=1m"])],
            bundle.path(),
        )
        .unwrap();
        assert!(mounted);
        let rootfs = bundle.path().join("rootfs");
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(mounts.contains(&rootfs.display().to_string()));
        unmount_all(&rootfs);
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&rootfs.display().to_string()));
    }
}
