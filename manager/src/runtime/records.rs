//! What crustd knows about each pod and container, kept in the [store](super::store) so that a
//! restarted crustd picks up where it left off. States change only through the transition
//! methods here; each refuses a change its state does not allow.
//!
//! Besides the state kubelet sees, a record says what may exist outside crustd: whether a
//! task may be in the pod's shim ([`Task`]) and whether the shim may be running
//! ([`ShimState`]). Each is marked *before* the step that creates the thing, so a crash between
//! the two leaves a record that says "look for it", and teardown after a restart finds it.

use std::path::PathBuf;

use crust_proto::cri::{ContainerConfig, PodSandboxConfig};
use serde::{Deserialize, Serialize};

use super::store::Record;
use super::user::ResolvedUser;
use crate::error::{ManagerError, Result};

/// Exit code CRI reports for a container that could not be started (containerd's value).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// Exit code reported when the exit status is unknowable (containerd's value).
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// Whether a task (a container's or the infra process's) may exist in the pod's shim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// There is none.
    #[default]
    Absent,
    /// A create was sent (or was about to be): there may be one.
    Requested,
    /// There is one (running, or exited and not yet deleted).
    Present,
}

impl Task {
    /// Whether the shim may hold it.
    pub fn may_exist(self) -> bool {
        self != Task::Absent
    }
}

/// A pod's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Its infra process runs: containers may join it.
    Ready,
    /// Not started yet, stopped, or its infra process died.
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

/// Whether a pod's shim may be running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimState {
    /// Never started.
    #[default]
    NotStarted,
    /// `start` was run (or was about to be): a daemon may serve the pod's address.
    Launched,
    /// It exited, or was killed and cleaned up after.
    Gone,
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

/// A pod's network: its pinned namespace, whether plugins may hold an attachment of it, and
/// the IPs they gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// Where its network namespace is pinned; None for a pod on the node's network.
    pub netns: Option<PathBuf>,
    /// ADD was run (or was about to be): a DEL is owed before the pod goes.
    pub attached: bool,
    /// Its IPs, the primary first.
    pub ips: Vec<String>,
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
    /// Whether the infra task may be in the shim.
    #[serde(default)]
    pub infra_task: Task,
    /// ttrpc address of the pod's shim (known before `start` runs: it is derived from the id).
    pub shim_address: String,
    /// Pid of the shim daemon (0 until it is known).
    #[serde(default)]
    pub shim_pid: u32,
    /// Whether the shim may be running.
    #[serde(default)]
    pub shim: ShimState,
    /// The pod's cgroup (its containers' cgroup parent).
    pub cgroup_parent: String,
    /// Whether crustd made that cgroup (and so removes it).
    pub owns_cgroup: bool,
    /// Its network.
    #[serde(default)]
    pub network: PodNetwork,
}

impl Record for PodRecord {
    const KIND: &'static str = "pod";
    fn id(&self) -> &str {
        &self.id
    }
}

impl PodRecord {
    /// `start` is about to run: a shim may serve `address` from now on.
    pub fn mark_shim_launched(&mut self, address: String) {
        self.shim_address = address;
        self.shim = ShimState::Launched;
    }

    /// The shim daemon runs as `pid`.
    pub fn mark_shim_pid(&mut self, pid: u32) {
        self.shim_pid = pid;
    }

    /// The shim is gone (exited, or killed). What its tasks left is cleaned up separately:
    /// [`Task`] flags still set say what is left to clean.
    pub fn mark_shim_gone(&mut self) {
        self.shim = ShimState::Gone;
        self.state = PodState::NotReady;
    }

    /// The infra task is about to be created.
    pub fn begin_infra(&mut self) -> Result<()> {
        if self.shim != ShimState::Launched || self.state == PodState::Ready {
            return Err(ManagerError::FailedPrecondition(format!(
                "pod {} cannot start its infra process: shim {:?}, state {:?}",
                self.id, self.shim, self.state
            )));
        }
        self.infra_task = Task::Requested;
        Ok(())
    }

    /// The infra process runs.
    pub fn mark_ready(&mut self, infra_pid: u32) {
        self.infra_pid = infra_pid;
        self.infra_task = Task::Present;
        self.state = PodState::Ready;
    }

    /// The infra process is gone (or the pod was stopped). Returns whether it was ready.
    pub fn mark_not_ready(&mut self) -> bool {
        std::mem::replace(&mut self.state, PodState::NotReady) == PodState::Ready
    }

    /// The infra task was deleted from the shim.
    pub fn mark_infra_deleted(&mut self) {
        self.infra_task = Task::Absent;
    }

    /// The plugins are about to attach the pod's namespace.
    pub fn begin_network(&mut self) -> Result<()> {
        if self.network.netns.is_none() {
            return Err(ManagerError::FailedPrecondition(format!(
                "pod {} has no network namespace of its own to attach",
                self.id
            )));
        }
        self.network.attached = true;
        Ok(())
    }

    /// The plugins attached it and gave it `ips`.
    pub fn mark_network_attached(&mut self, ips: Vec<String>) {
        self.network.attached = true;
        self.network.ips = ips;
    }

    /// Every attachment was released (DEL succeeded).
    pub fn mark_network_detached(&mut self) {
        self.network.attached = false;
        self.network.ips.clear();
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

/// A container's lifecycle, as kubelet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Bundle written, not started (or a start is under way).
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
    /// Whether its task may be in the pod's shim.
    #[serde(default)]
    pub task: Task,
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
    /// The user and groups its process starts with (None in records older than this field).
    #[serde(default)]
    pub user: Option<ResolvedUser>,
}

impl Record for ContainerRecord {
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
}

impl ContainerRecord {
    /// Its limits were changed in place (UpdateContainerResources).
    pub fn set_resources(&mut self, resources: crust_proto::cri::LinuxContainerResources) {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(resources);
    }

    /// A start is about to create its task. Only a created container without a task starts.
    pub fn begin_start(&mut self) -> Result<()> {
        if self.state != ContainerState::Created || self.task.may_exist() {
            return Err(ManagerError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                self.id, self.state
            )));
        }
        self.task = Task::Requested;
        Ok(())
    }

    /// Its process runs as `pid` since `at`.
    pub fn mark_started(&mut self, pid: u32, at: i64) {
        if self.state == ContainerState::Created {
            self.state = ContainerState::Running;
            self.pid = pid;
            self.started_at = at;
        }
        self.task = Task::Present;
    }

    /// The OOM killer killed one of its processes.
    pub fn mark_oom(&mut self) {
        self.oom_killed = true;
    }

    /// Its process exited with `status` at `at`. Returns false when an exit was recorded
    /// already (one arrives both as an event and from Wait): the first one wins.
    pub fn mark_exited(&mut self, status: u32, at: i64) -> bool {
        if self.state == ContainerState::Exited {
            return false;
        }
        let reason = if self.oom_killed {
            "OOMKilled"
        } else if status == 0 {
            "Completed"
        } else {
            "Error"
        };
        self.finish(status as i32, at, reason, String::new());
        true
    }

    /// It could not be started: `why`.
    pub fn mark_start_failed(&mut self, why: String, at: i64) {
        if self.state != ContainerState::Exited {
            self.finish(START_ERROR_EXIT_CODE, at, "StartError", why);
        }
    }

    /// Its process is gone without a reported exit (its shim died, or crustd was down while
    /// it was being started): `status` is what cleaning up gave, `why` says what happened.
    /// Returns false when an exit was recorded already.
    pub fn mark_lost(&mut self, status: i32, reason: &str, why: String, at: i64) -> bool {
        if self.state == ContainerState::Exited {
            return false;
        }
        self.finish(status, at, reason, why);
        true
    }

    fn finish(&mut self, code: i32, at: i64, reason: &str, message: String) {
        self.state = ContainerState::Exited;
        self.pid = 0;
        self.finished_at = at;
        self.exit_code = code;
        self.reason = reason.to_string();
        self.message = message;
    }

    /// Its task was deleted from the shim (or the shim is gone with it).
    pub fn mark_task_deleted(&mut self) {
        self.task = Task::Absent;
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

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A created container record for tests.
    pub fn container(id: &str, pod_id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            pod_id: pod_id.into(),
            config: ContainerConfig::default(),
            image_id: String::new(),
            image_ref: String::new(),
            layers: Vec::new(),
            log_path: None,
            state: ContainerState::Created,
            task: Task::Absent,
            pid: 0,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            oom_killed: false,
            stop_signal: 15,
            user: None,
        }
    }

    /// A pod record, not started, for tests.
    pub fn pod(id: &str) -> PodRecord {
        PodRecord {
            id: id.into(),
            config: PodSandboxConfig::default(),
            runtime_handler: "runc".into(),
            created_at: 1,
            state: PodState::NotReady,
            namespaces: PodNamespaces::default(),
            infra_pid: 0,
            infra_task: Task::Absent,
            shim_address: String::new(),
            shim_pid: 0,
            shim: ShimState::NotStarted,
            cgroup_parent: format!("/crust/{id}"),
            owns_cgroup: true,
            network: PodNetwork::default(),
        }
    }

    #[test]
    fn a_pods_network_is_owed_a_del_from_before_add_until_detached() {
        let mut host = pod("h");
        assert!(host.begin_network().is_err(), "no namespace of its own");
        assert!(!host.network.attached);
        let mut own = pod("p");
        own.network.netns = Some(PathBuf::from("/run/crust/netns/p"));
        own.begin_network().unwrap();
        assert!(own.network.attached && own.network.ips.is_empty());
        own.mark_network_attached(vec!["10.1.0.5".into(), "fd00::5".into()]);
        assert_eq!(own.network.ips, ["10.1.0.5", "fd00::5"]);
        own.mark_network_detached();
        assert_eq!(
            own.network,
            PodNetwork {
                netns: Some(PathBuf::from("/run/crust/netns/p")),
                attached: false,
                ips: vec![],
            }
        );
        // A record written before crustd had networking reads as "nothing to release".
        let mut old = serde_json::to_value(pod("o")).unwrap();
        old.as_object_mut().unwrap().remove("network");
        let old: PodRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.network, PodNetwork::default());
    }

    fn running() -> ContainerRecord {
        let mut record = container("c", "p");
        record.begin_start().unwrap();
        record.mark_started(7, 2);
        record
    }

    #[test]
    fn exit_reasons_follow_status_and_oom() {
        let mut done = running();
        assert!(done.mark_exited(0, 3));
        assert_eq!(
            (done.reason.as_str(), done.exit_code, done.pid),
            ("Completed", 0, 0)
        );

        let mut failed = running();
        failed.mark_exited(3, 3);
        assert_eq!((failed.reason.as_str(), failed.exit_code), ("Error", 3));

        let mut killed = running();
        killed.mark_oom();
        killed.mark_exited(137, 3);
        assert_eq!(
            (killed.reason.as_str(), killed.exit_code),
            ("OOMKilled", 137)
        );
    }

    #[test]
    fn the_first_exit_recorded_wins() {
        let mut record = running();
        assert!(record.mark_exited(1, 3));
        assert!(!record.mark_exited(0, 9));
        assert!(!record.mark_lost(137, "Error", "shim died".into(), 10));
        record.mark_start_failed("late".into(), 11);
        assert_eq!(
            (record.exit_code, record.finished_at, record.reason.as_str()),
            (1, 3, "Error")
        );
    }

    #[test]
    fn a_start_needs_a_created_container_without_a_task() {
        let mut record = container("c", "p");
        record.begin_start().unwrap();
        assert_eq!(record.task, Task::Requested);
        assert!(
            matches!(
                record.begin_start(),
                Err(ManagerError::FailedPrecondition(_))
            ),
            "a second start while the first may have created a task"
        );
        record.mark_started(7, 2);
        assert_eq!(
            (record.state, record.task),
            (ContainerState::Running, Task::Present)
        );
        assert!(
            matches!(
                record.begin_start(),
                Err(ManagerError::FailedPrecondition(_))
            ),
            "running"
        );
        record.mark_exited(0, 3);
        assert!(
            matches!(
                record.begin_start(),
                Err(ManagerError::FailedPrecondition(_))
            ),
            "exited"
        );
    }

    #[test]
    fn a_failed_start_is_exited_and_keeps_its_task_for_cleanup() {
        let mut record = container("c", "p");
        record.begin_start().unwrap();
        record.mark_start_failed("exec: no such file".into(), 5);
        assert_eq!(
            (record.state, record.exit_code, record.reason.as_str()),
            (ContainerState::Exited, START_ERROR_EXIT_CODE, "StartError")
        );
        assert_eq!(record.message, "exec: no such file");
        assert!(record.task.may_exist(), "runc may have left a container");
        record.mark_task_deleted();
        assert_eq!(record.task, Task::Absent);
    }

    #[test]
    fn a_lost_container_is_exited_with_the_cleanup_status() {
        let mut record = running();
        assert!(record.mark_lost(137, "Error", "its shim died".into(), 8));
        assert_eq!(
            (
                record.state,
                record.exit_code,
                record.reason.as_str(),
                record.finished_at
            ),
            (ContainerState::Exited, 137, "Error", 8)
        );
    }

    #[test]
    fn a_late_start_does_not_undo_an_exit() {
        let mut record = container("c", "p");
        record.begin_start().unwrap();
        assert!(
            record.mark_exited(0, 3),
            "an exit seen before the start was recorded"
        );
        record.mark_started(7, 2);
        assert_eq!(
            (record.state, record.task),
            (ContainerState::Exited, Task::Present)
        );
    }

    #[test]
    fn a_pod_marks_its_shim_before_and_after() {
        let mut pod = pod("p");
        assert!(
            matches!(pod.begin_infra(), Err(ManagerError::FailedPrecondition(_))),
            "no shim yet"
        );
        pod.mark_shim_launched("unix:///run/x".into());
        pod.mark_shim_pid(4242);
        assert_eq!(
            (pod.shim, pod.shim_address.as_str(), pod.shim_pid),
            (ShimState::Launched, "unix:///run/x", 4242)
        );
        pod.begin_infra().unwrap();
        assert_eq!(pod.infra_task, Task::Requested);
        pod.mark_ready(9);
        assert_eq!(
            (pod.state, pod.infra_task),
            (PodState::Ready, Task::Present)
        );
        assert!(
            matches!(pod.begin_infra(), Err(ManagerError::FailedPrecondition(_))),
            "already running"
        );
        assert!(pod.mark_not_ready());
        assert!(!pod.mark_not_ready());
        pod.mark_shim_gone();
        assert_eq!(
            (pod.shim, pod.infra_task),
            (ShimState::Gone, Task::Present),
            "the infra task is cleaned up on its own"
        );
        pod.mark_infra_deleted();
        assert_eq!(pod.infra_task, Task::Absent);
    }

    #[test]
    fn states_map_to_the_cri_enums() {
        use crust_proto::cri::{ContainerState as CriContainer, PodSandboxState as CriPod};
        assert_eq!(PodState::Ready.cri(), CriPod::SandboxReady as i32);
        assert_eq!(PodState::NotReady.cri(), CriPod::SandboxNotready as i32);
        assert_eq!(
            [
                ContainerState::Created.cri(),
                ContainerState::Running.cri(),
                ContainerState::Exited.cri()
            ],
            [
                CriContainer::ContainerCreated as i32,
                CriContainer::ContainerRunning as i32,
                CriContainer::ContainerExited as i32
            ]
        );
    }

    #[test]
    fn records_are_stored_under_their_own_ids() {
        assert_eq!(Record::id(&pod("pod-1")), "pod-1");
        assert_eq!(Record::id(&container("ctr-1", "pod-1")), "ctr-1");
    }

    #[test]
    fn name_keys_are_kubelets_unique_names() {
        let mut record = pod("p");
        record.config.metadata = Some(crust_proto::cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u-1".into(),
            attempt: 2,
        });
        assert_eq!(record.name_key(), "web_default_u-1_2");
        assert_eq!(pod_name_key(&record.config), "web_default_u-1_2");
        assert_eq!(pod_name_key(&PodSandboxConfig::default()), "___0");

        let mut app = container("c", "p");
        app.config.metadata = Some(crust_proto::cri::ContainerMetadata {
            name: "app".into(),
            attempt: 3,
        });
        assert_eq!(app.name_key(&record.config), "app_web_default_u-1_3");
        assert_eq!(
            container_name_key(&app.config, &record.config),
            "app_web_default_u-1_3"
        );
    }

    #[test]
    fn records_written_before_these_fields_existed_still_load() {
        let mut json = serde_json::to_value(container("c", "p")).unwrap();
        json.as_object_mut().unwrap().remove("task");
        let old: ContainerRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.task, Task::Absent);
        let mut json = serde_json::to_value(pod("p")).unwrap();
        for field in ["infra_task", "shim_pid", "shim"] {
            json.as_object_mut().unwrap().remove(field);
        }
        let old: PodRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.shim, ShimState::NotStarted);
    }
}
