//! A pod's shim daemon as a process: crustd is not its parent (`start` detaches it), so it is
//! watched through `/proc`, and signalled only while its command line shows it is the daemon
//! crustd started for that pod (`-address <crustd's socket> … -id <pod id>`), never a process
//! that reused its pid.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a process's exit is checked for while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// The daemon of one pod's shim.
#[derive(Debug, Clone)]
pub struct ShimProcess<'a> {
    /// crustd's socket: the shim's `-address`.
    pub address: &'a str,
    /// The pod's id: the shim's `-id`.
    pub pod_id: &'a str,
}

impl ShimProcess<'_> {
    /// Whether `pid` is this pod's shim daemon and still running (a zombie is not).
    pub fn is(&self, pid: u32) -> bool {
        pid != 0 && is_running(pid) && self.matches(&arguments(pid))
    }

    fn matches(&self, args: &[String]) -> bool {
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|at| args.get(at + 1))
        };
        value("-address").is_some_and(|a| a == self.address)
            && value("-id").is_some_and(|id| id == self.pod_id)
            && !args.iter().any(|a| a == "start" || a == "delete")
    }

    /// Every running process that is this pod's shim daemon (for when its pid is unknown).
    pub fn find(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| self.is(pid))
            .collect()
    }

    /// SIGKILLs `pid` if it is this pod's shim.
    pub fn kill(&self, pid: u32) {
        if self.is(pid) {
            log::warn!("killing the shim of pod {} (pid {pid})", self.pod_id);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Waits up to `limit` until `pid` is no longer this pod's shim; true if it is gone.
    pub async fn wait_gone(&self, pid: u32, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.is(pid) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The command-line arguments of `pid` (empty when it is gone).
fn arguments(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    #[test]
    fn only_the_pods_own_daemon_matches() {
        let shim = ShimProcess {
            address: "/run/crust/crustd.sock",
            pod_id: "p1",
        };
        assert!(shim.matches(&args(
            "/usr/local/bin/containerd-shim-crust-v2 -namespace k8s.io -id p1 -address /run/crust/crustd.sock"
        )));
        for other in [
            "shim -namespace k8s.io -id p2 -address /run/crust/crustd.sock",
            "shim -namespace k8s.io -id p1 -address /run/containerd/containerd.sock",
            "shim -namespace k8s.io -address /run/crust/crustd.sock -id p1 start",
            "shim -namespace k8s.io -address /run/crust/crustd.sock -id p1 -bundle /b delete",
            "sleep 100",
            "",
        ] {
            assert!(!shim.matches(&args(other)), "{other}");
        }
    }

    #[test]
    fn this_process_runs_and_a_free_pid_does_not() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX - 1));
        let shim = ShimProcess {
            address: "/nowhere",
            pod_id: "p",
        };
        assert!(!shim.is(std::process::id()), "not a shim");
        assert!(!shim.is(0));
    }
}
