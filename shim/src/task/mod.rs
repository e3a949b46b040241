//! The shim's core: the containers it runs and the operations of the Task API on them.
//!
//! Everything here takes and returns typed values; the ttrpc layer (`service.rs`) only adapts.
//! Locks are held for bookkeeping only, never across a runtime call or any other `.await`.
//! Each process changes state only through its [`state::Lifecycle`]; the runtime call that
//! moves it runs between a `begin_*` and its settlement.

pub mod container;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crust_proto::events::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use crust_proto::identifiers;
use crust_proto::protobuf::MessageField;
use crust_proto::runc_options::{CheckpointOptions, ProcessDetails};
use crust_proto::shim::{AttachRequest, ReopenLogRequest};
use crust_proto::task::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use crust_proto::typeurl;
use crust_proto::wellknown::Any;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Notify;

use self::container::{Container, Process, Restore};
use self::state::{ExitOutcome, State};
use crate::attach;
use crate::cgroup::Cgroup;
use crate::error::{Result, ShimError};
use crate::events::{Publisher, timestamp};
use crate::mount;
use crate::oom;
use crate::options::RuncConfig;
use crate::reaper::{Exit, ExitReceiver, Reaper};
use crate::runc::{CheckpointArgs, RestoreArgs, Runtime};
use crate::spec::{BundleSpec, ExecProcess, check_resources};
use crate::stdio::{Owner, Prepared, StdioPaths};

/// How long Delete waits for a process's output to drain (containerd 1.6's shim waits 2 s and can
/// lose the end of a busy node's output; later containerd shims wait 10 s, as crust does).
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long Delete of a never-started container waits for its killed init to be reaped.
const KILLED_INIT_REAP_LIMIT: Duration = Duration::from_secs(2);
/// How long an init's exit waits for its execs' exits, which containerd expects first.
const EXEC_EXITS_LIMIT: Duration = Duration::from_secs(10);
/// The pid file runc writes for the init process.
const INIT_PID_FILE: &str = "init.pid";

#[derive(Debug, Default)]
struct Registry {
    containers: HashMap<String, Arc<Container>>,
    /// Ids whose Create is in flight.
    creating: HashSet<String>,
}

/// The containers of one shim and what is needed to run them.
#[derive(Debug)]
pub struct Tasks {
    namespace: String,
    reaper: Arc<Reaper>,
    events: Publisher,
    registry: Mutex<Registry>,
    shutdown: Notify,
}

impl Tasks {
    /// The core of a shim serving `namespace`.
    pub fn new(namespace: &str, reaper: Arc<Reaper>, events: Publisher) -> Arc<Self> {
        Arc::new(Self {
            namespace: namespace.to_string(),
            reaper,
            events,
            registry: Mutex::new(Registry::default()),
            shutdown: Notify::new(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.registry()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    /// Resolves when the shim should exit: Shutdown was called with no container left.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    /// Create: mounts the rootfs, wires stdio and runs `runc create` (or, for a checkpoint,
    /// prepares the restore that Start runs).
    pub async fn create(
        self: &Arc<Self>,
        request: CreateTaskRequest,
    ) -> Result<CreateTaskResponse> {
        identifiers::validate(&request.id)
            .map_err(|e| ShimError::InvalidArgument(format!("container id: {e}")))?;
        let bundle = checked_bundle(&request.bundle)?;
        let id = request.id.clone();
        let _reservation = Reservation::new(self, &id)?;
        let spec = BundleSpec::read(&bundle)?;
        let config = RuncConfig::from_any(request.options.as_ref(), &self.namespace)?;
        let runtime = Runtime::new(&config, &bundle, Arc::clone(&self.reaper))?;
        config.save(&bundle)?;
        let rootfs_mounted = mount::mount_rootfs(&request.rootfs, &bundle)?;
        let created = self
            .create_mounted(&request, &bundle, &spec, &config, runtime, rootfs_mounted)
            .await;
        let (container, exit) = match created {
            Ok(created) => created,
            Err(error) => {
                if rootfs_mounted {
                    mount::unmount_all(&bundle.join("rootfs"));
                }
                return Err(error);
            }
        };
        let pid = container.init.pid();
        self.registry()
            .containers
            .insert(id.clone(), Arc::clone(&container));
        self.events.publish(&TaskCreate {
            container_id: id.clone(),
            bundle: request.bundle,
            rootfs: request.rootfs,
            io: MessageField::some(TaskIO {
                stdin: request.stdin,
                stdout: request.stdout,
                stderr: request.stderr,
                terminal: request.terminal,
                ..Default::default()
            }),
            checkpoint: request.checkpoint,
            pid,
            ..Default::default()
        });
        // Only after TaskCreate is queued may the init's exit (or an OOM) be announced.
        if let Some(exit) = exit {
            self.watch_cgroup(&container);
            self.monitor(Arc::clone(&container), Arc::clone(&container.init), exit);
        }
        log::info!("created container id={id} pid={pid}");
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// The part of Create after the rootfs is mounted; the caller unmounts on failure.
    async fn create_mounted(
        &self,
        request: &CreateTaskRequest,
        bundle: &Path,
        spec: &BundleSpec,
        config: &RuncConfig,
        runtime: Runtime,
        rootfs_mounted: bool,
    ) -> Result<(Arc<Container>, Option<ExitReceiver>)> {
        let id = request.id.as_str();
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let owner = Owner {
            uid: config.io_uid,
            gid: config.io_gid,
        };
        let prepared = Prepared::open(&stdio, owner, &self.reaper, (&self.namespace, id)).await?;
        let container = Container::new(
            id,
            bundle,
            runtime,
            rootfs_mounted,
            !spec.own_pid_namespace,
            owner,
            Process::new(String::new(), stdio, None),
        );
        if !request.checkpoint.is_empty() {
            let work_path = if config.criu_work_path.is_empty() {
                default_criu_work_path(bundle)
            } else {
                PathBuf::from(&config.criu_work_path)
            };
            *container.restore.lock().unwrap_or_else(|p| p.into_inner()) = Some(Restore {
                image_path: PathBuf::from(&request.checkpoint),
                work_path,
                stdio: prepared,
            });
            return Ok((Arc::new(container), None));
        }
        let pid_file = bundle.join(INIT_PID_FILE);
        // The watch opens before runc runs: the init may die before its pid file is read.
        let watch = self.reaper.watch();
        container
            .runtime
            .create(
                id,
                bundle,
                &pid_file,
                prepared.console_socket(),
                prepared.container.clone(),
            )
            .await?;
        let started = async {
            let pid = read_pid_file(&pid_file)?;
            let exit = watch.subscribe(pid as i32);
            let copy = prepared.start(id).await?;
            Ok::<_, ShimError>((pid, exit, copy))
        }
        .await;
        drop(watch);
        let (pid, exit, copy) = match started {
            Ok(started) => started,
            Err(error) => {
                if let Err(e) = container.runtime.delete(id, true).await {
                    log::warn!("removing half-created container {id}: {e}");
                }
                return Err(error);
            }
        };
        container.init.set_pid(pid);
        container.init.attach_io(copy);
        Ok((Arc::new(container), Some(exit)))
    }

    /// Finds the init's cgroup and watches it for OOM kills.
    fn watch_cgroup(&self, container: &Arc<Container>) {
        let cgroup = match Cgroup::of_pid(container.init.pid()) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                log::warn!("no cgroup for container {}: {e}", container.id);
                return;
            }
        };
        let events = self.events.clone();
        let id = container.id.clone();
        match oom::watch(&cgroup, move || {
            log::info!("OOM kill in container id={id}");
            events.publish(&TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            });
        }) {
            Ok(watch) => container.set_oom_watch(watch),
            Err(e) => log::warn!("cannot watch container {} for OOM: {e}", container.id),
        }
        *container.cgroup.lock().unwrap_or_else(|p| p.into_inner()) = Some(cgroup);
    }

    /// Waits for `process` to exit, then records and announces it.
    fn monitor(
        self: &Arc<Self>,
        container: Arc<Container>,
        process: Arc<Process>,
        exit: ExitReceiver,
    ) {
        let tasks = Arc::clone(self);
        tokio::spawn(async move {
            let Some(exit) = exit.wait().await else {
                return;
            };
            if process.exec_id.is_empty() {
                tasks.before_init_exit(&container).await;
            }
            tasks.process_exited(&container, &process, exit);
        });
    }

    /// What must happen between an init's death and its announcement: the rest of a container
    /// without its own pid namespace is killed, and the execs' exits go first.
    async fn before_init_exit(&self, container: &Container) {
        if container.kill_all_on_exit {
            match container
                .runtime
                .kill(&container.id, libc::SIGKILL as u32, true)
                .await
            {
                Ok(()) | Err(ShimError::NotFound(_)) => {}
                Err(e) => log::warn!("killing the rest of container {}: {e}", container.id),
            }
        }
        let deadline = tokio::time::Instant::now() + EXEC_EXITS_LIMIT;
        for exec in container.execs() {
            if exec.pid() == 0 || exec.lifecycle().is_stopped() {
                continue;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if exec.wait_briefly(left).await.is_none() {
                log::warn!(
                    "exec {} of container {} outlived its init; announcing the init's exit anyway",
                    exec.exec_id,
                    container.id
                );
            }
        }
    }

    /// Records an exit and publishes it, unless a start or delete is in flight.
    fn process_exited(&self, container: &Container, process: &Process, exit: Exit) {
        let outcome = process.lifecycle().exited(exit);
        log::info!(
            "process exited id={} exec_id={} pid={} status={} ({outcome:?})",
            container.id,
            process.exec_id,
            exit.pid,
            exit.status
        );
        process.notify_exit();
        if outcome == ExitOutcome::Publish {
            self.events.publish(&TaskExit {
                container_id: container.id.clone(),
                id: process_id(container, process),
                pid: process.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            });
        }
    }

    /// Start: `runc start` of a created init, `runc restore` of a checkpointed one, or
    /// `runc exec` of an exec.
    pub async fn start(self: &Arc<Self>, request: StartRequest) -> Result<StartResponse> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let is_exec = !process.exec_id.is_empty();
        if is_exec && container.init.lifecycle().is_stopped() {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot start exec {} in stopped container {}",
                process.exec_id, container.id
            )));
        }
        process.lifecycle().begin_start()?;
        let restore = container
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let started = match (is_exec, restore) {
            (true, _) => self.start_exec(&container, &process).await.map(Some),
            (false, Some(restore)) => self.restore_init(&container, restore).await.map(Some),
            (false, None) => container.runtime.start(&container.id).await.map(|()| None),
        };
        let held_exit = match &started {
            Ok(_) => process.lifecycle().start_succeeded(),
            Err(_) => process.lifecycle().start_failed(),
        };
        let new_exit = started?;
        if is_exec {
            self.events.publish(&TaskExecStarted {
                container_id: container.id.clone(),
                exec_id: process.exec_id.clone(),
                pid: process.pid(),
                ..Default::default()
            });
        } else {
            self.events.publish(&TaskStart {
                container_id: container.id.clone(),
                pid: process.pid(),
                ..Default::default()
            });
        }
        log::info!(
            "started id={} exec_id={} pid={}",
            container.id,
            process.exec_id,
            process.pid()
        );
        // Announced after the start: a process that was quick to exit is not lost.
        if let Some(exit) = new_exit {
            if !is_exec {
                self.watch_cgroup(&container);
            }
            self.monitor(Arc::clone(&container), Arc::clone(&process), exit);
        }
        if let Some(exit) = held_exit {
            self.process_exited(&container, &process, exit);
        }
        Ok(StartResponse {
            pid: process.pid(),
            ..Default::default()
        })
    }

    /// Runs `runc exec --detach` for an exec; returns its pending exit.
    async fn start_exec(&self, container: &Container, process: &Process) -> Result<ExitReceiver> {
        let spec = process
            .spec
            .as_deref()
            .ok_or_else(|| ShimError::FailedPrecondition("exec has no process spec".into()))?;
        let prepared = Prepared::open(
            &process.stdio,
            container.io_owner,
            &self.reaper,
            (&self.namespace, &container.id),
        )
        .await?;
        let pid_file = container.bundle.join(format!("{}.pid", process.exec_id));
        let watch = self.reaper.watch();
        container
            .runtime
            .exec(
                &container.id,
                spec.json(),
                &pid_file,
                prepared.console_socket(),
                prepared.container.clone(),
            )
            .await?;
        let pid = read_pid_file(&pid_file)?;
        let exit = watch.subscribe(pid as i32);
        drop(watch);
        process.set_pid(pid);
        let label = format!("{} exec {}", container.id, process.exec_id);
        process.attach_io(prepared.start(&label).await?);
        Ok(exit)
    }

    /// Runs `runc restore --detach` for a container created from a checkpoint.
    async fn restore_init(&self, container: &Container, restore: Restore) -> Result<ExitReceiver> {
        let pid_file = container.bundle.join(INIT_PID_FILE);
        let watch = self.reaper.watch();
        let args = RestoreArgs {
            bundle: &container.bundle,
            image_path: &restore.image_path,
            work_path: &restore.work_path,
            pid_file: &pid_file,
            console_socket: restore.stdio.console_socket(),
        };
        container
            .runtime
            .restore(&container.id, &args, restore.stdio.container.clone())
            .await?;
        let pid = read_pid_file(&pid_file)?;
        let exit = watch.subscribe(pid as i32);
        drop(watch);
        container.init.set_pid(pid);
        container
            .init
            .attach_io(restore.stdio.start(&container.id).await?);
        Ok(exit)
    }

    /// State: answered from the shim's own records, without calling runc.
    pub fn state(&self, request: StateRequest) -> Result<StateResponse> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let (status, exit) = {
            let lifecycle = process.lifecycle();
            (lifecycle.status(), lifecycle.exit())
        };
        Ok(StateResponse {
            id: process_id(&container, &process),
            bundle: container.bundle.display().to_string(),
            pid: process.pid(),
            status: status.into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: process.exec_id.clone(),
            ..Default::default()
        })
    }

    /// Kill: signals the init (with `all`, every process in the container) or an exec.
    pub async fn kill(&self, request: KillRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        process.lifecycle().check_signalable()?;
        if process.exec_id.is_empty() {
            return container
                .runtime
                .kill(&container.id, request.signal, request.all)
                .await;
        }
        let pid = process.pid();
        if pid == 0 {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} was not started",
                process.exec_id
            )));
        }
        let signal = Signal::try_from(request.signal as i32)
            .map_err(|_| ShimError::InvalidArgument(format!("no signal {}", request.signal)))?;
        match kill(Pid::from_raw(pid as i32), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => {
                Err(ShimError::NotFound("process already finished".into()))
            }
            Err(e) => Err(ShimError::io(format!("signal exec pid {pid}"), e)),
        }
    }

    /// Delete: removes a created or stopped container, or an exec.
    pub async fn delete(&self, request: DeleteRequest) -> Result<DeleteResponse> {
        let container = self.container(&request.id)?;
        if !request.exec_id.is_empty() {
            return self.delete_exec(&container, &request.exec_id).await;
        }
        let init = &container.init;
        let previous = init.lifecycle().begin_delete()?;
        init.finish_output(OUTPUT_DRAIN_LIMIT).await;
        match container.runtime.delete(&container.id, false).await {
            Ok(()) | Err(ShimError::NotFound(_)) => {}
            Err(error) => {
                init.lifecycle().delete_failed(previous);
                return Err(error);
            }
        }
        let known_exit = init.lifecycle().exit();
        let exit = match known_exit {
            Some(exit) => Some(exit),
            // runc delete killed the waiting init; its exit is on its way to the reaper.
            None if previous == State::Created && init.pid() != 0 => {
                init.wait_briefly(KILLED_INIT_REAP_LIMIT).await
            }
            None => None,
        };
        init.lifecycle().delete_succeeded();
        if container.rootfs_mounted {
            mount::unmount_all(&container.bundle.join("rootfs"));
        }
        self.registry().containers.remove(&container.id);
        let (exit_status, exited_at) = exit_or_now(exit);
        self.events.publish(&TaskDelete {
            container_id: container.id.clone(),
            pid: init.pid(),
            exit_status,
            exited_at: MessageField::some(exited_at.clone()),
            id: container.id.clone(),
            ..Default::default()
        });
        log::info!("deleted container id={} status={exit_status}", container.id);
        Ok(DeleteResponse {
            pid: init.pid(),
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    /// Delete of an exec: forgets it once it has stopped (or never started). No event, as with
    /// containerd's shim.
    async fn delete_exec(&self, container: &Container, exec_id: &str) -> Result<DeleteResponse> {
        let process = container.process(exec_id)?;
        process.lifecycle().begin_delete()?;
        process.finish_output(OUTPUT_DRAIN_LIMIT).await;
        process.lifecycle().delete_succeeded();
        container.remove_exec(exec_id);
        let (exit_status, exited_at) = exit_or_now(process.lifecycle().exit());
        Ok(DeleteResponse {
            pid: process.pid(),
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    /// Exec: declares a process to run in the container; Start runs it.
    pub fn exec(&self, request: ExecProcessRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        identifiers::validate(&request.exec_id)
            .map_err(|e| ShimError::InvalidArgument(format!("exec id: {e}")))?;
        if container.init.lifecycle().is_stopped() {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot exec in stopped container {}",
                container.id
            )));
        }
        let spec = request
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        if !spec.type_url.is_empty() && !typeurl::is(spec, typeurl::OCI_PROCESS) {
            return Err(ShimError::InvalidArgument(format!(
                "exec spec of type {:?}, expected {}",
                spec.type_url,
                typeurl::OCI_PROCESS
            )));
        }
        let spec = ExecProcess::parse(&spec.value)?;
        let terminal = request.terminal || spec.terminal;
        let stdio = StdioPaths {
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            terminal,
        };
        container.add_exec(Process::new(
            request.exec_id.clone(),
            stdio,
            Some(Box::new(spec)),
        ))?;
        self.events.publish(&TaskExecAdded {
            container_id: container.id.clone(),
            exec_id: request.exec_id,
            ..Default::default()
        });
        Ok(())
    }

    /// Pause: freezes the container.
    pub async fn pause(&self, request: PauseRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        container.init.lifecycle().begin_pause()?;
        let paused = container.runtime.pause(&container.id).await;
        let changed = container.init.lifecycle().settle_freeze(paused.is_ok());
        paused?;
        if changed {
            self.events.publish(&TaskPaused {
                container_id: container.id.clone(),
                ..Default::default()
            });
        }
        Ok(())
    }

    /// Resume: thaws the container.
    pub async fn resume(&self, request: ResumeRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        container.init.lifecycle().begin_resume()?;
        let resumed = container.runtime.resume(&container.id).await;
        let changed = container.init.lifecycle().settle_freeze(resumed.is_ok());
        resumed?;
        if changed {
            self.events.publish(&TaskResumed {
                container_id: container.id.clone(),
                ..Default::default()
            });
        }
        Ok(())
    }

    /// Update: new resource limits (JSON `LinuxResources`) through `runc update`.
    pub async fn update(&self, request: UpdateTaskRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        if container.init.lifecycle().is_stopped() {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot update stopped container {}",
                container.id
            )));
        }
        let resources = request
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        if !resources.type_url.is_empty() && !typeurl::is(resources, typeurl::OCI_LINUX_RESOURCES) {
            return Err(ShimError::InvalidArgument(format!(
                "resources of type {:?}, expected {}",
                resources.type_url,
                typeurl::OCI_LINUX_RESOURCES
            )));
        }
        check_resources(&resources.value)?;
        container
            .runtime
            .update(&container.id, &resources.value, &container.bundle)
            .await
    }

    /// Stats: the container's cgroup metrics.
    pub fn stats(&self, request: StatsRequest) -> Result<StatsResponse> {
        let container = self.container(&request.id)?;
        let cgroup = container.cgroup().ok_or_else(|| {
            ShimError::NotFound(format!("container {} has no cgroup", container.id))
        })?;
        Ok(StatsResponse {
            stats: MessageField::some(cgroup.metrics()?),
            ..Default::default()
        })
    }

    /// ResizePty: the terminal's new size.
    pub fn resize_pty(&self, request: ResizePtyRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        container
            .process(&request.exec_id)?
            .resize(request.width, request.height)
    }

    /// ReopenLog (crust's own): the process's CRI log starts over in a new file.
    pub fn reopen_log(&self, request: ReopenLogRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        container.process(&request.exec_id)?.reopen_log()
    }

    /// Attach (crust's own): the process's output, from now on, also goes to the client's
    /// FIFOs, until it ends.
    pub fn attach(&self, request: AttachRequest) -> Result<()> {
        let stdout = attach::fifo_path(&request.stdout, "stdout")?;
        let stderr = attach::fifo_path(&request.stderr, "stderr")?;
        let container = self.container(&request.id)?;
        container
            .process(&request.exec_id)?
            .attach(stdout.as_deref(), stderr.as_deref())
    }

    /// Checkpoint: `runc checkpoint` (criu) of the running container.
    pub async fn checkpoint(&self, request: CheckpointTaskRequest) -> Result<()> {
        let container = self.container(&request.id)?;
        let state = container.init.lifecycle().state();
        if !matches!(state, State::Running | State::Paused) {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot checkpoint a {} container",
                format!("{state:?}").to_lowercase()
            )));
        }
        let options: CheckpointOptions = match request.options.as_ref() {
            Some(any) if !any.type_url.is_empty() => {
                if !typeurl::is(any, typeurl::RUNC_CHECKPOINT_OPTIONS) {
                    return Err(ShimError::InvalidArgument(format!(
                        "checkpoint options of type {:?}, expected {}",
                        any.type_url,
                        typeurl::RUNC_CHECKPOINT_OPTIONS
                    )));
                }
                typeurl::unpack(any)
                    .map_err(|e| ShimError::InvalidArgument(format!("checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        let image_path = if options.image_path.is_empty() {
            request.path.clone()
        } else {
            options.image_path.clone()
        };
        if !Path::new(&image_path).is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "checkpoint path {image_path:?} is not absolute"
            )));
        }
        let work_path = if options.work_path.is_empty() {
            default_criu_work_path(&container.bundle)
        } else {
            PathBuf::from(&options.work_path)
        };
        let args = CheckpointArgs {
            image_path: PathBuf::from(&image_path),
            work_path,
            leave_running: !options.exit,
            tcp_established: options.open_tcp,
            external_unix_sockets: options.external_unix_sockets,
            shell_job: options.terminal,
            file_locks: options.file_locks,
            empty_namespaces: options.empty_namespaces.clone(),
            cgroups_mode: options.cgroups_mode.clone(),
        };
        container.runtime.checkpoint(&container.id, &args).await?;
        self.events.publish(&TaskCheckpointed {
            container_id: container.id.clone(),
            checkpoint: image_path,
            ..Default::default()
        });
        Ok(())
    }

    /// Wait: blocks until the process exits.
    pub async fn wait(&self, request: WaitRequest) -> Result<WaitResponse> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let exit = process.wait().await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    /// Pids: every process in the container, from `runc ps`; execs are named.
    pub async fn pids(&self, request: PidsRequest) -> Result<PidsResponse> {
        let container = self.container(&request.id)?;
        let pids = container.runtime.ps(&container.id).await?;
        let execs: HashMap<u32, String> = container
            .execs()
            .iter()
            .filter(|exec| exec.pid() != 0)
            .map(|exec| (exec.pid(), exec.exec_id.clone()))
            .collect();
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            let pid = pid as u32;
            let info = match execs.get(&pid) {
                Some(exec_id) => {
                    let details = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    let any: Any = typeurl::pack(typeurl::RUNC_PROCESS_DETAILS, &details)
                        .map_err(|e| ShimError::InvalidArgument(format!("encode details: {e}")))?;
                    MessageField::some(any)
                }
                None => MessageField::none(),
            };
            processes.push(ProcessInfo {
                pid,
                info,
                ..Default::default()
            });
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// CloseIO: closes the process's stdin once what was written has been delivered.
    pub fn close_io(&self, request: CloseIORequest) -> Result<()> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        if request.stdin {
            process.close_stdin();
        }
        Ok(())
    }

    /// Connect: the shim's pid and the task's.
    pub fn connect(&self, request: ConnectRequest) -> ConnectResponse {
        let task_pid = self
            .registry()
            .containers
            .get(&request.id)
            .map_or(0, |container| container.init.pid());
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        }
    }

    /// Shutdown: exits the shim once it serves no container; otherwise does nothing.
    pub fn shutdown(&self) {
        let registry = self.registry();
        if registry.containers.is_empty() && registry.creating.is_empty() {
            log::info!("shutdown requested with no containers left");
            self.shutdown.notify_one();
        }
    }
}

/// The id events and State use: the exec id, or the container id for the init.
fn process_id(container: &Container, process: &Process) -> String {
    if process.exec_id.is_empty() {
        container.id.clone()
    } else {
        process.exec_id.clone()
    }
}

fn exit_or_now(exit: Option<Exit>) -> (u32, crust_proto::wellknown::Timestamp) {
    match exit {
        Some(exit) => (exit.status, timestamp(exit.at)),
        None => (0, timestamp(SystemTime::now())),
    }
}

/// criu's work directory when the options name none: under the bundle's `work` link (to
/// containerd's persistent task directory) when there is one, as containerd's shim does.
fn default_criu_work_path(bundle: &Path) -> PathBuf {
    let work = bundle.join("work");
    if work.exists() {
        work.join("criu-work")
    } else {
        bundle.join("criu-work")
    }
}

/// Holds an id while its Create is in flight, so a second Create of it is refused.
struct Reservation<'a> {
    tasks: &'a Tasks,
    id: String,
}

impl<'a> Reservation<'a> {
    fn new(tasks: &'a Tasks, id: &str) -> Result<Self> {
        let mut registry = tasks.registry();
        if registry.containers.contains_key(id) || !registry.creating.insert(id.to_string()) {
            return Err(ShimError::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        Ok(Self {
            tasks,
            id: id.to_string(),
        })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.tasks.registry().creating.remove(&self.id);
    }
}

/// The bundle path from a request: absolute, an existing directory with a config.json.
fn checked_bundle(bundle: &str) -> Result<PathBuf> {
    let path = Path::new(bundle);
    if !path.is_absolute() {
        return Err(ShimError::InvalidArgument(format!(
            "bundle {bundle:?} is not an absolute path"
        )));
    }
    if !path.join("config.json").is_file() {
        return Err(ShimError::InvalidArgument(format!(
            "bundle {bundle:?} has no config.json"
        )));
    }
    Ok(path.to_path_buf())
}

fn read_pid_file(path: &Path) -> Result<u32> {
    let text = fs::read_to_string(path)
        .map_err(|e| ShimError::io(format!("read {}", path.display()), e))?;
    text.trim().parse().map_err(|_| {
        ShimError::InvalidArgument(format!("{} holds no pid: {text:?}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_must_be_absolute_with_a_config() {
        assert!(matches!(
            checked_bundle("relative/bundle"),
            Err(ShimError::InvalidArgument(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            checked_bundle(&dir.path().display().to_string()),
            Err(ShimError::InvalidArgument(why)) if why.contains("no config.json")
        ));
        fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(
            checked_bundle(&dir.path().display().to_string()).unwrap(),
            dir.path()
        );
    }

    #[test]
    fn pid_files_are_parsed_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(INIT_PID_FILE);
        fs::write(&file, "1234").unwrap();
        assert_eq!(read_pid_file(&file).unwrap(), 1234);
        fs::write(&file, "12x").unwrap();
        assert!(matches!(
            read_pid_file(&file),
            Err(ShimError::InvalidArgument(why)) if why.contains("holds no pid")
        ));
        assert!(matches!(
            read_pid_file(&dir.path().join("missing")),
            Err(ShimError::Io { .. })
        ));
    }

    #[test]
    fn criu_work_goes_under_the_work_link_when_there_is_one() {
        let bundle = tempfile::tempdir().unwrap();
        assert_eq!(
            default_criu_work_path(bundle.path()),
            bundle.path().join("criu-work")
        );
        fs::create_dir(bundle.path().join("work")).unwrap();
        assert_eq!(
            default_criu_work_path(bundle.path()),
            bundle.path().join("work/criu-work")
        );
    }
}
