//! The supervisor of one pod: a task that owns the connection to the pod's shim and is the
//! only place where the pod's tasks are created, started, signalled and deleted, and where
//! their exits and OOM kills are recorded.
//!
//! Everything that concerns the pod's tasks arrives in one mailbox and is handled in order:
//! exits from the shim's events and from a Wait per task, OOM events, a Wait that failed
//! because the shim went away, and requests from the CRI handlers. So an exit is recorded
//! once, its task deleted once, and a RemoveContainer can never race the delete that follows
//! an exit. Every shim call has a deadline, so one request holds the mailbox for a bounded
//! time; the long waits (a container's grace period, an ExecSync) happen in the handlers,
//! which watch the store instead.
//!
//! A shim that dies is cleaned up as containerd cleans up after a dead shim: its `delete`
//! is run for every task it held (runc removes the container, killing what is left of it)
//! and only then are the exits recorded, with the status `delete` reports. A shim that stops
//! answering is reported in ContainerStatus, and killed and cleaned up the same way once it
//! has not answered for [`UNRESPONSIVE_GRACE`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crust_proto::runc_options::Options;
use crust_proto::task::CreateTaskRequest;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::records::{
    ContainerRecord, ContainerState, PodRecord, PodState, ShimState, UNKNOWN_EXIT_CODE,
};
use super::shim::{
    Exit, ShimClient, ShimProcess, TaskStatus, create_request, is_shim_trouble, socket_path,
};
use super::{Core, cgroups, now, shown};
use crate::crash_point;
use crate::error::{ManagerError, Result};

/// Messages waiting for a supervisor; senders wait when it is full.
const MAILBOX: usize = 64;
/// How often an idle supervisor checks that its shim answers.
const HEALTH_PERIOD: Duration = Duration::from_secs(10);
/// How long a shim may go without answering before it is killed and cleaned up after.
const UNRESPONSIVE_GRACE: Duration = Duration::from_secs(30);
/// How long a task gets to exit after SIGKILL.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// How long a shim gets to exit after Shutdown (it flushes its events first, up to 3 s).
const SHIM_EXIT_LIMIT: Duration = Duration::from_secs(5);
/// How long a shim gets to be gone after SIGKILL.
const SHIM_KILL_LIMIT: Duration = Duration::from_secs(5);

/// A handle to a pod's supervisor.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pod_id: String,
    mailbox: mpsc::Sender<Message>,
}

type Reply<T> = oneshot::Sender<Result<T>>;

#[derive(Debug)]
enum Message {
    /// A task exited (from an event or from Wait).
    Exit { task: String, exit: Exit },
    /// The OOM killer struck in a task.
    Oom { task: String },
    /// A Wait on the shim of connection `epoch` failed: the connection is gone.
    Lost { epoch: u64, why: String },
    /// A request from a CRI handler.
    Call(Call),
}

#[derive(Debug)]
enum Call {
    StartInfra {
        bundle: PathBuf,
        options: Box<Options>,
        reply: Reply<u32>,
    },
    StartContainer {
        request: Box<CreateTaskRequest>,
        options: Box<Options>,
        reply: Reply<()>,
    },
    Signal {
        id: String,
        signal: i32,
        all: bool,
        reply: Reply<()>,
    },
    DeleteTask {
        id: String,
        reply: Reply<()>,
    },
    StopPod {
        reply: Reply<()>,
    },
    Client {
        reply: Reply<ShimClient>,
    },
    ReopenLog {
        id: String,
        reply: Reply<()>,
    },
}

impl Supervisor {
    /// Starts the supervisor of pod `pod_id`. It first reconciles the pod's record with its
    /// shim (after a restart, the shim knows what happened while crustd was down); the
    /// returned receiver resolves once that is done.
    pub fn spawn(core: Arc<Core>, pod_id: String) -> (Self, oneshot::Receiver<()>) {
        let (sender, mailbox) = mpsc::channel(MAILBOX);
        let (recovered, ready) = oneshot::channel();
        let actor = PodActor {
            core,
            pod_id: pod_id.clone(),
            myself: sender.downgrade(),
            client: None,
            epoch: 0,
            unanswered_since: None,
        };
        tokio::spawn(actor.run(mailbox, recovered));
        (
            Self {
                pod_id,
                mailbox: sender,
            },
            ready,
        )
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.mailbox.send(message).await.map_err(|_| {
            ManagerError::Unavailable(format!(
                "the supervisor of pod {} has stopped",
                shown(&self.pod_id)
            ))
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.send(Message::Call(make(reply))).await?;
        answer.await.map_err(|_| {
            ManagerError::Unavailable(format!(
                "the supervisor of pod {} stopped before answering",
                shown(&self.pod_id)
            ))
        })?
    }

    /// Delivers an exit from the shim's events.
    pub async fn exit(&self, task: String, exit: Exit) -> Result<()> {
        self.send(Message::Exit { task, exit }).await
    }

    /// Delivers an OOM kill from the shim's events.
    pub async fn oom(&self, task: String) -> Result<()> {
        self.send(Message::Oom { task }).await
    }

    /// Launches the pod's shim and starts its infra process from `bundle`; returns its pid.
    pub async fn start_infra(&self, bundle: PathBuf, options: Options) -> Result<u32> {
        self.call(|reply| Call::StartInfra {
            bundle,
            options: Box::new(options),
            reply,
        })
        .await
    }

    /// Creates and starts the container task `request` describes.
    pub async fn start_container(
        &self,
        request: CreateTaskRequest,
        options: Options,
    ) -> Result<()> {
        self.call(|reply| Call::StartContainer {
            request: Box::new(request),
            options: Box::new(options),
            reply,
        })
        .await
    }

    /// Sends `signal` to container `id` (to all its processes with `all`). A task that is
    /// gone already is not an error.
    pub async fn signal(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        self.call(|reply| Call::Signal {
            id: id.to_string(),
            signal,
            all,
            reply,
        })
        .await
    }

    /// Deletes container `id`'s task, if it still has one.
    pub async fn delete_task(&self, id: &str) -> Result<()> {
        self.call(|reply| Call::DeleteTask {
            id: id.to_string(),
            reply,
        })
        .await
    }

    /// Ends the pod's tasks, its infra process and its shim, waiting until the shim is gone.
    pub async fn stop_pod(&self) -> Result<()> {
        self.call(|reply| Call::StopPod { reply }).await
    }

    /// A connection to the pod's shim, for calls outside the pod's lifecycle (ExecSync).
    pub async fn client(&self) -> Result<ShimClient> {
        self.call(|reply| Call::Client { reply }).await
    }

    /// Makes the shim reopen container `id`'s log.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        self.call(|reply| Call::ReopenLog {
            id: id.to_string(),
            reply,
        })
        .await
    }
}

/// The supervisor's own state, owned by its task.
struct PodActor {
    core: Arc<Core>,
    pod_id: String,
    /// For Wait tasks to report to; weak, so the supervisor ends when its handles are gone.
    myself: mpsc::WeakSender<Message>,
    client: Option<ShimClient>,
    /// Counts connections, so a failure of an old one is not taken for the current one's.
    epoch: u64,
    /// When the shim first failed to answer, while it does not.
    unanswered_since: Option<Instant>,
}

impl PodActor {
    async fn run(mut self, mut mailbox: mpsc::Receiver<Message>, recovered: oneshot::Sender<()>) {
        self.recover().await;
        let _ = recovered.send(());
        let mut health = tokio::time::interval(HEALTH_PERIOD);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        loop {
            tokio::select! {
                message = mailbox.recv() => match message {
                    Some(message) => self.handle(message).await,
                    None => break,
                },
                _ = health.tick() => self.check_health().await,
            }
        }
        log::debug!("supervisor of pod {} ends", self.pod_id);
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Exit { task, exit } => self.on_exit(&task, exit).await,
            Message::Oom { task } => self.on_oom(&task).await,
            Message::Lost { epoch, why } => {
                if epoch == self.epoch && self.client.is_some() {
                    self.check_after_failure(&ManagerError::Unavailable(why))
                        .await;
                }
            }
            Message::Call(call) => self.on_call(call).await,
        }
    }

    async fn on_call(&mut self, call: Call) {
        match call {
            Call::StartInfra {
                bundle,
                options,
                reply,
            } => {
                let _ = reply.send(self.start_infra(bundle, &options).await);
            }
            Call::StartContainer {
                request,
                options,
                reply,
            } => {
                let _ = reply.send(self.start_container(*request, &options).await);
            }
            Call::Signal {
                id,
                signal,
                all,
                reply,
            } => {
                let _ = reply.send(self.signal(&id, signal, all).await);
            }
            Call::DeleteTask { id, reply } => {
                let _ = reply.send(self.delete_container_task(&id).await);
            }
            Call::StopPod { reply } => {
                let _ = reply.send(self.stop_pod().await);
            }
            Call::Client { reply } => {
                let _ = reply.send(self.connected());
            }
            Call::ReopenLog { id, reply } => {
                let result = match self.connected() {
                    Ok(client) => client.reopen_log(&id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    self.check_after_failure(e).await;
                }
                let _ = reply.send(result);
            }
        }
    }

    fn pod(&self) -> Option<PodRecord> {
        self.core.pods.get(&self.pod_id)
    }

    fn containers(&self) -> Vec<ContainerRecord> {
        self.core.containers.select(|c| c.pod_id == self.pod_id)
    }

    fn connected(&self) -> Result<ShimClient> {
        self.client.clone().ok_or_else(|| {
            ManagerError::FailedPrecondition(format!(
                "the shim of pod {} is gone",
                shown(&self.pod_id)
            ))
        })
    }

    fn use_client(&mut self, client: ShimClient) {
        self.epoch += 1;
        self.client = Some(client);
    }

    fn drop_client(&mut self) {
        self.epoch += 1;
        self.client = None;
        self.unanswered_since = None;
        self.core.set_shim_trouble(&self.pod_id, None);
    }

    fn shim_process(&self) -> ShimProcess<'_> {
        ShimProcess {
            address: &self.core.launcher.address,
            pod_id: &self.pod_id,
        }
    }

    /// Waits for task `id`'s exit in the background; the exit (or the connection's loss)
    /// comes back through the mailbox.
    fn watch(&self, id: &str) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let myself = self.myself.clone();
        let epoch = self.epoch;
        let id = id.to_string();
        tokio::spawn(async move {
            let result = client.wait(&id, "", Duration::ZERO).await;
            let message = match result {
                Ok(exit) => Message::Exit { task: id, exit },
                // Deleted already: its exit was handled.
                Err(ManagerError::NotFound(_)) => return,
                Err(e) if is_shim_trouble(&e) => Message::Lost {
                    epoch,
                    why: e.to_string(),
                },
                Err(e) => {
                    log::warn!("waiting for task {id}: {e}");
                    return;
                }
            };
            if let Some(myself) = myself.upgrade() {
                let _ = myself.send(message).await;
            }
        });
    }

    // ---- starting ----

    async fn start_infra(&mut self, bundle: PathBuf, options: &Options) -> Result<u32> {
        let address = self.core.launcher.address_of(&self.pod_id);
        self.core
            .pods
            .update(&self.pod_id, |p| p.mark_shim_launched(address.clone()))
            .await?;
        crash_point!("pod-before-shim-start");
        let started = self
            .core
            .launcher
            .start(&self.pod_id, &bundle, options)
            .await?;
        if started != address {
            self.core
                .pods
                .update(&self.pod_id, |p| p.shim_address = started.clone())
                .await?;
        }
        crash_point!("pod-after-shim-start");
        let client = ShimClient::connect(&started).await?;
        self.use_client(client.clone());
        let shim_pid = client.shim_pid(&self.pod_id).await?;
        self.core
            .pods
            .update(&self.pod_id, |p| p.mark_shim_pid(shim_pid))
            .await?;
        self.core
            .pods
            .update(&self.pod_id, PodRecord::begin_infra)
            .await??;
        let request = create_request(&self.pod_id, &bundle, Vec::new(), None, false);
        client.create(request, options).await?;
        crash_point!("pod-after-infra-create");
        let pid = client.start(&self.pod_id, "").await?;
        crash_point!("pod-after-infra-start");
        self.core
            .pods
            .update(&self.pod_id, |p| p.mark_ready(pid))
            .await?;
        self.watch(&self.pod_id);
        Ok(pid)
    }

    async fn start_container(
        &mut self,
        request: CreateTaskRequest,
        options: &Options,
    ) -> Result<()> {
        let id = request.id.clone();
        let client = self.connected()?;
        self.core
            .containers
            .update(&id, ContainerRecord::begin_start)
            .await??;
        crash_point!("container-before-task-create");
        let created = client.create(request, options).await;
        crash_point!("container-after-task-create");
        // Taken before the process runs, so a quick exit never precedes its start.
        let started_at = now();
        let started = match created {
            Ok(_) => client.start(&id, "").await,
            Err(e) => Err(e),
        };
        match started {
            Ok(pid) => {
                crash_point!("container-after-task-start");
                self.core
                    .containers
                    .update(&id, |c| c.mark_started(pid, started_at))
                    .await?;
                self.watch(&id);
                log::info!("container {id} started, pid {pid}");
                Ok(())
            }
            Err(error) => {
                let why = error.to_string();
                self.core
                    .containers
                    .update(&id, |c| c.mark_start_failed(why, now()))
                    .await?;
                self.check_after_failure(&error).await;
                if let Err(e) = self.delete_container_task(&id).await {
                    log::warn!("removing the task of {id} after its failed start: {e}");
                }
                Err(error)
            }
        }
    }

    // ---- exits ----

    async fn on_exit(&mut self, task: &str, exit: Exit) {
        if task == self.pod_id {
            if self.pod().is_none() {
                return;
            }
            match self
                .core
                .pods
                .update(&self.pod_id, PodRecord::mark_not_ready)
                .await
            {
                Ok(true) => log::info!(
                    "infra process of pod {} exited ({})",
                    self.pod_id,
                    exit.status
                ),
                Ok(false) => {}
                Err(e) => log::error!("recording the exit of pod {}: {e}", self.pod_id),
            }
            if let Err(e) = self.delete_infra_task().await {
                log::warn!("deleting the infra task of pod {}: {e}", self.pod_id);
            }
            return;
        }
        let Some(record) = self
            .core
            .containers
            .get(task)
            .filter(|c| c.pod_id == self.pod_id)
        else {
            return;
        };
        if record.state != ContainerState::Exited {
            // The OOM event and the exit race (the exit also comes from Wait); the cgroup,
            // there until the task is deleted, tells for sure.
            let oom = exit.status == 128 + libc::SIGKILL as u32
                && !record.oom_killed
                && self.oom_counted(task);
            let recorded = self
                .core
                .containers
                .update(task, |c| {
                    if oom {
                        c.mark_oom();
                    }
                    c.mark_exited(exit.status, exit.at)
                })
                .await;
            match recorded {
                Ok(true) => log::info!("container {task} exited with status {}", exit.status),
                Ok(false) => {}
                Err(e) => log::error!("recording the exit of {task}: {e}"),
            }
        }
        // As containerd does: an exited container's task goes at once (runc state, mount).
        if let Err(e) = self.delete_container_task(task).await {
            log::warn!("deleting the task of exited container {task}: {e}");
        }
    }

    fn oom_counted(&self, id: &str) -> bool {
        let Some(pod) = self.pod() else {
            return false;
        };
        let systemd = self
            .core
            .runc_options(&pod.runtime_handler)
            .is_ok_and(|o| o.systemd_cgroup);
        cgroups::oom_killed(&cgroups::task_cgroup(&pod.cgroup_parent, id, systemd))
    }

    async fn on_oom(&mut self, task: &str) {
        if self
            .core
            .containers
            .get(task)
            .is_some_and(|c| c.pod_id == self.pod_id)
            && let Err(e) = self.core.containers.update(task, |c| c.mark_oom()).await
        {
            log::error!("recording an OOM kill in {task}: {e}");
        }
    }

    // ---- signals and deletes ----

    async fn signal(&mut self, id: &str, signal: i32, all: bool) -> Result<()> {
        let Some(client) = self.client.clone() else {
            // The shim is gone, and with it (after its cleanup) everything it ran.
            return Ok(());
        };
        match client.kill(id, "", signal as u32, all).await {
            Ok(()) => Ok(()),
            Err(ManagerError::NotFound(_)) => {
                // Already gone: make sure its exit is on record, so nobody waits for one.
                self.reconcile_container(id).await;
                Ok(())
            }
            Err(error) => {
                self.check_after_failure(&error).await;
                Err(error)
            }
        }
    }

    /// Deletes container `id`'s task: from the shim, or with the shim's `delete` when the
    /// shim is gone. Idempotent.
    async fn delete_container_task(&mut self, id: &str) -> Result<()> {
        let Some(record) = self.core.containers.get(id) else {
            return Ok(());
        };
        if !record.task.may_exist() {
            return Ok(());
        }
        match self.client.clone() {
            Some(client) => match client.delete(id, "").await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(error) => {
                    self.check_after_failure(&error).await;
                    return Err(error);
                }
            },
            None => {
                let exit = self.cleanup_task(id).await?;
                log::info!("cleaned up task {id} of a gone shim ({})", exit.status);
            }
        }
        self.core
            .containers
            .update(id, ContainerRecord::mark_task_deleted)
            .await
    }

    async fn delete_infra_task(&mut self) -> Result<()> {
        if !self.pod().is_some_and(|p| p.infra_task.may_exist()) {
            return Ok(());
        }
        match self.client.clone() {
            Some(client) => match client.delete(&self.pod_id, "").await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(error) => {
                    self.check_after_failure(&error).await;
                    return Err(error);
                }
            },
            None => {
                self.cleanup_task(&self.pod_id.clone()).await?;
            }
        }
        self.core
            .pods
            .update(&self.pod_id, PodRecord::mark_infra_deleted)
            .await
    }

    /// Runs the shim's `delete` for task `id`, as containerd does after a dead shim; an error
    /// when it could not clean up (the task stays on record, to be tried again).
    async fn cleanup_task(&self, id: &str) -> Result<Exit> {
        let exit = self
            .core
            .launcher
            .cleanup(id, &self.core.layout.bundle(id))
            .await;
        if exit.status as i32 == UNKNOWN_EXIT_CODE {
            return Err(ManagerError::Shim(format!(
                "the shim's delete could not clean up task {id}; it will be tried again"
            )));
        }
        Ok(exit)
    }

    /// SIGKILLs task `id` (all its processes) and waits, bounded, for its exit; the exit is
    /// recorded as any other.
    async fn kill_and_wait(&mut self, id: &str) -> Result<()> {
        let client = self.connected()?;
        match client.kill(id, "", libc::SIGKILL as u32, true).await {
            Ok(()) | Err(ManagerError::NotFound(_)) => {}
            Err(error) => {
                self.check_after_failure(&error).await;
                return Err(error);
            }
        }
        match client.wait(id, "", KILL_LIMIT).await {
            Ok(exit) => {
                self.on_exit(id, exit).await;
                Ok(())
            }
            Err(ManagerError::NotFound(_)) => Ok(()),
            Err(error) => {
                self.check_after_failure(&error).await;
                Err(error)
            }
        }
    }

    // ---- stopping ----

    /// Every task deleted, the infra process ended, the shim gone (its exit waited for).
    async fn stop_pod(&mut self) -> Result<()> {
        if self.client.is_some() {
            for container in self.containers() {
                if !container.task.may_exist() {
                    continue;
                }
                if container.state == ContainerState::Running
                    && let Err(e) = self.kill_and_wait(&container.id).await
                {
                    log::warn!("killing container {}: {e}", container.id);
                }
                if let Err(e) = self.delete_container_task(&container.id).await {
                    log::warn!("deleting the task of {}: {e}", container.id);
                }
            }
            if self.pod().is_some_and(|p| p.infra_task.may_exist()) {
                if let Err(e) = self.kill_and_wait(&self.pod_id.clone()).await {
                    log::warn!("killing the infra process of pod {}: {e}", self.pod_id);
                }
                if let Err(e) = self.delete_infra_task().await {
                    log::warn!("deleting the infra task of pod {}: {e}", self.pod_id);
                }
            }
        }
        self.core
            .pods
            .update(&self.pod_id, PodRecord::mark_not_ready)
            .await?;
        crash_point!("pod-before-shim-shutdown");
        self.stop_shim().await?;
        // Whatever a shim that had to be killed left behind (or an earlier cleanup failed on).
        self.clean_leftovers("the pod was stopped").await
    }

    /// Asks the shim to leave and waits until it has; kills it if it does not.
    async fn stop_shim(&mut self) -> Result<()> {
        let Some(pod) = self.pod() else {
            return Ok(());
        };
        if pod.shim != ShimState::Launched {
            return Ok(());
        }
        if let Some(client) = self.client.take()
            && let Err(e) = client.shutdown(&self.pod_id).await
        {
            log::warn!("shutdown of the shim of pod {}: {e}", self.pod_id);
        }
        self.drop_client();
        self.end_shim_process(&pod, SHIM_EXIT_LIMIT).await;
        self.core
            .pods
            .update(&self.pod_id, PodRecord::mark_shim_gone)
            .await?;
        log::info!("shim of pod {} is gone", self.pod_id);
        Ok(())
    }

    /// Waits up to `grace` for the shim daemon to leave, then kills it; removes its socket.
    async fn end_shim_process(&self, pod: &PodRecord, grace: Duration) {
        let shim = self.shim_process();
        let mut pids = shim.find();
        if pod.shim_pid != 0 && !pids.contains(&pod.shim_pid) {
            pids.push(pod.shim_pid);
        }
        for pid in pids {
            if !shim.wait_gone(pid, grace).await {
                shim.kill(pid);
                if !shim.wait_gone(pid, SHIM_KILL_LIMIT).await {
                    log::error!(
                        "the shim of pod {} (pid {pid}) survives SIGKILL",
                        self.pod_id
                    );
                }
            }
        }
        // A shim that was killed could not unlink its socket.
        let socket = socket_path(&pod.shim_address);
        if !socket.is_empty()
            && let Err(e) = std::fs::remove_file(socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing shim socket {socket}: {e}");
        }
    }

    /// Cleans up, with the shim's `delete`, every task still on record of a pod whose shim
    /// is gone: its processes are killed by runc, and only then is its exit recorded.
    async fn clean_leftovers(&mut self, why: &str) -> Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        let mut failed = None;
        for container in self.containers() {
            if !container.task.may_exist() {
                continue;
            }
            let cleaned = self.cleanup_task(&container.id).await;
            let (status, at, reason) = match &cleaned {
                Ok(exit) => (exit.status as i32, exit.at, "Error"),
                Err(_) => (UNKNOWN_EXIT_CODE, now(), "Unknown"),
            };
            let why = why.to_string();
            let recorded = self
                .core
                .containers
                .update(&container.id, |c| {
                    let lost = c.mark_lost(status, reason, why, at);
                    if cleaned.is_ok() {
                        c.mark_task_deleted();
                    }
                    lost
                })
                .await;
            if let Ok(true) = recorded {
                log::warn!("container {} lost with its shim ({status})", container.id);
            }
            if let Err(e) = cleaned.and(recorded.map(drop)) {
                failed = Some(e);
            }
        }
        if self.pod().is_some_and(|p| p.infra_task.may_exist()) {
            match self.cleanup_task(&self.pod_id.clone()).await {
                Ok(_) => {
                    self.core
                        .pods
                        .update(&self.pod_id, |p| {
                            p.mark_not_ready();
                            p.mark_infra_deleted();
                        })
                        .await?;
                }
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    // ---- shim health ----

    /// After a call failed with `error`: if it says the shim is in trouble, find out how bad.
    async fn check_after_failure(&mut self, error: &ManagerError) {
        if !is_shim_trouble(error) || self.client.is_none() {
            return;
        }
        self.check_health().await;
    }

    /// Asks the shim whether it is alive; a dead shim is cleaned up at once, a shim that does
    /// not answer is after [`UNRESPONSIVE_GRACE`].
    async fn check_health(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if let Some(pod) = self.pod()
            && pod.shim_pid != 0
            && !self.shim_process().is(pod.shim_pid)
        {
            return self
                .shim_died(&format!("its shim (pid {}) died", pod.shim_pid))
                .await;
        }
        match client.shim_pid(&self.pod_id).await {
            Ok(_) => {
                if self.unanswered_since.take().is_some() {
                    log::info!("the shim of pod {} answers again", self.pod_id);
                    self.core.set_shim_trouble(&self.pod_id, None);
                }
            }
            Err(ManagerError::DeadlineExceeded(why)) => {
                let since = *self.unanswered_since.get_or_insert_with(Instant::now);
                let silent = since.elapsed() + HEALTH_PERIOD;
                log::warn!("the shim of pod {} does not answer: {why}", self.pod_id);
                self.core.set_shim_trouble(
                    &self.pod_id,
                    Some(format!(
                        "the pod's shim has not answered for {}s",
                        silent.as_secs()
                    )),
                );
                if since.elapsed() >= UNRESPONSIVE_GRACE {
                    self.shim_died(&format!(
                        "its shim stopped answering for {}s and was killed",
                        since.elapsed().as_secs()
                    ))
                    .await;
                }
            }
            Err(e) if is_shim_trouble(&e) => {
                self.shim_died(&format!("its shim died ({e})")).await;
            }
            Err(e) => log::warn!("health check of pod {}'s shim: {e:?}", self.pod_id),
        }
    }

    /// The shim is dead (or must be): kill what is left of it, clean up its tasks with its
    /// `delete`, then record what happened.
    async fn shim_died(&mut self, why: &str) {
        log::warn!("pod {}: {why}", self.pod_id);
        self.drop_client();
        let Some(pod) = self.pod() else {
            return;
        };
        self.end_shim_process(&pod, Duration::ZERO).await;
        // Tasks first: nothing is reported gone before its processes are. A crash in
        // between leaves the shim recorded as launched, and recovery comes back here.
        if let Err(e) = self.clean_leftovers(why).await {
            log::error!("cleaning up after pod {}'s shim: {e}", self.pod_id);
        }
        if let Err(e) = self
            .core
            .pods
            .update(&self.pod_id, PodRecord::mark_shim_gone)
            .await
        {
            log::error!("recording the loss of pod {}'s shim: {e}", self.pod_id);
        }
    }

    // ---- after a restart ----

    /// Reconciles the pod's record with its shim: what happened while crustd was down is
    /// recorded, running tasks are watched again, steps cut short by a crash are undone.
    async fn recover(&mut self) {
        let Some(pod) = self.pod() else {
            return;
        };
        match pod.shim {
            ShimState::NotStarted => {}
            ShimState::Gone => {
                if let Err(e) = self
                    .clean_leftovers("its shim was gone when crustd started")
                    .await
                {
                    log::warn!("cleaning up pod {}: {e}", self.pod_id);
                }
            }
            ShimState::Launched => match ShimClient::connect(&pod.shim_address).await {
                Ok(client) => {
                    self.use_client(client.clone());
                    match client.shim_pid(&self.pod_id).await {
                        Ok(pid) if pid != pod.shim_pid => {
                            let _ = self
                                .core
                                .pods
                                .update(&self.pod_id, |p| p.mark_shim_pid(pid))
                                .await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.check_after_failure(&e).await;
                            return;
                        }
                    }
                    self.reconcile_infra().await;
                    for container in self.containers() {
                        self.reconcile_container(&container.id).await;
                    }
                }
                Err(e) => {
                    self.shim_died(&format!("its shim was gone when crustd started ({e})"))
                        .await;
                }
            },
        }
    }

    async fn reconcile_infra(&mut self) {
        let Some(pod) = self.pod() else {
            return;
        };
        let Some(client) = self.client.clone() else {
            return;
        };
        if !pod.infra_task.may_exist() {
            return;
        }
        match client.state(&self.pod_id).await {
            Ok(TaskStatus::Running(_)) if pod.state == PodState::Ready => self.watch(&self.pod_id),
            Ok(TaskStatus::Running(_) | TaskStatus::Created) => {
                // Left by a RunPodSandbox or a stop cut short: a pod that is not ready runs
                // no infra process.
                if let Err(e) = self.kill_and_wait(&self.pod_id.clone()).await {
                    log::warn!("ending the infra process of pod {}: {e}", self.pod_id);
                }
                if let Err(e) = self.delete_infra_task().await {
                    log::warn!("deleting the infra task of pod {}: {e}", self.pod_id);
                }
            }
            Ok(TaskStatus::Stopped(exit)) => self.on_exit(&self.pod_id.clone(), exit).await,
            Err(ManagerError::NotFound(_)) => {
                let _ = self
                    .core
                    .pods
                    .update(&self.pod_id, |p| {
                        p.mark_not_ready();
                        p.mark_infra_deleted();
                    })
                    .await;
            }
            Err(e) => self.check_after_failure(&e).await,
        }
    }

    /// Brings container `id`'s record in line with what the shim says of its task.
    async fn reconcile_container(&mut self, id: &str) {
        let Some(record) = self.core.containers.get(id) else {
            return;
        };
        let Some(client) = self.client.clone() else {
            return;
        };
        if !record.task.may_exist() {
            return;
        }
        let state = client.state(id).await;
        let recorded = match state {
            Ok(TaskStatus::Running(pid)) => {
                let update = self
                    .core
                    .containers
                    .update(id, |c| c.mark_started(pid, now()))
                    .await;
                self.watch(id);
                update
            }
            Ok(TaskStatus::Stopped(exit)) => {
                self.on_exit(id, exit).await;
                Ok(())
            }
            Ok(TaskStatus::Created) => {
                // crustd died inside StartContainer, between runc create and runc start:
                // the process never ran. containerd kills and deletes such a task.
                let _ = client.kill(id, "", libc::SIGKILL as u32, true).await;
                let _ = client.wait(id, "", KILL_LIMIT).await;
                let lost = self
                    .core
                    .containers
                    .update(id, |c| {
                        c.mark_lost(
                            UNKNOWN_EXIT_CODE,
                            "Unknown",
                            "crustd restarted while it was being started".into(),
                            now(),
                        );
                    })
                    .await;
                if let Err(e) = self.delete_container_task(id).await {
                    log::warn!("deleting the half-started task of {id}: {e}");
                }
                lost
            }
            Err(ManagerError::NotFound(_)) => {
                // No task: a start that never reached the shim stays created (it may be
                // started again); a container that ran has lost its exit.
                self.core
                    .containers
                    .update(id, |c| {
                        if c.state == ContainerState::Running {
                            c.mark_lost(
                                UNKNOWN_EXIT_CODE,
                                "Unknown",
                                "its task is gone from the shim".into(),
                                now(),
                            );
                        }
                        c.mark_task_deleted();
                    })
                    .await
            }
            Err(e) => {
                self.check_after_failure(&e).await;
                Ok(())
            }
        };
        if let Err(e) = recorded {
            log::error!("reconciling container {id}: {e}");
        }
    }
}
