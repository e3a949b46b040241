//! Container logs in the CRI format, written by the shim itself (stdio URI
//! `crilog:///path?max_line_size=N`), so a container's logging never depends on the manager
//! being up: `<RFC3339Nano time> <stdout|stderr> <F|P> <content>\n`.
//!
//! As containerd's CRI logger: a line longer than the maximum is cut into partial (`P`) records
//! of exactly that size, content left without a newline at end of file is a `P` record, the
//! line end (`\n` or `\r\n`) is not part of the content, and a failing write loses the record
//! but never stops the copy, so a full disk cannot block the container.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use nix::errno::Errno;
use tokio::io::unix::AsyncFd;

use crate::attach::Taps;
use crate::error::{Result, ShimError};

/// The line length containerd's CRI plugin splits at by default.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;
/// Bytes read from the pipe at a time (64 KiB, the default pipe capacity).
const READ_BUFFER: usize = 65_536;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's stdout (and a terminal's output).
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    /// The stream's name as CRI log records carry it.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `F`: the rest of a line.
    Full,
    /// `P`: part of a line that goes on in the next record.
    Partial,
}

/// One CRI log file, shared by a process's streams and reopened after rotation.
#[derive(Debug)]
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl CriLog {
    /// Opens (creating, appending to) the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(open_log(path)?),
        })
    }

    /// Starts writing to a fresh file at the same path (kubelet renamed the old one away).
    pub fn reopen(&self) -> Result<()> {
        let fresh = open_log(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Writes `records` (whole records, see [`Records`]) with one `write(2)`, so records of
    /// the process's two streams never interleave.
    pub fn write_records(&self, records: &Records) -> io::Result<()> {
        if records.bytes.is_empty() {
            return Ok(());
        }
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&records.bytes)
    }
}

/// Records of one stream gathered from one read, to be written together: all carry the time
/// the read returned (as conmon stamps each read buffer).
#[derive(Debug)]
pub struct Records {
    stream: Stream,
    time: String,
    bytes: Vec<u8>,
}

impl Records {
    /// An empty batch of `stream` records.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            time: String::new(),
            bytes: Vec::new(),
        }
    }

    /// Starts a new batch, stamped now.
    pub fn restart(&mut self) {
        // Formatted into the string the last batch used: a copy allocates nothing per read.
        self.time.clear();
        let _ = write!(
            self.time,
            "{}",
            humantime::format_rfc3339_nanos(SystemTime::now())
        );
        self.bytes.clear();
    }

    /// Adds one record.
    pub fn push(&mut self, tag: Tag, content: &[u8]) {
        let tag = match tag {
            Tag::Full => "F",
            Tag::Partial => "P",
        };
        self.bytes.extend_from_slice(self.time.as_bytes());
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(self.stream.name().as_bytes());
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(tag.as_bytes());
        self.bytes.push(b' ');
        self.bytes.extend_from_slice(content);
        self.bytes.push(b'\n');
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ShimError::io(format!("open log {}", path.display()), e))
}

/// Cuts a byte stream into CRI records.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: Option<usize>,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Splits lines longer than `max_line` (no limit with `None`).
    pub fn new(max_line: Option<usize>) -> Self {
        Self {
            max_line: max_line.filter(|&max| max > 0),
            pending: Vec::new(),
        }
    }

    /// Takes `chunk` and hands every complete record to `emit`.
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.append(&chunk[..end], emit);
                    let mut line = std::mem::take(&mut self.pending);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    emit(Tag::Full, &line);
                    line.clear();
                    self.pending = line;
                    chunk = &chunk[end + 1..];
                }
                None => {
                    self.append(chunk, emit);
                    chunk = &[];
                }
            }
        }
    }

    /// End of the stream: what is left, without a line end, is a partial record.
    pub fn finish(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Partial, &self.pending);
            self.pending.clear();
        }
    }

    /// Adds line content, emitting `P` records whenever the line reaches the maximum.
    fn append(&mut self, mut content: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        let Some(max) = self.max_line else {
            self.pending.extend_from_slice(content);
            return;
        };
        while !content.is_empty() {
            let room = max - self.pending.len();
            let take = room.min(content.len());
            self.pending.extend_from_slice(&content[..take]);
            content = &content[take..];
            if self.pending.len() == max && !content.is_empty() {
                emit(Tag::Partial, &self.pending);
                self.pending.clear();
            }
        }
    }
}

/// Copies the pipe (or terminal) `source` into `log` as `stream` records until end of file,
/// offering each chunk to the attached clients in `taps` as it goes.
///
/// Each read becomes one write of whole records. After each read the copy yields: the shim
/// runs on one thread, and a container that writes as fast as it can must not keep the Task
/// API (or the pod's other streams) waiting. However the copy ends, `stream`'s taps are closed.
pub async fn copy_to_log(
    source: &AsyncFd<OwnedFd>,
    stream: Stream,
    log: &CriLog,
    max_line: Option<usize>,
    taps: &Taps,
) -> io::Result<u64> {
    let _ending = taps.end_on_drop(stream);
    let mut splitter = LineSplitter::new(max_line);
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut records = Records::new(stream);
    let mut copied = 0u64;
    let mut failed = false;
    let mut write = |records: &Records| {
        if let Err(e) = log.write_records(records)
            && !failed
        {
            // Reported once: the records are lost, the container goes on.
            log::warn!("writing {}: {e}; dropping log records", log.path.display());
            failed = true;
        }
    };
    loop {
        let mut readable = source.readable().await?;
        match nix::unistd::read(source.get_ref(), &mut buffer) {
            Ok(0) => break,
            Ok(count) => {
                copied += count as u64;
                // Clients first, for the least delay; never waits on them.
                taps.offer(stream, &buffer[..count]);
                records.restart();
                splitter.push(&buffer[..count], &mut |tag, content| {
                    records.push(tag, content)
                });
                write(&records);
                tokio::task::yield_now().await;
            }
            Err(Errno::EAGAIN) => readable.clear_ready(),
            Err(Errno::EINTR) => {}
            // A terminal whose other side is gone reads as EIO: that is its end of file.
            Err(Errno::EIO) => break,
            Err(e) => return Err(e.into()),
        }
    }
    records.restart();
    splitter.finish(&mut |tag, content| records.push(tag, content));
    write(&records);
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn split(max: Option<usize>, chunks: &[&[u8]]) -> Vec<(Tag, String)> {
        let mut records = Vec::new();
        let mut splitter = LineSplitter::new(max);
        let mut emit = |tag: Tag, content: &[u8]| {
            records.push((tag, String::from_utf8_lossy(content).into_owned()))
        };
        for chunk in chunks {
            splitter.push(chunk, &mut emit);
        }
        splitter.finish(&mut emit);
        records
    }

    fn full(text: &str) -> (Tag, String) {
        (Tag::Full, text.to_string())
    }

    fn partial(text: &str) -> (Tag, String) {
        (Tag::Partial, text.to_string())
    }

    #[test]
    fn lines_become_full_records_whatever_the_chunking() {
        assert_eq!(
            split(None, &[b"one\ntw", b"o\n\nthr", b"ee\r\n"]),
            [full("one"), full("two"), full(""), full("three")]
        );
    }

    #[test]
    fn long_lines_are_cut_at_the_maximum() {
        assert_eq!(
            split(Some(4), &[b"abcdefghij\n"]),
            [partial("abcd"), partial("efgh"), full("ij")]
        );
        // A line of exactly the maximum is one full record.
        assert_eq!(split(Some(4), &[b"abcd\n"]), [full("abcd")]);
        assert_eq!(
            split(Some(4), &[b"ab", b"cd", b"ef\n"]),
            [partial("abcd"), full("ef")]
        );
    }

    #[test]
    fn an_unterminated_end_is_partial() {
        assert_eq!(
            split(Some(16), &[b"done\nhalf"]),
            [full("done"), partial("half")]
        );
        assert_eq!(split(None, &[]), []);
    }

    #[test]
    fn records_have_the_cri_layout_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let record = |stream, tag, content: &[u8]| {
            let mut records = Records::new(stream);
            records.restart();
            records.push(tag, content);
            records
        };
        log.write_records(&record(Stream::Stdout, Tag::Full, b"hello world"))
            .unwrap();
        log.write_records(&record(Stream::Stderr, Tag::Partial, b"oops"))
            .unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_records(&record(Stream::Stdout, Tag::Full, b"after"))
            .unwrap();

        let rotated = std::fs::read_to_string(dir.path().join("0.log.1")).unwrap();
        let lines: Vec<&str> = rotated.lines().collect();
        assert_eq!(lines.len(), 2);
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(rest, "stdout F hello world");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert!(time.ends_with('Z') && time.len() == 30, "{time}");
        assert!(lines[1].ends_with(" stderr P oops"));
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert!(fresh.ends_with(" stdout F after\n"), "{fresh:?}");
    }

    #[test]
    fn one_batch_is_whole_records_with_one_time() {
        let mut records = Records::new(Stream::Stderr);
        records.restart();
        records.push(Tag::Full, b"a");
        records.push(Tag::Partial, b"b");
        let text = String::from_utf8(records.bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let time = lines[0].split(' ').next().unwrap();
        assert_eq!(lines[0], format!("{time} stderr F a"));
        assert_eq!(lines[1], format!("{time} stderr P b"));
        records.restart();
        assert!(records.bytes.is_empty());
    }

    /// A pipe whose read end is read as the shim reads a container's (without blocking), and
    /// whose write end, for the test to write, may block.
    fn pipe_to_copy() -> (
        tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
        std::os::fd::OwnedFd,
    ) {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &read_end,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        (crate::sys::async_fd(read_end).unwrap(), write_end)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pipe_is_copied_into_records_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let (source, write_end) = pipe_to_copy();
        // More than one read's worth, a long line cut at the limit, and an unterminated end.
        let mut written = Vec::new();
        for n in 0..5000 {
            written.extend_from_slice(format!("line {n}\n").as_bytes());
        }
        written.extend_from_slice(&[b'x'; 40]);
        written.extend_from_slice(b"\ntail");
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(write_end);
            file.write_all(&written).unwrap();
            written.len()
        });
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let copied = copy_to_log(&source, Stream::Stderr, &log, Some(16), &taps)
            .await
            .unwrap();
        let sent = writer.join().unwrap();
        assert_eq!(copied, sent as u64, "every byte read");
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<(&str, &str)> = text
            .lines()
            .map(|line| {
                let mut fields = line.splitn(4, ' ');
                let _time = fields.next().unwrap();
                assert_eq!(fields.next(), Some("stderr"), "{line}");
                (fields.next().unwrap(), fields.next().unwrap_or(""))
            })
            .collect();
        assert_eq!(records.len(), 5000 + 3 + 1);
        assert_eq!(records[0], ("F", "line 0"));
        assert_eq!(records[4999], ("F", "line 4999"));
        assert_eq!(records[5000], ("P", "xxxxxxxxxxxxxxxx"));
        assert_eq!(records[5002], ("F", "xxxxxxxx"));
        assert_eq!(records[5003], ("P", "tail"));
    }

    /// Log lines of this test binary (a logger installed once for all tests).
    fn captured_logs() -> &'static std::sync::Mutex<Vec<String>> {
        struct Capture(std::sync::Mutex<Vec<String>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &log::Record<'_>) {
                if let Ok(mut lines) = self.0.lock() {
                    lines.push(record.args().to_string());
                }
            }
            fn flush(&self) {}
        }
        static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let _ = log::set_logger(&CAPTURE);
            log::set_max_level(log::LevelFilter::Trace);
        });
        &CAPTURE.0
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_log_that_cannot_be_written_loses_records_not_the_stream() {
        let logs = captured_logs();
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        let log = CriLog::open(Path::new("/dev/full")).unwrap();
        let (source, write_end) = pipe_to_copy();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(write_end);
            let mut sent = 0;
            for n in 0..20_000 {
                let line = format!("record {n}\n");
                file.write_all(line.as_bytes()).unwrap();
                sent += line.len();
            }
            sent
        });
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let copied = copy_to_log(&source, Stream::Stdout, &log, None, &taps)
            .await
            .unwrap();
        assert_eq!(
            copied,
            writer.join().unwrap() as u64,
            "the writer never blocked"
        );
        let warnings = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("/dev/full") && line.contains("dropping log records"))
            .count();
        assert_eq!(warnings, 1, "one warning, however many records are lost");
    }

    fn lines_of(range: std::ops::Range<u32>) -> Vec<u8> {
        range
            .flat_map(|n| format!("line {n}\n").into_bytes())
            .collect()
    }

    /// Writes `data` into a pipe from another thread and copies it with `taps` attached.
    async fn copy_with_taps(
        data: Vec<u8>,
        stream: Stream,
        log: &CriLog,
        taps: &Taps,
    ) -> io::Result<u64> {
        let (source, write_end) = pipe_to_copy();
        let writer = std::thread::spawn(move || {
            std::fs::File::from(write_end).write_all(&data).unwrap();
        });
        let copied = copy_to_log(&source, stream, log, None, taps).await;
        writer.join().unwrap();
        copied
    }

    fn logged_contents(path: &Path, stream: &str) -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut contents = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, ' ');
            let _time = fields.next();
            assert_eq!(fields.next(), Some(stream), "{line}");
            assert_eq!(fields.next(), Some("F"), "{line}");
            contents.extend_from_slice(fields.next().unwrap_or("").as_bytes());
            contents.push(b'\n');
        }
        contents
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_chunk_reaches_every_attacher_and_the_log_and_the_end_is_eof() {
        use crate::attach::{open_fifo, tests::drain, tests::fifo};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let (first_path, mut first) = fifo(dir.path(), "first");
        let (second_path, mut second) = fifo(dir.path(), "second");
        let (other_path, mut other) = fifo(dir.path(), "stderr");
        taps.add(Stream::Stdout, open_fifo(&first_path).unwrap(), &first_path);
        taps.add(
            Stream::Stdout,
            open_fifo(&second_path).unwrap(),
            &second_path,
        );
        taps.add(Stream::Stderr, open_fifo(&other_path).unwrap(), &other_path);
        // Several reads' worth, and less than the attach FIFOs hold.
        let data = lines_of(0..40_000);
        assert!(data.len() > 4 * READ_BUFFER && data.len() < 1 << 20);
        let copied = copy_with_taps(data.clone(), Stream::Stdout, &log, &taps)
            .await
            .unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(drain(&mut first), (data.clone(), true), "all, then EOF");
        assert_eq!(drain(&mut second), (data.clone(), true), "all, then EOF");
        assert_eq!(logged_contents(&path, "stdout"), data);
        assert_eq!(taps.dropped(Stream::Stdout), 0);
        // The stderr copier has not ended: its attacher is still open and got nothing.
        assert_eq!(drain(&mut other), (Vec::new(), false));
        assert_eq!(taps.attached(Stream::Stderr), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_attacher_that_never_reads_stalls_neither_the_copy_nor_the_log() {
        use crate::attach::{open_fifo, tests::drain, tests::fifo};
        let logs = captured_logs();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let (stuck_path, mut stuck) = fifo(dir.path(), "stuck");
        let stuck_fifo = open_fifo(&stuck_path).unwrap();
        let capacity =
            nix::fcntl::fcntl(&stuck_fifo, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
        taps.add(Stream::Stderr, stuck_fifo, &stuck_path);
        // Many times what the FIFO holds; its reader reads nothing until the copy is over.
        let data = lines_of(0..1_000_000);
        assert!(data.len() > 4 * capacity);
        let copied = tokio::time::timeout(
            Duration::from_secs(60),
            copy_with_taps(data.clone(), Stream::Stderr, &log, &taps),
        )
        .await
        .expect("the copy never waits for the attacher")
        .unwrap();
        assert_eq!(copied, data.len() as u64);
        assert_eq!(
            logged_contents(&path, "stderr"),
            data,
            "the log has every line"
        );
        let (received, eof) = drain(&mut stuck);
        assert!(eof, "closed at the end of the output");
        // The FIFO filled up (how exactly its last pages fill is the kernel's business) with
        // the start of the output, and everything else was counted as lost.
        assert!(received.len() <= capacity && received.len() >= capacity / 2);
        let same = received
            .iter()
            .zip(&data)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same >= capacity / 2,
            "the start of the output: {same} bytes"
        );
        assert_eq!(
            taps.dropped(Stream::Stderr),
            (data.len() - received.len()) as u64,
            "every byte it could not take was counted"
        );
        let name = stuck_path.display().to_string();
        let lines = logs.lock().unwrap().clone();
        let full = lines
            .iter()
            .filter(|line| line.contains(&name) && line.contains("FIFO full"))
            .count();
        assert_eq!(
            full, 1,
            "one message, however many chunks are lost: {lines:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_attacher_that_closes_its_reader_is_detached_mid_copy() {
        use crate::attach::{open_fifo, tests::drain, tests::fifo};
        let logs = captured_logs();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let log = CriLog::open(&path).unwrap();
        let taps = Taps::new(&[Stream::Stdout, Stream::Stderr]);
        let (gone_path, gone) = fifo(dir.path(), "gone");
        let (kept_path, mut kept) = fifo(dir.path(), "kept");
        taps.add(Stream::Stdout, open_fifo(&gone_path).unwrap(), &gone_path);
        taps.add(Stream::Stdout, open_fifo(&kept_path).unwrap(), &kept_path);
        drop(gone);
        let data = lines_of(0..1000);
        copy_with_taps(data.clone(), Stream::Stdout, &log, &taps)
            .await
            .unwrap();
        assert_eq!(drain(&mut kept), (data.clone(), true));
        assert_eq!(logged_contents(&path, "stdout"), data);
        let name = gone_path.display().to_string();
        let detached = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(&name) && line.contains("detaching"))
            .count();
        assert_eq!(detached, 1, "detached at the first write, not retried");
    }
}
