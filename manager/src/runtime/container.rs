//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ReopenContainerLog.
//!
//! A container's record is written before its bundle, and removed only after its task is
//! deleted (by its pod's supervisor, the one place that deletes tasks), its root file system
//! unmounted and its bundle and writable layer removed. Stop waits for the exit the
//! supervisor records, not for the shim, so a long grace period holds up nobody else.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri::{ContainerConfig, ContainerFilter, PodSandboxConfig};
use crust_proto::task::{CreateTaskRequest, Mount};

use super::interactive;
use super::layout::create_dir;
use super::records::{ContainerRecord, ContainerState, PodRecord, PodState, Task};
use super::shim::create_request;
use super::spec::{self, ImageContext, PodContext};
use super::store::blocking;
use super::user::ResolvedUser;
use super::{Core, apparmor, host_mounts, image_volumes, new_id, now, shown, user, validate};
use crate::crash_point;
use crate::error::{ManagerError, Result};
use crate::images::store::ImageRecord;

/// How long a container gets to leave after SIGKILL before StopContainer gives up.
const KILL_LIMIT: Duration = Duration::from_secs(30);
/// Longest overlay mount option string the kernel takes (one page).
const MOUNT_DATA_LIMIT: usize = 4096;

/// NotFound for container `id`.
pub(super) fn not_found(id: &str) -> ManagerError {
    ManagerError::NotFound(format!("container {} not found", shown(id)))
}

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

/// Creates a container in pod `pod_id`: its record, bundle (config.json) and writable layer.
pub async fn create(
    core: &Arc<Core>,
    pod_id: &str,
    config: Option<ContainerConfig>,
) -> Result<String> {
    let config =
        config.ok_or_else(|| ManagerError::InvalidArgument("no container config given".into()))?;
    validate::container_config(&config, core.host.cgroup_v2)?;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ManagerError::InvalidArgument("container config names no image".into()))?;
    let pod_id = core
        .pods
        .resolve(pod_id)?
        .ok_or_else(|| ManagerError::NotFound(format!("pod {} not found", shown(pod_id))))?;
    let pod = core
        .pods
        .get(&pod_id)
        .ok_or_else(|| ManagerError::NotFound(format!("pod {} not found", shown(&pod_id))))?;
    if pod.state != PodState::Ready {
        return Err(ManagerError::FailedPrecondition(format!(
            "pod {pod_id} is not ready"
        )));
    }
    let log_path = log_path(&pod.config, &config)?;
    let image = core.images.status(&image_name)?.ok_or_else(|| {
        ManagerError::NotFound(format!("image {image_name:?} not found: pull it first"))
    })?;
    let stop_signal = signal_number(&image.config.stop_signal)?;
    let user = resolve_user(core, &config, &image).await?;
    let key = super::records::container_name_key(&config, &pod.config);
    core.names.reserve(&key, "container")?;
    let id = match new_id() {
        Ok(id) => id,
        Err(e) => {
            core.names.release(&key);
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
        task: Task::Absent,
        pid: 0,
        created_at: now(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        oom_killed: false,
        stop_signal,
        user: Some(user.clone()),
        config,
    };
    core.images.hold(&record.layers);
    let made = async {
        core.containers.insert(record.clone()).await?;
        crash_point!("container-after-record");
        write_bundle(core, &record, &pod, &image, &image_name, user).await
    }
    .await;
    match made {
        Ok(()) => {
            log::info!("container {id} ({key}) created in pod {pod_id}");
            Ok(id)
        }
        Err(error) => {
            let layout = core.layout.clone();
            let gone = id.clone();
            let _ = blocking(move || layout.remove_container(&gone)).await;
            if let Err(e) = core.containers.remove(&id).await {
                log::warn!("forgetting container {id} after its failed create: {e}");
            }
            core.images.release(&record.layers);
            core.names.release(&key);
            Err(error)
        }
    }
}

/// The user a container of `image` runs as, looked up in the image's own files.
async fn resolve_user(
    core: &Core,
    config: &ContainerConfig,
    image: &ImageRecord,
) -> Result<ResolvedUser> {
    let layers = core.images.layer_dirs_top_first(image);
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let image_user = image.config.user.clone();
    blocking(move || user::resolve(&security, &image_user, &layers)).await
}

async fn write_bundle(
    core: &Core,
    record: &ContainerRecord,
    pod: &PodRecord,
    image: &ImageRecord,
    image_name: &str,
    user: ResolvedUser,
) -> Result<()> {
    let files = core.layout.pod_files(&pod.id);
    let options = core.runc_options(&pod.runtime_handler)?;
    let context = PodContext::of(pod, &files, options.systemd_cgroup, &core.host);
    let data = core.layout.container_data(&record.id);
    let own_volumes = if core.config.ignore_image_defined_volumes {
        Vec::new()
    } else {
        image_volumes::plan(&image.config.volumes, &record.config, &data)?
    };
    let image_context = ImageContext {
        config: &image.config,
        name: image_name,
        user,
        volumes: &own_volumes,
    };
    let spec = spec::container_spec(&record.id, &context, &record.config, &image_context)?;
    let volumes = record.config.mounts.clone();
    blocking(move || host_mounts::check_propagation(&volumes)).await?;
    let profile = spec
        .process()
        .as_ref()
        .and_then(|p| p.apparmor_profile().clone());
    if let Some(profile) = profile {
        apparmor::prepare(&profile, &core.config.state_dir).await?;
    }
    let sources = spec::missing_mount_sources(&record.config);
    let bundle = core.layout.bundle(&record.id);
    let layers = core.images.layer_dirs_top_first(image);
    blocking(move || {
        // Filled before the bundle exists: the container never starts on a half-made volume.
        image_volumes::populate(&own_volumes, &layers, &data)?;
        // containerd makes a missing host directory of a mount rather than failing.
        for source in sources {
            create_dir(&source)?;
        }
        create_dir(&data.join("upper"))?;
        create_dir(&data.join("work"))?;
        create_dir(&bundle.join("rootfs"))?;
        spec::write(&spec, &bundle)
    })
    .await
}

/// Starts a created container: its task created on the pod's shim (root file system, CRI
/// log written by the shim) and started, by the pod's supervisor.
pub async fn start(core: &Arc<Core>, id: &str) -> Result<()> {
    let id = core.containers.resolve(id)?.ok_or_else(|| not_found(id))?;
    let _operation = core.operations.lock(&id).await;
    let record = core.containers.get(&id).ok_or_else(|| not_found(&id))?;
    if record.state != ContainerState::Created || record.task.may_exist() {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {id} is {:?}, not created",
            record.state
        )));
    }
    let pod = core
        .pods
        .get(&record.pod_id)
        .filter(|p| p.state == PodState::Ready)
        .ok_or_else(|| {
            ManagerError::FailedPrecondition(format!("pod {} is not ready", record.pod_id))
        })?;
    let options = core.runc_options(&pod.runtime_handler)?;
    let request = task_request(core, &record).await?;
    core.supervisor(&record.pod_id)?
        .start_container(request, options)
        .await
}

/// The CreateTask request of `record`: the overlay root file system and the shim-written
/// CRI log.
async fn task_request(core: &Core, record: &ContainerRecord) -> Result<CreateTaskRequest> {
    let data = core.layout.container_data(&record.id);
    let layers: Vec<PathBuf> = record
        .layers
        .iter()
        .rev()
        .map(|layer| core.images.layer_fs(layer))
        .collect();
    let rootfs = overlay(&layers, &data.join("upper"), &data.join("work"))?;
    let stdio = match &record.log_path {
        Some(path) => {
            if let Some(dir) = path.parent() {
                let dir = dir.to_path_buf();
                blocking(move || create_dir(&dir)).await?;
            }
            Some(format!(
                "crilog://{}?max_line_size={}",
                path.display(),
                core.config.max_container_log_line_size
            ))
        }
        None => None,
    };
    let bundle = core.layout.bundle(&record.id);
    let mut request = create_request(
        &record.id,
        &bundle,
        vec![rootfs],
        stdio.as_deref(),
        record.config.tty,
    );
    if record.config.stdin {
        // Its input comes from clients that attach (Attach), through the shim.
        let fifo = blocking(move || interactive::create_stdin_fifo(&bundle)).await?;
        request.stdin = fifo.display().to_string();
    }
    Ok(request)
}

/// Stops a container: its stop signal, `timeout` seconds, then SIGKILL. Idempotent.
pub async fn stop(core: &Arc<Core>, id: &str, timeout: i64) -> Result<()> {
    let Some(id) = core.containers.resolve(id)? else {
        return Ok(());
    };
    let Some(record) = core.containers.get(&id) else {
        return Ok(());
    };
    if record.state != ContainerState::Running {
        return Ok(());
    }
    let supervisor = core.supervisor(&record.pod_id)?;
    // Any i64 is a valid request: negative means none, huge means as good as forever.
    let grace = Duration::from_secs(timeout.max(0).unsigned_abs());
    if !grace.is_zero() {
        supervisor.signal(&id, record.stop_signal, false).await?;
        crash_point!("container-stop-after-signal");
        if wait_exited(core, &id, grace).await {
            return Ok(());
        }
        log::info!("container {id} ignored its stop signal for {timeout}s: killing it");
    }
    supervisor.signal(&id, libc::SIGKILL, true).await?;
    if wait_exited(core, &id, KILL_LIMIT).await {
        Ok(())
    } else {
        Err(ManagerError::DeadlineExceeded(format!(
            "container {id} did not exit within {}s of SIGKILL",
            KILL_LIMIT.as_secs()
        )))
    }
}

/// Waits up to `limit` until container `id` is no longer running (its exit recorded by its
/// pod's supervisor); true if it stopped.
async fn wait_exited(core: &Core, id: &str, limit: Duration) -> bool {
    let mut changes = core.containers.changes();
    let stopped = async {
        loop {
            if core
                .containers
                .get(id)
                .is_none_or(|c| c.state != ContainerState::Running)
            {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(limit, stopped).await.is_ok()
}

/// Removes a container (killing it if it runs): its task, root file system, bundle,
/// writable layer, then its record. Idempotent.
pub async fn remove(core: &Arc<Core>, id: &str) -> Result<()> {
    let Some(id) = core.containers.resolve(id)? else {
        return Ok(());
    };
    let _operation = core.operations.lock(&id).await;
    let Some(record) = core.containers.get(&id) else {
        return Ok(());
    };
    stop(core, &id, 0).await?;
    if core.containers.get(&id).is_some_and(|c| c.task.may_exist()) {
        core.supervisor(&record.pod_id)?.delete_task(&id).await?;
    }
    crash_point!("container-before-teardown");
    let layout = core.layout.clone();
    let gone = id.clone();
    blocking(move || layout.remove_container(&gone)).await?;
    crash_point!("container-before-record-removal");
    core.containers.remove(&id).await?;
    core.images.release(&record.layers);
    if let Some(pod) = core.pods.get(&record.pod_id) {
        core.names.release(&record.name_key(&pod.config));
    }
    core.operations.forget(&id);
    core.stats.forget(&id);
    log::info!("container {id} removed");
    Ok(())
}

/// Container `id`, as found; a running container whose shim does not answer says so.
pub fn status(core: &Core, id: &str) -> Result<ContainerRecord> {
    let mut record = core
        .containers
        .resolve(id)?
        .and_then(|id| core.containers.get(&id))
        .ok_or_else(|| not_found(id))?;
    if record.state == ContainerState::Running
        && let Some(trouble) = core.shim_trouble(&record.pod_id)
    {
        record.message = trouble;
    }
    Ok(record)
}

/// The containers `filter` selects, oldest first.
pub fn list(core: &Core, filter: Option<&ContainerFilter>) -> Vec<ContainerRecord> {
    let mut containers = core.containers.select(|c| {
        let Some(filter) = filter else {
            return true;
        };
        (filter.id.is_empty() || c.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
            && filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == c.state.cri())
            && filter
                .label_selector
                .iter()
                .all(|(k, v)| c.config.labels.get(k) == Some(v))
    });
    containers.sort_by_key(|c| c.created_at);
    containers
}

/// Makes the shim reopen a running container's log file (after kubelet rotated it).
pub async fn reopen_log(core: &Core, id: &str) -> Result<()> {
    let record = status(core, id)?;
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
    core.supervisor(&record.pod_id)?
        .reopen_log(&record.id)
        .await
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
        assert!(matches!(
            log_path(&no_dir, &with("a.log")),
            Err(ManagerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn stop_signals_by_name_or_number() {
        assert_eq!(signal_number("").unwrap(), libc::SIGTERM);
        assert_eq!(signal_number("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(signal_number("int").unwrap(), libc::SIGINT);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert!(matches!(
            signal_number("SIGNOPE"),
            Err(ManagerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn overlay_lists_layers_topmost_first_and_refuses_too_many() {
        let layers = vec![PathBuf::from("/l/top/fs"), PathBuf::from("/l/base/fs")];
        let mount = overlay(&layers, Path::new("/c/upper"), Path::new("/c/work")).unwrap();
        assert_eq!(
            mount.options,
            [
                "lowerdir=/l/top/fs:/l/base/fs",
                "upperdir=/c/upper",
                "workdir=/c/work"
            ]
        );
        assert_eq!(
            (mount.type_.as_str(), mount.source.as_str()),
            ("overlay", "overlay")
        );
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/var/lib/crust/layers/sha256-{i:064}/fs")))
            .collect();
        assert!(matches!(
            overlay(&many, Path::new("/u"), Path::new("/w")),
            Err(ManagerError::FailedPrecondition(_))
        ));
    }
}
