//! The shim's one reaper.
//!
//! The daemon is a child subreaper: container processes are reparented to it when runc exits,
//! and every runc it spawns is its child. One SIGCHLD-driven loop calls `waitpid(-1)` for all of
//! them; nothing else in the shim may wait for a child, or it would steal an exit status.
//!
//! An exit can arrive before anyone knows the pid is interesting: a container's init may die
//! before its pid file has been read, a runc may exit before its spawner registered for it. So
//! interest is declared *before* the spawn with an [`ExitWatch`]: while any watch is open, exits
//! nobody waits for are kept, and a late [`ExitWatch::subscribe`] finds them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::signals::SignalPipe;

/// Exits kept for late subscribers while watches are open. A burst larger than this means
/// reparented orphans nobody tracks; the oldest are dropped first.
const MAX_UNCLAIMED: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The process id.
    pub pid: i32,
    /// Exit code, or 128 + signal number when a signal killed it (containerd's convention).
    pub status: u32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When the reaper collected it.
    pub at: SystemTime,
}

impl Exit {
    fn from_wait_status(status: WaitStatus, at: SystemTime) -> Option<Self> {
        match status {
            WaitStatus::Exited(pid, code) => Some(Exit {
                pid: pid.as_raw(),
                status: code as u32,
                signal: None,
                at,
            }),
            WaitStatus::Signaled(pid, signal, _) => Some(Exit {
                pid: pid.as_raw(),
                status: 128 + signal as u32,
                signal: Some(signal as i32),
                at,
            }),
            _ => None,
        }
    }

    /// The status in `wait(2)` encoding, for `std::process::ExitStatus::from_raw`.
    pub fn raw_wait_status(&self) -> i32 {
        match self.signal {
            Some(signal) => signal,
            None => ((self.status & 0xff) << 8) as i32,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    open_watches: usize,
    unclaimed: VecDeque<Exit>,
}

/// Collects every child exit and hands it to whoever subscribed for that pid.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Creates a reaper. The caller must also route SIGCHLD to [`Reaper::reap`], see
    /// [`SigchldPipe`]; until then no exit is collected.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the maps are still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a window in which exits nobody waits for yet are kept. Open it before spawning.
    pub fn watch(self: &Arc<Self>) -> ExitWatch {
        self.state().open_watches += 1;
        ExitWatch {
            reaper: Arc::clone(self),
        }
    }

    /// Collects every exited child and dispatches it.
    pub fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some(exit) = Exit::from_wait_status(status, SystemTime::now()) {
                        self.dispatch(exit);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    log::error!("waitpid failed: {error}");
                    return;
                }
            }
        }
    }

    /// Hands `exit` to its subscriber, or keeps it for a late one while a watch is open.
    fn dispatch(&self, exit: Exit) {
        let mut state = self.state();
        if let Some(waiter) = state.waiters.remove(&exit.pid) {
            // The receiver may have given up waiting; the exit is then nobody's business.
            let _ = waiter.send(exit);
        } else if state.open_watches > 0 {
            if state.unclaimed.len() == MAX_UNCLAIMED {
                if let Some(dropped) = state.unclaimed.pop_front() {
                    log::warn!("dropping unclaimed exit of pid {}", dropped.pid);
                }
            }
            state.unclaimed.push_back(exit);
        } else {
            log::debug!(
                "reaped untracked process pid={} status={}",
                exit.pid,
                exit.status
            );
        }
    }
}

/// An open window of interest in exits; see the module documentation.
#[derive(Debug)]
pub struct ExitWatch {
    reaper: Arc<Reaper>,
}

impl ExitWatch {
    /// Subscribes to the exit of `pid`, which was spawned (or learned) after this watch opened.
    pub fn subscribe(&self, pid: i32) -> ExitReceiver {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.reaper.state();
        if let Some(index) = state.unclaimed.iter().position(|exit| exit.pid == pid) {
            if let Some(exit) = state.unclaimed.remove(index) {
                let _ = sender.send(exit);
            }
        } else {
            state.waiters.insert(pid, sender);
        }
        ExitReceiver { receiver, pid }
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        let mut state = self.reaper.state();
        state.open_watches -= 1;
        if state.open_watches == 0 {
            state.unclaimed.clear();
        }
    }
}

/// The pending exit of one process.
#[derive(Debug)]
pub struct ExitReceiver {
    receiver: oneshot::Receiver<Exit>,
    pid: i32,
}

impl ExitReceiver {
    /// The pid this receiver waits for.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the exit. Returns `None` only if the reaper itself is gone.
    pub async fn wait(self) -> Option<Exit> {
        self.receiver.await.ok()
    }
}

/// Reaps on every SIGCHLD until the signal pipe fails. Reaps once first, for children that
/// exited before the loop started.
pub async fn reap_on_sigchld(reaper: Arc<Reaper>, mut sigchld: SignalPipe) -> io::Result<()> {
    loop {
        reaper.reap();
        sigchld.next().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32, status: u32) -> Exit {
        Exit {
            pid,
            status,
            signal: None,
            at: SystemTime::now(),
        }
    }

    fn try_take(receiver: ExitReceiver) -> Option<Exit> {
        let mut receiver = receiver.receiver;
        receiver.try_recv().ok()
    }

    #[test]
    fn subscriber_gets_its_exit() {
        let reaper = Reaper::new();
        let watch = reaper.watch();
        let receiver = watch.subscribe(10);
        reaper.dispatch(exit(11, 1));
        reaper.dispatch(exit(10, 3));
        assert_eq!(try_take(receiver).map(|e| e.status), Some(3));
    }

    #[test]
    fn exit_before_subscribe_is_kept_while_a_watch_is_open() {
        let reaper = Reaper::new();
        let watch = reaper.watch();
        reaper.dispatch(exit(20, 7));
        let receiver = watch.subscribe(20);
        assert_eq!(try_take(receiver).map(|e| e.status), Some(7));
    }

    #[test]
    fn unclaimed_exits_are_dropped_when_the_last_watch_closes() {
        let reaper = Reaper::new();
        let first = reaper.watch();
        let second = reaper.watch();
        reaper.dispatch(exit(30, 0));
        drop(first);
        assert_eq!(reaper.state().unclaimed.len(), 1, "one watch still open");
        drop(second);
        assert!(reaper.state().unclaimed.is_empty());
        reaper.dispatch(exit(31, 0));
        assert!(
            reaper.state().unclaimed.is_empty(),
            "no watch: nothing kept"
        );
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let reaper = Reaper::new();
        let _watch = reaper.watch();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            reaper.dispatch(exit(pid, 0));
        }
        let state = reaper.state();
        assert_eq!(state.unclaimed.len(), MAX_UNCLAIMED);
        assert_eq!(state.unclaimed.front().map(|e| e.pid), Some(10));
    }

    #[test]
    fn signals_follow_containerds_128_plus_convention() {
        let killed = Exit::from_wait_status(
            WaitStatus::Signaled(Pid::from_raw(5), nix::sys::signal::Signal::SIGKILL, false),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(killed.status, 137);
        assert_eq!(killed.raw_wait_status(), 9);
        let exited =
            Exit::from_wait_status(WaitStatus::Exited(Pid::from_raw(5), 3), SystemTime::now())
                .unwrap();
        assert_eq!(exited.status, 3);
        assert_eq!(exited.raw_wait_status(), 3 << 8);
    }

    /// The reaper with real children, on real SIGCHLDs. It must be alone in its process
    /// (`waitpid(-1)` would take other tests' children), so the next test runs it that way.
    #[test]
    #[ignore = "run alone in its own process by reaps_real_children_in_a_process_of_its_own"]
    // The children are waited for, by the reaper under test (waitpid(-1)), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    fn reaps_real_children_alone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sigchld = crate::signals::SignalPipe::install(&[libc::SIGCHLD]).unwrap();
            let reaper = Reaper::new();
            tokio::spawn(reap_on_sigchld(Arc::clone(&reaper), sigchld));
            let limit = std::time::Duration::from_secs(10);

            let watch = reaper.watch();
            let exits = std::process::Command::new("sh")
                .args(["-c", "exit 3"])
                .spawn()
                .unwrap();
            let pid = exits.id() as i32;
            let receiver = watch.subscribe(pid);
            assert_eq!(receiver.pid(), pid);
            let exit = tokio::time::timeout(limit, receiver.wait())
                .await
                .expect("reaped in time")
                .expect("an exit");
            assert_eq!((exit.pid, exit.status, exit.signal), (pid, 3, None));

            let killed = std::process::Command::new("sleep")
                .arg("100")
                .spawn()
                .unwrap();
            let pid = killed.id() as i32;
            let receiver = watch.subscribe(pid);
            nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
            let exit = tokio::time::timeout(limit, receiver.wait())
                .await
                .expect("reaped in time")
                .expect("an exit");
            assert_eq!(
                (exit.pid, exit.status, exit.signal),
                (pid, 137, Some(libc::SIGKILL))
            );
            assert_eq!(exit.raw_wait_status(), libc::SIGKILL);
        });
    }

    #[test]
    fn reaps_real_children_in_a_process_of_its_own() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "reaper::tests::reaps_real_children_alone",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains("1 passed"), "the test ran: {said}");
    }
}
