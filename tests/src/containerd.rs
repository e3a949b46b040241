//! A private containerd 1.6 per test: own root, state, socket and config in a temp dir, with the
//! busybox image imported, driven through `ctr`, and ended by PID when the test is done.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::cleanup;
use crate::command::{self, Outcome, wait_until};
use crate::image::{self, IMAGE_REF};
use crate::shim::{Shim, crust_binary_exists};

/// Deadline of one `ctr` call.
pub const CTR_LIMIT: Duration = Duration::from_secs(60);
/// Where containerd's shims (crust's and Go's) put their sockets.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// runc state root of containerd's shims, per namespace below it.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// A running private containerd and what the test made with it.
#[derive(Debug)]
pub struct Containerd {
    /// The shim under test.
    pub shim: Shim,
    /// The namespace the test works in, unique to it.
    pub namespace: String,
    dir: TempDir,
    daemon: Option<Child>,
    ids: Mutex<BTreeSet<String>>,
}

impl Containerd {
    /// Starts a containerd for the test `name` and imports the busybox image.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, Shim::from_env())
    }

    /// Starts a containerd for `name` whose `ctr run` uses `shim`; crust's shim is always
    /// installed in it, and the Go shim is found on PATH, so [`Containerd::use_shim`] may
    /// switch between them.
    pub fn start_with(name: &str, shim: Shim) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crust-test-")
            .tempdir()
            .expect("temp dir");
        let namespace = unique_namespace(name);
        let mut containerd = Containerd {
            shim,
            namespace,
            dir,
            daemon: None,
            ids: Mutex::new(BTreeSet::new()),
        };
        containerd.write_config();
        containerd.link_shim();
        containerd.spawn_daemon();
        let archive = containerd.dir.path().join("image.tar");
        image::write_oci_archive(&archive).expect("build the busybox image");
        let imported = containerd.ctr(&["images", "import", &archive.display().to_string()]);
        assert!(imported.success(), "image import failed: {imported:?}");
        containerd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    /// containerd's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The bundle containerd made for task `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }

    /// runc's state directory for the test's namespace.
    pub fn runc_root(&self) -> PathBuf {
        Path::new(RUNC_ROOT).join(&self.namespace)
    }

    /// The socket a shim for task `id` listens on (both shims derive it the same way).
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        let joined = self.socket().join(&self.namespace).join(id);
        let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Path::new(SHIM_SOCKET_DIR).join(hex)
    }

    fn write_config(&self) {
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[debug]
  level = "debug"
"#,
            root = self.path("root").display(),
            state = self.state_dir().display(),
            socket = self.socket().display(),
        );
        fs::write(self.path("config.toml"), config).expect("write containerd config");
    }

    /// Puts the shim under test first in containerd's PATH under its runtime's binary name
    /// (and crust's shim always, for [`Containerd::use_shim`]).
    fn link_shim(&self) {
        let bin = self.path("bin");
        fs::create_dir_all(&bin).expect("create bin dir");
        let mut shims = vec![self.shim];
        if !self.shim.is_crust() && crust_binary_exists() {
            shims.push(Shim::Crust);
        }
        for shim in shims {
            let name = format!(
                "containerd-shim-{}-v2",
                shim.runtime().split('.').nth(2).expect("runtime name")
            );
            symlink(shim.binary(), bin.join(name)).expect("link shim binary");
        }
    }

    /// Makes `ctr run` use `shim` from now on.
    pub fn use_shim(&mut self, shim: Shim) {
        self.shim = shim;
    }

    fn spawn_daemon(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("containerd.log"))
            .expect("open containerd log");
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.daemon = Some(child);
        let ready = wait_until(Duration::from_secs(20), || {
            self.socket().exists() && self.ctr(&["version"]).success()
        });
        assert!(ready, "containerd did not come up:\n{}", self.log());
    }

    /// Stops containerd with SIGTERM, as a service manager would, leaving shims running.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let (sender, receiver) = std::sync::mpsc::channel();
            let pid = child.id() as i32;
            std::thread::spawn(move || {
                let _ = sender.send(child.wait());
            });
            if receiver.recv_timeout(Duration::from_secs(10)).is_err() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = receiver.recv();
            }
        }
    }

    /// Restarts containerd with the same configuration.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn_daemon();
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    fn ctr_command(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace);
        command
    }

    /// Runs `ctr <args>` in the test's namespace.
    pub fn ctr(&self, args: &[&str]) -> Outcome {
        command::run(self.ctr_command().args(args), None, CTR_LIMIT)
    }

    /// Runs `ctr run --rm` of the busybox image with the shim under test.
    pub fn run(&self, id: &str, command: &[&str]) -> Outcome {
        self.run_with(id, &["--rm"], command, None)
    }

    /// Runs `ctr run <options>` of the busybox image with the shim under test.
    pub fn run_with(
        &self,
        id: &str,
        options: &[&str],
        command: &[&str],
        stdin: Option<&[u8]>,
    ) -> Outcome {
        command::run(
            &mut self.run_command(id, options, command),
            stdin,
            CTR_LIMIT,
        )
    }

    /// The `ctr run <options>` command line, for a test that runs it itself.
    pub fn run_command(&self, id: &str, options: &[&str], command: &[&str]) -> Command {
        self.remember(id);
        let mut ctr = self.ctr_command();
        ctr.arg("run")
            .arg("--runtime")
            .arg(self.shim.runtime())
            .arg("--fifo-dir")
            .arg(self.path("fifo"))
            .args(options)
            .arg(IMAGE_REF)
            .arg(id)
            .args(command);
        ctr
    }

    /// `ctr <args>` as a command line, for a test that runs it itself.
    pub fn ctr_command_with(&self, args: &[&str]) -> Command {
        let mut ctr = self.ctr_command();
        ctr.args(args);
        ctr
    }

    /// Starts a task in the background (`ctr run -d`).
    pub fn run_detached(&self, id: &str, command: &[&str]) -> Outcome {
        self.run_with(id, &["-d"], command, None)
    }

    fn remember(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    /// The row of `ctr task ls` for `id`: (pid, status).
    pub fn task(&self, id: &str) -> Option<(i32, String)> {
        let listed = self.ctr(&["task", "ls"]);
        listed.stdout.lines().skip(1).find_map(|line| {
            let mut columns = line.split_whitespace();
            if columns.next()? != id {
                return None;
            }
            let pid = columns.next()?.parse().ok()?;
            Some((pid, columns.next()?.to_string()))
        })
    }

    /// Waits until task `id` reports `status`.
    pub fn wait_for_status(&self, id: &str, status: &str) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.task(id).is_some_and(|(_, s)| s == status)
        })
    }

    /// Pids of the shim daemons serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        cleanup::processes_with_argument(&self.socket().display().to_string())
    }

    /// Stops and removes task and container `id` (kill, delete) so that a test may end clean.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        wait_until(Duration::from_secs(10), || {
            self.task(id).is_none_or(|(_, s)| s == "STOPPED")
        });
        let _ = self.ctr(&["task", "rm", "-f", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }
}

/// `ctr events`, subscribed and read line by line.
#[derive(Debug)]
pub struct EventWatcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl EventWatcher {
    /// Waits for a line that satisfies `wanted`.
    pub fn wait_for(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if wanted(&line) {
                return Some(line);
            }
        }
    }
}

impl Drop for EventWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts `ctr events` and returns once it is subscribed.
    pub fn watch_events(&self) -> EventWatcher {
        use std::io::{BufRead, BufReader};
        let mut child = self
            .ctr_command_with(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().expect("events stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watcher = EventWatcher {
            child,
            lines,
            seen: Vec::new(),
        };
        // The subscription is made asynchronously: label the namespace until its update event
        // shows up, which proves the subscription is live.
        for attempt in 0..100 {
            let label = format!("probe={attempt}");
            let labelled = self.ctr(&["namespaces", "label", &self.namespace, &label]);
            assert!(labelled.success(), "{labelled:?}");
            if watcher
                .wait_for(Duration::from_millis(200), |line| {
                    line.contains("/namespaces/update")
                })
                .is_some()
            {
                return watcher;
            }
        }
        panic!("ctr events never showed an event");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd first, so it does not react to the shims going away.
        self.stop_daemon();
        let shims = self.shim_pids();
        cleanup::kill_all(&shims);
        cleanup::remove_runc_state(&self.runc_root());
        cleanup::unmount_below(self.dir.path());
        cleanup::remove_cgroups(&self.namespace);
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids {
            let _ = fs::remove_file(self.shim_socket(&id));
        }
    }
}

/// A namespace name unique to this test run that is a valid containerd identifier.
pub fn unique_namespace(test: &str) -> String {
    let cleaned: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let mut name = format!("crust-{}-{}", std::process::id(), cleaned);
    name.truncate(60);
    name.trim_end_matches('-').to_string()
}
