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
    pass_fds(command, [fd, -1, -1], LISTENER_FD);
}

/// Makes the child's descriptors `first`, `first + 1`, … copies of `fds` (up to three;
/// `-1` ends the list), whatever numbers the originals have.
pub fn pass_fds(command: &mut Command, fds: [RawFd; 3], first: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only fcntl and dup2, which are
    // async-signal-safe; it uses a stack array, no heap and no locks.
    unsafe {
        command.pre_exec(move || {
            // Move every source out of the target range first, so that no dup2 overwrites a
            // source that is still to be copied.
            let mut moved = [-1; 3];
            for (slot, &fd) in moved.iter_mut().zip(fds.iter()) {
                if fd < 0 {
                    break;
                }
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first + 3);
                if *slot == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (offset, &fd) in moved.iter().enumerate() {
                if fd < 0 {
                    break;
                }
                // dup2 leaves the new descriptor without FD_CLOEXEC.
                if libc::dup2(fd, first + offset as RawFd) == -1 {
                    return Err(io::Error::last_os_error());
                }
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

/// Takes ownership of a descriptor received over SCM_RIGHTS.
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just installed `fd` in this process for the received message; nothing
    // else refers to it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// Sets the window size of the terminal `fd` (the pty master), which signals the foreground
/// process group with SIGWINCH.
pub fn resize_terminal(fd: &impl std::os::fd::AsRawFd, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    unsafe { set_window_size(fd.as_raw_fd(), &size) }
        .map(drop)
        .map_err(io::Error::from)
}
