//! Live copies of a process's output for attached clients (`crust.shim.v1.Attach`).
//!
//! The shim already reads the container's output to write its CRI log, so an attach is a tap
//! on that copy, not a second reader of the container's pipes. crustd creates a FIFO per
//! stream, opens its reader, and names the FIFO here; the output copier then offers every
//! chunk it reads to each tap with one non-blocking write of the slice it already has. The
//! FIFO is the only buffer: a tap that has no room takes what fits or nothing, and the rest
//! of that chunk is lost for that tap alone, so neither the container nor the log ever waits
//! for a slow client. A tap whose reader went away (EPIPE) is dropped; the end of the
//! container's output closes every tap of that stream, which is the client's EOF.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use crate::crilog::Stream;
use crate::error::{Result, ShimError};

/// The capacity asked for an attach FIFO (the kernel's default ceiling for unprivileged
/// users): room for bursts of output while the client is briefly busy.
const FIFO_CAPACITY: i32 = 1 << 20;

/// One attached client's FIFO for one stream.
#[derive(Debug)]
struct Tap {
    fifo: OwnedFd,
    path: PathBuf,
    /// Bytes this tap lost because its FIFO was full.
    dropped: u64,
}

impl Tap {
    /// Says how much was lost, once the tap is let go.
    fn report(&self, stream: Stream) {
        if self.dropped > 0 {
            log::debug!(
                "attach {} ({}): {} bytes dropped while the FIFO was full",
                self.path.display(),
                stream.name(),
                self.dropped
            );
        }
    }
}

/// The taps of one stream.
#[derive(Debug, Default)]
struct StreamTaps {
    /// Whether the stream is still being copied; a tap added after its end is closed at once.
    open: bool,
    taps: Vec<Tap>,
    /// Bytes lost by every tap this stream has had.
    dropped: u64,
}

/// The attached clients of one process's output, shared by its output copiers and the
/// Attach call.
#[derive(Debug)]
pub struct Taps {
    streams: Mutex<[StreamTaps; 2]>,
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl Taps {
    /// Taps for a process whose `copied` streams have a copier. A terminal has only stdout:
    /// its stderr is never copied, so a stderr tap gets EOF at once.
    pub fn new(copied: &[Stream]) -> Self {
        let mut streams: [StreamTaps; 2] = Default::default();
        for &stream in copied {
            streams[slot(stream)].open = true;
        }
        Self {
            streams: Mutex::new(streams),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [StreamTaps; 2]> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a client's FIFO to `stream`. If the stream has already ended, the FIFO is closed
    /// here, which is the client's EOF.
    pub fn add(&self, stream: Stream, fifo: OwnedFd, path: &Path) {
        let mut streams = self.lock();
        let taps = &mut streams[slot(stream)];
        if taps.open {
            taps.taps.push(Tap {
                fifo,
                path: path.to_path_buf(),
                dropped: 0,
            });
        }
    }

    /// Offers `chunk`, just read from the container's `stream`, to every tap of it. Never
    /// waits: a full FIFO takes what fits and loses the rest of the chunk.
    pub fn offer(&self, stream: Stream, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let mut streams = self.lock();
        let StreamTaps { taps, dropped, .. } = &mut streams[slot(stream)];
        taps.retain_mut(|tap| {
            let lost = match write_some(&tap.fifo, chunk) {
                Ok(written) => chunk.len() - written,
                Err(e) => {
                    // EPIPE: the client closed its reader. Anything else: the FIFO is no good.
                    log::debug!(
                        "attach {} ({}): {e}; detaching",
                        tap.path.display(),
                        stream.name()
                    );
                    tap.report(stream);
                    return false;
                }
            };
            if lost > 0 {
                if tap.dropped == 0 {
                    log::debug!(
                        "attach {} ({}): FIFO full, dropping output it has no room for",
                        tap.path.display(),
                        stream.name()
                    );
                }
                tap.dropped += lost as u64;
                *dropped += lost as u64;
            }
            true
        });
    }

    /// The container's `stream` has ended: every tap of it is closed (the clients' EOF), and
    /// taps added from now on are closed at once.
    pub fn end(&self, stream: Stream) {
        let ended = {
            let mut streams = self.lock();
            let taps = &mut streams[slot(stream)];
            taps.open = false;
            std::mem::take(&mut taps.taps)
        };
        for tap in &ended {
            tap.report(stream);
        }
    }

    /// Ends `stream` when the returned guard is dropped: whether its copier finished, failed
    /// or was aborted, its clients see EOF.
    pub fn end_on_drop(&self, stream: Stream) -> EndOnDrop<'_> {
        EndOnDrop { taps: self, stream }
    }

    /// How many clients `stream` has.
    pub fn attached(&self, stream: Stream) -> usize {
        self.lock()[slot(stream)].taps.len()
    }

    /// Bytes `stream`'s taps have lost to full FIFOs, over the process's life.
    pub fn dropped(&self, stream: Stream) -> u64 {
        self.lock()[slot(stream)].dropped
    }
}

/// Ends a stream's taps when dropped (see [`Taps::end_on_drop`]).
#[derive(Debug)]
pub struct EndOnDrop<'a> {
    taps: &'a Taps,
    stream: Stream,
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.taps.end(self.stream);
    }
}

/// One non-blocking write: how many bytes the FIFO took (0 when it is full).
fn write_some(fifo: &OwnedFd, chunk: &[u8]) -> nix::Result<usize> {
    loop {
        match nix::unistd::write(fifo, chunk) {
            Ok(written) => return Ok(written),
            Err(Errno::EAGAIN) => return Ok(0),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The FIFO path of an Attach request's stream: `None` for an empty one; an absolute path
/// without `..`, else InvalidArgument.
pub fn fifo_path(path: &str, stream: &str) -> Result<Option<PathBuf>> {
    if path.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
        return Err(ShimError::InvalidArgument(format!(
            "attach {stream} {:?} is not an absolute path",
            path.display()
        )));
    }
    Ok(Some(path))
}

/// Opens an attach FIFO for writing. The client holds its reader open already, so the open
/// cannot block; without a reader it fails (FailedPrecondition) rather than wait for one.
pub fn open_fifo(path: &Path) -> Result<OwnedFd> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| ShimError::io(format!("attach {}", path.display()), e))?;
    if !metadata.file_type().is_fifo() {
        return Err(ShimError::InvalidArgument(format!(
            "attach {} is not a FIFO",
            path.display()
        )));
    }
    let fifo: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => ShimError::FailedPrecondition(format!(
                "attach {}: the FIFO has no reader",
                path.display()
            )),
            _ => ShimError::io(format!("open attach FIFO {}", path.display()), e),
        })?
        .into();
    // More room means fewer drops for a client that reads in bursts. The kernel may refuse
    // (a user over its pipe quota): the default capacity still works.
    if let Err(e) = fcntl(&fifo, FcntlArg::F_SETPIPE_SZ(FIFO_CAPACITY)) {
        log::debug!("attach {}: pipe size left as is: {e}", path.display());
    }
    Ok(fifo)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs::File;
    use std::io::Read;

    use nix::sys::stat::Mode;
    use nix::unistd::mkfifo;

    use super::*;

    /// A FIFO with the client's reader open (non-blocking, as crustd's would be).
    pub(crate) fn fifo(dir: &Path, name: &str) -> (PathBuf, File) {
        let path = dir.join(name);
        mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        (path, reader)
    }

    /// What the reader holds now, and whether the writer side has closed (EOF).
    pub(crate) fn drain(reader: &mut File) -> (Vec<u8>, bool) {
        let mut received = Vec::new();
        let mut buffer = [0u8; 65536];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return (received, true),
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return (received, false);
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn paths_must_be_absolute_without_dot_dot() {
        assert_eq!(fifo_path("", "stdout").unwrap(), None);
        assert_eq!(
            fifo_path("/run/crust/a/stdout", "stdout").unwrap(),
            Some(PathBuf::from("/run/crust/a/stdout"))
        );
        for bad in ["relative", "./x", "/run/../etc/passwd"] {
            assert!(
                matches!(fifo_path(bad, "stderr"), Err(ShimError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn opening_needs_a_fifo_with_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let lonely = dir.path().join("lonely");
        mkfifo(&lonely, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            matches!(open_fifo(&lonely), Err(ShimError::FailedPrecondition(why)) if why.contains("no reader")),
            "ENXIO is FailedPrecondition"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            open_fifo(&file),
            Err(ShimError::InvalidArgument(_))
        ));
        let missing = open_fifo(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.code(), crust_proto::ttrpc::Code::NOT_FOUND);

        let (path, _reader) = fifo(dir.path(), "out");
        let writer = open_fifo(&path).unwrap();
        let flags = fcntl(&writer, FcntlArg::F_GETFL).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0, "non-blocking");
        let fd_flags = fcntl(&writer, FcntlArg::F_GETFD).unwrap();
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0, "close-on-exec");
        // Running as root here, so the larger capacity is granted.
        let capacity = fcntl(&writer, FcntlArg::F_GETPIPE_SZ).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(capacity, FIFO_CAPACITY);
        }
    }

    #[test]
    fn a_tap_added_after_the_end_is_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let taps = Taps::new(&[Stream::Stdout]);
        taps.end(Stream::Stdout);
        let (path, mut reader) = fifo(dir.path(), "out");
        taps.add(Stream::Stdout, open_fifo(&path).unwrap(), &path);
        assert_eq!(taps.attached(Stream::Stdout), 0);
        assert_eq!(drain(&mut reader), (Vec::new(), true), "EOF at once");
        // A stream that is never copied (a terminal's stderr) is the same.
        let (path, mut reader) = fifo(dir.path(), "err");
        taps.add(Stream::Stderr, open_fifo(&path).unwrap(), &path);
        assert_eq!(drain(&mut reader), (Vec::new(), true));
    }

    #[test]
    fn a_full_fifo_takes_what_fits_and_loses_the_rest_of_the_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let (path, mut reader) = fifo(dir.path(), "out");
        let writer = open_fifo(&path).unwrap();
        // A small pipe (two pages), so the numbers are exact.
        fcntl(&writer, FcntlArg::F_SETPIPE_SZ(8192)).unwrap();
        taps.add(Stream::Stdout, writer, &path);
        // Chunks over PIPE_BUF may be taken in part; one up to PIPE_BUF goes whole or not at
        // all (the kernel's atomic write).
        taps.offer(Stream::Stdout, &[b'a'; 5000]);
        taps.offer(Stream::Stdout, &[b'b'; 5000]);
        taps.offer(Stream::Stdout, &[b'c'; 5000]);
        taps.offer(Stream::Stdout, &[b'd'; 10]);
        assert_eq!(
            taps.attached(Stream::Stdout),
            1,
            "a full FIFO stays attached"
        );
        let (received, eof) = drain(&mut reader);
        assert!(!eof);
        // How much of each later chunk fits is the kernel's business (it fills partly used
        // pages before taking new ones); what was taken is in order and the rest is counted.
        assert!(received.len() <= 8192 && received.len() > 5000);
        assert!(received[..5000].iter().all(|&b| b == b'a'));
        assert!(received.is_sorted(), "chunks arrive in order");
        assert_eq!(
            taps.dropped(Stream::Stdout),
            (15_010 - received.len()) as u64
        );
        assert_eq!(taps.dropped(Stream::Stderr), 0);
        // Once read, there is room again.
        taps.offer(Stream::Stdout, b"again");
        assert_eq!(drain(&mut reader).0, b"again");
        taps.end(Stream::Stdout);
        assert_eq!(drain(&mut reader), (Vec::new(), true));
    }

    #[test]
    fn a_reader_that_went_away_is_detached_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let (gone_path, gone) = fifo(dir.path(), "gone");
        let (kept_path, mut kept) = fifo(dir.path(), "kept");
        taps.add(Stream::Stderr, open_fifo(&gone_path).unwrap(), &gone_path);
        taps.add(Stream::Stderr, open_fifo(&kept_path).unwrap(), &kept_path);
        drop(gone);
        taps.offer(Stream::Stderr, b"one");
        assert_eq!(taps.attached(Stream::Stderr), 1, "EPIPE detached it");
        taps.offer(Stream::Stderr, b"two");
        assert_eq!(drain(&mut kept), (b"onetwo".to_vec(), false));
        assert_eq!(taps.dropped(Stream::Stderr), 0);
    }
}
