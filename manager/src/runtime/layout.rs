//! Where crustd keeps what, and creating and removing it: bundles (what the shim and runc
//! read), pod files, containers' writable layers, the infra binary, ExecSync's FIFOs.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use super::pod_files::PodFiles;
use crate::config::Config;
use crate::error::{ManagerError, Result};
use crate::images::store::{create_private_dir, write_atomically};

/// The infra process binary, compiled static by the build script.
const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crust-pause"));

/// crustd's directories.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<state>/bundles/<id>`: config.json, rootfs mount point, the shim's files.
    bundles: PathBuf,
    /// `<state>/pods/<id>`: hostname, hosts, resolv.conf, shm.
    pods: PathBuf,
    /// `<root>/containers/<id>`: the writable upper layer and overlay's work dir.
    containers: PathBuf,
    /// `<state>/pause/rootfs`: the infra process's root file system.
    pause_rootfs: PathBuf,
    /// `<state>/exec/<exec id>`: ExecSync's output FIFOs.
    exec: PathBuf,
    /// `<state>/netns/<pod id>`: pods' pinned network namespaces.
    netns: PathBuf,
    /// `<root>/checkpoints`: criu's images while a checkpoint is packed.
    checkpoints: PathBuf,
}

impl Layout {
    /// Creates the directories of `config`, puts the infra binary in place, and clears what
    /// ExecSyncs cut short by a crash left.
    pub fn prepare(config: &Config) -> Result<Self> {
        let layout = Self {
            bundles: config.state_dir.join("bundles"),
            pods: config.state_dir.join("pods"),
            containers: config.root_dir.join("containers"),
            pause_rootfs: config.state_dir.join("pause").join("rootfs"),
            exec: config.state_dir.join("exec"),
            netns: config.state_dir.join("netns"),
            checkpoints: config.root_dir.join("checkpoints"),
        };
        remove_tree(&layout.exec)?;
        // Only a crash mid-checkpoint leaves anything here.
        remove_tree(&layout.checkpoints)?;
        for dir in [&layout.bundles, &layout.containers, &layout.checkpoints] {
            create_private_dir(dir)?;
        }
        for dir in [
            &layout.pods,
            &layout.pause_rootfs,
            &layout.exec,
            &layout.netns,
        ] {
            create_dir(dir)?;
        }
        install_pause(&layout.pause_rootfs)?;
        Ok(layout)
    }

    /// The bundle of task `id` (a pod's infra or a container).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// The infra process's root file system.
    pub fn pause_rootfs(&self) -> &Path {
        &self.pause_rootfs
    }

    /// Container `id`'s writable layer and overlay work dir.
    pub fn container_data(&self, id: &str) -> PathBuf {
        self.containers.join(id)
    }

    /// Where checkpoints keep criu's images until they are packed.
    pub fn checkpoint_work(&self) -> PathBuf {
        self.checkpoints.clone()
    }

    /// Pod `id`'s files.
    pub fn pod_files(&self, id: &str) -> PodFiles {
        PodFiles::at(self.pods.join(id))
    }

    /// Where pod `id`'s network namespace is pinned.
    pub fn netns(&self, id: &str) -> PathBuf {
        self.netns.join(id)
    }

    /// A fresh directory for one ExecSync's FIFOs.
    pub fn exec_dir(&self, exec_id: &str) -> PathBuf {
        self.exec.join(exec_id)
    }

    /// Ids with a bundle on disk.
    pub fn bundle_ids(&self) -> Vec<String> {
        list_names(&self.bundles)
    }

    /// Removes bundles, pod files and writable layers that no record accounts for (crustd
    /// writes a record before any of them and removes it after them all, so only an older
    /// crustd or a hand-made directory leaves such). Returns what was removed.
    pub fn sweep(&self, pods: &HashSet<String>, containers: &HashSet<String>) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for id in self.bundle_ids() {
            if !pods.contains(&id) && !containers.contains(&id) {
                let bundle = self.bundle(&id);
                if unmount(&bundle.join("rootfs"))
                    .and_then(|()| remove_tree(&bundle))
                    .is_ok()
                {
                    removed.push(bundle);
                }
            }
        }
        for id in list_names(&self.pods) {
            if !pods.contains(&id) && self.pod_files(&id).remove().is_ok() {
                removed.push(self.pods.join(id));
            }
        }
        for id in list_names(&self.containers) {
            let data = self.container_data(&id);
            if !containers.contains(&id)
                && unmount(&data.join("image"))
                    .and_then(|()| remove_tree(&data))
                    .is_ok()
            {
                removed.push(self.container_data(&id));
            }
        }
        for id in list_names(&self.netns) {
            if !pods.contains(&id) && crate::network::netns::remove(&self.netns(&id)).is_ok() {
                removed.push(self.netns(&id));
            }
        }
        removed
    }

    /// Removes container `id`'s bundle (unmounting its root file system) and writable layer.
    /// Idempotent.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let bundle = self.bundle(id);
        unmount(&bundle.join("rootfs"))?;
        remove_tree(&bundle)?;
        let data = self.container_data(id);
        // The image view image volumes are copied from, if crustd died while it was mounted.
        unmount(&data.join("image"))?;
        remove_tree(&data)
    }

    /// Removes pod `id`'s bundle and files. Idempotent.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        self.pod_files(id).remove()?;
        let bundle = self.bundle(id);
        unmount(&bundle.join("rootfs"))?;
        remove_tree(&bundle)
    }
}

/// Creates `path` and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| ManagerError::io(format!("create {}", path.display()), e))
}

/// Removes `path` and everything below it; a missing one is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ManagerError::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Unmounts whatever is mounted at `path` (lazily); nothing mounted is fine.
pub fn unmount(path: &Path) -> Result<()> {
    loop {
        match umount2(path, MntFlags::MNT_DETACH) {
            // Stacked mounts come off one at a time.
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(ManagerError::io(
                    format!("unmount {}", path.display()),
                    e.into(),
                ));
            }
        }
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Puts the embedded infra binary at `<rootfs>/pause` (rewritten only when it changed).
fn install_pause(rootfs: &Path) -> Result<()> {
    let path = rootfs.join("pause");
    if fs::read(&path).is_ok_and(|bytes| bytes == PAUSE_BINARY) {
        return Ok(());
    }
    write_atomically(&path, PAUSE_BINARY)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .map_err(|e| ManagerError::io(format!("chmod {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout with its root and state directories under `dir`.
    fn layout_in(dir: &Path) -> Layout {
        let config = Config {
            root_dir: dir.join("root"),
            state_dir: dir.join("state"),
            ..Config::default()
        };
        Layout::prepare(&config).unwrap()
    }

    #[test]
    fn removal_is_idempotent_and_unmounting_nothing_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout_in(dir.path());
        assert!(layout.pause_rootfs().join("pause").is_file());
        create_dir(&layout.bundle("c1").join("rootfs")).unwrap();
        create_dir(&layout.container_data("c1").join("upper")).unwrap();
        assert_eq!(layout.bundle_ids(), vec!["c1".to_string()]);
        layout.remove_container("c1").unwrap();
        layout.remove_container("c1").unwrap();
        assert!(!layout.bundle("c1").exists());
        assert!(!layout.container_data("c1").exists());
        assert!(layout.bundle_ids().is_empty());
    }

    #[test]
    fn the_sweep_removes_only_what_no_record_accounts_for() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout_in(dir.path());
        for id in ["pod1", "c1", "stray"] {
            create_dir(&layout.bundle(id)).unwrap();
        }
        create_dir(&layout.container_data("c1")).unwrap();
        create_dir(&layout.container_data("gone")).unwrap();
        create_dir(&dir.path().join("state/pods/pod1")).unwrap();
        create_dir(&dir.path().join("state/pods/old")).unwrap();
        let pods: HashSet<String> = ["pod1".to_string()].into();
        let containers: HashSet<String> = ["c1".to_string()].into();
        let mut removed = layout.sweep(&pods, &containers);
        removed.sort();
        assert_eq!(
            removed,
            [
                dir.path().join("root/containers/gone"),
                dir.path().join("state/bundles/stray"),
                dir.path().join("state/pods/old"),
            ]
        );
        assert!(layout.bundle("pod1").exists() && layout.bundle("c1").exists());
        assert!(layout.container_data("c1").exists());
    }
}
