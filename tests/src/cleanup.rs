//! Removing what a test left on the machine: processes (by PID), runc state, mounts, cgroups.
//!
//! Every fixture calls these from `Drop`, so a failing test cleans up as well as a passing one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command::{self, wait_until};

/// Pids of processes (other than this one) with `argument` among their command-line arguments.
pub fn processes_with_argument(argument: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    cmdline
                        .split(|&b| b == 0)
                        .any(|arg| arg == argument.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` has exited (a zombie counts: it runs nothing and holds nothing).
pub fn is_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// The names of the entries of `dir` (none if it cannot be read).
pub fn names_in(dir: impl AsRef<Path>) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs `pids` and waits (briefly) until they are gone.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_until(Duration::from_secs(5), || {
        pids.iter().all(|&pid| is_gone(pid))
    });
}

/// Force-deletes every runc container under `root`, then the directory.
pub fn remove_runc_state(root: &Path) {
    if !root.exists() {
        return;
    }
    let listed = command::run(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"]),
        None,
        Duration::from_secs(30),
    );
    for id in listed.stdout.lines().filter(|l| !l.is_empty()) {
        command::run(
            Command::new("runc")
                .arg("--root")
                .arg(root)
                .args(["delete", "--force", id]),
            None,
            Duration::from_secs(30),
        );
    }
    let _ = fs::remove_dir_all(root);
}

/// Mount points at or below `prefix`, deepest first.
pub fn mounts_below(prefix: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|path| path.starts_with(prefix))
        .collect();
    found.sort_by_key(|path| std::cmp::Reverse(path.as_os_str().len()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(value) = u8::from_str_radix(&code, 8) {
                out.push(value as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

/// Unmounts everything at or below `prefix`.
pub fn unmount_below(prefix: &Path) {
    for mount in mounts_below(prefix) {
        let _ = umount2(&mount, MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup `relative` (and everything below it) from every hierarchy.
pub fn remove_cgroups(relative: &str) {
    let relative = relative.trim_start_matches('/');
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies
        .filter_map(|entry| Some(entry.ok()?.path()))
        .collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let cgroup = root.join(relative);
        if cgroup.is_dir() {
            remove_cgroup_tree(&cgroup);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    // A cgroup directory is removed with rmdir; its control files go with it. A process just
    // killed stays a member until its parent reaps it (cgroup v1), so a busy cgroup is tried
    // again for a moment rather than left behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        if e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b\\134c"),
            PathBuf::from("/tmp/a b\\c")
        );
    }
}
