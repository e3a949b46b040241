//! Running a client (`ctr run -t`) on a pseudo-terminal the test controls, as a user at a
//! terminal would: the test reads what it prints and resizes its window.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::pty::{Winsize, openpty};

use crate::command::wait_until;

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, Winsize);

/// A process running on a pseudo-terminal.
#[derive(Debug)]
pub struct Terminal {
    master: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    /// The process, whose controlling terminal this is.
    pub child: Child,
}

fn size(rows: u16, columns: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    /// Starts `command` as the session leader of a new terminal of `rows` × `columns`.
    pub fn spawn(command: &mut Command, rows: u16, columns: u16) -> Self {
        let pty = openpty(Some(&size(rows, columns)), None).expect("openpty");
        let slave = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone().expect("dup slave")))
            .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and touch no memory of
        // the parent; they make the terminal (stdin) the child's controlling terminal, so it
        // gets SIGWINCH when the window changes.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start the client on the terminal");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut master_reader = File::from(pty.master.try_clone().expect("dup master"));
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Reading the master fails with EIO once nothing holds the slave open.
            while let Ok(n) = master_reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buffer[..n]);
            }
        });
        Self {
            master: pty.master,
            output,
            reader: Some(reader),
            child,
        }
    }

    /// Everything the terminal showed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until the terminal showed `text`.
    pub fn wait_for(&self, text: &str, limit: Duration) -> bool {
        wait_until(limit, || self.output().contains(text))
    }

    /// Resizes the window, as a user dragging it does.
    pub fn resize(&self, rows: u16, columns: u16) {
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
        unsafe { set_window_size(self.master.as_raw_fd(), &size(rows, columns)) }
            .expect("resize terminal");
    }

    /// Waits for the client to exit; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let exited = wait_until(limit, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().ok()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status.code()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
