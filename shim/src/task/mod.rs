//! The shim's core: the containers it runs and the operations of the Task API on them.
//!
//! Everything here takes and returns typed values; the ttrpc layer (`service.rs`) only adapts.
//! Locks are held for bookkeeping only, never across a runtime call or any other `.await`.

pub mod container;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crust_proto::events::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use crust_proto::identifiers;
use crust_proto::protobuf::MessageField;
use crust_proto::task::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, KillRequest, PidsRequest, PidsResponse, ProcessInfo,
    StartRequest, StartResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};
use tokio::sync::Notify;

use self::container::{Container, Process};
use self::state::{ExitOutcome, State};
use crate::error::{Result, ShimError};
use crate::events::{Publisher, timestamp};
use crate::mount;
use crate::options::RuncConfig;
use crate::reaper::{Exit, ExitReceiver, Reaper};
use crate::runc::Runtime;
use crate::spec::BundleSpec;
use crate::stdio::{self, StdioPaths};

/// How long Delete waits for a process's output to drain (containerd's shim waits as long).
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long Delete of a never-started container waits for its killed init to be reaped.
const KILLED_INIT_REAP_LIMIT: Duration = Duration::from_secs(2);
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

    /// Create: mounts the rootfs, wires stdio and runs `runc create`.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateTaskRequest,
    ) -> Result<CreateTaskResponse> {
        identifiers::validate(&request.id)
            .map_err(|e| ShimError::InvalidArgument(format!("container id: {e}")))?;
        let bundle = checked_bundle(&request.bundle)?;
        if !request.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by this shim yet".into(),
            ));
        }
        let id = request.id.clone();
        let _reservation = Reservation::new(self, &id)?;
        let spec = BundleSpec::read(&bundle)?;
        let config = RuncConfig::from_any(request.options.as_ref(), &self.namespace)?;
        let runtime = Runtime::new(&config, &bundle, Arc::clone(&self.reaper))?;
        config.save(&bundle)?;
        let stdio_paths = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let rootfs_mounted = mount::mount_rootfs(&request.rootfs, &bundle)?;
        let created = self
            .run_create(&id, &bundle, &runtime, &stdio_paths, &config)
            .await;
        let (pid, copy, exit) = match created {
            Ok(created) => created,
            Err(error) => {
                if rootfs_mounted {
                    mount::unmount_all(&bundle.join("rootfs"));
                }
                return Err(error);
            }
        };
        let container = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            runtime,
            rootfs_mounted,
            kill_all_on_exit: !spec.own_pid_namespace,
            init: Process::new(String::new(), pid, stdio_paths, copy),
        });
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
        // Only after TaskCreate is queued may the init's exit be handled.
        self.monitor_init(container, exit);
        log::info!("created container id={id} pid={pid}");
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// The part of Create after the rootfs is mounted; the caller unmounts on failure.
    async fn run_create(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &Runtime,
        stdio_paths: &StdioPaths,
        config: &RuncConfig,
    ) -> Result<(u32, stdio::CopyHandle, ExitReceiver)> {
        let (container_ends, shim_ends) = stdio::open(stdio_paths, config.io_uid, config.io_gid)?;
        let pid_file = bundle.join(INIT_PID_FILE);
        // The watch opens before runc runs: the init may die before its pid file is read.
        let watch = self.reaper.watch();
        runtime
            .create(id, bundle, &pid_file, Arc::new(container_ends))
            .await?;
        let pid = match read_pid_file(&pid_file) {
            Ok(pid) => pid,
            Err(error) => {
                if let Err(e) = runtime.delete(id, true).await {
                    log::warn!("removing half-created container {id}: {e}");
                }
                return Err(error);
            }
        };
        let exit = watch.subscribe(pid as i32);
        drop(watch);
        let copy = shim_ends.start(id)?;
        Ok((pid, copy, exit))
    }

    fn monitor_init(self: &Arc<Self>, container: Arc<Container>, exit: ExitReceiver) {
        let tasks = Arc::clone(self);
        tokio::spawn(async move {
            let Some(exit) = exit.wait().await else {
                return;
            };
            if container.kill_all_on_exit {
                // Without a pid namespace of its own the container's other processes outlive
                // the init; the task is over, so they go too, before its exit is announced.
                match container
                    .runtime
                    .kill(&container.id, libc::SIGKILL as u32, true)
                    .await
                {
                    Ok(()) | Err(ShimError::NotFound(_)) => {}
                    Err(e) => log::warn!("killing the rest of container {}: {e}", container.id),
                }
            }
            tasks.process_exited(&container, &container.init, exit);
        });
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
                id: if process.exec_id.is_empty() {
                    container.id.clone()
                } else {
                    process.exec_id.clone()
                },
                pid: process.pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            });
        }
    }

    /// Start: `runc start` of a created container.
    pub async fn start(&self, request: StartRequest) -> Result<StartResponse> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
        let init = &container.init;
        init.lifecycle().begin_start()?;
        let started = container.runtime.start(&container.id).await;
        let held_exit = match &started {
            Ok(()) => init.lifecycle().start_succeeded(),
            Err(_) => init.lifecycle().start_failed(),
        };
        if started.is_ok() {
            self.events.publish(&TaskStart {
                container_id: container.id.clone(),
                pid: init.pid,
                ..Default::default()
            });
            log::info!("started container id={} pid={}", container.id, init.pid);
        }
        if let Some(exit) = held_exit {
            self.process_exited(&container, init, exit);
        }
        started?;
        Ok(StartResponse {
            pid: init.pid,
            ..Default::default()
        })
    }

    /// State: answered from the shim's own records, without calling runc.
    pub fn state(&self, request: StateRequest) -> Result<StateResponse> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
        let process = &container.init;
        let (status, exit) = {
            let lifecycle = process.lifecycle();
            (lifecycle.status(), lifecycle.exit())
        };
        Ok(StateResponse {
            id: container.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: process.pid,
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

    /// Kill: signals the init (or, with `all`, every process in the container).
    pub async fn kill(&self, request: KillRequest) -> Result<()> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
        container.init.lifecycle().check_signalable()?;
        container
            .runtime
            .kill(&container.id, request.signal, request.all)
            .await
    }

    /// Delete: removes a created or stopped container.
    pub async fn delete(&self, request: DeleteRequest) -> Result<DeleteResponse> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
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
            None if previous == State::Created => init.wait_briefly(KILLED_INIT_REAP_LIMIT).await,
            None => None,
        };
        init.lifecycle().delete_succeeded();
        if container.rootfs_mounted {
            mount::unmount_all(&container.bundle.join("rootfs"));
        }
        self.registry().containers.remove(&container.id);
        let (exit_status, exited_at) = match exit {
            Some(exit) => (exit.status, timestamp(exit.at)),
            None => (0, timestamp(std::time::SystemTime::now())),
        };
        self.events.publish(&TaskDelete {
            container_id: container.id.clone(),
            pid: init.pid,
            exit_status,
            exited_at: MessageField::some(exited_at.clone()),
            id: container.id.clone(),
            ..Default::default()
        });
        log::info!("deleted container id={} status={exit_status}", container.id);
        Ok(DeleteResponse {
            pid: init.pid,
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    /// Wait: blocks until the process exits.
    pub async fn wait(&self, request: WaitRequest) -> Result<WaitResponse> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
        let exit = container.init.wait().await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    /// Pids: every process in the container, from `runc ps`.
    pub async fn pids(&self, request: PidsRequest) -> Result<PidsResponse> {
        let container = self.container(&request.id)?;
        let pids = container.runtime.ps(&container.id).await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// CloseIO: closes the process's stdin so it reads EOF.
    pub fn close_io(&self, request: CloseIORequest) -> Result<()> {
        if !request.exec_id.is_empty() {
            return Err(unsupported_exec());
        }
        let container = self.container(&request.id)?;
        if request.stdin {
            container.init.close_stdin();
        }
        Ok(())
    }

    /// Connect: the shim's pid and the task's.
    pub fn connect(&self, request: ConnectRequest) -> ConnectResponse {
        let task_pid = self
            .registry()
            .containers
            .get(&request.id)
            .map_or(0, |container| container.init.pid);
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

fn unsupported_exec() -> ShimError {
    ShimError::NotFound("exec processes are not supported by this shim yet".into())
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
        assert!(checked_bundle(&dir.path().display().to_string()).is_err());
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
        assert!(read_pid_file(&file).is_err());
        assert!(read_pid_file(&dir.path().join("missing")).is_err());
    }
}
