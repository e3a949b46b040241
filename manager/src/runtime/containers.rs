//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, ReopenContainerLog.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri::{ContainerConfig, ContainerFilter, PodSandboxConfig};
use crust_proto::task::Mount;
use nix::mount::{MntFlags, umount2};

use super::records::{self, ContainerRecord, ContainerState, PodState};
use super::shim;
use super::spec::{self, ImageContext, PodContext};
use super::{Runtime, create_dir, lock, new_id, now, remove_tree, user};
use crate::error::{ManagerError, Result};
use crate::images::store::ImageRecord;

/// How long a container gets to leave after SIGKILL before StopContainer gives up.
const KILL_LIMIT: Duration = Duration::from_secs(30);
/// Longest overlay mount option string the kernel takes (one page).
const MOUNT_DATA_LIMIT: usize = 4096;

/// The full log path of a container: the pod's log directory joined with the container's
/// relative log path, which may not climb out of it.
fn log_path(pod: &PodSandboxConfig, config: &ContainerConfig) -> Result<Option<PathBuf>> {
    if config.log_path.is_empty() {
        return Ok(None);
    }
    if pod.log_directory.is_empty() {
        return Err(ManagerError::InvalidArgument(
            "container log_path given but the pod has no log_directory".into(),
        ));
    }
    let relative = Path::new(&config.log_path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ManagerError::InvalidArgument(format!(
            "log_path {:?} must stay inside the pod's log directory",
            config.log_path
        )));
    }
    Ok(Some(Path::new(&pod.log_directory).join(relative)))
}

/// The stop signal number of an image's `StopSignal` (`SIGTERM`, `TERM`, `15`).
fn signal_number(name: &str) -> Result<i32> {
    if name.is_empty() {
        return Ok(libc::SIGTERM);
    }
    if let Ok(number) = name.parse::<i32>() {
        return Ok(number);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| {
            ManagerError::InvalidArgument(format!("image stop signal {name:?} is unknown"))
        })
}

/// The overlay mount of a container's root file system.
fn overlay(lower_top_first: &[PathBuf], upper: &Path, work: &Path) -> Result<Mount> {
    let lower: Vec<String> = lower_top_first
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let options = vec![
        format!("lowerdir={}", lower.join(":")),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    if options.iter().map(|o| o.len() + 1).sum::<usize>() > MOUNT_DATA_LIMIT {
        return Err(ManagerError::FailedPrecondition(format!(
            "the image has too many layers ({}) for one overlay mount",
            lower.len()
        )));
    }
    Ok(Mount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options,
        ..Default::default()
    })
}

impl Runtime {
    fn container_data(&self, id: &str) -> PathBuf {
        self.dirs.containers.join(id)
    }

    /// Creates a container in pod `pod_id`: its bundle (config.json) and writable layer.
    pub async fn create_container(
        self: &Arc<Self>,
        pod_id: &str,
        config: Option<ContainerConfig>,
    ) -> Result<String> {
        let config = config
            .ok_or_else(|| ManagerError::InvalidArgument("no container config given".into()))?;
        let metadata = config.metadata.as_ref().ok_or_else(|| {
            ManagerError::InvalidArgument("container config has no metadata".into())
        })?;
        if metadata.name.is_empty() {
            return Err(ManagerError::InvalidArgument(
                "container metadata has no name".into(),
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                ManagerError::InvalidArgument("container config names no image".into())
            })?;
        let pod_id = self
            .find_pod(pod_id)?
            .ok_or_else(|| ManagerError::NotFound(format!("pod {pod_id} not found")))?;
        let pod = self
            .pod(&pod_id)
            .ok_or_else(|| ManagerError::NotFound(format!("pod {pod_id} not found")))?;
        if pod.state != PodState::Ready {
            return Err(ManagerError::FailedPrecondition(format!(
                "pod {pod_id} is not ready"
            )));
        }
        let log_path = log_path(&pod.config, &config)?;
        let image = self.images.status(&image_name)?.ok_or_else(|| {
            ManagerError::NotFound(format!("image {image_name:?} not found: pull it first"))
        })?;
        let stop_signal = signal_number(&image.config.stop_signal)?;
        let key = records::container_name_key(&config, &pod.config);
        self.reserve_name(&key, "container")?;
        let id = match new_id() {
            Ok(id) => id,
            Err(e) => {
                self.release_name(&key);
                return Err(e);
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod_id.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            layers: image.layers.clone(),
            log_path,
            state: ContainerState::Created,
            pid: 0,
            created_at: now(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            oom_killed: false,
            stop_signal,
            config,
        };
        self.images.hold(&record.layers);
        match self.write_bundle(&record, &pod, &image, &image_name) {
            Ok(()) => {
                self.container_records.save(&id, &record)?;
                lock(&self.containers).insert(id.clone(), record);
                log::info!("container {id} ({key}) created in pod {pod_id}");
                Ok(id)
            }
            Err(error) => {
                let _ = remove_tree(&self.bundle(&id));
                let _ = remove_tree(&self.container_data(&id));
                self.images.release(&record.layers);
                self.release_name(&key);
                Err(error)
            }
        }
    }

    fn write_bundle(
        &self,
        record: &ContainerRecord,
        pod: &records::PodRecord,
        image: &ImageRecord,
        image_name: &str,
    ) -> Result<()> {
        let layers = self.images.layer_dirs_top_first(image);
        let security = record
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let user = user::resolve(&security, &image.config.user, &layers)?;
        let files = self.pod_files(&pod.id);
        let options = self.runc_options(&pod.runtime_handler)?;
        let context = PodContext::of(pod, &files, options.systemd_cgroup);
        let image_context = ImageContext {
            config: &image.config,
            name: image_name,
            user,
        };
        let spec = spec::container_spec(&record.id, &context, &record.config, &image_context)?;
        let data = self.container_data(&record.id);
        create_dir(&data.join("upper"))?;
        create_dir(&data.join("work"))?;
        let bundle = self.bundle(&record.id);
        create_dir(&bundle.join("rootfs"))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| ManagerError::io("write config.json", std::io::Error::other(e)))
    }

    /// Starts a created container: its task created on the pod's shim (root file system,
    /// CRI log written by the shim) and started.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let id = self
            .find_container(id)?
            .ok_or_else(|| ManagerError::NotFound(format!("container {id} not found")))?;
        let operation = self.operation(&id);
        let _serialized = operation.lock().await;
        let record = self
            .container(&id)
            .ok_or_else(|| ManagerError::NotFound(format!("container {id} not found")))?;
        if record.state != ContainerState::Created {
            return Err(ManagerError::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                record.state
            )));
        }
        let pod = self
            .pod(&record.pod_id)
            .filter(|p| p.state == PodState::Ready)
            .ok_or_else(|| {
                ManagerError::FailedPrecondition(format!("pod {} is not ready", record.pod_id))
            })?;
        match self
            .create_and_start_task(&record, &pod.runtime_handler)
            .await
        {
            Ok((pid, started_at)) => {
                self.update_container(&id, |c| c.mark_started(pid, started_at))?;
                self.watch(&record.pod_id, &id);
                log::info!("container {id} started, pid {pid}");
                Ok(())
            }
            Err(error) => {
                self.update_container(&id, |c| c.mark_start_failed(error.to_string(), now()))?;
                self.exited.notify_waiters();
                if let Ok(shim) = self.shim(&record.pod_id).await {
                    let _ = shim.delete(&id, "").await;
                }
                Err(error)
            }
        }
    }

    /// Creates and starts the task; returns its pid and the time it was started at.
    async fn create_and_start_task(
        &self,
        record: &ContainerRecord,
        handler: &str,
    ) -> Result<(u32, i64)> {
        let options = self.runc_options(handler)?;
        let data = self.container_data(&record.id);
        let layers: Vec<PathBuf> = record
            .layers
            .iter()
            .rev()
            .map(|layer| self.images.layer_fs(layer))
            .collect();
        let rootfs = overlay(&layers, &data.join("upper"), &data.join("work"))?;
        let stdio = match &record.log_path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    create_dir(dir)?;
                }
                Some(format!(
                    "crilog://{}?max_line_size={}",
                    path.display(),
                    self.config.max_container_log_line_size
                ))
            }
            None => None,
        };
        let bundle = self.bundle(&record.id);
        let request = shim::create_request(
            &record.id,
            &bundle,
            vec![rootfs],
            stdio.as_deref(),
            record.config.tty,
        );
        let shim = self.shim(&record.pod_id).await?;
        shim.create(request, &options).await?;
        // Taken before the process runs, so a quick exit never precedes its start.
        let started_at = now();
        let pid = shim.start(&record.id, "").await?;
        Ok((pid, started_at))
    }

    /// Stops a container: its stop signal, `timeout` seconds, then SIGKILL. Idempotent.
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let Some(id) = self.find_container(id)? else {
            return Ok(());
        };
        let Some(record) = self.container(&id) else {
            return Ok(());
        };
        if record.state != ContainerState::Running {
            return Ok(());
        }
        let shim = self.shim(&record.pod_id).await?;
        if timeout > 0 {
            match shim.kill(&id, "", record.stop_signal as u32, false).await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if self
                .wait_stopped(&id, Duration::from_secs(timeout as u64))
                .await
            {
                return Ok(());
            }
            log::info!("container {id} ignored its stop signal for {timeout}s: killing it");
        }
        match shim.kill(&id, "", libc::SIGKILL as u32, true).await {
            Ok(()) | Err(ManagerError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if self.wait_stopped(&id, KILL_LIMIT).await {
            Ok(())
        } else {
            Err(ManagerError::DeadlineExceeded(format!(
                "container {id} did not exit within {}s of SIGKILL",
                KILL_LIMIT.as_secs()
            )))
        }
    }

    /// Removes a container (killing it if it runs). Idempotent.
    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.find_container(id)? else {
            return Ok(());
        };
        let operation = self.operation(&id);
        let _serialized = operation.lock().await;
        self.stop_container(&id, 0).await?;
        let Some(record) = self.container(&id) else {
            return Ok(());
        };
        if record.started_at != 0 || record.reason == "StartError" {
            // The exit handler deletes the task; make sure, in case crustd died before.
            match self.shim(&record.pod_id).await {
                Ok(shim) => match shim.delete(&id, "").await {
                    Ok(()) | Err(ManagerError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => log::info!("container {id}: no shim to delete its task from ({e})"),
            }
        }
        let rootfs = self.bundle(&id).join("rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(ManagerError::io(
                    format!("unmount {}", rootfs.display()),
                    e.into(),
                ));
            }
        }
        remove_tree(&self.bundle(&id))?;
        remove_tree(&self.container_data(&id))?;
        self.container_records.remove(&id)?;
        lock(&self.containers).remove(&id);
        self.images.release(&record.layers);
        if let Some(pod) = self.pod(&record.pod_id) {
            self.release_name(&record.name_key(&pod.config));
        }
        self.forget_operation(&id);
        log::info!("container {id} removed");
        Ok(())
    }

    /// Container `id`, as found.
    pub fn container_status(&self, id: &str) -> Result<ContainerRecord> {
        self.find_container(id)?
            .and_then(|id| self.container(&id))
            .ok_or_else(|| ManagerError::NotFound(format!("container {id} not found")))
    }

    /// The containers `filter` selects, oldest first.
    pub fn list_containers(&self, filter: Option<&ContainerFilter>) -> Vec<ContainerRecord> {
        let mut containers: Vec<ContainerRecord> = lock(&self.containers)
            .values()
            .filter(|c| {
                let Some(filter) = filter else {
                    return true;
                };
                (filter.id.is_empty() || c.id.starts_with(&filter.id))
                    && (filter.pod_sandbox_id.is_empty()
                        || c.pod_id.starts_with(&filter.pod_sandbox_id))
                    && filter
                        .state
                        .as_ref()
                        .is_none_or(|s| s.state == c.state.cri())
                    && filter
                        .label_selector
                        .iter()
                        .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        containers.sort_by_key(|c| c.created_at);
        containers
    }

    /// Makes the shim reopen a running container's log file (after kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self.container_status(id)?;
        if record.state != ContainerState::Running {
            return Err(ManagerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        if record.log_path.is_none() {
            return Err(ManagerError::FailedPrecondition(format!(
                "container {} has no log path",
                record.id
            )));
        }
        self.shim(&record.pod_id)
            .await?
            .reopen_log(&record.id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_in_the_pods_log_directory() {
        let pod = PodSandboxConfig {
            log_directory: "/var/log/pods/p".into(),
            ..Default::default()
        };
        let with = |path: &str| ContainerConfig {
            log_path: path.into(),
            ..Default::default()
        };
        assert_eq!(
            log_path(&pod, &with("app/0.log")).unwrap(),
            Some(PathBuf::from("/var/log/pods/p/app/0.log"))
        );
        assert_eq!(log_path(&pod, &with("")).unwrap(), None);
        for bad in ["../escape.log", "/etc/passwd", "a/../../b.log"] {
            assert!(
                matches!(
                    log_path(&pod, &with(bad)),
                    Err(ManagerError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let no_dir = PodSandboxConfig::default();
        assert!(log_path(&no_dir, &with("a.log")).is_err());
    }

    #[test]
    fn stop_signals_by_name_or_number() {
        assert_eq!(signal_number("").unwrap(), libc::SIGTERM);
        assert_eq!(signal_number("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(signal_number("int").unwrap(), libc::SIGINT);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert!(signal_number("SIGNOPE").is_err());
    }

    #[test]
    fn overlay_lists_layers_topmost_first_and_refuses_too_many() {
        let layers = vec![PathBuf::from("/l/top/fs"), PathBuf::from("/l/base/fs")];
        let mount = overlay(&layers, Path::new("/c/upper"), Path::new("/c/work")).unwrap();
        assert_eq!(mount.options[0], "lowerdir=/l/top/fs:/l/base/fs");
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/crust/layers/sha256-{i:064}/fs")))
            .collect();
        assert!(overlay(&many, Path::new("/u"), Path::new("/w")).is_err());
    }
}
