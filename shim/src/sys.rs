//! The few process-level system calls that need `unsafe`, each with why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::stat::SFlag;
use tokio::io::unix::AsyncFd;

/// The descriptor a daemon inherits its listening socket on, as containerd's shims do.
pub const LISTENER_FD: RawFd = 3;

/// Makes `fd` the child's descriptor [`LISTENER_FD`] (and nothing else about it changes).
pub fn pass_listener(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only dup2/fcntl, which are
    // async-signal-safe; it touches no heap and no locks.
    unsafe {
        command.pre_exec(move || {
            if fd == LISTENER_FD {
                // dup2 onto itself would keep FD_CLOEXEC; clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTENER_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asks the kernel to SIGKILL the child if the shim dies first, so no runc outlives its shim.
pub fn kill_with_parent(command: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes ownership of the listening socket `start` passed on [`LISTENER_FD`].
pub fn inherited_listener() -> io::Result<UnixListener> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a complete `stat` into the buffer or fails; a closed fd is EBADF.
    if unsafe { libc::fstat(LISTENER_FD, stat.as_mut_ptr()) } == -1 {
        return Err(io::Error::other(format!(
            "no listening socket on fd {LISTENER_FD}: the daemon is started by `start`"
        )));
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let stat = unsafe { stat.assume_init() };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(io::Error::other(format!(
            "fd {LISTENER_FD} is not a socket: the daemon is started by `start`"
        )));
    }
    // SAFETY: fd 3 is open and a socket (checked above), and nothing else in this process owns it:
    // the daemon is exec'd with it as its only inherited descriptor besides stdio.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(UnixListener::from(fd))
}

/// Ignores SIGPIPE so a vanished reader shows up as EPIPE on the write, not as the shim's death.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_IGN replaces no Rust handler and runs no code on delivery.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Registers an owned descriptor with the event loop.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open, owned, and reports the same descriptor until it is dropped,
    // which is exactly the contract of `register`.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into())
}
