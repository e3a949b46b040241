//! crust-pause: the infra process of a pod. It holds the pod's namespaces, does nothing else,
//! reaps the orphans a shared pid namespace hands it, and leaves on SIGTERM or SIGINT.
//!
//! crustd's build script compiles this file on its own, statically linked, and embeds the
//! result, so a pod needs no image pull. Only the standard library is available here, so the
//! few signal calls are declared by hand (glibc, x86_64 and aarch64 layouts).

use std::process::ExitCode;

/// glibc's `sigset_t`: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

const SIG_BLOCK: i32 = 0;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGCHLD: i32 = 17;
const WNOHANG: i32 = 1;

unsafe extern "C" {
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigaddset(set: *mut SigSet, signal: i32) -> i32;
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwait(set: *const SigSet, signal: *mut i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

fn main() -> ExitCode {
    let mut set = SigSet([0; 16]);
    // SAFETY: `set` is a valid, writable sigset_t for the calls below; `signal` and `status`
    // are valid out-pointers.
    unsafe {
        sigemptyset(&mut set);
        for signal in [SIGINT, SIGTERM, SIGCHLD] {
            sigaddset(&mut set, signal);
        }
        // Blocked signals stay pending for sigwait instead of killing us (pid 1 has no
        // default actions anyway) or interrupting anything.
        if sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            eprintln!("crust-pause: cannot block signals");
            return ExitCode::FAILURE;
        }
        loop {
            let mut signal = 0;
            if sigwait(&set, &mut signal) != 0 {
                continue;
            }
            match signal {
                SIGCHLD => {
                    let mut status = 0;
                    while waitpid(-1, &mut status, WNOHANG) > 0 {}
                }
                _ => return ExitCode::SUCCESS,
            }
        }
    }
}
