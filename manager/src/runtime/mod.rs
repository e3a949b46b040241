//! Pods and containers: crustd's typed core behind the CRI RuntimeService. Each operation
//! turns a request into files on disk and Task API calls on the pod's shim; exits arrive both
//! as events and from Wait, and everything known is kept on disk for a restarted crustd.

mod containers;
pub mod events;
mod exec;
mod pod_files;
mod pods;
mod records;
mod shim;
mod spec;
mod user;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crust_proto::runc_options::Options;
use tokio::sync::Notify;

use crate::config::{Config, RuntimeHandler};
use crate::error::{ManagerError, Result};
use crate::images::Images;
use crate::images::store::write_atomically;

pub use records::{ContainerRecord, ContainerState, PodRecord, PodState};
use shim::{Exit, ShimClient, ShimLauncher};

/// The infra process binary, compiled static by the build script.
const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crust-pause"));

/// Nanoseconds since the epoch, as CRI timestamps are.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A fresh 64-hex-digit id.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut random =
        fs::File::open("/dev/urandom").map_err(|e| ManagerError::io("open /dev/urandom", e))?;
    io::Read::read_exact(&mut random, &mut bytes)
        .map_err(|e| ManagerError::io("read /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where crustd keeps what.
#[derive(Debug)]
struct Dirs {
    /// `<state>/bundles/<id>`: config.json, rootfs mount point.
    bundles: PathBuf,
    /// `<state>/pods/<id>`: hostname, hosts, resolv.conf, shm.
    pods: PathBuf,
    /// `<root>/containers/<id>`: the writable upper layer and overlay's work dir.
    containers: PathBuf,
    /// `<state>/pause/rootfs`: the infra process's root file system.
    pause_rootfs: PathBuf,
    /// `<state>/exec/<exec id>`: ExecSync's output FIFOs.
    exec: PathBuf,
}

/// crustd's pods and containers.
pub struct Runtime {
    config: Config,
    images: Arc<Images>,
    launcher: ShimLauncher,
    dirs: Dirs,
    pod_records: records::RecordDir,
    container_records: records::RecordDir,
    pods: Mutex<HashMap<String, PodRecord>>,
    containers: Mutex<HashMap<String, ContainerRecord>>,
    /// Pod id → connection to its shim.
    shims: Mutex<HashMap<String, ShimClient>>,
    /// Names in use (pod and container name keys), so a name maps to one object.
    names: Mutex<HashSet<String>>,
    /// One lock per pod or container id: operations on one object run one at a time.
    operations: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Woken whenever a container's exit is recorded.
    exited: Notify,
    /// The pod CIDR kubelet last sent.
    pod_cidr: Mutex<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("dirs", &self.dirs).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| ManagerError::io(format!("create {}", path.display()), e))
}

/// Removes `path` and everything below it; a missing one is fine.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ManagerError::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

impl Runtime {
    /// Opens crustd's state: records from disk, images (keeping the layers containers use),
    /// the infra binary in place. [`Runtime::recover`] then reconciles with the live shims.
    pub fn open(config: &Config) -> Result<Arc<Self>> {
        let records_dir = config.root_dir.join("records");
        let pod_records = records::RecordDir::open(records_dir.join("pods"))?;
        let container_records = records::RecordDir::open(records_dir.join("containers"))?;
        let pods: Vec<PodRecord> = pod_records.load_all();
        let containers: Vec<ContainerRecord> = container_records.load_all();
        let held: Vec<String> = containers.iter().flat_map(|c| c.layers.clone()).collect();
        let images = Arc::new(Images::new(config, &held)?);
        let dirs = Dirs {
            bundles: config.state_dir.join("bundles"),
            pods: config.state_dir.join("pods"),
            containers: config.root_dir.join("containers"),
            pause_rootfs: config.state_dir.join("pause").join("rootfs"),
            exec: config.state_dir.join("exec"),
        };
        for dir in [
            &dirs.bundles,
            &dirs.pods,
            &dirs.containers,
            &dirs.pause_rootfs,
        ] {
            create_dir(dir)?;
        }
        // Output FIFOs of ExecSyncs cut short by a crash.
        remove_tree(&dirs.exec)?;
        create_dir(&dirs.exec)?;
        install_pause(&dirs.pause_rootfs)?;
        let mut names = HashSet::new();
        let pod_configs: HashMap<String, _> = pods
            .iter()
            .map(|p| (p.id.clone(), p.config.clone()))
            .collect();
        for pod in &pods {
            names.insert(pod.name_key());
        }
        for container in &containers {
            if let Some(pod) = pod_configs.get(&container.pod_id) {
                names.insert(container.name_key(pod));
            }
        }
        let launcher = ShimLauncher {
            binary: config.shim_binary.clone(),
            address: config.socket.display().to_string(),
            events_address: events::address(config).display().to_string(),
        };
        Ok(Arc::new(Self {
            config: config.clone(),
            images,
            launcher,
            dirs,
            pod_records,
            container_records,
            pods: Mutex::new(pods.into_iter().map(|p| (p.id.clone(), p)).collect()),
            containers: Mutex::new(containers.into_iter().map(|c| (c.id.clone(), c)).collect()),
            shims: Mutex::new(HashMap::new()),
            names: Mutex::new(names),
            operations: Mutex::new(HashMap::new()),
            exited: Notify::new(),
            pod_cidr: Mutex::new(String::new()),
        }))
    }

    /// The image side, shared with the ImageService.
    pub fn images(&self) -> Arc<Images> {
        Arc::clone(&self.images)
    }

    /// crustd's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Records the pod CIDR kubelet pushes.
    pub fn set_pod_cidr(&self, cidr: String) {
        log::info!("pod CIDR is now {cidr:?}");
        *lock(&self.pod_cidr) = cidr;
    }

    /// The runtime handler `name` (the default for an empty name).
    fn handler(&self, name: &str) -> Result<(String, RuntimeHandler)> {
        let name = if name.is_empty() {
            self.config.default_runtime.as_str()
        } else {
            name
        };
        self.config
            .runtimes
            .get(name)
            .map(|handler| (name.to_string(), handler.clone()))
            .ok_or_else(|| {
                ManagerError::InvalidArgument(format!("no runtime handler {name:?} is configured"))
            })
    }

    /// runc options for `handler`: its binary, its state root (crustd's own by default, so
    /// crustd's containers never mix with containerd's), its cgroup driver.
    fn runc_options(&self, handler: &str) -> Result<Options> {
        let (_, handler) = self.handler(handler)?;
        Ok(Options {
            binary_name: handler.binary_name.clone(),
            root: handler
                .root
                .clone()
                .unwrap_or_else(|| self.config.state_dir.join("runc"))
                .display()
                .to_string(),
            systemd_cgroup: handler.systemd_cgroup,
            ..Default::default()
        })
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.dirs.bundles.join(id)
    }

    /// The operation lock of object `id`.
    fn operation(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.operations).entry(id.to_string()).or_default())
    }

    fn forget_operation(&self, id: &str) {
        lock(&self.operations).remove(id);
    }

    /// Reserves `key`; AlreadyExists when taken.
    fn reserve_name(&self, key: &str, what: &str) -> Result<()> {
        if !lock(&self.names).insert(key.to_string()) {
            return Err(ManagerError::AlreadyExists(format!(
                "{what} name {key:?} is already in use"
            )));
        }
        Ok(())
    }

    fn release_name(&self, key: &str) {
        lock(&self.names).remove(key);
    }

    /// The full id of the object `id` names in `ids` (a unique prefix will do).
    fn resolve<'a>(
        what: &str,
        id: &str,
        ids: impl Iterator<Item = &'a String>,
    ) -> Result<Option<String>> {
        if id.is_empty() {
            return Err(ManagerError::InvalidArgument(format!("no {what} id given")));
        }
        let matches: Vec<&String> = ids.filter(|candidate| candidate.starts_with(id)).collect();
        if let Some(exact) = matches.iter().find(|candidate| candidate.as_str() == id) {
            return Ok(Some((*exact).clone()));
        }
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            _ => Err(ManagerError::InvalidArgument(format!(
                "{what} id prefix {id:?} is ambiguous"
            ))),
        }
    }

    fn find_pod(&self, id: &str) -> Result<Option<String>> {
        Self::resolve("pod", id, lock(&self.pods).keys())
    }

    fn find_container(&self, id: &str) -> Result<Option<String>> {
        Self::resolve("container", id, lock(&self.containers).keys())
    }

    fn pod(&self, id: &str) -> Option<PodRecord> {
        lock(&self.pods).get(id).cloned()
    }

    fn container(&self, id: &str) -> Option<ContainerRecord> {
        lock(&self.containers).get(id).cloned()
    }

    /// Applies `change` to pod `id` and writes the result to disk.
    fn update_pod<T>(&self, id: &str, change: impl FnOnce(&mut PodRecord) -> T) -> Result<T> {
        let mut pods = lock(&self.pods);
        let pod = pods
            .get_mut(id)
            .ok_or_else(|| ManagerError::NotFound(format!("pod {id} not found")))?;
        let result = change(pod);
        self.pod_records.save(id, pod)?;
        Ok(result)
    }

    /// Applies `change` to container `id` and writes the result to disk.
    fn update_container<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerRecord) -> T,
    ) -> Result<T> {
        let mut containers = lock(&self.containers);
        let container = containers
            .get_mut(id)
            .ok_or_else(|| ManagerError::NotFound(format!("container {id} not found")))?;
        let result = change(container);
        self.container_records.save(id, container)?;
        Ok(result)
    }

    /// The connection to pod `pod_id`'s shim, dialled on first use.
    async fn shim(&self, pod_id: &str) -> Result<ShimClient> {
        if let Some(client) = lock(&self.shims).get(pod_id) {
            return Ok(client.clone());
        }
        let address = self
            .pod(pod_id)
            .map(|p| p.shim_address)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ManagerError::FailedPrecondition(format!("pod {pod_id} has no shim")))?;
        let client = ShimClient::connect(&address).await?;
        lock(&self.shims).insert(pod_id.to_string(), client.clone());
        Ok(client)
    }

    fn forget_shim(&self, pod_id: &str) {
        lock(&self.shims).remove(pod_id);
    }

    /// Records that task `id` (a container or a pod's infra process) exited.
    pub fn task_exited(self: &Arc<Self>, id: &str, exit: Exit) {
        if lock(&self.containers).contains_key(id) {
            // The OOM event and the exit race (the exit also comes from Wait); the cgroup,
            // still there until the task is deleted, tells for sure.
            if exit.status == 128 + libc::SIGKILL as u32 && self.oom_counted(id) {
                self.task_oom(id);
            }
            match self.update_container(id, |c| c.mark_exited(exit.status, exit.at)) {
                Ok(true) => {
                    log::info!("container {id} exited with status {}", exit.status);
                    self.exited.notify_waiters();
                    self.delete_task_later(id);
                }
                Ok(false) => {}
                Err(e) => log::error!("recording the exit of {id}: {e}"),
            }
        } else if lock(&self.pods).contains_key(id) {
            match self.update_pod(id, |p| {
                let was_ready = p.state == PodState::Ready;
                p.mark_not_ready();
                was_ready
            }) {
                Ok(true) => log::info!("infra process of pod {id} exited ({})", exit.status),
                Ok(false) => {}
                Err(e) => log::error!("recording the exit of pod {id}: {e}"),
            }
        }
    }

    /// Whether the kernel counted an OOM kill in container `id`'s cgroup (v1 or v2).
    fn oom_counted(&self, id: &str) -> bool {
        let Some(pod_id) = self.container(id).map(|c| c.pod_id) else {
            return false;
        };
        let Some(parent) = self.pod(&pod_id).map(|p| p.cgroup_parent) else {
            return false;
        };
        let relative = format!("{}/{id}", parent.trim_matches('/'));
        let counted = |path: PathBuf| {
            fs::read_to_string(path).is_ok_and(|text| {
                text.lines().any(|line| {
                    line.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
            })
        };
        counted(
            Path::new("/sys/fs/cgroup/memory")
                .join(&relative)
                .join("memory.oom_control"),
        ) || counted(
            Path::new("/sys/fs/cgroup")
                .join(&relative)
                .join("memory.events"),
        ) || counted(
            Path::new("/sys/fs/cgroup/unified")
                .join(&relative)
                .join("memory.events"),
        )
    }

    /// Records an OOM kill in container `id`.
    pub fn task_oom(&self, id: &str) {
        if lock(&self.containers).contains_key(id)
            && let Err(e) = self.update_container(id, |c| c.mark_oom())
        {
            log::error!("recording an OOM kill in {id}: {e}");
        }
    }

    /// Deletes an exited container's task from its shim (runc state, root file system mount),
    /// as containerd does on exit; the exit is on disk already.
    fn delete_task_later(self: &Arc<Self>, id: &str) {
        let Some(pod_id) = self.container(id).map(|c| c.pod_id) else {
            return;
        };
        let runtime = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            let deleted = match runtime.shim(&pod_id).await {
                Ok(shim) => shim.delete(&id, "").await,
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => log::warn!("deleting the task of exited container {id}: {e}"),
            }
        });
    }

    /// Watches task `id` of pod `pod_id` with Wait, the second path (besides events) by which
    /// exits arrive; a shim that dies takes the exit with it, recorded as unknown.
    fn watch(self: &Arc<Self>, pod_id: &str, id: &str) {
        let runtime = Arc::clone(self);
        let pod_id = pod_id.to_string();
        let id = id.to_string();
        tokio::spawn(async move {
            let waited = match runtime.shim(&pod_id).await {
                Ok(shim) => shim.wait(&id, "").await,
                Err(e) => Err(e),
            };
            match waited {
                Ok(exit) => runtime.task_exited(&id, exit),
                Err(e) => runtime.task_lost(&pod_id, &id, &e.to_string()),
            }
        });
    }

    /// Task `id`'s shim cannot tell its exit any more.
    fn task_lost(self: &Arc<Self>, pod_id: &str, id: &str, why: &str) {
        if lock(&self.containers)
            .get(id)
            .is_some_and(|c| c.state == ContainerState::Running)
        {
            log::warn!("lost track of container {id}: {why}");
            let _ = self.update_container(id, |c| c.mark_lost(why.to_string(), now()));
            self.exited.notify_waiters();
        } else if lock(&self.pods)
            .get(id)
            .is_some_and(|p| p.state == PodState::Ready)
        {
            log::warn!("lost track of the infra process of pod {id}: {why}");
            let _ = self.update_pod(id, |p| p.mark_not_ready());
        }
        self.forget_shim(pod_id);
    }

    /// Waits up to `limit` until container `id` is no longer running; true if it stopped.
    async fn wait_stopped(&self, id: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.exited.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .container(id)
                .is_none_or(|c| c.state != ContainerState::Running)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Reconciles the records with the live shims after a (re)start: exits that happened
    /// while crustd was down are read from the shims, running tasks are watched again.
    pub async fn recover(self: &Arc<Self>) {
        let pods: Vec<PodRecord> = lock(&self.pods).values().cloned().collect();
        for pod in pods {
            if pod.shim_address.is_empty() {
                continue;
            }
            let shim = match self.shim(&pod.id).await {
                Ok(shim) => Some(shim),
                Err(e) => {
                    log::warn!("shim of pod {} is gone: {e}", pod.id);
                    None
                }
            };
            if pod.state == PodState::Ready {
                match &shim {
                    Some(shim) => match shim.state(&pod.id).await {
                        Ok(None) => self.watch(&pod.id, &pod.id),
                        Ok(Some(exit)) => self.task_exited(&pod.id, exit),
                        Err(e) => self.task_lost(&pod.id, &pod.id, &e.to_string()),
                    },
                    None => self.task_lost(&pod.id, &pod.id, "its shim is gone"),
                }
            }
            let running: Vec<String> = lock(&self.containers)
                .values()
                .filter(|c| c.pod_id == pod.id && c.state == ContainerState::Running)
                .map(|c| c.id.clone())
                .collect();
            for id in running {
                match &shim {
                    Some(shim) => match shim.state(&id).await {
                        Ok(None) => self.watch(&pod.id, &id),
                        Ok(Some(exit)) => self.task_exited(&id, exit),
                        Err(e) => self.task_lost(&pod.id, &id, &e.to_string()),
                    },
                    None => self.task_lost(&pod.id, &id, "its shim is gone"),
                }
            }
        }
        log::info!(
            "recovered {} pods and {} containers",
            lock(&self.pods).len(),
            lock(&self.containers).len()
        );
    }
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

    #[test]
    fn ids_resolve_exactly_or_by_unique_prefix() {
        let ids = ["abc123".to_string(), "abd456".to_string(), "ab".to_string()];
        let find = |id| Runtime::resolve("pod", id, ids.iter());
        assert_eq!(find("abc").unwrap().as_deref(), Some("abc123"));
        assert_eq!(
            find("ab").unwrap().as_deref(),
            Some("ab"),
            "an exact id wins"
        );
        assert_eq!(find("zz").unwrap(), None);
        assert!(find("abx").unwrap().is_none());
        assert!(matches!(find(""), Err(ManagerError::InvalidArgument(_))));
        let ambiguous = ["abc1".to_string(), "abc2".to_string()];
        assert!(Runtime::resolve("pod", "abc", ambiguous.iter()).is_err());
    }

    #[test]
    fn fresh_ids_are_64_hex_digits_and_differ() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
