//! ExecSync: a command run in a container to completion, its output collected (capped) and
//! the command killed at the deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crust_proto::protobuf::MessageField;
use crust_proto::task::ExecProcessRequest;
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::shim::{self, ShimClient};
use super::{ContainerState, Runtime, create_dir, new_id, remove_tree};
use crate::error::{ManagerError, Result};

/// Most output kept per stream; the rest is read and dropped (CRI-O's cap).
const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How long output may keep coming after the command exited (a background child may hold
/// the pipe open forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a killed command gets to be reaped.
const KILL_LIMIT: Duration = Duration::from_secs(10);

/// What an ExecSync produced.
#[derive(Debug, Default)]
pub struct ExecOutput {
    /// Its stdout, capped.
    pub stdout: Vec<u8>,
    /// Its stderr, capped.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

/// Reads `fifo` to its end, keeping at most [`OUTPUT_CAP`] bytes.
fn collect(fifo: &Path) -> Result<JoinHandle<Vec<u8>>> {
    let mut receiver = pipe::OpenOptions::new()
        .open_receiver(fifo)
        .map_err(|e| ManagerError::io(format!("open {}", fifo.display()), e))?;
    Ok(tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match receiver.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..n.min(room)]);
                }
            }
        }
        kept
    }))
}

async fn finish(reader: JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = reader.abort_handle();
    match tokio::time::timeout(DRAIN_LIMIT, reader).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
}

impl Runtime {
    /// Runs `command` in running container `id`, for at most `timeout` seconds (0 = no limit).
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        command: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        if command.is_empty() {
            return Err(ManagerError::InvalidArgument("no command given".into()));
        }
        let record = self.container_status(id)?;
        if record.state != ContainerState::Running {
            return Err(ManagerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        let process = self.exec_process(&record.id, command)?;
        let exec_id = new_id()?;
        let dir = self.dirs.exec.join(&exec_id);
        create_dir(&dir)?;
        let result = self
            .run_exec(&record.pod_id, &record.id, &exec_id, &dir, process, timeout)
            .await;
        let _ = remove_tree(&dir);
        result
    }

    /// The container's own process (user, env, cwd, capabilities) running `command` instead.
    fn exec_process(&self, id: &str, command: Vec<String>) -> Result<Vec<u8>> {
        let config = self.bundle(id).join("config.json");
        let bytes = std::fs::read(&config)
            .map_err(|e| ManagerError::io(format!("read {}", config.display()), e))?;
        let spec: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ManagerError::io("parse config.json", std::io::Error::other(e)))?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        let object = process.as_object_mut().ok_or_else(|| {
            ManagerError::FailedPrecondition(format!("container {id} has no process in its spec"))
        })?;
        object.insert("args".into(), serde_json::json!(command));
        object.insert("terminal".into(), serde_json::Value::Bool(false));
        object.remove("consoleSize");
        serde_json::to_vec(&process)
            .map_err(|e| ManagerError::io("encode exec process", std::io::Error::other(e)))
    }

    async fn run_exec(
        self: &Arc<Self>,
        pod_id: &str,
        id: &str,
        exec_id: &str,
        dir: &Path,
        process: Vec<u8>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        for fifo in [&stdout, &stderr] {
            mkfifo(fifo, Mode::from_bits_truncate(0o600))
                .map_err(|e| ManagerError::io(format!("mkfifo {}", fifo.display()), e.into()))?;
        }
        let out_reader = collect(&stdout)?;
        let err_reader = collect(&stderr)?;
        let shim = self.shim(pod_id).await?;
        shim.exec(ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            spec: MessageField::some(shim::process_any(process)),
            ..Default::default()
        })
        .await?;
        let waited = match shim.start(id, exec_id).await {
            Ok(_) => wait_exec(&shim, id, exec_id, timeout).await,
            Err(e) => Err(e),
        };
        let stdout = finish(out_reader).await;
        let stderr = finish(err_reader).await;
        match shim.delete(id, exec_id).await {
            Ok(()) | Err(ManagerError::NotFound(_)) => {}
            Err(e) => log::warn!("deleting exec {exec_id} of {id}: {e}"),
        }
        let exit_code = waited? as i32;
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }
}

/// Waits for the exec to exit; at the deadline kills it and answers DeadlineExceeded.
async fn wait_exec(shim: &ShimClient, id: &str, exec_id: &str, timeout: i64) -> Result<u32> {
    let wait = shim.wait(id, exec_id);
    if timeout <= 0 {
        return wait.await.map(|exit| exit.status);
    }
    match tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await {
        Ok(result) => result.map(|exit| exit.status),
        Err(_) => {
            match shim.kill(id, exec_id, libc::SIGKILL as u32, false).await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => log::warn!("killing timed-out exec {exec_id} of {id}: {e}"),
            }
            let _ = tokio::time::timeout(KILL_LIMIT, shim.wait(id, exec_id)).await;
            Err(ManagerError::DeadlineExceeded(format!(
                "command in container {id} timed out after {timeout}s and was killed"
            )))
        }
    }
}
