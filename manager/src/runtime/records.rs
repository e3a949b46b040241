//! What crustd knows about each pod and container, kept on disk as JSON so that a restarted
//! crustd picks up where it left off. State changes go through the transition methods only.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crust_proto::cri::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};

use crate::error::{ManagerError, Result};
use crate::images::store::write_atomically;

/// Exit code CRI reports for a container that could not be started (containerd's value).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// Exit code reported when the exit status is unknowable (its shim is gone).
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// A pod's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Its infra process runs: containers may join it.
    Ready,
    /// Stopped (or its infra process died).
    NotReady,
}

impl PodState {
    /// The CRI enum value.
    pub fn cri(self) -> i32 {
        match self {
            PodState::Ready => crust_proto::cri::PodSandboxState::SandboxReady as i32,
            PodState::NotReady => crust_proto::cri::PodSandboxState::SandboxNotready as i32,
        }
    }
}

/// How a pod's namespaces were set up, which its containers follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// The pod uses the node's network (and UTS) namespace.
    pub host_network: bool,
    /// The pod uses the node's IPC namespace.
    pub host_ipc: bool,
    /// The pod uses the node's pid namespace.
    pub host_pid: bool,
    /// The pod's containers share one pid namespace (the infra process's).
    pub shared_pid: bool,
}

/// One pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// Its id (64 hex digits).
    pub id: String,
    /// The config kubelet sent.
    pub config: PodSandboxConfig,
    /// The runtime handler (RuntimeClass) that runs it.
    pub runtime_handler: String,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Lifecycle state.
    pub state: PodState,
    /// Namespace choices.
    pub namespaces: PodNamespaces,
    /// Pid of the infra process (0 before it runs).
    pub infra_pid: u32,
    /// ttrpc address of the pod's shim.
    pub shim_address: String,
    /// The pod's cgroup (its containers' cgroup parent).
    pub cgroup_parent: String,
    /// Whether crustd made that cgroup (and so removes it).
    pub owns_cgroup: bool,
}

impl PodRecord {
    /// The infra process runs.
    pub fn mark_ready(&mut self, infra_pid: u32, shim_address: String) {
        self.infra_pid = infra_pid;
        self.shim_address = shim_address;
        self.state = PodState::Ready;
    }

    /// The infra process is gone.
    pub fn mark_not_ready(&mut self) {
        self.state = PodState::NotReady;
    }

    /// The unique name kubelet gives this pod (`name_namespace_uid_attempt`).
    pub fn name_key(&self) -> String {
        pod_name_key(&self.config)
    }
}

/// The unique name of a pod config.
pub fn pod_name_key(config: &PodSandboxConfig) -> String {
    let metadata = config.metadata.clone().unwrap_or_default();
    format!(
        "{}_{}_{}_{}",
        metadata.name, metadata.namespace, metadata.uid, metadata.attempt
    )
}

/// A container's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Bundle written, task not started.
    Created,
    /// Its task is running.
    Running,
    /// It ran and exited (or could not start).
    Exited,
}

impl ContainerState {
    /// The CRI enum value.
    pub fn cri(self) -> i32 {
        use crust_proto::cri::ContainerState as Cri;
        match self {
            ContainerState::Created => Cri::ContainerCreated as i32,
            ContainerState::Running => Cri::ContainerRunning as i32,
            ContainerState::Exited => Cri::ContainerExited as i32,
        }
    }
}

/// One container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its id (64 hex digits).
    pub id: String,
    /// The pod it belongs to.
    pub pod_id: String,
    /// The config kubelet sent.
    pub config: ContainerConfig,
    /// The image id it runs.
    pub image_id: String,
    /// The image reference it was created from (a repo digest when known).
    pub image_ref: String,
    /// The image layers its root file system is made of, lowest first; held while it exists.
    pub layers: Vec<String>,
    /// Full path of its CRI log, if it has one.
    pub log_path: Option<PathBuf>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Pid of its process while it runs.
    pub pid: u32,
    /// Times, ns since the epoch (0 = not yet).
    pub created_at: i64,
    /// When it started.
    pub started_at: i64,
    /// When it exited.
    pub finished_at: i64,
    /// Its exit code.
    pub exit_code: i32,
    /// Why it exited: Completed, Error, OOMKilled, StartError, Unknown.
    pub reason: String,
    /// Details for a failure.
    pub message: String,
    /// The kernel's OOM killer hit it.
    pub oom_killed: bool,
    /// The signal that asks it to stop (the image's StopSignal, SIGTERM by default).
    pub stop_signal: i32,
}

impl ContainerRecord {
    /// Its process runs as `pid`.
    pub fn mark_started(&mut self, pid: u32, at: i64) {
        self.state = ContainerState::Running;
        self.pid = pid;
        self.started_at = at;
    }

    /// The OOM killer killed one of its processes.
    pub fn mark_oom(&mut self) {
        self.oom_killed = true;
    }

    /// Its process exited with `status` at `at`. Returns false when it was already recorded
    /// (an exit arrives both as an event and from Wait).
    pub fn mark_exited(&mut self, status: u32, at: i64) -> bool {
        if self.state == ContainerState::Exited {
            return false;
        }
        self.state = ContainerState::Exited;
        self.finished_at = at;
        self.exit_code = status as i32;
        self.reason = if self.oom_killed {
            "OOMKilled"
        } else if status == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string();
        true
    }

    /// It could not be started: `why`.
    pub fn mark_start_failed(&mut self, why: String, at: i64) {
        self.state = ContainerState::Exited;
        self.finished_at = at;
        self.exit_code = START_ERROR_EXIT_CODE;
        self.reason = "StartError".to_string();
        self.message = why;
    }

    /// Its exit cannot be known (its shim is gone): recorded as unknown, never left running.
    pub fn mark_lost(&mut self, why: String, at: i64) {
        if self.state == ContainerState::Exited {
            return;
        }
        self.state = ContainerState::Exited;
        self.finished_at = at;
        self.exit_code = UNKNOWN_EXIT_CODE;
        self.reason = "Unknown".to_string();
        self.message = why;
    }

    /// The unique name kubelet gives this container within crustd.
    pub fn name_key(&self, pod: &PodSandboxConfig) -> String {
        container_name_key(&self.config, pod)
    }
}

/// `name_podname_podnamespace_poduid_attempt`, as kubelet and containerd form it.
pub fn container_name_key(config: &ContainerConfig, pod: &PodSandboxConfig) -> String {
    let metadata = config.metadata.clone().unwrap_or_default();
    let pod = pod.metadata.clone().unwrap_or_default();
    format!(
        "{}_{}_{}_{}_{}",
        metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt
    )
}

/// Records of one kind (`pods` or `containers`), one JSON file per object.
#[derive(Debug)]
pub struct RecordDir {
    dir: PathBuf,
}

impl RecordDir {
    /// Opens (creating) `dir`.
    pub fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir)
            .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` under `id`, atomically.
    pub fn save<T: Serialize>(&self, id: &str, record: &T) -> Result<()> {
        let json = serde_json::to_vec(record)
            .map_err(|e| ManagerError::io("encode record", io::Error::other(e)))?;
        write_atomically(&self.path(id), &json)
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &str) -> Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ManagerError::io(
                format!("remove {}", self.path(id).display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn load_all<T: for<'de> Deserialize<'de>>(&self) -> Vec<T> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .filter_map(|path| match read_json(&path) {
                Ok(record) => Some(record),
                Err(e) => {
                    log::warn!("ignoring record {}: {e}", path.display());
                    None
                }
            })
            .collect()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> ContainerRecord {
        ContainerRecord {
            id: "c".into(),
            pod_id: "p".into(),
            config: ContainerConfig::default(),
            image_id: String::new(),
            image_ref: String::new(),
            layers: Vec::new(),
            log_path: None,
            state: ContainerState::Created,
            pid: 0,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            oom_killed: false,
            stop_signal: 15,
        }
    }

    #[test]
    fn exit_reasons_follow_status_and_oom() {
        let mut done = container();
        done.mark_started(7, 2);
        assert!(done.mark_exited(0, 3));
        assert_eq!((done.reason.as_str(), done.exit_code), ("Completed", 0));

        let mut failed = container();
        failed.mark_started(7, 2);
        failed.mark_exited(3, 3);
        assert_eq!((failed.reason.as_str(), failed.exit_code), ("Error", 3));

        let mut killed = container();
        killed.mark_started(7, 2);
        killed.mark_oom();
        killed.mark_exited(137, 3);
        assert_eq!(killed.reason, "OOMKilled");
    }

    #[test]
    fn the_first_exit_recorded_wins() {
        let mut record = container();
        record.mark_started(7, 2);
        assert!(record.mark_exited(1, 3));
        assert!(!record.mark_exited(0, 9));
        record.mark_lost("gone".into(), 10);
        assert_eq!((record.exit_code, record.finished_at), (1, 3));
    }

    #[test]
    fn records_survive_a_round_trip_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let records = RecordDir::open(dir.path().join("containers")).expect("open");
        let mut record = container();
        record.config.labels.insert("app".into(), "web".into());
        records.save("c", &record).expect("save");
        let loaded: Vec<ContainerRecord> = records.load_all();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].config.labels["app"], "web");
        records.remove("c").expect("remove");
        records.remove("c").expect("removing twice is fine");
        assert!(records.load_all::<ContainerRecord>().is_empty());
    }
}
