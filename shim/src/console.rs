//! Terminals: the console socket runc hands a pty master over, and resizing it.
//!
//! For a process with a terminal, runc creates the pty inside the container and sends its
//! master end over `--console-socket` (SCM_RIGHTS). The shim then copies between the master and
//! containerd's FIFOs, and applies ResizePty to it.

use std::fs;
use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::net::UnixListener;

use crate::error::{Result, ShimError};
use crate::sys;

/// How long runc may take to hand over the master, as containerd's shim allows.
pub const RECEIVE_LIMIT: Duration = Duration::from_secs(30);

/// A listening socket for one process's pty master, in a private directory.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Creates the socket in a fresh directory only root can enter.
    pub fn new() -> Result<Self> {
        let template = std::env::temp_dir().join("crust-pty-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| ShimError::io("create console socket directory", e))?;
        let path = dir.join("pty.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(UnixListener::from_std);
        match listener {
            Ok(listener) => Ok(Self {
                dir,
                path,
                listener,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(ShimError::io(format!("bind {}", path.display()), e))
            }
        }
    }

    /// The path given to runc as `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and takes the pty master it sends.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let receive = async {
            let (stream, _) = self.listener.accept().await?;
            loop {
                stream.readable().await?;
                match stream.try_io(tokio::io::Interest::READABLE, || receive_fd(&stream)) {
                    Ok(fd) => return Ok(fd),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(RECEIVE_LIMIT, receive).await {
            Ok(Ok(master)) => Ok(master),
            Ok(Err(e)) => Err(ShimError::io("receive the console from the runtime", e)),
            Err(_) => Err(ShimError::DeadlineExceeded(format!(
                "the runtime did not send a console within {}s",
                RECEIVE_LIMIT.as_secs()
            ))),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reads one message and returns the descriptor it carries.
fn receive_fd(stream: &tokio::net::UnixStream) -> io::Result<OwnedFd> {
    // runc sends the pty's name as the data; it is not needed, but must be read.
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            let mut owned: Vec<OwnedFd> = fds.into_iter().map(sys::own_received_fd).collect();
            if let Some(master) = owned.pop() {
                return Ok(master);
            }
        }
    }
    Err(io::Error::other(
        "the runtime's message carried no descriptor",
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{ControlMessage, sendmsg};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn receives_the_descriptor_runc_sends() {
        let socket = ConsoleSocket::new().unwrap();
        let path = socket.path().to_path_buf();
        assert!(path.starts_with(std::env::temp_dir()));
        let sender = std::thread::spawn(move || {
            let (read, _write) = nix::unistd::pipe().unwrap();
            let stream = UnixStream::connect(&path).unwrap();
            let fds = [read.as_raw_fd()];
            let data = b"/dev/pts/7";
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(data)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        });
        let master = socket.receive_master().await.unwrap();
        sender.join().unwrap();
        let stat = nix::sys::stat::fstat(&master).unwrap();
        assert_eq!(stat.st_mode & libc::S_IFMT, libc::S_IFIFO);
        let dir = socket.dir.clone();
        drop(socket);
        assert!(!dir.exists(), "socket directory removed");
    }
}
