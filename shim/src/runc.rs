//! Running the OCI runtime (runc, crun, …) for one container.
//!
//! Argument building comes from the `runc` crate; this module supplies what the shim needs on
//! top: every runc is spawned through the shim's reaper (subscribed before the spawn, never
//! `wait`ed directly), every call has a deadline, and a failure carries the runtime's own last
//! error from its JSON log (`--log <bundle>/log.json --log-format json`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runc::options::{CreateOpts, DeleteOpts, GlobalOpts, KillOpts};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::error::{Result, ShimError};
use crate::options::RuncConfig;
use crate::reaper::Reaper;
use crate::sys;

/// Longest any runtime call may take. Generous because create and delete run OCI hooks.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Most output kept from one runtime call (`ps` of a large container fits comfortably).
const MAX_OUTPUT: u64 = 4 << 20;

/// Name of the runtime's JSON log in the bundle.
pub const LOG_FILE: &str = "log.json";

/// The OCI runtime as configured for one container.
#[derive(Debug, Clone)]
pub struct Runtime {
    runc: runc::Runc,
    log: PathBuf,
    no_pivot_root: bool,
    no_new_keyring: bool,
}

impl Runtime {
    /// Prepares calls to `config.binary` for the container in `bundle`.
    pub fn new(config: &RuncConfig, bundle: &Path, reaper: Arc<Reaper>) -> Result<Self> {
        let log = bundle.join(LOG_FILE);
        let mut opts = GlobalOpts::new()
            .command(&config.binary)
            .root(&config.root)
            .log(&log)
            .log_json()
            .systemd_cgroup(config.systemd_cgroup);
        opts.custom_spawner(Arc::new(ReapedSpawner {
            reaper,
            deadline: CALL_DEADLINE,
        }));
        let runc = opts.build().map_err(|e| match e {
            runc::error::Error::NotFound => ShimError::FailedPrecondition(format!(
                "OCI runtime binary {:?} not found in PATH",
                config.binary
            )),
            other => ShimError::InvalidArgument(format!("runtime settings: {other}")),
        })?;
        Ok(Self {
            runc,
            log,
            no_pivot_root: config.no_pivot_root,
            no_new_keyring: config.no_new_keyring,
        })
    }

    /// `runc create`: the container's init is left waiting for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: Arc<dyn runc::Io>,
    ) -> Result<()> {
        let opts = CreateOpts::new()
            .pid_file(pid_file)
            .no_pivot(self.no_pivot_root)
            .no_new_keyring(self.no_new_keyring)
            .io(io);
        let mark = self.log_mark();
        self.runc
            .create(id, bundle, Some(&opts))
            .await
            .map(drop)
            .map_err(|e| self.failure("create", e, mark))
    }

    /// `runc start`.
    pub async fn start(&self, id: &str) -> Result<()> {
        let mark = self.log_mark();
        self.runc
            .start(id)
            .await
            .map(drop)
            .map_err(|e| self.failure("start", e, mark))
    }

    /// `runc kill [--all] id signal`. A process that is already gone is NotFound.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mark = self.log_mark();
        let opts = KillOpts::new().all(all);
        self.runc
            .kill(id, signal, Some(&opts))
            .await
            .map_err(|e| classify_kill(self.failure("kill", e, mark)))
    }

    /// `runc delete [--force]`. A container runc no longer knows is NotFound.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mark = self.log_mark();
        let opts = DeleteOpts::new().force(force);
        self.runc
            .delete(id, Some(&opts))
            .await
            .map_err(|e| classify_missing(self.failure("delete", e, mark)))
    }

    /// `runc ps`: the pids in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<usize>> {
        let mark = self.log_mark();
        self.runc
            .ps(id)
            .await
            .map_err(|e| classify_missing(self.failure("ps", e, mark)))
    }

    fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Turns a failed call into the runtime's own explanation.
    fn failure(&self, operation: &'static str, error: runc::error::Error, mark: u64) -> ShimError {
        let message = match error {
            runc::error::Error::CommandTimeout(_) => {
                return ShimError::DeadlineExceeded(format!(
                    "OCI runtime {operation} did not finish within {}s",
                    CALL_DEADLINE.as_secs()
                ));
            }
            runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            } => last_error_since(&self.log, mark)
                .or_else(|| non_empty(stderr))
                .or_else(|| non_empty(stdout))
                .unwrap_or_else(|| format!("exited with {status}")),
            runc::error::Error::ProcessSpawnFailed(e) => {
                format!("cannot run the runtime binary: {e}")
            }
            other => other.to_string(),
        };
        ShimError::Runtime { operation, message }
    }
}

fn non_empty(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// One line of runc's JSON log.
#[derive(Debug, Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The last `level=error` message runc appended to its log after byte `mark`.
pub fn last_error_since(log: &Path, mark: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    if file.seek(SeekFrom::Start(mark)).is_err() {
        return None;
    }
    BufReader::new(Read::take(file, MAX_OUTPUT))
        .lines()
        .map_while(io::Result::ok)
        .filter_map(|line| serde_json::from_str::<LogLine>(&line).ok())
        .filter(|line| line.level == "error" && !line.msg.is_empty())
        .last()
        .map(|line| line.msg)
}

/// Kill of something that already exited is NotFound, as containerd expects.
fn classify_kill(error: ShimError) -> ShimError {
    match &error {
        ShimError::Runtime { message, .. } => {
            let lower = message.to_lowercase();
            if lower.contains("container not running")
                || lower.contains("process already finished")
                || lower.contains("no such process")
            {
                ShimError::NotFound(format!("process already finished: {message}"))
            } else {
                classify_missing(error)
            }
        }
        _ => error,
    }
}

/// runc's "does not exist" is NotFound.
fn classify_missing(error: ShimError) -> ShimError {
    match &error {
        ShimError::Runtime { message, .. } if message.contains("does not exist") => {
            ShimError::NotFound(format!("no such container: {message}"))
        }
        _ => error,
    }
}

/// Spawns runtime commands through the shim's reaper.
#[derive(Debug)]
struct ReapedSpawner {
    reaper: Arc<Reaper>,
    deadline: Duration,
}

#[async_trait]
impl runc::Spawner for ReapedSpawner {
    async fn execute(
        &self,
        mut command: runc::Command,
    ) -> runc::Result<(ExitStatus, u32, String, String)> {
        let command = command.as_std_mut();
        sys::kill_with_parent(command);
        // Subscribe before the spawn: the reaper may collect runc before this task runs again.
        let watch = self.reaper.watch();
        let mut child = command
            .spawn()
            .map_err(runc::error::Error::ProcessSpawnFailed)?;
        let pid = child.id();
        let exit = watch.subscribe(pid as i32);
        drop(watch);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Dropping a std Child neither waits nor kills: the reaper owns the exit.
        drop(child);
        let outcome = tokio::time::timeout(self.deadline, async {
            tokio::join!(read_all(stdout), read_all(stderr), exit.wait())
        })
        .await;
        match outcome {
            Ok((stdout, stderr, Some(exit))) => Ok((
                ExitStatus::from_raw(exit.raw_wait_status()),
                pid,
                stdout,
                stderr,
            )),
            Ok((_, _, None)) => Err(runc::error::Error::InvalidCommand(io::Error::other(
                "the shim's reaper stopped",
            ))),
            Err(elapsed) => {
                log::error!("runtime pid {pid} ran past its deadline, killing it");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                Err(runc::error::Error::CommandTimeout(elapsed))
            }
        }
    }
}

/// Reads a child's output pipe to its end, keeping at most [`MAX_OUTPUT`] bytes.
async fn read_all(pipe: Option<OwnedFd>) -> String {
    let Some(fd) = pipe else {
        return String::new();
    };
    let Ok(receiver) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    let mut limited = receiver.take(MAX_OUTPUT);
    if let Err(e) = limited.read_to_end(&mut bytes).await {
        log::warn!("reading runtime output: {e}");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn last_error_is_taken_from_lines_after_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let mut file = File::create(&log).unwrap();
        writeln!(
            file,
            r#"{{"level":"error","msg":"old failure","time":"t"}}"#
        )
        .unwrap();
        let mark = std::fs::metadata(&log).unwrap().len();
        writeln!(
            file,
            r#"{{"level":"warning","msg":"a warning","time":"t"}}"#
        )
        .unwrap();
        writeln!(
            file,
            r#"{{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH","time":"t"}}"#
        )
        .unwrap();
        writeln!(file, "not json").unwrap();
        assert_eq!(
            last_error_since(&log, mark).as_deref(),
            Some(
                "runc create failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH"
            )
        );
        let end = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_error_since(&log, end), None);
        assert_eq!(last_error_since(&dir.path().join("missing"), 0), None);
    }

    #[test]
    fn kill_of_a_finished_process_is_not_found() {
        for message in [
            "container not running",
            "cannot kill: No such process",
            "container \"x\" does not exist",
        ] {
            let error = classify_kill(ShimError::Runtime {
                operation: "kill",
                message: message.into(),
            });
            assert!(
                matches!(error, ShimError::NotFound(_)),
                "{message}: {error:?}"
            );
        }
        let other = classify_kill(ShimError::Runtime {
            operation: "kill",
            message: "permission denied".into(),
        });
        assert!(matches!(other, ShimError::Runtime { .. }));
    }
}
