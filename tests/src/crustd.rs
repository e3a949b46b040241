//! crustd for one test: its own socket, root and state directories in a temp dir, a CRI client
//! over the socket, and SIGTERM (then SIGKILL) by PID at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::transport::{Channel, Endpoint};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cleanup;
use crate::command::wait_until;
use crate::containerd::{CRI_NAMESPACE, shim_socket_of};
use crate::cri;
use crate::network::{TestNetwork, release_cached_attachments};
use crate::registry::{LayerForm, Registry};
use crate::shim::{built_binary, crust_binary};

/// crustd's log filter (`RUST_LOG`) in the tests: every request, at debug.
pub const TEST_LOG: &str = "crustd=debug,info";
/// crustd's log filter for measuring it: its default (info), as it runs on a node.
pub const NODE_LOG: &str = "info";

/// A running crustd.
#[derive(Debug)]
pub struct Crustd {
    /// Its CRI socket.
    pub socket: PathBuf,
    /// The cgroup its pods go under (removed at the end).
    pub cgroup_root: String,
    /// Its `RUST_LOG`.
    log_filter: &'static str,
    daemon: Mutex<Option<Child>>,
    /// The pod network it was given (unless `extra` had its own `[cni]` section).
    network: Option<TestNetwork>,
    dir: TempDir,
}

impl Crustd {
    /// Starts crustd with its paths in a temp dir, a private pod network (unless `extra` has
    /// a `[cni]` section) and `extra` appended to its config.
    pub fn start(extra: &str) -> Self {
        Self::start_with(extra, false, TEST_LOG)
    }

    /// As [`Crustd::start`], with the port-mapping plugin in the pod network (hostPort).
    pub fn start_with_port_mapping(extra: &str) -> Self {
        Self::start_with(extra, true, TEST_LOG)
    }

    fn start_with(extra: &str, port_mapping: bool, log_filter: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crust-crustd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("crustd.sock");
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroup_root = format!("/{name}");
        let network = (!extra.contains("[cni]"))
            .then(|| TestNetwork::new(&dir.path().join("network"), port_mapping));
        let cni = network
            .as_ref()
            .map(TestNetwork::cni_section)
            .unwrap_or_default();
        let config = format!(
            "socket = \"{}\"\nroot_dir = \"{}\"\nstate_dir = \"{}\"\nshim_binary = \"{}\"\ncgroup_root = \"{cgroup_root}\"\n{extra}\n{cni}",
            socket.display(),
            dir.path().join("root").display(),
            dir.path().join("state").display(),
            crust_binary().display(),
        );
        fs::write(dir.path().join("crustd.toml"), config).expect("write crustd config");
        let crustd = Crustd {
            socket,
            cgroup_root,
            log_filter,
            daemon: Mutex::new(None),
            network,
            dir,
        };
        crustd.spawn();
        crustd
    }

    fn spawn(&self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&self, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("crustd.log"))
            .expect("crustd log");
        let binary = built_binary("crustd");
        assert!(
            binary.exists(),
            "{} is missing: build it first (cargo build -p crust-manager)",
            binary.display()
        );
        let child = Command::new(binary)
            .arg("--config")
            .arg(self.dir.path().join("crustd.toml"))
            .env("RUST_LOG", self.log_filter)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start crustd");
        *self.child() = Some(child);
        let up = wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
        assert!(up, "crustd did not come up:\n{}", self.log());
    }

    /// Stops crustd with SIGTERM (SIGKILL after 10 s) and starts it again on the same state.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    /// Kills crustd with SIGKILL, leaving its pods running, as a crash would.
    pub fn kill(&self) {
        let running = self.child().take();
        if let Some(mut child) = running {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts crustd again on the same state (after [`Crustd::kill`]).
    pub fn start_again(&self) {
        assert!(self.child().is_none(), "crustd is still running");
        self.spawn();
    }

    /// Restarts crustd (SIGTERM) so that it SIGKILLs itself on reaching crash point `point`
    /// (crustd built with the `failpoints` feature).
    pub fn arm_crash_point(&self, point: &str) {
        self.stop();
        self.spawn_with(&[("FAILPOINTS", &format!("{point}=return"))]);
    }

    /// Waits up to `limit` for crustd to die by SIGKILL (at an armed crash point); true if it
    /// did. Either way crustd is no longer running afterwards.
    pub fn died_of_sigkill(&self, limit: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let Some(mut child) = self.child().take() else {
            return false;
        };
        let died = wait_until(limit, || child.try_wait().ok().flatten().is_some());
        if !died {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
        let status = child.wait().ok();
        died && status.and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// crustd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Pid of the shim serving pod `pod_id`.
    pub fn shim_pid_of(&self, pod_id: &str) -> Option<i32> {
        self.shim_pids()
            .into_iter()
            .find(|&pid| shim_id(pid).as_deref() == Some(pod_id))
    }

    /// Where crustd keeps bundles, pod files and runc state.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Pids of the shims this crustd started (they name its socket in their arguments).
    pub fn shim_pids(&self) -> Vec<i32> {
        cleanup::processes_with_argument(&self.socket.display().to_string())
    }

    /// The ids of the pods crustd has records of.
    pub fn pod_ids_on_disk(&self) -> Vec<String> {
        fs::read_dir(self.root().join("records").join("pods"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".json").map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The socket of the shim serving pod `pod_id` (named as containerd's shims name it).
    pub fn shim_socket(&self, pod_id: &str) -> PathBuf {
        shim_socket_of(&self.socket, CRI_NAMESPACE, pod_id)
    }

    /// Where the shims keep runc's state for this crustd.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("state").join("runc").join("k8s.io")
    }

    fn stop(&self) {
        let running = self.child().take();
        if let Some(mut child) = running {
            let pid = child.id() as i32;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !wait_until(Duration::from_secs(10), || cleanup::is_gone(pid)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// crustd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("crustd.log")).unwrap_or_default()
    }

    /// crustd's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A gRPC channel over the CRI socket.
    pub async fn channel(&self) -> Channel {
        self.connect(cri::plain_endpoint()).await
    }

    /// A channel whose HTTP/2 windows (stream and connection) are `bytes`: a client that does
    /// not read stops crustd sending after that much.
    pub async fn channel_with_window(&self, bytes: u32) -> Channel {
        let endpoint = cri::plain_endpoint()
            .initial_stream_window_size(bytes)
            .initial_connection_window_size(bytes);
        self.connect(endpoint).await
    }

    async fn connect(&self, endpoint: Endpoint) -> Channel {
        cri::connect_unix(&self.socket, endpoint)
            .await
            .expect("connect to crustd")
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    /// An ImageService client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// The mode bits of the socket.
    pub fn socket_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(&self.socket)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Network state no listed pod accounts for: pinned namespaces, CNI cache entries, and
    /// (with the fixture's network) addresses, veths and port-mapping rules.
    pub fn network_leaks(&self, pods: &std::collections::HashSet<String>) -> Vec<String> {
        let mut leaks = Vec::new();
        let netns = self.state().join("netns");
        for name in cleanup::names_in(&netns) {
            if !pods.contains(&name) {
                leaks.push(format!("netns {}", netns.join(name).display()));
            }
        }
        for name in cleanup::names_in(self.root().join("cni").join("results")) {
            if !pods.iter().any(|pod| name.contains(pod.as_str())) {
                leaks.push(format!("CNI cache entry {name}"));
            }
        }
        if let Some(network) = &self.network {
            leaks.extend(network.leaks(pods));
        }
        leaks
    }

    /// The pod network the fixture made for it.
    pub fn network(&self) -> &TestNetwork {
        self.network
            .as_ref()
            .expect("this crustd was started with its own [cni] section")
    }
}

impl Drop for Crustd {
    fn drop(&mut self) {
        self.stop();
        // What a failed test may leave: shims, runc containers, mounts, cgroups.
        let shims = self.shim_pids();
        // A shim's group is its pod: the `-id` it was started with, or a pod still on record.
        let mut pods: Vec<String> = shims.iter().filter_map(|&pid| shim_id(pid)).collect();
        pods.extend(self.pod_ids_on_disk());
        cleanup::kill_all(&shims);
        for pod in pods {
            let _ = fs::remove_file(self.shim_socket(&pod));
        }
        cleanup::remove_runc_state(&self.runc_root());
        cleanup::unmount_below(self.dir.path());
        cleanup::remove_cgroups(&self.cgroup_root);
        // After the namespaces are gone: the plugins release addresses and port mappings.
        release_cached_attachments(&self.root());
    }
}

/// A registry of its own serving the busybox test image, and a crustd that pulled it.
#[derive(Debug)]
pub struct WithImage {
    /// The registry (dropped first).
    pub registry: Registry,
    /// crustd.
    pub crustd: Crustd,
    /// The image's reference.
    pub image: String,
    /// A directory for pods' logs (`log_directory`), removed with the fixture.
    pub logs: tempfile::TempDir,
}

impl WithImage {
    /// [`WithImage::start`] for a test: a failure to start is the test's failure.
    pub async fn started(port_mapping: bool) -> Self {
        Self::start(port_mapping)
            .await
            .unwrap_or_else(|why| panic!("crustd with the test image: {why}"))
    }

    /// Starts both (crustd's pod network with the port-mapping plugin when `port_mapping`);
    /// if the pull fails, its error and crustd's log.
    pub async fn start(port_mapping: bool) -> Result<Self, String> {
        Self::start_configured(port_mapping, "").await
    }

    /// As [`WithImage::start`], with `extra` appended to crustd's config.
    pub async fn start_configured(port_mapping: bool, extra: &str) -> Result<Self, String> {
        Self::start_logging(port_mapping, extra, TEST_LOG).await
    }

    /// As [`WithImage::start_configured`], crustd logging with `log_filter` (its `RUST_LOG`):
    /// [`NODE_LOG`] to measure it as it runs on a node.
    pub async fn start_logging(
        port_mapping: bool,
        extra: &str,
        log_filter: &'static str,
    ) -> Result<Self, String> {
        let registry = Registry::start();
        registry
            .push("library/busybox", "1", LayerForm::OciTar, "")
            .await;
        let image = registry.reference("library/busybox", "1");
        let extra = format!(
            "{extra}\n[registry]\nplain_http = [\"{}\"]\n",
            registry.host
        );
        let crustd = Crustd::start_with(&extra, port_mapping, log_filter);
        let pulled = crustd
            .images()
            .await
            .pull_image(crust_proto::cri::PullImageRequest {
                image: Some(crust_proto::cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        if let Err(e) = pulled {
            return Err(format!(
                "pulling the test image failed: {e}\n{}",
                crustd.log()
            ));
        }
        let logs = tempfile::tempdir().map_err(|e| format!("a log directory: {e}"))?;
        Ok(WithImage {
            registry,
            crustd,
            image,
            logs,
        })
    }
}

/// The `-id` argument of process `pid`: the pod a shim serves.
pub fn shim_id(pid: i32) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-id")?;
    args.get(at + 1).cloned()
}
