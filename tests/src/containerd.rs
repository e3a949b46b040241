//! A private containerd 1.6 per test: own root, state, socket and config in a temp dir, with the
//! busybox image imported, driven through `ctr`, and ended by PID when the test is done.
//!
//! [`CriContainerd`] is the other kind: a private containerd with its CRI plugin, Go's runc
//! shim and a pod network of its own, for measuring crustd against what kubelet would
//! otherwise talk to.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::transport::Channel;
use crust_proto::cri::{ListPodSandboxRequest, StatusRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::cleanup;
use crate::command::{self, Outcome, wait_until};
use crate::cri;
use crate::crustd::shim_id;
use crate::host::{CAP_SYS_RESOURCE, has_capability};
use crate::image::{self, IMAGE_REF};
use crate::network::{
    LIBCNI_CACHE, PLUGIN_DIR, TestNetwork, cached_attachments, release_attachments_cached_in,
};
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
        shim_socket_of(&self.socket(), &self.namespace, id)
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
        let child = launch(
            &self.path("config.toml"),
            &self.path("containerd.log"),
            Some(&self.path("bin")),
        )
        .expect("start containerd");
        self.daemon = Some(child);
        let ready = wait_until(Duration::from_secs(20), || {
            self.socket().exists() && self.ctr(&["version"]).success()
        });
        assert!(ready, "containerd did not come up:\n{}", self.log());
    }

    /// Stops containerd with SIGTERM, as a service manager would, leaving shims running.
    pub fn stop_daemon(&mut self) {
        if let Some(child) = self.daemon.take() {
            terminate(child);
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

/// The socket of the shim that serves `group` (a pod, or a task alone) in `namespace` for the
/// containerd (or crustd) listening on `address`: crust's shim and Go's derive it alike.
pub fn shim_socket_of(address: &Path, namespace: &str, group: &str) -> PathBuf {
    let joined = address.join(namespace).join(group);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SHIM_SOCKET_DIR).join(hex)
}

/// Starts `containerd --config <config>`, its output appended to `log`, with `path_prefix`
/// (shims to resolve first) ahead of this process's PATH.
fn launch(config: &Path, log: &Path, path_prefix: Option<&Path>) -> std::io::Result<Child> {
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let path = match path_prefix {
        Some(prefix) => format!("{}:{path}", prefix.display()),
        None => path,
    };
    Command::new("containerd")
        .arg("--config")
        .arg(config)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Stops a containerd this process started: SIGTERM, as a service manager would, and SIGKILL
/// if it is still there after 10 s. Its shims keep running.
fn terminate(mut child: Child) {
    let pid = child.id() as i32;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    if receiver.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = receiver.recv();
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

/// The containerd namespace the CRI plugin keeps pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How long a [`CriContainerd`] may take to serve CRI with its network ready.
const CRI_READY_LIMIT: Duration = Duration::from_secs(30);

/// What a [`CriContainerd`] pulls from and runs its pods' sandboxes with.
#[derive(Debug, Clone)]
pub struct CriSetup {
    /// `host:port` of a registry that speaks plain http (the test's docker-registry).
    pub registry: String,
    /// The image of every pod's sandbox container (`sandbox_image`), from that registry.
    pub sandbox_image: String,
}

/// A private containerd 1.6 with its CRI plugin: own root, state, socket and config in a temp
/// dir; runc through Go's `io.containerd.runc.v2` shim (runc's state under the temp dir too);
/// pods networked by the same CNI conflist the crustd fixture gets, on a bridge and subnet of
/// its own; the registry mirrored to plain http.
///
/// Dropping it removes its pods through CRI, stops it, and then removes by hand whatever it or
/// its shims left: processes (by PID), runc containers, mounts under its dir (overlays, shm,
/// network namespaces), the pods' cgroups, the network's CNI attachments and bridge.
#[derive(Debug)]
pub struct CriContainerd {
    /// Its socket: containerd's API and CRI's `runtime.v1` services.
    pub socket: PathBuf,
    /// The cgroup under which pods are to be put (give each pod a `cgroup_parent` below it,
    /// as kubelet does); removed with everything in it at the end.
    pub cgroup_root: String,
    daemon: Option<Child>,
    /// Whether libcni's cache did not exist before, so the directories it made may go if
    /// they end up empty.
    made_cni_cache: bool,
    network: TestNetwork,
    dir: TempDir,
}

impl CriContainerd {
    /// Starts it and waits until CRI reports the runtime and the network ready; on failure,
    /// why (with containerd's log).
    pub async fn start(setup: &CriSetup) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("crust-cri-containerd-")
            .tempdir()
            .map_err(|e| format!("a temp dir for containerd: {e}"))?;
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut containerd = CriContainerd {
            socket: dir.path().join("containerd.sock"),
            cgroup_root: format!("/{name}"),
            daemon: None,
            made_cni_cache: !Path::new(LIBCNI_CACHE).exists(),
            network: TestNetwork::new(&dir.path().join("network"), false),
            dir,
        };
        let config = containerd.path("config.toml");
        fs::write(&config, containerd.config(setup))
            .map_err(|e| format!("write {}: {e}", config.display()))?;
        let child = launch(&config, &containerd.path("containerd.log"), None)
            .map_err(|e| format!("start containerd: {e}"))?;
        containerd.daemon = Some(child);
        containerd.wait_until_ready().await?;
        Ok(containerd)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Its config.toml: containerd's defaults but for paths, the CRI plugin's sandbox image,
    /// registry, CNI and runc settings, and what the host lets runc do.
    fn config(&self, setup: &CriSetup) -> String {
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # A port of its own: two of these (or a system containerd) would clash on the default.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # runc cannot lower a process's oom_score_adj without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = {restrict_oom_score_adj}
  # Pod network namespaces under the state dir, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{runc_root}"

[{cri}.cni]
  bin_dir = "{plugins}"
  conf_dir = "{conf_dir}"
  max_conf_num = 1

[{cri}.registry.mirrors."{registry}"]
  endpoint = ["http://{registry}"]
"#,
            root = self.path("root").display(),
            state = self.path("state").display(),
            socket = self.socket.display(),
            opt = self.path("opt").display(),
            sandbox_image = setup.sandbox_image,
            restrict_oom_score_adj = !has_capability(CAP_SYS_RESOURCE),
            runc_root = self.path("runc").display(),
            plugins = PLUGIN_DIR,
            conf_dir = self.network.conf_dir.display(),
            registry = setup.registry,
        )
    }

    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + CRI_READY_LIMIT;
        let mut last = String::from("its socket never appeared");
        loop {
            if let Some(Ok(Some(exit))) = self.daemon.as_mut().map(Child::try_wait) {
                return Err(format!("containerd exited ({exit}):\n{}", self.log()));
            }
            if self.socket.exists() {
                match self.not_ready().await {
                    Ok(None) => return Ok(()),
                    Ok(Some(why)) | Err(why) => last = why,
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "containerd's CRI was not ready within {}s ({last}):\n{}",
                    CRI_READY_LIMIT.as_secs(),
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The conditions of CRI's Status that are not met yet, if any.
    async fn not_ready(&self) -> Result<Option<String>, String> {
        let status = self
            .runtime()
            .await?
            .status(StatusRequest { verbose: false })
            .await
            .map_err(|e| format!("Status: {e}"))?
            .into_inner()
            .status
            .ok_or("Status answered no status")?;
        let unmet: Vec<String> = status
            .conditions
            .iter()
            .filter(|condition| !condition.status)
            .map(|condition| format!("{}: {}", condition.r#type, condition.message))
            .collect();
        Ok((!unmet.is_empty() || status.conditions.is_empty())
            .then(|| format!("not ready: {unmet:?}")))
    }

    /// A gRPC channel over its socket.
    pub async fn channel(&self) -> Result<Channel, String> {
        cri::connect_unix(&self.socket, cri::plain_endpoint())
            .await
            .map_err(|e| format!("connect to {}: {e}", self.socket.display()))
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>, String> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// An ImageService client.
    pub async fn images(&self) -> Result<ImageServiceClient<Channel>, String> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Pids of its shim daemons (they name its socket in their arguments): one per pod.
    pub fn shim_pids(&self) -> Vec<i32> {
        cleanup::processes_with_argument(&self.socket.display().to_string())
    }

    /// Where its content store keeps sha256 blobs (layers, configs, manifests), each named by
    /// its digest's hex while containerd has it.
    pub fn content_blobs(&self) -> PathBuf {
        self.path("root")
            .join("io.containerd.content.v1.content/blobs/sha256")
    }

    /// runc's state directory for CRI's namespace (the shims' `Root` option).
    pub fn runc_root(&self) -> PathBuf {
        self.path("runc").join(CRI_NAMESPACE)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("containerd.log")).unwrap_or_default()
    }

    /// Stops and removes every pod through CRI (which stops and removes their containers),
    /// as a test should before it ends; the failures, as text.
    pub async fn remove_all_pods(&self) -> Vec<String> {
        remove_pods_at(&self.socket).await
    }
}

/// Stops and removes every pod of the CRI server on `socket`, going on past failures; the
/// failures, as text.
async fn remove_pods_at(socket: &Path) -> Vec<String> {
    let channel = match cri::connect_unix(socket, cri::plain_endpoint()).await {
        Ok(channel) => channel,
        Err(e) => return vec![format!("connect to {}: {e}", socket.display())],
    };
    let mut client = RuntimeServiceClient::new(channel);
    let pods = match client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
    {
        Ok(listed) => listed.into_inner().items,
        Err(e) => return vec![format!("ListPodSandbox: {e}")],
    };
    let mut failures = Vec::new();
    for pod in pods {
        if let Err(e) = cri::stop_pod(&mut client, &pod.id).await {
            failures.push(format!("StopPodSandbox {}: {e}", pod.id));
        }
        if let Err(e) = cri::remove_pod(&mut client, &pod.id).await {
            failures.push(format!("RemovePodSandbox {}: {e}", pod.id));
        }
    }
    failures
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            // Through CRI first, so that containerd undoes what it did (CNI DEL, mounts, shims)
            // its own way. Drop may run inside the caller's async runtime, which cannot be
            // blocked on: a thread of its own runs the calls.
            let socket = self.socket.clone();
            let through_cri = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(120), remove_pods_at(&socket))
                        .await;
                });
            });
            let _ = through_cri.join();
        }
        if let Some(child) = self.daemon.take() {
            terminate(child);
        }
        // What is left after a failure: shims (one per pod, named by its sandbox id) and the
        // containers they ran, then everything mounted under the temp dir.
        let shims = self.shim_pids();
        let groups: BTreeSet<String> = shims.iter().filter_map(|&pid| shim_id(pid)).collect();
        cleanup::kill_all(&shims);
        for group in &groups {
            let _ = fs::remove_file(shim_socket_of(&self.socket, CRI_NAMESPACE, group));
        }
        cleanup::remove_runc_state(&self.runc_root());
        cleanup::unmount_below(self.dir.path());
        cleanup::remove_cgroups(&self.cgroup_root);
        // After the namespaces are gone: the plugins release the addresses. Each pod has two
        // attachments, ours and containerd's own loopback network ("cni-loopback"), told
        // apart from other containerds' by the pod's id.
        let cache = Path::new(LIBCNI_CACHE);
        let pods: BTreeSet<String> = cached_attachments(cache)
            .into_iter()
            .filter(|attachment| attachment.network == self.network.name)
            .map(|attachment| attachment.container_id)
            .chain(groups)
            .collect();
        release_attachments_cached_in(cache, |attachment| {
            attachment.network == self.network.name || pods.contains(&attachment.container_id)
        });
        if self.made_cni_cache {
            // Only if empty: another containerd may have come to use them meanwhile.
            let _ = fs::remove_dir(LIBCNI_CACHE);
            let _ = Path::new(LIBCNI_CACHE).parent().map(fs::remove_dir);
        }
    }
}
