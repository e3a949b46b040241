//! A process's stdio: pipes to the container, FIFOs to containerd, and the copying between them.
//!
//! The container gets pipes; the shim moves bytes between each pipe and the FIFO containerd
//! named with `splice(2)`, so no byte passes through user space. Each FIFO is also held open
//! from the other side by the shim, as containerd's shim does: opening never blocks, a reader
//! that goes away (containerd restarting) never turns into EPIPE for the container (the data
//! waits in the FIFO), and a writer that goes away never closes the container's stdin. A
//! container's stdin is closed only by CloseIO.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{Gid, Uid, fchown, pipe2};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Result, ShimError};
use crate::sys;

/// Most bytes one splice call moves; the kernel stops at the pipe's content anyway.
const SPLICE_CHUNK: usize = 1 << 20;

/// The stdio containerd asked for, as it asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// Path of the stdin FIFO, empty for none.
    pub stdin: String,
    /// Path of the stdout FIFO, empty for none.
    pub stdout: String,
    /// Path of the stderr FIFO, empty for none.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
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

/// One output stream on the shim's side.
#[derive(Debug)]
struct Output {
    from_container: OwnedFd,
    to_fifo: OwnedFd,
    /// Our own read end of the FIFO, held so the FIFO never loses its last reader.
    keepalive: File,
}

/// The input stream on the shim's side.
#[derive(Debug)]
struct Input {
    from_fifo: File,
    to_container: OwnedFd,
    /// Our own write end of the FIFO, held so a client that detaches is not EOF.
    keepalive: File,
}

/// The shim's side of a process's stdio, ready to copy once runc holds the container's side.
#[derive(Debug)]
pub struct ShimEnds {
    stdin: Option<Input>,
    stdout: Option<Output>,
    stderr: Option<Output>,
}

/// Creates the pipes and opens the FIFOs for `paths`.
pub fn open(paths: &StdioPaths, uid: u32, gid: u32) -> Result<(ContainerEnds, ShimEnds)> {
    if paths.terminal {
        return Err(ShimError::Unimplemented(
            "terminals are not supported by this shim yet".into(),
        ));
    }
    let owner = (uid != 0 || gid != 0).then(|| (Uid::from_raw(uid), Gid::from_raw(gid)));
    let mut container: [Option<OwnedFd>; 3] = [None, None, None];

    let stdin = match fifo_path(&paths.stdin, "stdin")? {
        None => None,
        Some(path) => {
            let from_fifo = open_fifo(path, false)?;
            let keepalive = open_fifo(path, true)?;
            let (read, write) = pipe()?;
            chown_end(&read, owner)?;
            container[0] = Some(read);
            set_nonblocking(&write)?;
            Some(Input {
                from_fifo,
                to_container: write,
                keepalive,
            })
        }
    };

    let mut open_output = |uri: &str, stream: &str, slot: usize| -> Result<Option<Output>> {
        let Some(path) = fifo_path(uri, stream)? else {
            return Ok(None);
        };
        let (output, container_end) = output(path, owner)?;
        container[slot] = Some(container_end);
        Ok(Some(output))
    };
    let stdout = open_output(&paths.stdout, "stdout", 1)?;
    let stderr = open_output(&paths.stderr, "stderr", 2)?;

    Ok((
        ContainerEnds {
            ends: Mutex::new(Some(container)),
        },
        ShimEnds {
            stdin,
            stdout,
            stderr,
        },
    ))
}

/// Accepts a plain path or `fifo://` URI; other schemes are not supported.
fn fifo_path<'a>(uri: &'a str, stream: &str) -> Result<Option<&'a Path>> {
    if uri.is_empty() {
        return Ok(None);
    }
    let path = match uri.split_once("://") {
        None => uri,
        Some(("fifo", path)) => path,
        Some((scheme, _)) => {
            return Err(ShimError::Unimplemented(format!(
                "{stream} scheme {scheme}:// is not supported by this shim yet"
            )));
        }
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(ShimError::InvalidArgument(format!(
            "{stream} {uri:?} is not an absolute path"
        )));
    }
    Ok(Some(path))
}

fn output(path: &Path, owner: Option<(Uid, Gid)>) -> Result<(Output, OwnedFd)> {
    // Reader first: with a reader present, the non-blocking open for writing cannot fail
    // with ENXIO, whatever containerd's side is doing.
    let keepalive = open_fifo(path, false)?;
    let to_fifo: OwnedFd = open_fifo(path, true)?.into();
    let (read, write) = pipe()?;
    chown_end(&write, owner)?;
    set_nonblocking(&read)?;
    Ok((
        Output {
            from_container: read,
            to_fifo,
            keepalive,
        },
        write,
    ))
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

impl ShimEnds {
    /// Starts copying. Call it once runc has been given (and has closed) the container's ends.
    pub fn start(self, label: &str) -> Result<CopyHandle> {
        let mut handle = CopyHandle::default();
        if let Some(input) = self.stdin {
            let (close, closed) = oneshot::channel();
            let source = async_fd(input.from_fifo.into())?;
            let sink = async_fd(input.to_container)?;
            let keepalive = input.keepalive;
            let label = format!("{label} stdin");
            tokio::spawn(async move {
                let _keepalive = keepalive;
                tokio::select! {
                    result = pump(&source, &sink) => {
                        if let Err(e) = result {
                            log::warn!("copying {label}: {e}");
                        }
                    }
                    // CloseIO: dropping the pipe's write end is the container's EOF.
                    _ = closed => {}
                }
            });
            handle.stdin_close = Some(close);
        }
        for (name, output) in [("stdout", self.stdout), ("stderr", self.stderr)] {
            let Some(output) = output else { continue };
            let source = async_fd(output.from_container)?;
            let sink = async_fd(output.to_fifo)?;
            let keepalive = output.keepalive;
            let label = format!("{label} {name}");
            handle.outputs.push(tokio::spawn(async move {
                if let Err(e) = pump(&source, &sink).await {
                    log::warn!("copying {label}: {e}; discarding the rest");
                    discard(&source).await;
                }
                // Closing our write end (and then our reader) is EOF for containerd's reader.
                drop(sink);
                drop(keepalive);
            }));
        }
        Ok(handle)
    }
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    sys::async_fd(fd).map_err(|e| ShimError::io("register stdio with the event loop", e))
}

/// The running copies of one process's stdio.
#[derive(Debug, Default)]
pub struct CopyHandle {
    stdin_close: Option<oneshot::Sender<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl CopyHandle {
    /// Closes the container's stdin (CloseIO).
    pub fn close_stdin(&mut self) {
        if let Some(close) = self.stdin_close.take() {
            let _ = close.send(());
        }
    }

    /// Waits until stdout and stderr reached EOF and were flushed to containerd, for at most
    /// `limit`. Returns whether they finished.
    pub async fn wait_outputs(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        for output in &mut self.outputs {
            if tokio::time::timeout_at(deadline, output).await.is_err() {
                return false;
            }
        }
        self.outputs.clear();
        true
    }
}

impl Drop for CopyHandle {
    fn drop(&mut self) {
        self.close_stdin();
        for output in &self.outputs {
            output.abort();
        }
    }
}

/// Moves bytes from `source` to `sink` until `source` reaches EOF.
async fn pump(source: &AsyncFd<OwnedFd>, sink: &AsyncFd<OwnedFd>) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        let mut readable = source.readable().await?;
        loop {
            match splice(
                source.get_ref(),
                None,
                sink.get_ref(),
                None,
                SPLICE_CHUNK,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => return Ok(moved),
                Ok(n) => moved += n as u64,
                Err(Errno::EINTR) => {}
                // Either the source is empty or the sink is full: poll tells which.
                Err(Errno::EAGAIN) => {
                    if has_input(source.get_ref()) {
                        let mut writable = sink.writable().await?;
                        if !can_output(sink.get_ref()) {
                            writable.clear_ready();
                        }
                    } else {
                        readable.clear_ready();
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
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
    fn uris_and_paths() {
        assert_eq!(fifo_path("", "stdout").unwrap(), None);
        assert_eq!(
            fifo_path("/run/f/1-stdout", "stdout").unwrap(),
            Some(Path::new("/run/f/1-stdout"))
        );
        assert_eq!(
            fifo_path("fifo:///run/f/x", "stdout").unwrap(),
            Some(Path::new("/run/f/x"))
        );
        assert!(matches!(
            fifo_path("relative/fifo", "stdout"),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            fifo_path("binary:///usr/bin/logger", "stdout"),
            Err(ShimError::Unimplemented(_))
        ));
    }

    #[test]
    fn regular_files_are_not_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out");
        std::fs::write(&file, "").unwrap();
        let paths = StdioPaths {
            stdout: file.display().to_string(),
            ..Default::default()
        };
        assert!(matches!(
            open(&paths, 0, 0),
            Err(ShimError::InvalidArgument(_))
        ));
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
        let paths = StdioPaths {
            stdout: fifo.display().to_string(),
            ..Default::default()
        };
        let (container, shim) = open(&paths, 0, 0).unwrap();
        let [_, stdout, _] = container.ends.lock().unwrap().take().unwrap();
        let mut copy = shim.start("test").unwrap();
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
        assert!(
            copy.wait_outputs(Duration::from_secs(10)).await,
            "copy finished"
        );
        writing.join().unwrap().unwrap();
        let received = reading.join().unwrap().unwrap();
        assert_eq!(received, payload);
    }
}
