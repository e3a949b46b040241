//! A container (its init, its execs, its runtime settings) and its processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cgroup::Cgroup;
use crate::error::{Result, ShimError};
use crate::reaper::Exit;
use crate::runc::Runtime;
use crate::spec::ExecProcess;
use crate::stdio::{CopyHandle, Owner, Prepared, StdioPaths};
use crate::task::state::Lifecycle;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One process: a container's init or an exec.
#[derive(Debug)]
pub struct Process {
    /// The exec id, empty for the init process.
    pub exec_id: String,
    /// The stdio containerd asked for.
    pub stdio: StdioPaths,
    /// For an exec: the OCI process to run.
    pub spec: Option<Box<ExecProcess>>,
    pid: AtomicU32,
    lifecycle: Mutex<Lifecycle>,
    exit: watch::Sender<Option<Exit>>,
    io: Mutex<Option<CopyHandle>>,
}

impl Process {
    /// A process not yet running: created by runc (init) or only declared (exec).
    pub fn new(exec_id: String, stdio: StdioPaths, spec: Option<Box<ExecProcess>>) -> Self {
        Self {
            exec_id,
            stdio,
            spec,
            pid: AtomicU32::new(0),
            lifecycle: Mutex::new(Lifecycle::new()),
            exit: watch::Sender::new(None),
            io: Mutex::new(None),
        }
    }

    /// Its pid, 0 until runc reported one.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    /// Records the pid runc reported.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Release);
    }

    /// Takes over the copying of its stdio.
    pub fn attach_io(&self, copy: CopyHandle) {
        *lock(&self.io) = Some(copy);
    }

    /// The process's state, locked. Never hold it across an `.await`.
    pub fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        lock(&self.lifecycle)
    }

    /// Wakes `Wait` callers once the lifecycle holds the exit.
    pub fn notify_exit(&self) {
        let exit = self.lifecycle().exit();
        if exit.is_some() {
            self.exit.send_replace(exit);
        }
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<Exit> {
        let mut receiver = self.exit.subscribe();
        let exit = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShimError::NotFound("process was deleted".into()))?;
        (*exit).ok_or_else(|| ShimError::NotFound("process has no exit".into()))
    }

    /// Waits up to `limit` for an exit, without failing.
    pub async fn wait_briefly(&self, limit: Duration) -> Option<Exit> {
        tokio::time::timeout(limit, self.wait()).await.ok()?.ok()
    }

    /// CloseIO of its stdin.
    pub fn close_stdin(&self) {
        if let Some(io) = lock(&self.io).as_mut() {
            io.close_stdin();
        }
    }

    /// ResizePty.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        match lock(&self.io).as_ref() {
            Some(io) => io.resize(width, height),
            None => Ok(()),
        }
    }

    /// Reopens the process's CRI log (after kubelet rotated it).
    pub fn reopen_log(&self) -> Result<()> {
        match lock(&self.io).as_ref() {
            Some(io) => io.reopen_log(),
            None => Err(ShimError::FailedPrecondition(format!(
                "process {:?} has not started",
                self.exec_id
            ))),
        }
    }

    /// Attaches FIFOs to its output (see [`CopyHandle::attach`]).
    pub fn attach(&self, stdout: Option<&Path>, stderr: Option<&Path>) -> Result<()> {
        match lock(&self.io).as_ref() {
            Some(io) => io.attach(stdout, stderr),
            None => Err(ShimError::FailedPrecondition(format!(
                "process {:?} has no output to attach to (not started, or being deleted)",
                self.exec_id
            ))),
        }
    }

    /// Waits up to `limit` for stdout and stderr to be fully delivered, then stops copying.
    pub async fn finish_output(&self, limit: Duration) {
        let io = lock(&self.io).take();
        if let Some(mut io) = io {
            if !io.finish(limit).await {
                log::warn!(
                    "output of pid {} still open after {}s; closing it",
                    self.pid(),
                    limit.as_secs()
                );
            }
        }
    }
}

/// A container: the init process, its execs, and what it takes to drive runc for it.
#[derive(Debug)]
pub struct Container {
    /// The container (and task) id.
    pub id: String,
    /// Its bundle directory.
    pub bundle: PathBuf,
    /// The OCI runtime configured for it.
    pub runtime: Runtime,
    /// Whether the shim mounted the rootfs, and so must unmount it.
    pub rootfs_mounted: bool,
    /// Whether the init's exit leaves other processes alive (no pid namespace of its own),
    /// which the shim then kills, as containerd's shim does.
    pub kill_all_on_exit: bool,
    /// Who owns the stdio pipes of its processes.
    pub io_owner: Owner,
    /// The init process.
    pub init: Arc<Process>,
    /// The cgroup, once the init runs.
    pub cgroup: Mutex<Option<Cgroup>>,
    /// For a container created from a checkpoint: what `runc restore` needs at Start.
    pub restore: Mutex<Option<Restore>>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    oom_watch: Mutex<Option<JoinHandle<()>>>,
}

/// A checkpoint to restore from at Start, with the stdio prepared at Create.
#[derive(Debug)]
pub struct Restore {
    /// The checkpoint image directory.
    pub image_path: PathBuf,
    /// criu's work directory.
    pub work_path: PathBuf,
    /// The init's stdio.
    pub stdio: Prepared,
}

impl Container {
    /// A container whose init runc created (or will restore).
    pub fn new(
        id: &str,
        bundle: &Path,
        runtime: Runtime,
        rootfs_mounted: bool,
        kill_all_on_exit: bool,
        io_owner: Owner,
        init: Process,
    ) -> Self {
        Self {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            runtime,
            rootfs_mounted,
            kill_all_on_exit,
            io_owner,
            init: Arc::new(init),
            cgroup: Mutex::new(None),
            restore: Mutex::new(None),
            execs: Mutex::new(HashMap::new()),
            oom_watch: Mutex::new(None),
        }
    }

    /// The init (`exec_id` empty) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            ShimError::NotFound(format!("exec {exec_id} not found in container {}", self.id))
        })
    }

    /// Adds an exec, refusing a duplicate id.
    pub fn add_exec(&self, process: Process) -> Result<Arc<Process>> {
        let mut execs = lock(&self.execs);
        if execs.contains_key(&process.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} already exists in container {}",
                process.exec_id, self.id
            )));
        }
        let process = Arc::new(process);
        execs.insert(process.exec_id.clone(), Arc::clone(&process));
        Ok(process)
    }

    /// Forgets an exec.
    pub fn remove_exec(&self, exec_id: &str) {
        lock(&self.execs).remove(exec_id);
    }

    /// Every exec, in no particular order.
    pub fn execs(&self) -> Vec<Arc<Process>> {
        lock(&self.execs).values().cloned().collect()
    }

    /// Keeps the OOM watch so it ends with the container.
    pub fn set_oom_watch(&self, watch: JoinHandle<()>) {
        *lock(&self.oom_watch) = Some(watch);
    }

    /// The cgroup, if the init ran.
    pub fn cgroup(&self) -> Option<Cgroup> {
        lock(&self.cgroup).clone()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(watch) = lock(&self.oom_watch).take() {
            watch.abort();
        }
    }
}
