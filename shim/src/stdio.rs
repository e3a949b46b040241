//! A process's stdio: what the container is given, where its output goes, and the copying.
//!
//! containerd names the destination by URI (containerd's runc shim does the same):
//! - a path or `fifo://path`: FIFOs containerd (or its client) reads and writes;
//! - `file:///path`: stdout and stderr appended to one file;
//! - `binary:///path?key=value`: an external logger process that reads the container's stdout
//!   and stderr pipes itself (fds 3 and 4) and reports readiness on fd 5;
//! - a terminal: runc hands over a pty master, which is copied to and from the FIFOs.
//!
//! Pipes are copied with `splice(2)`, so no byte passes through user space. Each FIFO is also
//! held open from the other side by the shim, as containerd's shim does: opening never blocks, a
//! reader that goes away (containerd restarting) never turns into EPIPE for the container (the
//! data waits in the FIFO), and a client that detaches never closes the container's stdin.
//! CloseIO lets go of the shim's own end, so stdin closes once the client's writer is gone too
//! and every byte written before has been delivered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, fchown, pipe2};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::attach::{self, Taps};
use crate::console::ConsoleSocket;
use crate::crilog::{self, CriLog, Stream};
use crate::error::{Result, ShimError};
use crate::reaper::{ExitReceiver, Reaper};
use crate::sys;

/// Most bytes one splice call moves; the kernel stops at the pipe's content anyway.
const SPLICE_CHUNK: usize = 1 << 20;
/// Buffer of a terminal copy, which cannot splice.
const CONSOLE_BUFFER: usize = 8192;
/// How long a binary logger may take to say it is ready.
const LOGGER_READY_LIMIT: Duration = Duration::from_secs(10);
/// How long a binary logger gets to flush after SIGTERM before it is killed (containerd: 12 s).
const LOGGER_STOP_LIMIT: Duration = Duration::from_secs(12);

/// The stdio containerd asked for, as it asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin URI, empty for none.
    pub stdin: String,
    /// stdout URI, empty for none.
    pub stdout: String,
    /// stderr URI, empty for none.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// Where one output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Fifo(PathBuf),
    File(PathBuf),
    Binary {
        path: PathBuf,
        args: Vec<String>,
    },
    /// crust's own: both streams as CRI log records in one file (see [`crate::crilog`]).
    CriLog {
        path: PathBuf,
        max_line: Option<usize>,
    },
}

/// Parses a stdio URI.
fn destination(uri: &str, stream: &str) -> Result<Option<Destination>> {
    if uri.is_empty() {
        return Ok(None);
    }
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let absolute = |path: &str| -> Result<PathBuf> {
        let path = PathBuf::from(path);
        if path.is_absolute() && !path.components().any(|c| c.as_os_str() == "..") {
            Ok(path)
        } else {
            Err(ShimError::InvalidArgument(format!(
                "{stream} {uri:?} is not an absolute path"
            )))
        }
    };
    match scheme {
        "" | "fifo" => Ok(Some(Destination::Fifo(absolute(rest)?))),
        "file" => Ok(Some(Destination::File(absolute(rest)?))),
        "binary" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            // As containerd's shim: each `key=value` of the query becomes `key value`.
            let args = form_urlencoded::parse(query.as_bytes())
                .flat_map(|(key, value)| [key.into_owned(), value.into_owned()])
                .filter(|arg| !arg.is_empty())
                .collect();
            Ok(Some(Destination::Binary {
                path: absolute(&path)?,
                args,
            }))
        }
        "crilog" => {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut max_line = Some(crilog::DEFAULT_MAX_LINE);
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                if key != "max_line_size" {
                    return Err(ShimError::InvalidArgument(format!(
                        "{stream} {uri:?}: unknown setting {key:?}"
                    )));
                }
                // containerd's convention: -1 (or 0) means no limit.
                max_line = match value.parse::<i64>() {
                    Ok(n) if n <= 0 => None,
                    Ok(n) => Some(n as usize),
                    Err(_) => {
                        return Err(ShimError::InvalidArgument(format!(
                            "{stream} {uri:?}: max_line_size {value:?} is not a number"
                        )));
                    }
                };
            }
            let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            Ok(Some(Destination::CriLog {
                path: absolute(&path)?,
                max_line,
            }))
        }
        other => Err(ShimError::InvalidArgument(format!(
            "{stream} URI scheme {other:?} is not one of fifo, file, binary, crilog"
        ))),
    }
}

/// The container's ends of its stdio, handed to runc for `create` or `exec`.
#[derive(Debug, Default)]
pub struct ContainerEnds {
    ends: Mutex<Option<[Option<OwnedFd>; 3]>>,
}

#[async_trait]
impl runc::Io for ContainerEnds {
    async fn set(&self, command: &mut runc::Command) -> io::Result<()> {
        let taken = self
            .ends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let [stdin, stdout, stderr] = taken.unwrap_or_default();
        let or_null = |end: Option<OwnedFd>| end.map(Stdio::from).unwrap_or_else(Stdio::null);
        command
            .stdin(or_null(stdin))
            .stdout(or_null(stdout))
            .stderr(or_null(stderr));
        Ok(())
    }

    // The ends moved into the command and closed with it once runc was spawned.
    async fn close_after_start(&self) {}
}

/// Where one output stream is copied to.
#[derive(Debug)]
enum Sink {
    /// A FIFO, with the shim's own reader held so the FIFO never loses its last reader.
    Fifo { writer: OwnedFd, keepalive: File },
    /// A regular file opened for appending.
    File(OwnedFd),
    /// CRI log records of one stream, and attached clients' copies of it.
    CriLog {
        log: Arc<CriLog>,
        stream: Stream,
        max_line: Option<usize>,
        taps: Arc<Taps>,
    },
}

/// A FIFO the shim reads from, with its own writer held so a client leaving is not EOF.
#[derive(Debug)]
struct FifoSource {
    reader: File,
    keepalive: File,
}

#[derive(Debug)]
struct Output {
    from_container: OwnedFd,
    sink: Sink,
}

/// A running binary logger.
#[derive(Debug)]
struct Logger {
    pid: i32,
    /// Present until the logger's exit was seen.
    exit: Option<ExitReceiver>,
}

/// A process's stdio, prepared before runc runs.
#[derive(Debug)]
pub struct Prepared {
    /// What runc gives the container.
    pub container: Arc<ContainerEnds>,
    /// The console socket, for a process with a terminal.
    pub console: Option<ConsoleSocket>,
    stdin: Option<(FifoSource, Option<OwnedFd>)>,
    stdout: Option<Output>,
    stderr: Option<Output>,
    /// For a terminal: where the master's output goes.
    console_out: Option<Sink>,
    logger: Option<Logger>,
    cri_log: Option<Arc<CriLog>>,
    taps: Option<Arc<Taps>>,
}

/// Who owns the container's ends of its pipes, and who the binary logger logs for.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// Owner of the pipes.
    pub uid: u32,
    /// Group of the pipes.
    pub gid: u32,
}

impl Prepared {
    /// Creates the pipes, opens the FIFOs or file, or starts the logger, for `paths`.
    pub async fn open(
        paths: &StdioPaths,
        owner: Owner,
        reaper: &Arc<Reaper>,
        logger_for: (&str, &str),
    ) -> Result<Self> {
        let owner = (owner.uid != 0 || owner.gid != 0)
            .then(|| (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid)));
        let mut container: [Option<OwnedFd>; 3] = [None, None, None];
        let mut prepared = Prepared {
            container: Arc::new(ContainerEnds::default()),
            console: None,
            stdin: None,
            stdout: None,
            stderr: None,
            console_out: None,
            logger: None,
            cri_log: None,
            taps: None,
        };

        if let Some(destination) = destination(&paths.stdin, "stdin")? {
            let Destination::Fifo(path) = destination else {
                return Err(ShimError::InvalidArgument("stdin must be a FIFO".into()));
            };
            let source = FifoSource {
                reader: open_fifo(&path, false)?,
                keepalive: open_fifo(&path, true)?,
            };
            let to_container = if paths.terminal {
                None
            } else {
                let (read, write) = pipe()?;
                chown_end(&read, owner)?;
                container[0] = Some(read);
                set_nonblocking(&write)?;
                Some(write)
            };
            prepared.stdin = Some((source, to_container));
        }

        let stdout = destination(&paths.stdout, "stdout")?;
        if paths.terminal {
            prepared.console = Some(ConsoleSocket::new()?);
            prepared.console_out = match stdout {
                None => None,
                Some(Destination::Fifo(path)) => Some(fifo_sink(&path)?),
                Some(Destination::File(path)) => Some(file_sink(&path)?),
                Some(Destination::CriLog { path, max_line }) => {
                    // A terminal has one output, its master's, logged and attached as stdout.
                    let (log, taps) = prepared.open_cri_log(&path, &[Stream::Stdout])?;
                    Some(Sink::CriLog {
                        log,
                        stream: Stream::Stdout,
                        max_line,
                        taps,
                    })
                }
                Some(Destination::Binary { .. }) => {
                    return Err(ShimError::InvalidArgument(
                        "a terminal's output cannot go to a binary logger".into(),
                    ));
                }
            };
        } else {
            match stdout {
                // As containerd's shim: a logger takes both streams, whatever stderr says.
                Some(Destination::Binary { path, args }) => {
                    let (out_read, out_write) = pipe()?;
                    let (err_read, err_write) = pipe()?;
                    chown_end(&out_write, owner)?;
                    chown_end(&err_write, owner)?;
                    prepared.logger = Some(
                        start_logger(&path, &args, out_read, err_read, reaper, logger_for).await?,
                    );
                    container[1] = Some(out_write);
                    container[2] = Some(err_write);
                }
                // As containerd's shim: a file takes both streams too.
                Some(Destination::File(path)) => {
                    let (output, end) = output_pipe(file_sink(&path)?, owner)?;
                    container[1] = Some(end);
                    prepared.stdout = Some(output);
                    let (output, end) = output_pipe(file_sink(&path)?, owner)?;
                    container[2] = Some(end);
                    prepared.stderr = Some(output);
                }
                // A CRI log takes both streams, each record tagged with its stream.
                Some(Destination::CriLog { path, max_line }) => {
                    let streams = [Stream::Stdout, Stream::Stderr];
                    let (log, taps) = prepared.open_cri_log(&path, &streams)?;
                    for (stream, index) in [(Stream::Stdout, 1), (Stream::Stderr, 2)] {
                        let sink = Sink::CriLog {
                            log: Arc::clone(&log),
                            stream,
                            max_line,
                            taps: Arc::clone(&taps),
                        };
                        let (output, end) = output_pipe(sink, owner)?;
                        container[index] = Some(end);
                        if stream == Stream::Stdout {
                            prepared.stdout = Some(output);
                        } else {
                            prepared.stderr = Some(output);
                        }
                    }
                }
                Some(Destination::Fifo(path)) => {
                    let (output, end) = output_pipe(fifo_sink(&path)?, owner)?;
                    container[1] = Some(end);
                    prepared.stdout = Some(output);
                }
                None => {}
            }
            if prepared.logger.is_none() && container[2].is_none() {
                match destination(&paths.stderr, "stderr")? {
                    Some(Destination::Fifo(path)) => {
                        let (output, end) = output_pipe(fifo_sink(&path)?, owner)?;
                        container[2] = Some(end);
                        prepared.stderr = Some(output);
                    }
                    Some(Destination::File(path)) => {
                        let (output, end) = output_pipe(file_sink(&path)?, owner)?;
                        container[2] = Some(end);
                        prepared.stderr = Some(output);
                    }
                    Some(Destination::Binary { .. }) | Some(Destination::CriLog { .. }) => {
                        return Err(ShimError::InvalidArgument(
                            "a binary logger or CRI log is named by stdout".into(),
                        ));
                    }
                    None => {}
                }
            }
        }
        prepared.container = Arc::new(ContainerEnds {
            ends: Mutex::new(Some(container)),
        });
        Ok(prepared)
    }

    /// Opens the CRI log, and the attach taps of the `copied` streams that feed it.
    fn open_cri_log(&mut self, path: &Path, copied: &[Stream]) -> Result<(Arc<CriLog>, Arc<Taps>)> {
        let log = Arc::new(CriLog::open(path)?);
        let taps = Arc::new(Taps::new(copied));
        self.cri_log = Some(Arc::clone(&log));
        self.taps = Some(Arc::clone(&taps));
        Ok((log, taps))
    }

    /// The console socket's path, for `--console-socket`.
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(ConsoleSocket::path)
    }

    /// Starts copying. Call it once runc has run (and, for a terminal, sent its console).
    pub async fn start(mut self, label: &str) -> Result<CopyHandle> {
        let mut handle = CopyHandle::default();
        handle.logger = self.logger.take();
        handle.cri_log = self.cri_log.take();
        handle.taps = self.taps.take();
        let console = match self.console.take() {
            Some(socket) => Some(socket.receive_master().await?),
            None => None,
        };
        if let Some(master) = &console {
            set_nonblocking(master)?;
            handle.console = Some(
                master
                    .try_clone()
                    .map_err(|e| ShimError::io("duplicate console", e))?,
            );
        }

        if let Some((source, to_container)) = self.stdin.take() {
            handle.stdin_keepalive = Some(source.keepalive);
            let from_fifo = async_fd(source.reader.into())?;
            let label = format!("{label} stdin");
            let task = match (to_container, &console) {
                (Some(pipe), _) => {
                    let sink = async_fd(pipe)?;
                    tokio::spawn(async move {
                        if let Err(e) = pump(&from_fifo, &PumpSink::Pollable(sink)).await {
                            log::warn!("copying {label}: {e}");
                        }
                        // Dropping the pipe's write end is the container's EOF.
                    })
                }
                (None, Some(master)) => {
                    let sink = PumpSink::Pollable(async_fd(dup(master)?)?);
                    tokio::spawn(async move {
                        if let Err(e) = copy_bytes(&from_fifo, &sink).await {
                            log::warn!("copying {label}: {e}");
                        }
                    })
                }
                (None, None) => {
                    return Err(ShimError::InvalidArgument(
                        "stdin without a pipe or a terminal".into(),
                    ));
                }
            };
            handle.stdin_task = Some(task);
        }

        if let (Some(master), Some(sink)) = (console, self.console_out.take()) {
            let source = async_fd(master)?;
            let label = format!("{label} console");
            handle
                .outputs
                .push(spawn_output(source, sink, label, Origin::Terminal)?);
        }

        for (name, output) in [
            ("stdout", self.stdout.take()),
            ("stderr", self.stderr.take()),
        ] {
            let Some(output) = output else { continue };
            let source = async_fd(output.from_container)?;
            let label = format!("{label} {name}");
            handle
                .outputs
                .push(spawn_output(source, output.sink, label, Origin::Pipe)?);
        }
        Ok(handle)
    }
}

/// What an output stream is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A pipe from the container.
    Pipe,
    /// A terminal's master.
    Terminal,
}

/// Starts copying `source` to `sink` until `source` ends.
fn spawn_output(
    source: AsyncFd<OwnedFd>,
    sink: Sink,
    label: String,
    origin: Origin,
) -> Result<JoinHandle<()>> {
    let (sink, keepalive) = match sink {
        Sink::CriLog {
            log,
            stream,
            max_line,
            taps,
        } => {
            return Ok(tokio::spawn(async move {
                if let Err(e) = crilog::copy_to_log(&source, stream, &log, max_line, &taps).await {
                    log::warn!("copying {label}: {e}; discarding the rest");
                    discard(&source).await;
                }
            }));
        }
        Sink::Fifo { writer, keepalive } => {
            (PumpSink::Pollable(async_fd(writer)?), Some(keepalive))
        }
        Sink::File(file) => (PumpSink::File(file), None),
    };
    Ok(tokio::spawn(async move {
        // splice(2) takes neither a terminal nor a file opened for appending: those are
        // copied through a buffer.
        let copied = match (&sink, origin) {
            (PumpSink::Pollable(_), Origin::Pipe) => pump(&source, &sink).await,
            _ => copy_bytes(&source, &sink).await,
        };
        if let Err(e) = copied {
            log::warn!("copying {label}: {e}");
            if origin == Origin::Pipe {
                // The container keeps writing; reading on is what keeps it from blocking.
                discard(&source).await;
            }
        }
        // Closing our write end (and then our reader) is EOF for containerd's reader.
        drop(sink);
        drop(keepalive);
    }))
}

fn output_pipe(sink: Sink, owner: Option<(Uid, Gid)>) -> Result<(Output, OwnedFd)> {
    let (read, write) = pipe()?;
    chown_end(&write, owner)?;
    set_nonblocking(&read)?;
    Ok((
        Output {
            from_container: read,
            sink,
        },
        write,
    ))
}

fn fifo_sink(path: &Path) -> Result<Sink> {
    // Reader first: with a reader present, the non-blocking open for writing cannot fail
    // with ENXIO, whatever containerd's side is doing.
    let keepalive = open_fifo(path, false)?;
    let writer = open_fifo(path, true)?.into();
    Ok(Sink::Fifo { writer, keepalive })
}

fn file_sink(path: &Path) -> Result<Sink> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ShimError::io(format!("open {}", path.display()), e))?;
    Ok(Sink::File(file.into()))
}

fn open_fifo(path: &Path, write: bool) -> Result<File> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| ShimError::io(format!("stdio {}", path.display()), e))?;
    if !metadata.file_type().is_fifo() {
        return Err(ShimError::InvalidArgument(format!(
            "stdio {} is not a FIFO",
            path.display()
        )));
    }
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ShimError::io(format!("open fifo {}", path.display()), e))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::io("create pipe", e))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(|e| ShimError::io("duplicate descriptor", e))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| ShimError::io("read fd flags", e))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))
        .map(drop)
        .map_err(|e| ShimError::io("set O_NONBLOCK", e))
}

fn chown_end(fd: &OwnedFd, owner: Option<(Uid, Gid)>) -> Result<()> {
    match owner {
        None => Ok(()),
        Some((uid, gid)) => fchown(fd, Some(uid), Some(gid))
            .map_err(|e| ShimError::io(format!("chown stdio pipe to {uid}:{gid}"), e)),
    }
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    sys::async_fd(fd).map_err(|e| ShimError::io("register stdio with the event loop", e))
}

/// Starts a binary logger with the container's output pipes as fds 3 and 4 and a readiness
/// pipe as fd 5, and waits until it says it is ready (a byte, or closing fd 5).
async fn start_logger(
    path: &Path,
    args: &[String],
    stdout: OwnedFd,
    stderr: OwnedFd,
    reaper: &Arc<Reaper>,
    (namespace, id): (&str, &str),
) -> Result<Logger> {
    let (ready_read, ready_write) = pipe()?;
    let mut command = Command::new(path);
    command
        .args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::pass_fds(
        &mut command,
        [
            stdout.as_raw_fd(),
            stderr.as_raw_fd(),
            ready_write.as_raw_fd(),
        ],
        3,
    );
    let watch = reaper.watch();
    let child = command
        .spawn()
        .map_err(|e| ShimError::io(format!("start logger {}", path.display()), e))?;
    let pid = child.id() as i32;
    let exit = watch.subscribe(pid);
    drop(watch);
    // Only the logger may hold these now: its EOF and readiness depend on it.
    drop((stdout, stderr, ready_write));
    set_nonblocking(&ready_read)?;
    let ready = async_fd(ready_read)?;
    let waited = tokio::time::timeout(LOGGER_READY_LIMIT, async {
        loop {
            let mut guard = ready.readable().await?;
            let mut byte = [0u8; 1];
            match nix::unistd::read(ready.get_ref(), &mut byte) {
                Ok(_) => return Ok(()),
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    })
    .await;
    let logger = Logger {
        pid,
        exit: Some(exit),
    };
    match waited {
        Ok(Ok(())) => Ok(logger),
        Ok(Err(e)) => Err(ShimError::io("wait for the logger", e)),
        Err(_) => Err(ShimError::DeadlineExceeded(format!(
            "logger {} was not ready within {}s",
            path.display(),
            LOGGER_READY_LIMIT.as_secs()
        ))),
    }
}

impl Logger {
    /// Asks the logger to flush and exit, as containerd's shim does, and kills it if it
    /// does not within the grace period.
    async fn stop(&mut self) {
        let Some(exit) = self.exit.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if tokio::time::timeout(LOGGER_STOP_LIMIT, exit.wait())
            .await
            .is_err()
        {
            log::warn!("logger pid {} ignored SIGTERM, killing it", self.pid);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if self.exit.is_some() {
            // Never stopped (a failed create, say): do not leave it behind.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// The running copies of one process's stdio.
#[derive(Debug, Default)]
pub struct CopyHandle {
    stdin_keepalive: Option<File>,
    stdin_task: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    console: Option<OwnedFd>,
    logger: Option<Logger>,
    cri_log: Option<Arc<CriLog>>,
    taps: Option<Arc<Taps>>,
}

impl CopyHandle {
    /// ReopenContainerLog: the CRI log starts over in a new file at its path.
    pub fn reopen_log(&self) -> Result<()> {
        match &self.cri_log {
            Some(log) => log.reopen(),
            None => Err(ShimError::FailedPrecondition(
                "the process does not write a CRI log".into(),
            )),
        }
    }

    /// Attach: the output read from now on is also written to the FIFOs at `stdout` and
    /// `stderr` (each optional), which the client holds open for reading; each is closed when
    /// its stream ends (at once if it already has). Only for a process that writes a CRI log:
    /// other destinations are read by their own clients, not copied by the shim.
    pub fn attach(&self, stdout: Option<&Path>, stderr: Option<&Path>) -> Result<()> {
        let Some(taps) = &self.taps else {
            return Err(ShimError::FailedPrecondition(
                "the process's output does not go to a CRI log; only such output can be attached"
                    .into(),
            ));
        };
        // Both open before either is added: a failed attach leaves nothing behind.
        let stdout = stdout
            .map(|p| attach::open_fifo(p).map(|fd| (p, fd)))
            .transpose()?;
        let stderr = stderr
            .map(|p| attach::open_fifo(p).map(|fd| (p, fd)))
            .transpose()?;
        for (stream, opened) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            if let Some((path, fifo)) = opened {
                taps.add(stream, fifo, path);
            }
        }
        Ok(())
    }

    /// CloseIO: lets go of the shim's end of the stdin FIFO, so the container's stdin closes
    /// once the client's writer is gone and what it wrote has been delivered.
    pub fn close_stdin(&mut self) {
        self.stdin_keepalive = None;
    }

    /// ResizePty. A process without a terminal ignores it, as with containerd's shim.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(console) = &self.console else {
            return Ok(());
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        sys::resize_terminal(console, clamp(width), clamp(height))
            .map_err(|e| ShimError::io("resize terminal", e))
    }

    /// Waits up to `limit` for the output to be fully delivered, then stops the logger.
    /// Returns whether the output finished in time.
    pub async fn finish(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut finished = true;
        for output in &mut self.outputs {
            if tokio::time::timeout_at(deadline, output).await.is_err() {
                finished = false;
                break;
            }
        }
        self.outputs.clear();
        if let Some(logger) = &mut self.logger {
            logger.stop().await;
        }
        finished
    }
}

impl Drop for CopyHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.stdin_task {
            task.abort();
        }
        for output in &self.outputs {
            output.abort();
        }
    }
}

/// Where a pump writes.
#[derive(Debug)]
enum PumpSink {
    /// A pipe or FIFO, waited on for room.
    Pollable(AsyncFd<OwnedFd>),
    /// A regular file, always writable.
    File(OwnedFd),
}

impl PumpSink {
    fn fd(&self) -> &OwnedFd {
        match self {
            PumpSink::Pollable(fd) => fd.get_ref(),
            PumpSink::File(fd) => fd,
        }
    }
}

/// Moves bytes from the pipe or FIFO `source` to `sink` until `source` reaches EOF, yielding
/// after each chunk.
async fn pump(source: &AsyncFd<OwnedFd>, sink: &PumpSink) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        let mut readable = source.readable().await?;
        loop {
            match splice(
                source.get_ref(),
                None,
                sink.fd(),
                None,
                SPLICE_CHUNK,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => return Ok(moved),
                Ok(n) => {
                    moved += n as u64;
                    // One thread serves the whole pod: a stream that never runs dry must
                    // not keep the Task API and the other streams waiting.
                    tokio::task::yield_now().await;
                }
                Err(Errno::EINTR) => {}
                // Either the source is empty or the sink is full: poll tells which.
                Err(Errno::EAGAIN) => match sink {
                    PumpSink::Pollable(sink) if has_input(source.get_ref()) => {
                        let mut writable = sink.writable().await?;
                        if !can_output(sink.get_ref()) {
                            writable.clear_ready();
                        }
                    }
                    _ => {
                        readable.clear_ready();
                        break;
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Copies through a buffer, for ends that cannot splice (a terminal).
async fn copy_bytes(source: &AsyncFd<OwnedFd>, sink: &PumpSink) -> io::Result<u64> {
    let mut buffer = vec![0u8; CONSOLE_BUFFER];
    let mut moved = 0u64;
    loop {
        let mut readable = source.readable().await?;
        let count = match nix::unistd::read(source.get_ref(), &mut buffer) {
            Ok(0) => return Ok(moved),
            Ok(count) => count,
            Err(Errno::EAGAIN) => {
                readable.clear_ready();
                continue;
            }
            Err(Errno::EINTR) => continue,
            // A pty master reads EIO once the last slave is closed: that is its EOF.
            Err(Errno::EIO) => return Ok(moved),
            Err(e) => return Err(e.into()),
        };
        let mut written = 0;
        while written < count {
            match nix::unistd::write(sink.fd(), &buffer[written..count]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    if let PumpSink::Pollable(fd) = sink {
                        let mut writable = fd.writable().await?;
                        if !can_output(fd.get_ref()) {
                            writable.clear_ready();
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        moved += count as u64;
        tokio::task::yield_now().await;
    }
}

/// Reads and drops everything until EOF, so a broken sink never blocks the container.
async fn discard(source: &AsyncFd<OwnedFd>) {
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(mut readable) = source.readable().await else {
            return;
        };
        match nix::unistd::read(source.get_ref(), &mut buffer) {
            Ok(0) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => readable.clear_ready(),
            Err(_) => return,
        }
    }
}

fn poll_one(fd: &OwnedFd, events: PollFlags) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|revents| revents.intersects(events | PollFlags::POLLHUP))
}

fn has_input(fd: &OwnedFd) -> bool {
    poll_one(fd, PollFlags::POLLIN)
}

fn can_output(fd: &OwnedFd) -> bool {
    poll_one(fd, PollFlags::POLLOUT)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use nix::sys::stat::Mode;
    use nix::unistd::mkfifo;

    use super::*;

    #[test]
    fn uris_name_fifos_files_and_loggers() {
        assert_eq!(destination("", "stdout").unwrap(), None);
        assert_eq!(
            destination("/run/f/1-stdout", "stdout").unwrap(),
            Some(Destination::Fifo("/run/f/1-stdout".into()))
        );
        assert_eq!(
            destination("fifo:///run/f/x", "stdout").unwrap(),
            Some(Destination::Fifo("/run/f/x".into()))
        );
        assert_eq!(
            destination("file:///var/log/c.log", "stdout").unwrap(),
            Some(Destination::File("/var/log/c.log".into()))
        );
        assert_eq!(
            destination(
                "binary:///usr/bin/my%20logger?level=debug&tag=a+b",
                "stdout"
            )
            .unwrap(),
            Some(Destination::Binary {
                path: "/usr/bin/my logger".into(),
                args: vec!["level".into(), "debug".into(), "tag".into(), "a b".into()],
            })
        );
        assert_eq!(
            destination("crilog:///var/log/pods/p/c/0.log", "stdout").unwrap(),
            Some(Destination::CriLog {
                path: "/var/log/pods/p/c/0.log".into(),
                max_line: Some(16384),
            })
        );
        for (size, max_line) in [
            ("-1", None),
            ("0", None),
            ("1", Some(1)),
            ("8192", Some(8192)),
        ] {
            assert_eq!(
                destination(&format!("crilog:///l/0.log?max_line_size={size}"), "stdout").unwrap(),
                Some(Destination::CriLog {
                    path: "/l/0.log".into(),
                    max_line,
                }),
                "max_line_size={size}"
            );
        }
        for bad in [
            "relative/fifo",
            "file://relative",
            "file:///a/../b",
            "http://x/y",
            "crilog://relative.log",
            "crilog:///a/../../etc/x.log",
            "crilog:///l/0.log?max_line_size=big",
            "crilog:///l/0.log?rotate=1",
        ] {
            assert!(
                matches!(
                    destination(bad, "stdout"),
                    Err(ShimError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    fn paths(stdout: &Path) -> StdioPaths {
        StdioPaths {
            stdout: stdout.display().to_string(),
            ..Default::default()
        }
    }

    const ROOT: Owner = Owner { uid: 0, gid: 0 };

    #[tokio::test(flavor = "current_thread")]
    async fn a_regular_file_is_not_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out");
        std::fs::write(&file, "").unwrap();
        let opened = Prepared::open(&paths(&file), ROOT, &Reaper::new(), ("n", "c")).await;
        assert!(matches!(opened, Err(ShimError::InvalidArgument(_))));
    }

    fn take_container_ends(prepared: &Prepared) -> [Option<OwnedFd>; 3] {
        prepared.container.ends.lock().unwrap().take().unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_reaches_the_fifo_and_ends_with_eof() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        // containerd's side: a reader that exists before the shim opens its end.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let prepared = Prepared::open(&paths(&fifo), ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        let [_, stdout, _] = take_container_ends(&prepared);
        let mut copy = prepared.start("test").await.unwrap();
        // Reads block from here on, so the reader sees data and then EOF, never EAGAIN.
        let reader_fd = OwnedFd::from(reader);
        let flags = OFlag::from_bits_truncate(fcntl(&reader_fd, FcntlArg::F_GETFL).unwrap());
        fcntl(&reader_fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).unwrap();
        let reading = std::thread::spawn(move || {
            let mut received = Vec::new();
            File::from(reader_fd)
                .read_to_end(&mut received)
                .map(|_| received)
        });
        // More than a pipe holds, so the pump has to wait for the sink.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writing = {
            let payload = payload.clone();
            let mut out = File::from(stdout.unwrap());
            std::thread::spawn(move || out.write_all(&payload))
        };
        assert!(copy.finish(Duration::from_secs(10)).await, "copy finished");
        writing.join().unwrap().unwrap();
        let received = reading.join().unwrap().unwrap();
        assert_eq!(received, payload);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_file_destination_takes_stdout_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/c.log");
        let stdio = StdioPaths {
            stdout: format!("file://{}", log.display()),
            stderr: format!("file://{}", log.display()),
            ..Default::default()
        };
        let prepared = Prepared::open(&stdio, ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        let [_, stdout, stderr] = take_container_ends(&prepared);
        let mut copy = prepared.start("test").await.unwrap();
        File::from(stdout.unwrap()).write_all(b"out\n").unwrap();
        File::from(stderr.unwrap()).write_all(b"err\n").unwrap();
        assert!(copy.finish(Duration::from_secs(10)).await);
        let written = std::fs::read_to_string(&log).unwrap();
        assert_eq!(written.len(), 8, "{written:?}");
        assert!(
            written.contains("out\n") && written.contains("err\n"),
            "{written:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_closes_only_after_closeio_and_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let stdio = StdioPaths {
            stdin: fifo.display().to_string(),
            ..Default::default()
        };
        let prepared = Prepared::open(&stdio, ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        let [stdin, _, _] = take_container_ends(&prepared);
        let mut copy = prepared.start("test").await.unwrap();
        let mut client = OpenOptions::new().write(true).open(&fifo).unwrap();
        client.write_all(b"typed").unwrap();
        drop(client); // the client detaches: not EOF for the container
        copy.close_stdin(); // CloseIO: EOF once the written bytes are delivered
        let mut container_stdin = File::from(stdin.unwrap());
        let mut received = Vec::new();
        let read = tokio::task::spawn_blocking(move || {
            container_stdin.read_to_end(&mut received).map(|_| received)
        });
        assert_eq!(read.await.unwrap().unwrap(), b"typed");
    }

    /// Reads `reader` (non-blocking) until it reaches EOF, letting the copier run meanwhile.
    async fn read_to_eof(reader: &mut File) -> Vec<u8> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (more, eof) = crate::attach::tests::drain(reader);
            received.extend_from_slice(&more);
            if eof {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no EOF: {received:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn attached_clients_get_both_streams_of_a_cri_logged_process() {
        use crate::attach::tests::{drain, fifo};
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let stdio = StdioPaths {
            stdout: format!("crilog://{}", log.display()),
            ..Default::default()
        };
        let prepared = Prepared::open(&stdio, ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        let [_, stdout, stderr] = take_container_ends(&prepared);
        let copy = prepared.start("test").await.unwrap();
        let (out_path, mut out) = fifo(dir.path(), "out");
        let (err_path, mut err) = fifo(dir.path(), "err");
        copy.attach(Some(&out_path), Some(&err_path)).unwrap();
        // A stdout-only client besides.
        let (only_path, mut only) = fifo(dir.path(), "only");
        copy.attach(Some(&only_path), None).unwrap();
        let (mut stdout, mut stderr) = (File::from(stdout.unwrap()), File::from(stderr.unwrap()));
        stdout.write_all(b"to stdout\n").unwrap();
        stderr.write_all(b"to stderr\n").unwrap();
        drop((stdout, stderr)); // the container's output ends
        assert_eq!(read_to_eof(&mut out).await, b"to stdout\n");
        assert_eq!(read_to_eof(&mut err).await, b"to stderr\n");
        assert_eq!(read_to_eof(&mut only).await, b"to stdout\n");
        let written = std::fs::read_to_string(&log).unwrap();
        assert!(written.contains(" stdout F to stdout\n"), "{written:?}");
        assert!(written.contains(" stderr F to stderr\n"), "{written:?}");
        // Attaching once the output has ended: EOF at once.
        let (late_path, mut late) = fifo(dir.path(), "late");
        copy.attach(Some(&late_path), None).unwrap();
        assert_eq!(drain(&mut late), (Vec::new(), true));
        // A FIFO without a reader: refused, and the other stream is not attached either.
        let lonely = dir.path().join("lonely");
        mkfifo(&lonely, Mode::from_bits_truncate(0o600)).unwrap();
        let (fine_path, mut fine) = fifo(dir.path(), "fine");
        assert!(matches!(
            copy.attach(Some(&fine_path), Some(&lonely)),
            Err(ShimError::FailedPrecondition(why)) if why.contains("no reader")
        ));
        assert_eq!(drain(&mut fine), (Vec::new(), true), "closed, not kept");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_terminal_is_attached_as_stdout() {
        use std::os::unix::net::UnixStream;

        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

        use crate::attach::tests::{drain, fifo};
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let stdio = StdioPaths {
            stdout: format!("crilog://{}", log.display()),
            terminal: true,
            ..Default::default()
        };
        let prepared = Prepared::open(&stdio, ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        // runc's part: a pty whose master goes over the console socket.
        let pty = nix::pty::openpty(None, None).unwrap();
        let socket = prepared.console_socket().unwrap().to_path_buf();
        let master = pty.master;
        let sender = std::thread::spawn(move || {
            let stream = UnixStream::connect(&socket).unwrap();
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(b"/dev/pts/0")],
                &[ControlMessage::ScmRights(&[master.as_raw_fd()])],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        });
        let copy = prepared.start("test").await.unwrap();
        sender.join().unwrap();
        let (out_path, mut out) = fifo(dir.path(), "out");
        let (err_path, mut err) = fifo(dir.path(), "err");
        copy.attach(Some(&out_path), Some(&err_path)).unwrap();
        assert_eq!(
            drain(&mut err),
            (Vec::new(), true),
            "no stderr: EOF at once"
        );
        let mut slave = File::from(pty.slave);
        slave.write_all(b"on the terminal\n").unwrap();
        drop(slave); // the container's side closes: the master reads EIO, its end
        // The terminal turned the line end into CR LF; the client gets it as the tty sent it.
        assert_eq!(read_to_eof(&mut out).await, b"on the terminal\r\n");
        let written = std::fs::read_to_string(&log).unwrap();
        assert!(
            written.ends_with(" stdout F on the terminal\n"),
            "{written:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_cri_logged_output_can_be_attached() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = StdioPaths {
            stdout: format!("file://{}", dir.path().join("c.log").display()),
            ..Default::default()
        };
        let prepared = Prepared::open(&stdio, ROOT, &Reaper::new(), ("n", "c"))
            .await
            .unwrap();
        let copy = prepared.start("test").await.unwrap();
        let (path, _reader) = crate::attach::tests::fifo(dir.path(), "out");
        assert!(matches!(
            copy.attach(Some(&path), None),
            Err(ShimError::FailedPrecondition(why)) if why.contains("CRI log")
        ));
    }
}
