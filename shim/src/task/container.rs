//! A container (its init process and runtime settings) and its processes.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Result, ShimError};
use crate::reaper::Exit;
use crate::runc::Runtime;
use crate::stdio::{CopyHandle, StdioPaths};
use crate::task::state::Lifecycle;

/// One process: a container's init or an exec.
#[derive(Debug)]
pub struct Process {
    /// The exec id, empty for the init process.
    pub exec_id: String,
    /// Its pid in the shim's pid namespace.
    pub pid: u32,
    /// The stdio containerd asked for.
    pub stdio: StdioPaths,
    lifecycle: Mutex<Lifecycle>,
    exit: watch::Sender<Option<Exit>>,
    copy: Mutex<Option<CopyHandle>>,
}

impl Process {
    /// A process runc has just created.
    pub fn new(exec_id: String, pid: u32, stdio: StdioPaths, copy: CopyHandle) -> Self {
        Self {
            exec_id,
            pid,
            stdio,
            lifecycle: Mutex::new(Lifecycle::new()),
            exit: watch::Sender::new(None),
            copy: Mutex::new(Some(copy)),
        }
    }

    /// The process's state, locked. Never hold it across an `.await`.
    pub fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    fn copy(&self) -> MutexGuard<'_, Option<CopyHandle>> {
        self.copy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the process's stdin (CloseIO).
    pub fn close_stdin(&self) {
        if let Some(copy) = self.copy().as_mut() {
            copy.close_stdin();
        }
    }

    /// Waits up to `limit` for stdout and stderr to be fully delivered, then stops copying.
    pub async fn finish_output(&self, limit: Duration) {
        let copy = self.copy().take();
        if let Some(mut copy) = copy {
            if !copy.wait_outputs(limit).await {
                log::warn!(
                    "output of pid {} still open after {}s; closing it",
                    self.pid,
                    limit.as_secs()
                );
            }
        }
    }
}

/// A container: the init process plus what it takes to drive runc for it.
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
    /// The init process.
    pub init: Process,
}
