//! The shim's own log, in the logrus line format containerd relays.
//!
//! containerd creates a `log` FIFO in the bundle and copies whatever the shim writes there into
//! its own log, so lines look like `time="…" level=info msg="…" namespace=… runtime=…`. The FIFO
//! is written without blocking: when containerd is not reading, log lines are dropped rather than
//! stalling the shim.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use env_logger::{Builder, Target};
use log::{Level, LevelFilter};

/// The runtime name containerd knows this shim by, added to every line.
pub const RUNTIME_NAME: &str = "io.containerd.crust.v2";

/// Where the daemon's log goes.
#[derive(Debug)]
pub enum Sink {
    /// containerd's `log` FIFO in the bundle.
    Fifo(File),
    /// Standard error: used by `delete`, whose stderr containerd reports as cleanup warnings.
    Stderr,
}

impl Sink {
    /// Opens `<bundle>/log` for writing, if containerd is reading it.
    pub fn bundle_fifo(bundle: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"))?;
        Ok(Sink::Fifo(file))
    }
}

/// Installs the global logger. `namespace` is added to every line, as containerd's shim does.
pub fn init(sink: Sink, level: LevelFilter, namespace: &str) {
    let namespace = namespace.to_string();
    let target = match sink {
        Sink::Fifo(file) => Target::Pipe(Box::new(DropWhenFull(file))),
        Sink::Stderr => Target::Stderr,
    };
    let mut builder = Builder::new();
    builder
        .filter_level(level)
        .target(target)
        .format(move |buf, record| {
            let line = format_line(
                &buf.timestamp_nanos().to_string(),
                record.level(),
                &record.args().to_string(),
                &namespace,
            );
            buf.write_all(line.as_bytes())
        });
    // A second init (tests) keeps the first logger; that is harmless.
    let _ = builder.try_init();
}

/// One log line in logrus' text format.
pub fn format_line(time: &str, level: Level, message: &str, namespace: &str) -> String {
    let level = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    let mut line = String::with_capacity(message.len() + 96);
    let _ = write!(line, "time=\"{time}\" level={level} msg=\"");
    for c in message.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    let _ = writeln!(line, "\" namespace={namespace} runtime={RUNTIME_NAME}");
    line
}

/// A non-blocking FIFO writer that drops a line rather than wait for a slow or absent reader.
#[derive(Debug)]
struct DropWhenFull(File);

impl Write for DropWhenFull {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(buf.len()),
            // containerd closed its end (the task was deleted): nobody will read this line.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logrus_text_with_quoted_messages() {
        let line = format_line(
            "2026-11-22T17:17:56.339710462Z",
            Level::Warn,
            "exec \"sh\"\nfailed\\",
            "k8s.io",
        );
        assert_eq!(
            line,
            "time=\"2026-11-22T17:17:56.339710462Z\" level=warning msg=\"exec \\\"sh\\\"\\nfailed\\\\\" namespace=k8s.io runtime=io.containerd.crust.v2\n"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let line = format_line("t", Level::Info, "a\u{1b}b", "n");
        assert!(line.contains("msg=\"a\\u001bb\""), "{line}");
    }
}
