//! cri-chaos: drives crustd through its CRI socket under load and faults, and prints, per
//! section, the failures (counted by message) and the leaks found on the machine afterwards.
//! Run it through `packaging/chaos.sh`, which builds crustd with its crash points.
//!
//! Sections:
//! - **load**: N clients each running M full cycles (RunPodSandbox, CreateContainer,
//!   StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox,
//!   RemovePodSandbox), exit codes and output checked;
//! - **crash points**: crustd SIGKILLed (by itself, at a named point) inside every lifecycle
//!   step, restarted, and everything it had still listable, startable where it should be,
//!   stoppable and removable; plus a container that exits while crustd is down;
//! - **shim killed** and **shim hung**: a pod's shim SIGKILLed, or SIGSTOPped: its containers
//!   are reported exited only once their processes are gone, and everything is removable;
//! - **log directory**: a container whose log file system fills up and then turns read-only
//!   keeps running and stays stoppable;
//! - **churn**: create/start/stop/remove cycles from 2 clients, stop with no grace and remove
//!   at once;
//! - **hostile clients**: idle connections, requests whose message never comes, oversized and
//!   garbage input, huge ids and timeouts: crustd stays up and answers others.
//!
//! After each section everything is removed through CRI and the machine is searched for what
//! crustd left: shim processes, mounts, pod cgroups, runc state, bundles, records, shim
//! sockets. The target is 0 failures and 0 leaks; the exit status is non-zero otherwise.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::{Code, Status};
use crust_proto::cri::*;
use crust_tests::cleanup::{self, names_in};
use crust_tests::command::{self, wait_until};
use crust_tests::cri::{
    Answer, Client, container_config, exec, pod_state, remove, remove_pod, start, status, stop,
    stop_pod, wait_exited,
};
use crust_tests::crustd::{Crustd, WithImage, shim_id};
use crust_tests::image::{ImageParts, sha256};
use crust_tests::registry::{LayerForm, Registry};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How much to run; `--quick` is the smoke run CI makes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    only: Option<&'static str>,
    clients: usize,
    cycles: usize,
    churn: usize,
    idle_connections: usize,
    silent_streams: usize,
}

impl Plan {
    fn from_args() -> Result<Self, String> {
        let mut plan = Plan {
            only: None,
            clients: 4,
            cycles: 50,
            churn: 500,
            idle_connections: 1000,
            silent_streams: 200,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{name} needs a number"))
            };
            match flag.as_str() {
                "--clients" => plan.clients = number("--clients")?.max(1),
                "--cycles" => plan.cycles = number("--cycles")?.max(1),
                "--churn" => plan.churn = number("--churn")?,
                "--only" => {
                    let wanted = args.next().unwrap_or_default();
                    let known = SECTIONS
                        .iter()
                        .find(|s| **s == wanted)
                        .ok_or_else(|| format!("--only takes one of {}", SECTIONS.join(", ")))?;
                    plan.only = Some(known);
                }
                "--quick" => {
                    plan = Plan {
                        only: plan.only,
                        clients: 2,
                        cycles: 3,
                        churn: 20,
                        idle_connections: 200,
                        silent_streams: 50,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}\nusage: cri-chaos [--clients N] [--cycles N] [--churn N] [--quick] [--only SECTION]"
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// The sections, in the order they run.
const SECTIONS: &[&str] = &[
    "load",
    "crash-points",
    "shim-killed",
    "shim-hung",
    "log-directory",
    "churn",
    "hostile",
];

/// What one section found.
#[derive(Debug, Default)]
struct Outcome {
    name: String,
    runs: usize,
    failures: BTreeMap<String, usize>,
    leaks: Vec<String>,
    notes: Vec<String>,
    seconds: f64,
}

impl Outcome {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Counts a failure under its message, ids and numbers blanked so alike ones group.
    fn fail(&mut self, what: &str, why: impl std::fmt::Display) {
        let message = format!("{what}: {why}");
        let mut normalized = String::new();
        let mut run = 0;
        for c in message.chars() {
            if c.is_ascii_hexdigit() {
                run += 1;
            } else {
                run = 0;
            }
            normalized.push(c);
            if run == 12 {
                normalized.truncate(normalized.len() - 12);
                normalized.push('…');
            } else if run > 12 {
                normalized.pop();
            }
        }
        normalized.truncate(240);
        *self.failures.entry(normalized).or_default() += 1;
    }

    /// Checks `condition`; a failure named `what` when it does not hold.
    fn check(&mut self, what: &str, condition: bool, detail: impl std::fmt::Display) {
        if !condition {
            self.fail(what, detail);
        }
    }

    fn failure_count(&self) -> usize {
        self.failures.values().sum()
    }
}

/// crustd, its registry and image, and everything the run made.
struct Chaos {
    registry: Registry,
    crustd: Crustd,
    image: String,
    logs: tempfile::TempDir,
    pods_made: Mutex<HashSet<String>>,
}

fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "chaos".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: "chaos".into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

/// A process that leaves on SIGTERM (after its current 0.1 s sleep).
const POLITE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
];
/// A process that ignores SIGTERM.
const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"];

impl Chaos {
    async fn client(&self) -> Client {
        self.crustd.runtime().await
    }

    async fn run_pod(&self, client: &mut Client, name: &str) -> Answer<(String, PodSandboxConfig)> {
        let config = pod_config(name, self.logs.path());
        let id = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        self.made(&id);
        Ok((id, config))
    }

    fn made(&self, pod: &str) {
        self.pods_made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.to_string());
    }

    async fn create(
        &self,
        client: &mut Client,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> Answer<String> {
        Ok(client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(container_config(
                    name,
                    &self.image,
                    command,
                    &format!("{name}.log"),
                )),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    async fn run(
        &self,
        client: &mut Client,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> Answer<String> {
        let id = self.create(client, pod, pod_config, name, command).await?;
        start(client, &id).await?;
        Ok(id)
    }

    /// Pods and containers crustd lists.
    async fn listing(&self, client: &mut Client) -> Answer<(Vec<PodSandbox>, Vec<Container>)> {
        let pods = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        let containers = client
            .list_containers(ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        for pod in &pods {
            self.made(&pod.id);
        }
        Ok((pods, containers))
    }

    /// Stops and removes every pod crustd lists (and so every container).
    async fn remove_everything(&self, outcome: &mut Outcome) {
        let mut client = self.client().await;
        let pods = match self.listing(&mut client).await {
            Ok((pods, _)) => pods,
            Err(e) => return outcome.fail("list before cleanup", e.message()),
        };
        for pod in pods {
            if let Err(e) = stop_pod(&mut client, &pod.id).await {
                outcome.fail("StopPodSandbox in cleanup", e.message());
            }
            if let Err(e) = remove_pod(&mut client, &pod.id).await {
                outcome.fail("RemovePodSandbox in cleanup", e.message());
            }
        }
    }

    /// What exists on the machine that crustd does not list: shim processes, mounts, pod
    /// cgroups, runc state, bundles, pod files, writable layers, records, shim sockets.
    async fn leaks(&self, outcome: &mut Outcome) -> Vec<String> {
        let mut client = self.client().await;
        let (pods, containers) = match self.listing(&mut client).await {
            Ok(listing) => listing,
            Err(e) => {
                outcome.fail("list for the leak check", e.message());
                return Vec::new();
            }
        };
        let pod_ids: HashSet<String> = pods.iter().map(|p| p.id.clone()).collect();
        let ids: HashSet<String> = containers
            .iter()
            .map(|c| c.id.clone())
            .chain(pod_ids.iter().cloned())
            .collect();
        let mut leaks = Vec::new();
        for pid in self.crustd.shim_pids() {
            let serves = shim_id(pid);
            if !serves.as_ref().is_some_and(|pod| pod_ids.contains(pod)) {
                leaks.push(format!("shim process {pid} (pod {serves:?})"));
            }
        }
        let state = self.crustd.state();
        for mount in cleanup::mounts_below(self.crustd.dir()) {
            let owner = mount
                .strip_prefix(&state)
                .ok()
                .and_then(|rest| rest.components().nth(1))
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if !owner.is_some_and(|id| ids.contains(&id)) {
                leaks.push(format!("mount {}", mount.display()));
            }
        }
        for (what, dir) in [
            ("bundle", state.join("bundles")),
            ("pod files", state.join("pods")),
            ("runc state", self.crustd.runc_root()),
            ("writable layer", self.crustd.root().join("containers")),
        ] {
            for name in names_in(&dir) {
                if !ids.contains(&name) {
                    leaks.push(format!("{what} {}", dir.join(name).display()));
                }
            }
        }
        for name in names_in(state.join("exec")) {
            leaks.push(format!("exec FIFOs {name}"));
        }
        leaks.extend(self.crustd.network_leaks(&pod_ids));
        for (kind, listed) in [("pods", &pod_ids), ("containers", &ids)] {
            let dir = self.crustd.root().join("records").join(kind);
            for name in names_in(&dir) {
                let id = name.trim_end_matches(".json");
                if !listed.contains(id) {
                    leaks.push(format!("record {}", dir.join(&name).display()));
                }
            }
        }
        for hierarchy in cgroup_hierarchies() {
            let root = hierarchy.join(self.crustd.cgroup_root.trim_start_matches('/'));
            for name in names_in(&root) {
                let dir = root.join(&name);
                if dir.is_dir() && !pod_ids.contains(&name) {
                    leaks.push(format!("cgroup {}", dir.display()));
                }
            }
        }
        let made = self
            .pods_made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for pod in made.difference(&pod_ids) {
            let socket = self.crustd.shim_socket(pod);
            if socket.exists() {
                leaks.push(format!("shim socket {}", socket.display()));
            }
        }
        leaks
    }

    /// Removes everything, then records what is left as leaks (after giving shims that were
    /// asked to leave a moment to go).
    async fn finish(&self, outcome: &mut Outcome) {
        self.remove_everything(outcome).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaks = self.leaks(outcome).await;
            if leaks.is_empty() || Instant::now() > deadline {
                outcome.leaks = leaks;
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots.retain(|root| root.join("cgroup.procs").exists());
    roots
}

/// Pids of processes in cgroup `cgroup_root/relative` (any hierarchy, any depth).
fn processes_in(cgroup_root: &str, relative: &str) -> Vec<i32> {
    fn collect(dir: &Path, into: &mut HashSet<i32>) {
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
        {
            into.insert(pid);
        }
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), into);
            }
        }
    }
    let mut pids = HashSet::new();
    for hierarchy in cgroup_hierarchies() {
        collect(
            &hierarchy
                .join(cgroup_root.trim_start_matches('/'))
                .join(relative),
            &mut pids,
        );
    }
    pids.into_iter().collect()
}

// ---- load ----

async fn one_cycle(chaos: &Chaos, client: &mut Client, name: &str) -> Result<(), String> {
    let step = |what: &'static str| move |e: Status| format!("{what}: {}", e.message());
    let (pod, config) = chaos
        .run_pod(client, name)
        .await
        .map_err(step("RunPodSandbox"))?;
    let container = chaos
        .run(client, &pod, &config, "app", POLITE)
        .await
        .map_err(step("Create/StartContainer"))?;
    let out = exec(client, &container, &["echo", "ok"], 10)
        .await
        .map_err(step("ExecSync"))?;
    if out.stdout != b"ok\n" || out.exit_code != 0 {
        return Err(format!("ExecSync answered {out:?}"));
    }
    stop(client, &container, 10)
        .await
        .map_err(step("StopContainer"))?;
    let exited = status(client, &container)
        .await
        .map_err(step("ContainerStatus"))?;
    if (exited.state, exited.exit_code, exited.reason.as_str())
        != (ContainerState::ContainerExited as i32, 0, "Completed")
    {
        return Err(format!(
            "stopped container reported state {} exit {} reason {:?}",
            exited.state, exited.exit_code, exited.reason
        ));
    }
    remove(client, &container)
        .await
        .map_err(step("RemoveContainer"))?;
    stop_pod(client, &pod)
        .await
        .map_err(step("StopPodSandbox"))?;
    remove_pod(client, &pod)
        .await
        .map_err(step("RemovePodSandbox"))
}

async fn load(chaos: &Arc<Chaos>, plan: Plan) -> Outcome {
    let mut outcome = Outcome::new(&format!(
        "load: {} clients x {} cycles",
        plan.clients, plan.cycles
    ));
    let workers = (0..plan.clients).map(|c| {
        let chaos = Arc::clone(chaos);
        tokio::spawn(async move {
            let mut client = chaos.client().await;
            let mut results = Vec::new();
            for cycle in 0..plan.cycles {
                let started = Instant::now();
                let result = one_cycle(&chaos, &mut client, &format!("load-{c}-{cycle}")).await;
                results.push((started.elapsed(), result));
            }
            results
        })
    });
    let mut durations = Vec::new();
    for worker in join_all(workers).await {
        match worker {
            Ok(results) => {
                for (took, result) in results {
                    outcome.runs += 1;
                    durations.push(took);
                    if let Err(why) = result {
                        outcome.fail("cycle", why);
                    }
                }
            }
            Err(e) => outcome.fail("client task", e),
        }
    }
    durations.sort();
    if !durations.is_empty() {
        let at = |q: f64| durations[((durations.len() - 1) as f64 * q) as usize];
        outcome.notes.push(format!(
            "cycle p50 {:.0} ms, p95 {:.0} ms",
            at(0.5).as_secs_f64() * 1e3,
            at(0.95).as_secs_f64() * 1e3
        ));
    }
    chaos.finish(&mut outcome).await;
    outcome
}

async fn join_all<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, String>> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.map_err(|e| e.to_string()));
    }
    results
}

// ---- crash points ----

/// An image with one layer of its own, so that pulling it downloads something new.
fn unique_image(marker: &str) -> ImageParts {
    let mut builder = tar::Builder::new(Vec::new());
    let content = format!("{marker}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder
        .append_data(&mut header, format!("chaos-{marker}"), content.as_bytes())
        .expect("tar");
    let layer = builder.into_inner().expect("tar");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string()
    .into_bytes();
    ImageParts { layer, config }
}

/// Where the objects a crash scenario made before the crash stand.
#[derive(Debug, Default)]
struct Scene {
    pod: Option<(String, PodSandboxConfig)>,
    container: Option<String>,
}

/// Sets up what crash point `point` needs, then makes the call that reaches it.
async fn reach(chaos: &Chaos, point: &str, n: usize, outcome: &mut Outcome) -> Scene {
    let mut scene = Scene::default();
    let name = format!("crash-{n}");
    // What must exist before crustd is armed.
    let needs_pod = point.starts_with("container-")
        || matches!(point, "pod-before-shim-shutdown" | "pod-before-teardown");
    let needs_created = point.starts_with("container-") && point != "container-after-record";
    let needs_running = matches!(
        point,
        "container-stop-after-signal"
            | "container-before-teardown"
            | "container-before-record-removal"
    );
    {
        let mut client = chaos.client().await;
        if needs_pod {
            match chaos.run_pod(&mut client, &name).await {
                Ok(pod) => scene.pod = Some(pod),
                Err(e) => outcome.fail("RunPodSandbox before the crash", e.message()),
            }
        }
        if let (true, Some((pod, config))) = (needs_created, &scene.pod) {
            match chaos.create(&mut client, pod, config, "app", POLITE).await {
                Ok(id) => scene.container = Some(id),
                Err(e) => outcome.fail("CreateContainer before the crash", e.message()),
            }
        }
        if let (true, Some(id)) = (needs_running, &scene.container)
            && let Err(e) = start(&mut client, id).await
        {
            outcome.fail("StartContainer before the crash", e.message());
        }
    }
    chaos.crustd.arm_crash_point(point);
    let mut client = chaos.client().await;
    let call: Answer<()> = match point {
        "pull-after-download" | "pull-before-record" => {
            let tag = format!("crash-{n}");
            chaos
                .registry
                .push_parts(
                    "chaos/unique",
                    &tag,
                    LayerForm::DockerGzip,
                    unique_image(&tag),
                )
                .await;
            let mut images = chaos.crustd.images().await;
            images
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: chaos.registry.reference("chaos/unique", &tag),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
        point if point.starts_with("pod-after") || point == "pod-before-shim-start" => chaos
            .run_pod(&mut client, &name)
            .await
            .map(|pod| scene.pod = Some(pod)),
        "container-after-record" => match &scene.pod {
            Some((pod, config)) => chaos
                .create(&mut client, pod, config, "app", POLITE)
                .await
                .map(|id| scene.container = Some(id)),
            None => Ok(()),
        },
        "container-before-task-create"
        | "container-after-task-create"
        | "container-after-task-start" => match &scene.container {
            Some(id) => start(&mut client, id).await,
            None => Ok(()),
        },
        "container-stop-after-signal" => match &scene.container {
            Some(id) => stop(&mut client, id, 10).await,
            None => Ok(()),
        },
        "container-before-teardown" | "container-before-record-removal" => match &scene.container {
            Some(id) => remove(&mut client, id).await,
            None => Ok(()),
        },
        "pod-before-shim-shutdown" => match &scene.pod {
            Some((pod, _)) => stop_pod(&mut client, pod).await,
            None => Ok(()),
        },
        "pod-before-teardown" => match &scene.pod {
            Some((pod, _)) => remove_pod(&mut client, pod).await,
            None => Ok(()),
        },
        other => Err(Status::internal(format!(
            "no scenario for crash point {other}"
        ))),
    };
    outcome.check(
        "the call reaching the crash point",
        call.is_err(),
        "succeeded: crustd did not crash",
    );
    outcome.check(
        "crustd died at the crash point",
        chaos.crustd.died_of_sigkill(Duration::from_secs(15)),
        "it did not die of SIGKILL",
    );
    scene
}

/// What must hold after the restart, per crash point.
async fn check_after_restart(chaos: &Chaos, point: &str, scene: &Scene, outcome: &mut Outcome) {
    let mut client = chaos.client().await;
    let listing = match chaos.listing(&mut client).await {
        Ok(listing) => listing,
        Err(e) => return outcome.fail("list after the restart", e.message()),
    };
    if let Some((pod, _)) = &scene.pod {
        outcome.check(
            "the pod is listed after the restart",
            listing.0.iter().any(|p| &p.id == pod),
            point,
        );
    }
    let Some(id) = &scene.container else {
        return;
    };
    let state = status(&mut client, id).await;
    match point {
        "container-before-task-create" => {
            // The start never reached the shim: still created, and it starts now.
            let created = state
                .as_ref()
                .is_ok_and(|s| s.state == ContainerState::ContainerCreated as i32);
            outcome.check(
                "a start cut before the task stays created",
                created,
                format!("{state:?}"),
            );
            if let Err(e) = start(&mut client, id).await {
                outcome.fail("StartContainer after the restart", e.message());
            }
            let out = exec(&mut client, id, &["echo", "ok"], 10).await;
            outcome.check(
                "the container started after the restart runs",
                out.as_ref().is_ok_and(|o| o.stdout == b"ok\n"),
                format!("{out:?}"),
            );
        }
        "container-after-task-create" => {
            // runc created it, nothing started it: killed and reported unknown (containerd).
            let lost = state.as_ref().is_ok_and(|s| {
                (s.state, s.exit_code, s.reason.as_str())
                    == (ContainerState::ContainerExited as i32, 255, "Unknown")
            });
            outcome.check(
                "a half-started container is exited unknown",
                lost,
                format!("{state:?}"),
            );
            outcome.check(
                "its runc container is gone",
                !chaos.crustd.runc_root().join(id).exists(),
                "runc state left",
            );
        }
        "container-after-task-start" | "container-stop-after-signal" => {
            // It runs (or was stopping): crustd knows it, and can stop it.
            if let Err(e) = stop(&mut client, id, 10).await {
                outcome.fail("StopContainer after the restart", e.message());
            }
            let stopped = status(&mut client, id).await;
            outcome.check(
                "stopped after the restart with its own exit",
                stopped.as_ref().is_ok_and(|s| {
                    s.state == ContainerState::ContainerExited as i32 && s.exit_code == 0
                }),
                format!("{stopped:?}"),
            );
        }
        _ => {}
    }
}

async fn crash_points(chaos: &Chaos) -> Outcome {
    const POINTS: &[&str] = &[
        "pull-after-download",
        "pull-before-record",
        "pod-after-record",
        "pod-after-network",
        "pod-after-files",
        "pod-before-shim-start",
        "pod-after-shim-start",
        "pod-after-infra-create",
        "pod-after-infra-start",
        "container-after-record",
        "container-before-task-create",
        "container-after-task-create",
        "container-after-task-start",
        "container-stop-after-signal",
        "container-before-teardown",
        "container-before-record-removal",
        "pod-before-shim-shutdown",
        "pod-before-teardown",
    ];
    let mut outcome = Outcome::new(&format!("crustd SIGKILLed at {} points", POINTS.len() + 1));
    for (n, point) in POINTS.iter().enumerate() {
        outcome.runs += 1;
        let before = outcome.failure_count();
        let scene = reach(chaos, point, n, &mut outcome).await;
        chaos.crustd.start_again();
        check_after_restart(chaos, point, &scene, &mut outcome).await;
        chaos.finish(&mut outcome).await;
        if !outcome.leaks.is_empty() {
            outcome.fail(&format!("leaks after {point}"), outcome.leaks.join(", "));
        }
        if outcome.failure_count() > before {
            outcome.notes.push(format!("{point}: failed"));
        }
    }
    outcome.runs += 1;
    exit_during_outage(chaos, &mut outcome).await;
    chaos.finish(&mut outcome).await;
    outcome
}

/// A container exits while crustd is down (killed from outside): its exit is recorded with
/// its code and time after the restart.
async fn exit_during_outage(chaos: &Chaos, outcome: &mut Outcome) {
    let mut client = chaos.client().await;
    let Ok((pod, config)) = chaos.run_pod(&mut client, "outage").await else {
        return outcome.fail("RunPodSandbox", "outage pod");
    };
    let Ok(id) = chaos
        .run(
            &mut client,
            &pod,
            &config,
            "short",
            &["sh", "-c", "sleep 1; exit 7"],
        )
        .await
    else {
        return outcome.fail("Create/StartContainer", "outage container");
    };
    drop(client);
    chaos.crustd.kill();
    let down = now_nanos();
    let runc_root = chaos.crustd.runc_root();
    let exited = wait_until(Duration::from_secs(10), || {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["state", &id])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"stopped\""))
    });
    outcome.check(
        "the container exited during the outage",
        exited,
        "it did not",
    );
    chaos.crustd.start_again();
    let mut client = chaos.client().await;
    let state = status(&mut client, &id).await;
    outcome.check(
        "an exit during the outage keeps its code and time",
        state.as_ref().is_ok_and(|s| {
            s.state == ContainerState::ContainerExited as i32
                && s.exit_code == 7
                && s.reason == "Error"
                && s.finished_at > down
        }),
        format!("{state:?}"),
    );
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---- shims killed or hung ----

async fn pod_with_two(
    chaos: &Chaos,
    name: &str,
    outcome: &mut Outcome,
) -> Option<(String, Vec<String>)> {
    let mut client = chaos.client().await;
    let (pod, config) = match chaos.run_pod(&mut client, name).await {
        Ok(pod) => pod,
        Err(e) => {
            outcome.fail("RunPodSandbox", e.message());
            return None;
        }
    };
    let mut containers = Vec::new();
    for (name, command) in [("polite", POLITE), ("stubborn", STUBBORN)] {
        match chaos.run(&mut client, &pod, &config, name, command).await {
            Ok(id) => containers.push(id),
            Err(e) => outcome.fail("Create/StartContainer", e.message()),
        }
    }
    Some((pod, containers))
}

/// Checks that a pod whose shim is gone reports its containers exited as containerd does
/// (137 from the shim's delete, reason Error), only once their processes are gone.
async fn check_lost_pod(
    chaos: &Chaos,
    pod: &str,
    containers: &[String],
    limit: Duration,
    outcome: &mut Outcome,
) {
    let mut client = chaos.client().await;
    for id in containers {
        let state = wait_exited(&mut client, id, limit).await;
        let left = processes_in(&chaos.crustd.cgroup_root, &format!("{pod}/{id}"));
        outcome.check(
            "no process of a container left once its exit is reported",
            left.is_empty(),
            format!("{} left in the container's cgroup", left.len()),
        );
        outcome.check(
            "containers of a lost shim exit 137, reason Error",
            state.as_ref().is_ok_and(|s| {
                (s.state, s.exit_code, s.reason.as_str())
                    == (ContainerState::ContainerExited as i32, 137, "Error")
            }),
            format!("{state:?}"),
        );
    }
    // Not ready once its infra process is gone too (cleaned up after the containers).
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let ready = pod_state(&mut client, pod).await;
        if ready.as_ref().ok() == Some(&(PodSandboxState::SandboxNotready as i32))
            || Instant::now() > deadline
        {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    outcome.check(
        "the pod of a lost shim is not ready",
        ready.as_ref().ok() == Some(&(PodSandboxState::SandboxNotready as i32)),
        format!("{ready:?}"),
    );
    let left = processes_in(&chaos.crustd.cgroup_root, pod);
    outcome.check(
        "no process left in a pod not ready after its shim was lost",
        left.is_empty(),
        format!("{} left in the pod's cgroup", left.len()),
    );
}

async fn shim_killed(chaos: &Chaos) -> Outcome {
    let mut outcome = Outcome::new("a pod's shim SIGKILLed");
    outcome.runs = 1;
    if let Some((pod, containers)) = pod_with_two(chaos, "shim-killed", &mut outcome).await {
        match chaos.crustd.shim_pid_of(&pod) {
            Some(pid) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                check_lost_pod(
                    chaos,
                    &pod,
                    &containers,
                    Duration::from_secs(15),
                    &mut outcome,
                )
                .await;
            }
            None => outcome.fail("find the pod's shim", "no shim process"),
        }
    }
    chaos.finish(&mut outcome).await;
    outcome
}

async fn shim_hung(chaos: &Chaos) -> Outcome {
    let mut outcome = Outcome::new("a pod's shim SIGSTOPped");
    outcome.runs = 1;
    if let Some((pod, containers)) = pod_with_two(chaos, "shim-hung", &mut outcome).await {
        match chaos.crustd.shim_pid_of(&pod) {
            Some(pid) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                let started = Instant::now();
                let mut client = chaos.client().await;
                // Reported while it hangs.
                let mut reported = false;
                while started.elapsed() < Duration::from_secs(40) && !reported {
                    if let Ok(s) = status(&mut client, &containers[0]).await {
                        reported = s.message.contains("not answered");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                outcome.check(
                    "ContainerStatus says the shim does not answer",
                    reported,
                    "never said",
                );
                // A CRI call on the hung pod comes back, bounded.
                let call = Instant::now();
                let stopped = stop(&mut client, &containers[1], 0).await;
                outcome.notes.push(format!(
                    "StopContainer on the hung pod answered in {:.1} s ({})",
                    call.elapsed().as_secs_f64(),
                    match &stopped {
                        Ok(()) => "OK".to_string(),
                        Err(e) => format!("{:?}", e.code()),
                    }
                ));
                outcome.check(
                    "no CRI call hangs on a hung shim",
                    call.elapsed() < Duration::from_secs(45),
                    format!("{:?}", call.elapsed()),
                );
                check_lost_pod(
                    chaos,
                    &pod,
                    &containers,
                    Duration::from_secs(90),
                    &mut outcome,
                )
                .await;
                outcome.notes.push(format!(
                    "hung shim killed and cleaned up within {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
                // Whatever happened, never leave a stopped process behind.
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            None => outcome.fail("find the pod's shim", "no shim process"),
        }
    }
    chaos.finish(&mut outcome).await;
    outcome
}

// ---- log directory ----

/// A tmpfs mounted by this program, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Option<Self> {
        fs::create_dir_all(at).ok()?;
        let done = command::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(at),
            None,
            Duration::from_secs(10),
        );
        done.success().then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn log_directory(chaos: &Chaos) -> Outcome {
    let mut outcome = Outcome::new("log file system full, then read-only");
    outcome.runs = 1;
    let name = "full-logs";
    let dir = chaos.logs.path().join(name);
    let Some(small) = Tmpfs::mount(&dir, "size=256k") else {
        outcome.fail("mount a small tmpfs for the logs", "mount failed");
        return outcome;
    };
    let mut client = chaos.client().await;
    let run = async {
        let (pod, config) = chaos.run_pod(&mut client, name).await?;
        let id = chaos
            .run(
                &mut client,
                &pod,
                &config,
                "chatty",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do echo filling-the-log-file-system-up; done",
                ],
            )
            .await?;
        Ok::<_, Status>(id)
    };
    let id = match run.await {
        Ok(id) => id,
        Err(e) => {
            outcome.fail("start the chatty container", e.message());
            drop(small);
            chaos.finish(&mut outcome).await;
            return outcome;
        }
    };
    let full = wait_until(Duration::from_secs(20), || {
        nix::sys::statvfs::statvfs(&dir).is_ok_and(|s| s.blocks_available() == 0)
    });
    outcome.check("the log file system fills up", full, "it did not");
    let alive = exec(&mut client, &id, &["echo", "alive"], 10).await;
    outcome.check(
        "a container whose log is full keeps running",
        alive.as_ref().is_ok_and(|o| o.stdout == b"alive\n"),
        format!("{alive:?}"),
    );
    // Read-only from now on: a read-only file system over the log directory.
    let readonly = Tmpfs::mount(&dir, "ro,size=64k");
    outcome.check(
        "the log directory turns read-only",
        readonly.is_some(),
        "mount failed",
    );
    let reopened = client
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await;
    outcome.check(
        "reopening a log on a read-only directory fails",
        reopened.is_err(),
        "it succeeded",
    );
    let still = exec(&mut client, &id, &["echo", "alive"], 10).await;
    outcome.check(
        "the container runs on after its log turned read-only",
        still.as_ref().is_ok_and(|o| o.stdout == b"alive\n"),
        format!("{still:?}"),
    );
    let stopped = stop(&mut client, &id, 10).await;
    outcome.check(
        "it stays stoppable",
        stopped.is_ok(),
        format!("{stopped:?}"),
    );
    let state = status(&mut client, &id).await;
    outcome.check(
        "its exit is recorded",
        state
            .as_ref()
            .is_ok_and(|s| s.state == ContainerState::ContainerExited as i32),
        format!("{state:?}"),
    );
    drop(readonly);
    drop(small);
    chaos.finish(&mut outcome).await;
    outcome
}

// ---- churn ----

async fn churn(chaos: &Arc<Chaos>, cycles: usize) -> Outcome {
    let mut outcome = Outcome::new(&format!(
        "churn: 2 clients x {} create/start/stop 0/remove",
        cycles.div_ceil(2)
    ));
    let workers = (0..2).map(|c| {
        let chaos = Arc::clone(chaos);
        tokio::spawn(async move {
            let mut client = chaos.client().await;
            let mut failures = Vec::new();
            let (pod, config) = match chaos.run_pod(&mut client, &format!("churn-{c}")).await {
                Ok(pod) => pod,
                Err(e) => return (0, vec![format!("RunPodSandbox: {}", e.message())]),
            };
            let mut runs = 0;
            for n in 0..cycles.div_ceil(2) {
                runs += 1;
                let id = match chaos
                    .run(&mut client, &pod, &config, &format!("c{n}"), POLITE)
                    .await
                {
                    Ok(id) => id,
                    Err(e) => {
                        failures.push(format!("Create/StartContainer: {}", e.message()));
                        continue;
                    }
                };
                if let Err(e) = stop(&mut client, &id, 0).await {
                    failures.push(format!("StopContainer: {}", e.message()));
                }
                if let Err(e) = remove(&mut client, &id).await {
                    failures.push(format!("RemoveContainer: {}", e.message()));
                }
            }
            (runs, failures)
        })
    });
    for worker in join_all(workers).await {
        match worker {
            Ok((runs, failures)) => {
                outcome.runs += runs;
                for failure in failures {
                    outcome.fail("cycle", failure);
                }
            }
            Err(e) => outcome.fail("client task", e),
        }
    }
    // Between cycles nothing may pile up: only the two pods remain.
    let leaks = chaos.leaks(&mut outcome).await;
    outcome.check(
        "nothing left between cycles",
        leaks.is_empty(),
        leaks.join(", "),
    );
    chaos.finish(&mut outcome).await;
    outcome
}

// ---- hostile clients ----

/// Version answered, and how long it took.
async fn version_latency(chaos: &Chaos) -> Answer<Duration> {
    let started = Instant::now();
    let mut client = chaos.client().await;
    client.version(VersionRequest::default()).await?;
    Ok(started.elapsed())
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|e| e.count())
        .unwrap_or(0)
}

async fn hostile(chaos: &Chaos, plan: Plan) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut outcome = Outcome::new("hostile clients");
    let pid = chaos.crustd.pid().unwrap_or(0);
    let baseline = open_fds(pid);

    // Idle connections: others are served meanwhile; crustd closes them, fds come back.
    outcome.runs += 1;
    let mut idle = Vec::new();
    for _ in 0..plan.idle_connections {
        match tokio::net::UnixStream::connect(&chaos.crustd.socket).await {
            Ok(stream) => idle.push(stream),
            Err(e) => {
                outcome.fail("open an idle connection", e);
                break;
            }
        }
    }
    let latency = version_latency(chaos).await;
    outcome.check(
        "others are served beside idle connections",
        latency.as_ref().is_ok_and(|d| *d < Duration::from_secs(1)),
        format!("{latency:?}"),
    );
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            // Ok(0) (end of stream) or an error: crustd closed it.
            let _ = stream.read(&mut byte).await;
        }
    })
    .await
    .is_ok();
    outcome.check(
        "idle connections are closed after their first-request limit",
        closed,
        "some stayed open",
    );
    drop(idle);
    let fds_back = wait_until(Duration::from_secs(5), || open_fds(pid) <= baseline + 8);
    outcome.check(
        "crustd's open files return to their count",
        fds_back,
        format!("{} fds, {} before", open_fds(pid), baseline),
    );
    outcome.notes.push(format!(
        "{} idle connections closed by crustd",
        plan.idle_connections
    ));

    // Requests whose message never comes.
    outcome.runs += 1;
    match silent_streams(chaos, plan.silent_streams).await {
        Ok((answered, with_status, latency)) => {
            outcome.check(
                "requests whose message never comes are answered with a status",
                answered == plan.silent_streams && with_status == plan.silent_streams,
                format!("{answered} answered, {with_status} with a grpc-status"),
            );
            outcome.check(
                "others are served meanwhile",
                latency < Duration::from_secs(1),
                format!("{latency:?}"),
            );
        }
        Err(e) => outcome.fail("silent streams", e),
    }

    // Garbage and oversized input.
    outcome.runs += 1;
    if let Ok(mut stream) = tokio::net::UnixStream::connect(&chaos.crustd.socket).await {
        let garbage: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = stream.write_all(&garbage).await;
        let mut sink = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        outcome.check(
            "a garbage connection is closed",
            ended.is_ok(),
            "it stayed open",
        );
    }
    let mut client = chaos.client().await;
    let oversized = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                labels: [("big".to_string(), "x".repeat(5 << 20))].into(),
                ..pod_config("oversized", chaos.logs.path())
            }),
            runtime_handler: String::new(),
        })
        .await;
    outcome.check(
        "an oversized message is refused",
        oversized.as_ref().is_err_and(|e| {
            matches!(
                e.code(),
                Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
            )
        }),
        format!("{:?}", oversized.map(drop)),
    );
    let big_labels = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                labels: [("big".to_string(), "x".repeat(1 << 20))].into(),
                ..pod_config("big-labels", chaos.logs.path())
            }),
            runtime_handler: String::new(),
        })
        .await;
    outcome.check(
        "labels over the cap are InvalidArgument",
        big_labels
            .as_ref()
            .is_err_and(|e| e.code() == Code::InvalidArgument),
        format!("{:?}", big_labels.map(drop)),
    );
    let huge_id = "f".repeat(1 << 20);
    let unknown = status(&mut client, &huge_id).await;
    outcome.check(
        "a 1 MiB id is NotFound with a short message",
        unknown
            .as_ref()
            .is_err_and(|e| e.code() == Code::NotFound && e.message().len() < 300),
        format!("{:?}", unknown.map_err(|e| (e.code(), e.message().len()))),
    );

    // Every value a timeout field can hold.
    outcome.runs += 1;
    match chaos.run_pod(&mut client, "timeouts").await {
        Ok((pod, config)) => {
            if let Ok(id) = chaos
                .run(&mut client, &pod, &config, "polite", POLITE)
                .await
            {
                let out = exec(&mut client, &id, &["echo", "ok"], i64::MAX).await;
                outcome.check(
                    "ExecSync with the largest timeout",
                    out.as_ref().is_ok_and(|o| o.stdout == b"ok\n"),
                    format!("{out:?}"),
                );
                let out = exec(&mut client, &id, &["echo", "ok"], i64::MIN).await;
                outcome.check(
                    "ExecSync with the smallest timeout",
                    out.as_ref().is_ok_and(|o| o.stdout == b"ok\n"),
                    format!("{out:?}"),
                );
                let started = Instant::now();
                let stopped = stop(&mut client, &id, i64::MAX).await;
                outcome.check(
                    "StopContainer with the largest timeout",
                    stopped.is_ok() && started.elapsed() < Duration::from_secs(10),
                    format!("{stopped:?} after {:?}", started.elapsed()),
                );
            }
            if let Ok(id) = chaos
                .run(&mut client, &pod, &config, "stubborn", STUBBORN)
                .await
            {
                let stopped = stop(&mut client, &id, i64::MIN).await;
                outcome.check(
                    "StopContainer with the smallest timeout kills at once",
                    stopped.is_ok(),
                    format!("{stopped:?}"),
                );
            }
        }
        Err(e) => outcome.fail("RunPodSandbox", e.message()),
    }

    // Hundreds of clients at once.
    outcome.runs += 1;
    let many = (0..300).map(|_| {
        let socket = chaos.crustd.socket.clone();
        tokio::spawn(async move {
            let channel =
                crust_proto::cri::tonic::transport::Endpoint::try_from("http://[::]:50051")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move {
                            tokio::net::UnixStream::connect(socket)
                                .await
                                .map(hyper_util::rt::TokioIo::new)
                        }
                    }))
                    .await
                    .map_err(|e| e.to_string())?;
            RuntimeServiceClient::new(channel)
                .list_containers(ListContainersRequest { filter: None })
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    });
    let answered = join_all(many)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(()))))
        .count();
    outcome.check(
        "300 clients at once are all served",
        answered == 300,
        format!("{answered} of 300"),
    );
    let latency = version_latency(chaos).await;
    outcome.check(
        "crustd stays up and quick",
        latency.as_ref().is_ok_and(|d| *d < Duration::from_secs(1)),
        format!("{latency:?}"),
    );
    chaos.finish(&mut outcome).await;
    outcome
}

/// Opens `count` Version requests on one HTTP/2 connection and never sends their messages;
/// returns how many were answered, how many with a grpc-status, and a Version's latency
/// (over another connection) meanwhile.
async fn silent_streams(chaos: &Chaos, count: usize) -> Result<(usize, usize, Duration), String> {
    let stream = tokio::net::UnixStream::connect(&chaos.crustd.socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = h2::client::handshake(stream)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut pending = Vec::new();
    let mut open = Vec::new();
    for _ in 0..count {
        sender = sender.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::builder()
            .method("POST")
            .uri("http://localhost/runtime.v1.RuntimeService/Version")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, body) = sender
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        pending.push(response);
        open.push(body);
    }
    let latency = version_latency(chaos).await.map_err(|e| e.to_string())?;
    let mut answered = 0;
    let mut with_status = 0;
    for response in pending {
        let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(60), response).await else {
            continue;
        };
        answered += 1;
        let mut status = response.headers().get("grpc-status").cloned();
        if status.is_none() {
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.data().await {}
            if let Ok(Some(trailers)) = body.trailers().await {
                status = trailers.get("grpc-status").cloned();
            }
        }
        if status.is_some_and(|s| s != "0") {
            with_status += 1;
        }
    }
    drop(open);
    Ok((answered, with_status, latency))
}

// ---- main ----

fn print_table(outcomes: &[Outcome], started: Instant) {
    println!();
    println!(
        "{:<52} {:>6} {:>9} {:>7}",
        "section", "runs", "failures", "leaked"
    );
    for outcome in outcomes {
        println!(
            "{:<52} {:>6} {:>9} {:>7}",
            outcome.name,
            outcome.runs,
            outcome.failure_count(),
            outcome.leaks.len()
        );
        for note in &outcome.notes {
            println!("    {note}");
        }
        for (message, count) in &outcome.failures {
            println!("    {count} x {message}");
        }
        for leak in &outcome.leaks {
            println!("    leaked: {leak}");
        }
    }
    let failures: usize = outcomes.iter().map(Outcome::failure_count).sum();
    let leaks: usize = outcomes.iter().map(|o| o.leaks.len()).sum();
    println!(
        "{:<52} {:>6} {:>9} {:>7}   (target 0 and 0; {:.0} s)",
        "total",
        outcomes.iter().map(|o| o.runs).sum::<usize>(),
        failures,
        leaks,
        started.elapsed().as_secs_f64()
    );
}

async fn timed<F: std::future::Future<Output = Outcome>>(section: F) -> Outcome {
    let started = Instant::now();
    let mut outcome = section.await;
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome.notes.push(format!("{:.0} s", outcome.seconds));
    eprintln!(
        "== {}: {} failures, {} leaks",
        outcome.name,
        outcome.failure_count(),
        outcome.leaks.len()
    );
    outcome
}

async fn chaos_run(plan: Plan) -> ExitCode {
    let started = Instant::now();
    let WithImage {
        registry,
        crustd,
        image,
        ..
    } = match WithImage::start(false).await {
        Ok(started) => started,
        Err(why) => {
            eprintln!("cri-chaos: {why}");
            return ExitCode::FAILURE;
        }
    };
    let chaos = Arc::new(Chaos {
        registry,
        crustd,
        image,
        logs: tempfile::tempdir().expect("log dir"),
        pods_made: Mutex::new(HashSet::new()),
    });
    eprintln!("== cri-chaos: crustd with crash points, {plan:?}");
    let mut outcomes = Vec::new();
    for section in SECTIONS {
        if plan.only.is_some_and(|only| only != *section) {
            continue;
        }
        let outcome = match *section {
            "load" => timed(load(&chaos, plan)).await,
            "crash-points" => timed(crash_points(&chaos)).await,
            "shim-killed" => timed(shim_killed(&chaos)).await,
            "shim-hung" => timed(shim_hung(&chaos)).await,
            "log-directory" => timed(log_directory(&chaos)).await,
            "churn" => timed(churn(&chaos, plan.churn)).await,
            _ => timed(hostile(&chaos, plan)).await,
        };
        outcomes.push(outcome);
    }
    print_table(&outcomes, started);
    let bad = outcomes
        .iter()
        .any(|o| o.failure_count() > 0 || !o.leaks.is_empty());
    if bad {
        let kept = std::env::temp_dir().join("cri-chaos-crustd.log");
        match fs::write(&kept, chaos.crustd.log()) {
            Ok(()) => eprintln!("\ncrustd's log is kept at {}", kept.display()),
            Err(e) => eprintln!("\ncould not keep crustd's log: {e}"),
        }
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let plan = match Plan::from_args() {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("cri-chaos: {why}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cri-chaos: needs root (it runs containers)");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(chaos_run(plan))
}
