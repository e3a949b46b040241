//! Watching a container's memory cgroup for OOM kills, from Create on.
//!
//! cgroup v1 notifies through an eventfd registered with `cgroup.event_control` for
//! `memory.oom_control`; cgroup v2 through inotify on `memory.events`, whose `oom_kill` counter
//! tells a kill from other changes. Either way the watcher ends when the cgroup is removed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::cgroup::{Cgroup, read_oom_control};
use crate::sys;

/// How a cgroup reports OOM kills.
#[derive(Debug)]
enum Source {
    V1 {
        eventfd: AsyncFd<OwnedFd>,
        /// Held open: the registration lasts as long as this descriptor.
        _oom_control: File,
        memory_dir: PathBuf,
    },
    V2 {
        inotify: AsyncFd<OwnedFd>,
        events: PathBuf,
    },
}

/// Starts watching `cgroup`; `on_oom` runs once per OOM kill. Returns the watching task.
pub fn watch(cgroup: &Cgroup, on_oom: impl Fn() + Send + 'static) -> io::Result<JoinHandle<()>> {
    let source = match cgroup {
        Cgroup::V1 { .. } => {
            let dir = cgroup
                .memory_dir()
                .ok_or_else(|| io::Error::other("no memory controller"))?;
            register_v1(dir)?
        }
        Cgroup::V2 { dir } => register_v2(dir)?,
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = run(source, on_oom).await {
            log::warn!("OOM watch stopped: {e}");
        }
    }))
}

fn register_v1(memory_dir: &Path) -> io::Result<Source> {
    let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let oom_control = File::open(memory_dir.join("memory.oom_control"))?;
    let registration = format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd());
    fs::OpenOptions::new()
        .write(true)
        .open(memory_dir.join("cgroup.event_control"))?
        .write_all(registration.as_bytes())?;
    Ok(Source::V1 {
        eventfd: sys::async_fd(OwnedFd::from(eventfd))?,
        _oom_control: oom_control,
        memory_dir: memory_dir.to_path_buf(),
    })
}

fn register_v2(dir: &Path) -> io::Result<Source> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    let events = dir.join("memory.events");
    inotify.add_watch(&events, AddWatchFlags::IN_MODIFY)?;
    Ok(Source::V2 {
        inotify: sys::async_fd(OwnedFd::from(inotify))?,
        events,
    })
}

fn oom_kills_v2(events: &Path) -> Option<u64> {
    let text = fs::read_to_string(events).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
}

/// Drains a readable notification descriptor. Ok(false) means it had nothing to read.
fn drain(fd: &OwnedFd) -> io::Result<bool> {
    let mut buffer = [0u8; 4096];
    let mut got = false;
    loop {
        match nix::unistd::read(fd, &mut buffer) {
            Ok(0) => return Ok(got),
            Ok(_) => got = true,
            Err(Errno::EAGAIN) => return Ok(got),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

async fn run(source: Source, on_oom: impl Fn()) -> io::Result<()> {
    match source {
        Source::V1 {
            eventfd,
            _oom_control,
            memory_dir,
        } => loop {
            let mut ready = eventfd.readable().await?;
            if !drain(eventfd.get_ref())? {
                ready.clear_ready();
                continue;
            }
            // The kernel also signals when the cgroup goes away: that is no OOM.
            if !memory_dir.is_dir() || read_oom_control(&memory_dir).is_empty() {
                return Ok(());
            }
            on_oom();
        },
        Source::V2 { inotify, events } => {
            let mut seen = oom_kills_v2(&events).unwrap_or(0);
            loop {
                let mut ready = inotify.readable().await?;
                if !drain(inotify.get_ref())? {
                    ready.clear_ready();
                    continue;
                }
                let Some(kills) = oom_kills_v2(&events) else {
                    return Ok(());
                };
                for _ in seen..kills {
                    on_oom();
                }
                seen = seen.max(kills);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn v2_oom_kill_counter_is_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        fs::write(
            &events,
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills_v2(&events), Some(1));
        assert_eq!(oom_kills_v2(&dir.path().join("gone")), None);
    }

    /// Waits (bounded) until `count` reaches `at_least`, then a moment more, and returns it:
    /// a watcher that counts too many has had the time to show it.
    async fn settled(count: &AtomicUsize, at_least: usize) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) < at_least && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        count.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn v2_watch_reports_each_new_kill_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        // Kills before the watch began are not new.
        fs::write(&events, "oom 4\noom_kill 1\n").unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        let task = watch(
            &Cgroup::V2 {
                dir: dir.path().to_path_buf(),
            },
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        // The cgroup hit its limit (oom) but nothing was killed: no event.
        fs::write(&events, "oom 6\noom_kill 1\n").unwrap();
        assert_eq!(settled(&count, 1).await, 0, "an OOM without a kill");
        // Two kills at once (the oom counter, 9, must not be what is counted).
        fs::write(&events, "oom 9\noom_kill 3\n").unwrap();
        assert_eq!(settled(&count, 2).await, 2, "two new kills");
        // The cgroup goes away: the watch ends without reporting.
        fs::remove_file(&events).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch ends with its cgroup")
            .expect("watch task");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
