//! ExecSync: a command run in a container to completion, its output collected (capped) and
//! the command killed at the deadline. An exec is not part of the container's lifecycle: it
//! runs on a connection the pod's supervisor hands out, and its exit never changes the
//! container's record.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crust_proto::protobuf::MessageField;
use crust_proto::task::ExecProcessRequest;
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::layout::{create_dir, remove_tree};
use super::records::{ContainerRecord, ContainerState};
use super::shim::{ShimClient, process_any};
use super::store::blocking;
use super::{Core, container, lock, new_id};
use crate::error::{ManagerError, Result};

/// Most output kept per stream; the rest is read and dropped (CRI-O's cap).
const OUTPUT_CAP: usize = 16 * 1024 * 1024;
/// How long output may keep coming after the command exited (a background child may hold
/// the pipe open forever).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a killed command gets to be reaped.
pub(super) const KILL_LIMIT: Duration = Duration::from_secs(10);

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

/// One output stream being read: what arrived so far, and the reader.
struct Collector {
    kept: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl Collector {
    /// Reads `fifo` to its end, keeping at most [`OUTPUT_CAP`] bytes.
    fn start(fifo: &Path) -> Result<Self> {
        let mut receiver = pipe::OpenOptions::new()
            .open_receiver(fifo)
            .map_err(|e| ManagerError::io(format!("open {}", fifo.display()), e))?;
        let kept = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&kept);
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            while let Ok(n @ 1..) = receiver.read(&mut buffer).await {
                let mut kept = lock(&sink);
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        });
        Ok(Self { kept, reader })
    }

    /// Waits up to [`DRAIN_LIMIT`] for the end of the stream; keeps what arrived either way.
    async fn finish(self) -> Vec<u8> {
        let abort = self.reader.abort_handle();
        if tokio::time::timeout(DRAIN_LIMIT, self.reader)
            .await
            .is_err()
        {
            abort.abort();
        }
        std::mem::take(&mut *lock(&self.kept))
    }
}

/// Runs `command` in running container `id`, for at most `timeout` seconds (0 = no limit).
pub async fn exec_sync(
    core: &Arc<Core>,
    id: &str,
    command: Vec<String>,
    timeout: i64,
) -> Result<ExecOutput> {
    if command.is_empty() {
        return Err(ManagerError::InvalidArgument("no command given".into()));
    }
    let record = running(core, id)?;
    let config = core.layout.bundle(&record.id).join("config.json");
    let process = blocking(move || exec_process(&config, command, false)).await?;
    let client = core.supervisor(&record.pod_id)?.client().await?;
    let exec_id = new_id()?;
    let dir = core.layout.exec_dir(&exec_id);
    create_dir(&dir)?;
    let result = run(&client, &record.id, &exec_id, &dir, process, timeout).await;
    let _ = remove_tree(&dir);
    result
}

/// Container `id`'s record, if it is running.
pub(super) fn running(core: &Core, id: &str) -> Result<ContainerRecord> {
    let record = container::status(core, id)?;
    if record.state != ContainerState::Running {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {} is not running",
            record.id
        )));
    }
    Ok(record)
}

/// The container's own process (user, env, cwd, capabilities) from its `config.json`,
/// running `command` instead, on a terminal of its own or not.
pub(super) fn exec_process(config: &Path, command: Vec<String>, terminal: bool) -> Result<Vec<u8>> {
    let bytes = std::fs::read(config)
        .map_err(|e| ManagerError::io(format!("read {}", config.display()), e))?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ManagerError::io("parse config.json", std::io::Error::other(e)))?;
    let mut process = spec.get("process").cloned().unwrap_or_default();
    let object = process.as_object_mut().ok_or_else(|| {
        ManagerError::FailedPrecondition(format!("{} has no process", config.display()))
    })?;
    object.insert("args".into(), serde_json::json!(command));
    object.insert("terminal".into(), serde_json::Value::Bool(terminal));
    object.remove("consoleSize");
    serde_json::to_vec(&process)
        .map_err(|e| ManagerError::io("encode exec process", std::io::Error::other(e)))
}

async fn run(
    shim: &ShimClient,
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
    let out = Collector::start(&stdout)?;
    let err = Collector::start(&stderr)?;
    shim.exec(ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        stdout: stdout.display().to_string(),
        stderr: stderr.display().to_string(),
        spec: MessageField::some(process_any(process)),
        ..Default::default()
    })
    .await?;
    let waited = match shim.start(id, exec_id).await {
        Ok(_) => wait(shim, id, exec_id, timeout).await,
        Err(e) => Err(e),
    };
    let (stdout, stderr) = tokio::join!(out.finish(), err.finish());
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

/// Waits for the exec to exit; at the deadline kills it and answers DeadlineExceeded.
async fn wait(shim: &ShimClient, id: &str, exec_id: &str, timeout: i64) -> Result<u32> {
    let wait = shim.wait(id, exec_id, Duration::ZERO);
    if timeout <= 0 {
        return wait.await.map(|exit| exit.status);
    }
    match tokio::time::timeout(Duration::from_secs(timeout.unsigned_abs()), wait).await {
        Ok(result) => result.map(|exit| exit.status),
        Err(_) => {
            match shim.kill(id, exec_id, libc::SIGKILL as u32, false).await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => log::warn!("killing timed-out exec {exec_id} of {id}: {e}"),
            }
            let _ = shim.wait(id, exec_id, KILL_LIMIT).await;
            Err(ManagerError::DeadlineExceeded(format!(
                "command in container {id} timed out after {timeout}s and was killed"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_runs_as_the_container_with_its_own_command() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"process":{"args":["sleep","1"],"terminal":true,"consoleSize":{"height":1,"width":1},"user":{"uid":7,"gid":8},"cwd":"/srv","env":["A=1"]}}"#,
        )
        .unwrap();
        let process: serde_json::Value = serde_json::from_slice(
            &exec_process(&config, vec!["ls".into(), "-l".into()], false).unwrap(),
        )
        .unwrap();
        assert_eq!(process["args"], serde_json::json!(["ls", "-l"]));
        assert_eq!(process["terminal"], false);
        assert!(process.get("consoleSize").is_none());
        assert_eq!(process["user"]["uid"], 7);
        assert_eq!(process["cwd"], "/srv");
        std::fs::write(&config, r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert!(matches!(
            exec_process(&config, vec!["ls".into()], true),
            Err(ManagerError::FailedPrecondition(_))
        ));
    }
}
