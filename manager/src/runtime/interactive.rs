//! Interactive processes for the streaming server: an exec whose stdio a client holds (Exec),
//! and a client joined to a running container's own stdio (Attach). This is the runtime side
//! only: FIFOs between crustd and the pod's shim, the shim calls, and cleaning up; the
//! streaming server copies between these pipes and its client.
//!
//! Output of an attach comes from the shim, which writes the container's CRI log itself and
//! hands a live copy to every attached reader (crust.shim.v1.Attach): a slow reader loses
//! output, the container and the log never wait for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crust_proto::protobuf::MessageField;
use crust_proto::task::ExecProcessRequest;
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;
use tokio::net::unix::pipe;

use super::exec::{KILL_LIMIT, exec_process, running};
use super::layout::{create_dir, remove_tree};
use super::shim::{ShimClient, process_any};
use super::store::blocking;
use super::{Core, new_id};
use crate::error::{ManagerError, Result};

/// Which stdio streams a client takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    /// It sends input.
    pub stdin: bool,
    /// It reads output (with a terminal, the terminal's one output).
    pub stdout: bool,
    /// It reads errors (never with a terminal).
    pub stderr: bool,
}

/// What the client is connected to.
#[derive(Debug, Clone)]
enum Target {
    /// An exec crustd started for it, deleted when the session ends.
    Exec { exec_id: String },
    /// The container's own process; `stdin_once` closes its stdin when this client's ends.
    Attach { stdin_once: bool },
}

/// The client's side of an interactive process's stdio.
pub struct Session {
    /// Input for the process, when the client sends some.
    pub stdin: Option<pipe::Sender>,
    /// The process's output (a terminal's output comes here).
    pub stdout: Option<pipe::Receiver>,
    /// The process's errors.
    pub stderr: Option<pipe::Receiver>,
    /// What else a client does with the process.
    pub control: Control,
}

/// Resizing, closing input, waiting, ending: what the copying tasks of one session share.
#[derive(Clone)]
pub struct Control {
    shim: ShimClient,
    container_id: String,
    target: Target,
    terminal: bool,
    /// The FIFOs' directory, removed at the end.
    dir: PathBuf,
}

/// Starts `command` in running container `id` for a client wanting `wanted`, on a terminal
/// with `tty`.
pub async fn exec(
    core: &Arc<Core>,
    id: &str,
    command: Vec<String>,
    tty: bool,
    wanted: Wanted,
) -> Result<Session> {
    if command.is_empty() {
        return Err(ManagerError::InvalidArgument("no command given".into()));
    }
    check_wanted(tty, wanted)?;
    let record = running(core, id)?;
    let config = core.layout.bundle(&record.id).join("config.json");
    let process = blocking(move || exec_process(&config, command, tty)).await?;
    let shim = core.supervisor(&record.pod_id)?.client().await?;
    let exec_id = new_id()?;
    let dir = core.layout.exec_dir(&exec_id);
    create_dir(&dir)?;
    let mut session = Session::new(Control {
        shim,
        container_id: record.id.clone(),
        target: Target::Exec {
            exec_id: exec_id.clone(),
        },
        terminal: tty,
        dir,
    });
    match session.start_exec(&exec_id, process, wanted).await {
        Ok(()) => Ok(session),
        Err(e) => {
            session.control.end().await;
            Err(e)
        }
    }
}

/// Joins a client to running container `id`'s own stdio.
pub async fn attach(core: &Arc<Core>, id: &str, wanted: Wanted) -> Result<Session> {
    let record = running(core, id)?;
    check_wanted(record.config.tty, wanted)?;
    if record.log_path.is_none() {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {} has no log path: its output goes nowhere to attach to",
            record.id
        )));
    }
    if wanted.stdin && !record.config.stdin {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {} was not created with stdin",
            record.id
        )));
    }
    let shim = core.supervisor(&record.pod_id)?.client().await?;
    let dir = core.layout.exec_dir(&new_id()?);
    create_dir(&dir)?;
    let mut session = Session::new(Control {
        shim,
        container_id: record.id.clone(),
        target: Target::Attach {
            stdin_once: record.config.stdin_once,
        },
        terminal: record.config.tty,
        dir,
    });
    let stdin_fifo = stdin_fifo(&core.layout.bundle(&record.id));
    match session.join(wanted, &stdin_fifo).await {
        Ok(()) => Ok(session),
        Err(e) => {
            session.control.end().await;
            Err(e)
        }
    }
}

/// Where a container created with `stdin` has the FIFO its shim copies into its stdin.
pub fn stdin_fifo(bundle: &Path) -> PathBuf {
    bundle.join("stdin")
}

/// Creates the stdin FIFO of a container in `bundle` (crustd writes it, the shim reads it).
pub fn create_stdin_fifo(bundle: &Path) -> Result<PathBuf> {
    let path = stdin_fifo(bundle);
    match mkfifo(&path, Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(path),
        Err(e) => Err(ManagerError::io(
            format!("mkfifo {}", path.display()),
            e.into(),
        )),
    }
}

/// kubelet's rule: a client must take at least one stream, and a terminal has no stderr.
pub fn check_wanted(tty: bool, wanted: Wanted) -> Result<()> {
    if !(wanted.stdin || wanted.stdout || wanted.stderr) {
        return Err(ManagerError::InvalidArgument(
            "one of stdin, stdout and stderr must be requested".into(),
        ));
    }
    if tty && wanted.stderr {
        return Err(ManagerError::InvalidArgument(
            "a terminal has no separate stderr: tty and stderr cannot both be requested".into(),
        ));
    }
    Ok(())
}

fn make_fifo(path: &Path) -> Result<()> {
    mkfifo(path, Mode::from_bits_truncate(0o600))
        .map_err(|e| ManagerError::io(format!("mkfifo {}", path.display()), e.into()))
}

fn open_reader(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| ManagerError::io(format!("open {}", path.display()), e))
}

/// Opens the writing end of a FIFO the shim already reads (so the open cannot block).
fn open_writer(path: &Path) -> Result<pipe::Sender> {
    pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(|e| ManagerError::io(format!("open {}", path.display()), e))
}

impl Session {
    fn new(control: Control) -> Self {
        Session {
            stdin: None,
            stdout: None,
            stderr: None,
            control,
        }
    }

    async fn start_exec(&mut self, exec_id: &str, process: Vec<u8>, wanted: Wanted) -> Result<()> {
        let control = &self.control;
        let mut request = ExecProcessRequest {
            id: control.container_id.clone(),
            exec_id: exec_id.into(),
            terminal: control.terminal,
            spec: MessageField::some(process_any(process)),
            ..Default::default()
        };
        // Readers first: the shim opens the FIFOs for writing without blocking.
        if wanted.stdout {
            let path = control.dir.join("stdout");
            make_fifo(&path)?;
            self.stdout = Some(open_reader(&path)?);
            request.stdout = path.display().to_string();
        }
        if wanted.stderr {
            let path = control.dir.join("stderr");
            make_fifo(&path)?;
            self.stderr = Some(open_reader(&path)?);
            request.stderr = path.display().to_string();
        }
        let stdin = control.dir.join("stdin");
        if wanted.stdin {
            make_fifo(&stdin)?;
            request.stdin = stdin.display().to_string();
        }
        control.shim.exec(request).await?;
        control.shim.start(&control.container_id, exec_id).await?;
        if wanted.stdin {
            // The shim opens an exec's stdio when it starts it: it holds the FIFO's reader
            // (and a writer of its own) now, so this open cannot block and nothing written
            // before the process reads it is lost.
            // A command that already exited has no reader left: its input goes nowhere.
            self.stdin = match open_writer(&stdin) {
                Ok(writer) => Some(writer),
                Err(ManagerError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENXIO) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
        }
        Ok(())
    }

    async fn join(&mut self, wanted: Wanted, stdin_fifo: &Path) -> Result<()> {
        let control = &self.control;
        let stdout = control.dir.join("stdout");
        let stderr = control.dir.join("stderr");
        if wanted.stdout {
            make_fifo(&stdout)?;
            self.stdout = Some(open_reader(&stdout)?);
        }
        if wanted.stderr {
            make_fifo(&stderr)?;
            self.stderr = Some(open_reader(&stderr)?);
        }
        if wanted.stdout || wanted.stderr {
            control
                .shim
                .attach(
                    &control.container_id,
                    "",
                    wanted.stdout.then_some(stdout.as_path()),
                    wanted.stderr.then_some(stderr.as_path()),
                )
                .await?;
        }
        if wanted.stdin {
            self.stdin = Some(open_writer(stdin_fifo)?);
        }
        Ok(())
    }
}

impl Control {
    /// Whether the process has a terminal (resizing applies).
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// Passes a terminal's new size on.
    pub async fn resize(&self, width: u16, height: u16) -> Result<()> {
        if !self.terminal {
            return Ok(());
        }
        self.shim
            .resize_pty(
                &self.container_id,
                self.exec_id(),
                u32::from(width),
                u32::from(height),
            )
            .await
    }

    /// The client's input ended (its writer already dropped): the process sees the end of
    /// its stdin, unless it is a container whose stdin outlives one client (no `stdin_once`).
    pub async fn close_stdin(&self) -> Result<()> {
        let close = match self.target {
            Target::Exec { .. } => true,
            Target::Attach { stdin_once } => stdin_once,
        };
        if close {
            match self.shim.close_io(&self.container_id, self.exec_id()).await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the process to exit; returns its exit code. For an attach this is the
    /// container's own exit.
    pub async fn wait(&self) -> Result<i32> {
        self.shim
            .wait(&self.container_id, self.exec_id(), Duration::ZERO)
            .await
            .map(|exit| exit.status as i32)
    }

    fn exec_id(&self) -> &str {
        match &self.target {
            Target::Exec { exec_id } => exec_id,
            Target::Attach { .. } => "",
        }
    }

    /// The client is gone: an exec it started is killed (nobody can talk to it any more)
    /// and reaped; an attached container runs on, detached. Then [`Session::end`].
    pub async fn abandon(mut self) {
        if let Target::Exec { exec_id } = &self.target {
            match self
                .shim
                .kill(&self.container_id, exec_id, libc::SIGKILL as u32, false)
                .await
            {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => log::warn!("killing exec {exec_id} of {}: {e}", self.container_id),
            }
            let _ = self
                .shim
                .wait(&self.container_id, exec_id, KILL_LIMIT)
                .await;
        }
        self.end().await;
    }

    /// Releases everything (the session's pipes already dropped): the exec deleted in the
    /// shim (after its exit), the FIFOs removed.
    pub async fn end(&mut self) {
        if let Target::Exec { exec_id } = &self.target {
            match self.shim.delete(&self.container_id, exec_id).await {
                Ok(()) | Err(ManagerError::NotFound(_)) => {}
                Err(e) => log::warn!("deleting exec {exec_id} of {}: {e}", self.container_id),
            }
        }
        let dir = std::mem::take(&mut self.dir);
        if !dir.as_os_str().is_empty() {
            let _ = blocking(move || remove_tree(&dir)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_takes_a_stream_and_a_terminal_has_no_stderr() {
        let none = Wanted::default();
        assert!(matches!(
            check_wanted(false, none),
            Err(ManagerError::InvalidArgument(_))
        ));
        let all = Wanted {
            stdin: true,
            stdout: true,
            stderr: true,
        };
        assert!(check_wanted(false, all).is_ok());
        assert!(matches!(
            check_wanted(true, all),
            Err(ManagerError::InvalidArgument(_))
        ));
        let terminal = Wanted {
            stderr: false,
            ..all
        };
        assert!(check_wanted(true, terminal).is_ok());
    }

    #[test]
    fn the_stdin_fifo_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = create_stdin_fifo(dir.path()).unwrap();
        assert_eq!(path, stdin_fifo(dir.path()));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
        assert_eq!(create_stdin_fifo(dir.path()).unwrap(), path);
    }
}
