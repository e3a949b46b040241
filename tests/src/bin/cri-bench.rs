//! cri-bench: crustd and containerd 1.6's CRI plugin measured in one run on this machine, by
//! the same client code, printed side by side with the ratio crustd ÷ containerd and the
//! targets of issue 14. Run it through `packaging/cri-bench.sh`, which builds crustd and its
//! shim optimized.
//!
//! Both servers run privately: crustd through the `WithImage` fixture, containerd through
//! `CriContainerd` (Go's runc shim, the same CNI conflist on a bridge of its own, the same
//! local registry over plain http, a sandbox image built here from busybox-static). Every
//! section takes the two in turn, round after round, alternating which goes first, so that
//! drift on the machine hits both alike:
//!
//! - PullImage of a small image (busybox) and of a 5-layer gzip image of random bytes, cold
//!   (the image removed and its layers gone first) and warm (already present); p50.
//! - Cycles at 1 and at 4 parallel clients (a connection each): a pod (RunPodSandbox,
//!   StopPodSandbox, RemovePodSandbox, with CNI), a container in an existing pod
//!   (CreateContainer, StartContainer, StopContainer, RemoveContainer) and ExecSync of `true`;
//!   p50 and p95.
//! - With N pods of two sleeping containers each running in both (the full run: 100 pods,
//!   200 containers): ListContainers, ListPodSandbox, ContainerStatus and ListContainerStats,
//!   as kubelet calls them every second; p50.
//! - Memory: the server's RSS idle and with the N pods (VmRSS), and its shims' PSS per pod
//!   (`smaps_rollup`).
//! - Failed calls, which must be none.
//!
//! A value that was not measured prints "n/a" and gets no verdict; with `--check` (as CI runs
//! it) such a value, or any failed call, makes the program exit non-zero. Targets stay
//! verdicts in the table: missing one is a result, not a failure.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::tonic::transport::Channel;
use crust_proto::cri::*;
use crust_tests::cleanup;
use crust_tests::containerd::{CriContainerd, CriSetup};
use crust_tests::cri::{self, Client};
use crust_tests::crustd::{Crustd, NODE_LOG, WithImage};
use crust_tests::image::{ImageParts, image_parts, image_parts_with_volume, sha256};
use crust_tests::registry::{LayerForm, PushedImage, Registry};
use serde_json::Value;
use tokio::task::JoinSet;

/// The two servers, in the order of the table's columns.
const SERVERS: [&str; 2] = ["crustd", "containerd"];
/// Parallel clients of the concurrent runs.
const PARALLEL: usize = 4;
/// Layers of the large image.
const LARGE_LAYERS: usize = 5;
/// How long RemoveImage may take to make an image's layers go away.
const LAYERS_GONE_LIMIT: Duration = Duration::from_secs(20);
/// ExecSync's own timeout, in seconds.
const EXEC_TIMEOUT: i64 = 10;
/// Failure messages kept per server, for the report after the table.
const FAILURES_KEPT: usize = 8;

/// How much to measure; `--quick` makes every count small, for a smoke run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// PullImage rounds per image, cold and warm.
    pulls: usize,
    /// Pod and container cycles per server and client count (ExecSync: five times as many).
    cycles: usize,
    /// Pods of two containers each, running while the list calls and memory are measured.
    pods: usize,
    /// Calls per list measurement.
    lists: usize,
    /// MiB of random bytes in each layer of the large image.
    layer_mib: usize,
    /// Exit non-zero when a value was not measured or a call failed.
    check: bool,
}

const USAGE: &str = "usage: cri-bench [--quick] [--check] [--pulls N] [--cycles N] [--pods N] [--lists N] [--layer-mib N]";

impl Plan {
    const FULL: Plan = Plan {
        pulls: 10,
        cycles: 40,
        pods: 100,
        lists: 20,
        layer_mib: 10,
        check: false,
    };
    const QUICK: Plan = Plan {
        pulls: 2,
        cycles: 4,
        pods: 5,
        lists: 5,
        layer_mib: 2,
        check: false,
    };

    /// `--quick` sets every count small wherever it stands; counts given beside it still win.
    fn from_args(args: &[String]) -> Result<Self, String> {
        let mut plan = if args.iter().any(|a| a == "--quick") {
            Plan::QUICK
        } else {
            Plan::FULL
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut number = || -> Result<usize, String> {
                args.next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{flag} needs a number above 0\n{USAGE}"))
            };
            match flag.as_str() {
                "--quick" => {}
                "--check" => plan.check = true,
                "--pulls" => plan.pulls = number()?,
                "--cycles" => plan.cycles = number()?,
                "--pods" => plan.pods = number()?,
                "--lists" => plan.lists = number()?,
                "--layer-mib" => plan.layer_mib = number()?,
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        Ok(plan)
    }
}

// ---- samples, rows and the table ----

/// Durations of one measurement.
#[derive(Debug, Default, Clone)]
struct Samples(Vec<Duration>);

impl Samples {
    /// The nearest-rank `q` quantile in ms; None without samples.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).map(|d| d.as_secs_f64() * 1000.0)
    }

    fn p50(&self) -> Option<f64> {
        self.quantile_ms(0.5)
    }

    fn p95(&self) -> Option<f64> {
        self.quantile_ms(0.95)
    }
}

/// What crustd is to do against containerd on a row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    None,
    /// crustd's value at most this fraction of containerd's.
    RatioAtMost(f64),
    /// crustd's value exactly this: a count of failures, which also breaks `--check`.
    Exactly(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Untargeted,
    Met,
    Missed,
    /// A value the target needs was not measured.
    NotMeasured,
}

/// One line of the table: a value per server (None when nothing was measured).
#[derive(Debug, Clone)]
struct Row {
    name: String,
    values: [Option<f64>; 2],
    target: Target,
}

impl Row {
    fn new(name: impl Into<String>, values: [Option<f64>; 2], target: Target) -> Self {
        Row {
            name: name.into(),
            values,
            target,
        }
    }

    fn verdict(&self) -> Verdict {
        let [Some(crustd), containerd] = self.values else {
            return Verdict::NotMeasured;
        };
        let met = match (self.target, containerd) {
            (Target::None, _) => return Verdict::Untargeted,
            (Target::RatioAtMost(ratio), Some(containerd)) => crustd <= ratio * containerd,
            (Target::RatioAtMost(_), None) => return Verdict::NotMeasured,
            (Target::Exactly(value), _) => crustd == value,
        };
        if met { Verdict::Met } else { Verdict::Missed }
    }

    /// Why this row makes `--check` fail: a value not measured, or failures counted (on
    /// either side: a failing containerd breaks the comparison as much as a failing crustd).
    fn broken(&self) -> Option<String> {
        if let Some(missing) = self.values.iter().position(Option::is_none) {
            return Some(format!("{}: {} not measured", self.name, SERVERS[missing]));
        }
        if let Target::Exactly(expected) = self.target {
            let off: Vec<String> = self
                .values
                .iter()
                .zip(SERVERS)
                .filter(|(value, _)| **value != Some(expected))
                .map(|(value, server)| format!("{server} {}", format_value(*value)))
                .collect();
            if !off.is_empty() {
                return Some(format!(
                    "{}: {}, expected {expected}",
                    self.name,
                    off.join(", ")
                ));
            }
        }
        None
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => String::new(),
            Target::RatioAtMost(ratio) => format!("≤ {ratio}×"),
            Target::Exactly(value) => format!("= {value}"),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<46} {:>11} {:>11} {:>10}   target",
        "", SERVERS[0], SERVERS[1], "ratio"
    );
    for row in rows {
        // A count of failures has no meaningful ratio.
        let ratio = match row.values {
            _ if matches!(row.target, Target::Exactly(_)) => "-".to_string(),
            [Some(crustd), Some(containerd)] if containerd != 0.0 => {
                format!("{:.2}", crustd / containerd)
            }
            _ => "-".to_string(),
        };
        let verdict = match row.verdict() {
            Verdict::Untargeted => "",
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::NotMeasured => "n/a",
        };
        let line = format!(
            "{:<46} {:>11} {:>11} {:>10}   {:<8} {verdict}",
            row.name,
            format_value(row.values[0]),
            format_value(row.values[1]),
            ratio,
            row.target_text(),
        );
        println!("{}", line.trim_end());
    }
    println!("(ratio = crustd ÷ containerd; times in ms, memory in MiB)");
}

fn format_value(value: Option<f64>) -> String {
    match value {
        None => "n/a".to_string(),
        Some(value) if value.fract() == 0.0 && value.abs() < 1e12 => format!("{value:.0}"),
        Some(value) if value.abs() >= 100.0 => format!("{value:.1}"),
        Some(value) => format!("{value:.2}"),
    }
}

/// Failed calls per server, with the first few messages.
#[derive(Debug, Default)]
struct Failures {
    counts: [usize; 2],
    messages: [Vec<String>; 2],
}

impl Failures {
    fn record(&mut self, server: usize, what: String) {
        self.counts[server] += 1;
        if self.messages[server].len() < FAILURES_KEPT {
            self.messages[server].push(what);
        }
    }

    fn absorb(&mut self, other: Failures) {
        for server in 0..2 {
            self.counts[server] += other.counts[server];
            for message in &other.messages[server] {
                if self.messages[server].len() < FAILURES_KEPT {
                    self.messages[server].push(message.clone());
                }
            }
        }
    }

    fn values(&self) -> [Option<f64>; 2] {
        self.counts.map(|count| Some(count as f64))
    }
}

/// The servers in the order round `round` takes them: alternating which goes first, so that
/// drift on the machine (and any first-in-round cost) falls on both alike.
fn in_turn(round: usize) -> [usize; 2] {
    if round % 2 == 0 { [0, 1] } else { [1, 0] }
}

// ---- the servers ----

/// One CRI server under measurement, seen only through what both have: a socket, a pid,
/// shims, a cgroup for its pods, and where it keeps an image's layers.
#[derive(Debug, Clone)]
struct Server {
    index: usize,
    socket: PathBuf,
    pid: u32,
    /// Its pods go below this (`cgroup_parent`, as kubelet gives one).
    cgroup_root: String,
    /// Its pods' log directory.
    logs: PathBuf,
    layers: LayerStore,
}

/// Where a server keeps an image's layers, to tell that a removed image's are gone.
#[derive(Debug, Clone)]
enum LayerStore {
    /// crustd: a directory per layer, named after its digest, under `<root>/layers`.
    Crustd(PathBuf),
    /// containerd: compressed blobs by digest in its content store.
    Containerd(PathBuf),
}

impl LayerStore {
    fn holds(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        match self {
            LayerStore::Crustd(layers) => cleanup::names_in(layers)
                .iter()
                .any(|name| name.contains(hex)),
            LayerStore::Containerd(blobs) => blobs.join(hex).exists(),
        }
    }
}

impl Server {
    fn crustd(crustd: &Crustd, logs: &Path) -> Result<Self, String> {
        Ok(Server {
            index: 0,
            socket: crustd.socket.clone(),
            pid: crustd.pid().ok_or("crustd is not running")?,
            cgroup_root: crustd.cgroup_root.clone(),
            logs: logs.join("crustd"),
            layers: LayerStore::Crustd(crustd.root().join("layers")),
        })
    }

    fn containerd(containerd: &CriContainerd, logs: &Path) -> Result<Self, String> {
        Ok(Server {
            index: 1,
            socket: containerd.socket.clone(),
            pid: containerd.pid().ok_or("containerd is not running")?,
            cgroup_root: containerd.cgroup_root.clone(),
            logs: logs.join("containerd"),
            layers: LayerStore::Containerd(containerd.content_blobs()),
        })
    }

    fn name(&self) -> &'static str {
        SERVERS[self.index]
    }

    /// A connection of its own: a client of the parallel runs, or kubelet.
    async fn channel(&self) -> Result<Channel, String> {
        cri::connect_unix(&self.socket, cri::plain_endpoint())
            .await
            .map_err(|e| format!("connect to {}: {e}", self.name()))
    }

    async fn runtime(&self) -> Result<Client, String> {
        Ok(Client::new(self.channel().await?))
    }

    async fn images(&self) -> Result<ImageServiceClient<Channel>, String> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// Pod `name`'s config: the tests' pod, with a cgroup of its own below the server's.
    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = cri::pod_config(name, "cri-bench", &self.logs);
        config.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/{name}", self.cgroup_root),
            ..Default::default()
        });
        config
    }

    /// Pids of its shim daemons: they name its socket in their arguments (the fixtures'
    /// `shim_pids` look for the same).
    fn shim_pids(&self) -> Vec<i32> {
        cleanup::processes_with_argument(&self.socket.display().to_string())
    }
}

/// The images of the run, in the registry.
#[derive(Debug, Clone)]
struct Images {
    /// What the containers run (pushed by `WithImage`).
    busybox: String,
    small: PulledImage,
    large: PulledImage,
}

/// An image the pull section takes away and brings back.
#[derive(Debug, Clone)]
struct PulledImage {
    reference: String,
    /// Its layers as stored in the registry.
    layers: Vec<String>,
    /// What the table calls it.
    label: String,
}

// ---- images ----

/// `parts` with its config edited by `edit`.
fn with_config(parts: ImageParts, edit: impl FnOnce(&mut Value)) -> Result<ImageParts, String> {
    let mut config: Value =
        serde_json::from_slice(&parts.config).map_err(|e| format!("image config: {e}"))?;
    edit(&mut config);
    Ok(ImageParts {
        layer: parts.layer,
        config: config.to_string().into_bytes(),
    })
}

/// A sandbox image like `pause`: busybox, whose command sleeps for as long as a pod lives
/// (StopPodSandbox kills it).
fn sandbox_image() -> Result<ImageParts, String> {
    let parts = image_parts("").map_err(|e| format!("busybox image: {e}"))?;
    with_config(parts, |config| {
        config["config"]["Cmd"] = serde_json::json!(["sleep", "2147483647"]);
    })
}

/// busybox with a file of its own in its layer, so that no other image shares that layer and
/// removing the image removes the layer.
fn small_image() -> Result<ImageParts, String> {
    let parts = image_parts_with_volume("", Some(("cri-bench", "marker", "cri-bench\n")))
        .map_err(|e| format!("busybox image: {e}"))?;
    with_config(parts, |config| {
        if let Some(inner) = config["config"].as_object_mut() {
            inner.remove("Volumes");
        }
    })
}

/// splitmix64: random enough that gzip cannot shrink it, and no dependency.
struct RandomBytes(u64);

impl RandomBytes {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// [`LARGE_LAYERS`] layers of one file of `mib` MiB of random bytes each, and their config.
fn large_image(mib: usize) -> io::Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut random = RandomBytes(0x00c0_ffee);
    let mut layers = Vec::with_capacity(LARGE_LAYERS);
    for n in 0..LARGE_LAYERS {
        let mut content = vec![0u8; mib << 20];
        random.fill(&mut content);
        let mut tar = tar::Builder::new(Vec::with_capacity(content.len() + 4096));
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, format!("data/layer-{n}"), content.as_slice())?;
        layers.push(tar.into_inner()?);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    Ok((layers, config))
}

/// Pushes the sandbox, small and large images; the sandbox image's reference and the others.
async fn push_images(
    registry: &Registry,
    busybox: &str,
    plan: Plan,
) -> Result<(String, Images), String> {
    let sandbox = sandbox_image()?;
    registry
        .push_parts("library/pause", "1", LayerForm::OciTar, sandbox)
        .await;
    let small = small_image()?;
    let small_size = small.layer.len();
    let pushed: PushedImage = registry
        .push_layers(
            "library/busybox-pull",
            "1",
            LayerForm::DockerGzip,
            vec![small.layer],
            small.config,
        )
        .await;
    let small = PulledImage {
        reference: registry.reference("library/busybox-pull", "1"),
        layers: pushed.layers,
        label: format!("busybox ({:.1} MiB)", small_size as f64 / (1 << 20) as f64),
    };
    let mib = plan.layer_mib;
    let (layers, config) = tokio::task::spawn_blocking(move || large_image(mib))
        .await
        .map_err(|e| format!("making the large image: {e}"))?
        .map_err(|e| format!("making the large image: {e}"))?;
    let pushed = registry
        .push_layers("library/random", "1", LayerForm::DockerGzip, layers, config)
        .await;
    let large = PulledImage {
        reference: registry.reference("library/random", "1"),
        layers: pushed.layers,
        label: format!("{LARGE_LAYERS}×{mib} MiB gzip"),
    };
    Ok((
        registry.reference("library/pause", "1"),
        Images {
            busybox: busybox.to_string(),
            small,
            large,
        },
    ))
}

fn image_spec(reference: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: reference.to_string(),
        ..Default::default()
    })
}

async fn pull(images: &mut ImageServiceClient<Channel>, reference: &str) -> Result<(), String> {
    images
        .pull_image(PullImageRequest {
            image: image_spec(reference),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|e| format!("PullImage {reference}: {e}"))
}

/// Removes `image` and waits until the server holds none of its layers: the next pull is
/// cold.
async fn remove_image(
    server: &Server,
    images: &mut ImageServiceClient<Channel>,
    image: &PulledImage,
) -> Result<(), String> {
    images
        .remove_image(RemoveImageRequest {
            image: image_spec(&image.reference),
        })
        .await
        .map_err(|e| format!("RemoveImage {}: {e}", image.reference))?;
    let status = images
        .image_status(ImageStatusRequest {
            image: image_spec(&image.reference),
            verbose: false,
        })
        .await
        .map_err(|e| format!("ImageStatus {}: {e}", image.reference))?
        .into_inner();
    if status.image.is_some() {
        return Err(format!(
            "{} is still listed after RemoveImage",
            image.reference
        ));
    }
    let deadline = Instant::now() + LAYERS_GONE_LIMIT;
    while image.layers.iter().any(|layer| server.layers.holds(layer)) {
        if Instant::now() > deadline {
            return Err(format!(
                "{}'s layers were still there {}s after RemoveImage",
                image.reference,
                LAYERS_GONE_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---- sections ----

/// PullImage of `image`, cold then warm, the servers in turn each round; rows of p50s.
async fn pulls(
    plan: Plan,
    servers: &[Server; 2],
    image: &PulledImage,
    rows: &mut Vec<Row>,
    failures: &mut Failures,
) -> Result<(), String> {
    eprintln!("== PullImage {}: {} rounds", image.label, plan.pulls);
    let mut clients = [servers[0].images().await?, servers[1].images().await?];
    let mut cold = [Samples::default(), Samples::default()];
    let mut warm = [Samples::default(), Samples::default()];
    for round in 0..plan.pulls {
        for index in in_turn(round) {
            let server = &servers[index];
            let client = &mut clients[index];
            if let Err(why) = remove_image(server, client, image).await {
                failures.record(index, why);
                continue;
            }
            let began = Instant::now();
            match pull(client, &image.reference).await {
                Ok(()) => cold[index].0.push(began.elapsed()),
                Err(why) => {
                    failures.record(index, why);
                    continue;
                }
            }
            let began = Instant::now();
            match pull(client, &image.reference).await {
                Ok(()) => warm[index].0.push(began.elapsed()),
                Err(why) => failures.record(index, why),
            }
        }
    }
    rows.push(Row::new(
        format!("PullImage {}, cold: p50", image.label),
        [cold[0].p50(), cold[1].p50()],
        Target::RatioAtMost(0.7),
    ));
    rows.push(Row::new(
        format!("PullImage {}, warm: p50", image.label),
        [warm[0].p50(), warm[1].p50()],
        Target::RatioAtMost(0.7),
    ));
    Ok(())
}

/// What one client does in one round of a cycle section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    /// RunPodSandbox, StopPodSandbox, RemovePodSandbox.
    Pod,
    /// CreateContainer, StartContainer, StopContainer, RemoveContainer in the client's pod.
    Container,
    /// ExecSync of `true` in the client's container.
    Exec,
}

impl Cycle {
    fn label(self) -> &'static str {
        match self {
            Cycle::Pod => "pod cycle (CNI)",
            Cycle::Container => "container cycle",
            Cycle::Exec => "ExecSync true",
        }
    }

    fn target(self) -> Target {
        match self {
            Cycle::Pod => Target::RatioAtMost(0.6),
            Cycle::Container | Cycle::Exec => Target::RatioAtMost(0.5),
        }
    }

    /// Samples per server and client count: an ExecSync is cheap, so it gets more.
    fn samples(self, plan: Plan) -> usize {
        match self {
            Cycle::Pod | Cycle::Container => plan.cycles,
            Cycle::Exec => plan.cycles * 5,
        }
    }
}

/// A pod that stays for the container and exec cycles, with a sleeping container in it.
#[derive(Debug, Clone)]
struct HomePod {
    name: String,
    id: String,
    config: PodSandboxConfig,
    container: String,
}

/// A client's own connection and what it works in.
#[derive(Debug, Clone)]
struct Worker {
    client: Client,
    server: Server,
    home: HomePod,
    busybox: String,
}

impl Worker {
    /// One cycle of `cycle`, named uniquely by `name`: how long it took, or the first failed
    /// call with every failure on the way (what it made is removed either way).
    async fn cycle(mut self, cycle: Cycle, name: String) -> Result<Duration, Vec<String>> {
        let began = Instant::now();
        let outcome = match cycle {
            Cycle::Pod => self.pod_cycle(&name).await,
            Cycle::Container => self.container_cycle(&name).await,
            Cycle::Exec => self.exec().await,
        };
        outcome.map(|()| began.elapsed())
    }

    async fn pod_cycle(&mut self, name: &str) -> Result<(), Vec<String>> {
        let config = self.server.pod_config(name);
        let id = cri::run_pod(&mut self.client, &config)
            .await
            .map_err(|e| vec![format!("RunPodSandbox {name}: {e}")])?;
        let mut failures = Vec::new();
        if let Err(e) = cri::stop_pod(&mut self.client, &id).await {
            failures.push(format!("StopPodSandbox {name}: {e}"));
        }
        if let Err(e) = cri::remove_pod(&mut self.client, &id).await {
            failures.push(format!("RemovePodSandbox {name}: {e}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    async fn container_cycle(&mut self, name: &str) -> Result<(), Vec<String>> {
        let config = cri::container_config(
            name,
            &self.busybox,
            &["sleep", "3600"],
            &format!("{}_{name}.log", self.home.name),
        );
        let id = self
            .client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.home.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.home.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
            .map_err(|e| vec![format!("CreateContainer {name}: {e}")])?;
        let mut failures = Vec::new();
        if let Err(e) = cri::start(&mut self.client, &id).await {
            failures.push(format!("StartContainer {name}: {e}"));
        } else if let Err(e) = cri::stop(&mut self.client, &id, 0).await {
            // No grace: the time a container takes over its stop signal is not the server's.
            failures.push(format!("StopContainer {name}: {e}"));
        }
        if let Err(e) = cri::remove(&mut self.client, &id).await {
            failures.push(format!("RemoveContainer {name}: {e}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    async fn exec(&mut self) -> Result<(), Vec<String>> {
        let answer = cri::exec(
            &mut self.client,
            &self.home.container,
            &["true"],
            EXEC_TIMEOUT,
        )
        .await
        .map_err(|e| vec![format!("ExecSync: {e}")])?;
        if answer.exit_code == 0 {
            Ok(())
        } else {
            Err(vec![format!("ExecSync true exited {}", answer.exit_code)])
        }
    }
}

/// Runs pod `name` with a sleeping container `sleeper`.
async fn run_home_pod(
    server: &Server,
    client: &mut Client,
    busybox: &str,
    name: &str,
) -> Result<HomePod, String> {
    let config = server.pod_config(name);
    let id = cri::run_pod(client, &config)
        .await
        .map_err(|e| format!("{}: RunPodSandbox {name}: {e}", server.name()))?;
    let container = cri::create_and_start(
        client,
        &id,
        &config,
        cri::container_config(
            "sleeper",
            busybox,
            &["sleep", "3600"],
            &format!("{name}_sleeper.log"),
        ),
    )
    .await
    .map_err(|e| format!("{}: a container in {name}: {e}", server.name()))?;
    Ok(HomePod {
        name: name.to_string(),
        id,
        config,
        container,
    })
}

/// Every cycle at 1 and at [`PARALLEL`] clients; rows of p50 and p95, and the failures of the
/// parallel runs apart.
async fn cycles(
    plan: Plan,
    servers: &[Server; 2],
    busybox: &str,
    rows: &mut Vec<Row>,
    failures: &mut Failures,
    parallel_failures: &mut Failures,
) -> Result<(), String> {
    eprintln!("== cycles at 1 and {PARALLEL} clients");
    // A connection per client and server, and a pod of its own with a running container.
    let mut workers: [Vec<Worker>; 2] = [Vec::new(), Vec::new()];
    for client in 0..PARALLEL {
        for index in in_turn(client) {
            let server = &servers[index];
            let mut connection = server.runtime().await?;
            let home =
                run_home_pod(server, &mut connection, busybox, &format!("home-{client}")).await?;
            workers[index].push(Worker {
                client: connection,
                server: server.clone(),
                home,
                busybox: busybox.to_string(),
            });
        }
    }
    for cycle in [Cycle::Pod, Cycle::Container, Cycle::Exec] {
        for clients in [1, PARALLEL] {
            let samples = cycle.samples(plan);
            let rounds = samples.div_ceil(clients);
            eprintln!(
                "   {}: {rounds} rounds of {clients} client(s)",
                cycle.label()
            );
            let mut taken = [Samples::default(), Samples::default()];
            let tally = if clients == 1 {
                &mut *failures
            } else {
                &mut *parallel_failures
            };
            // Round 0 warms up each server (first connection use, first CNI call) unrecorded.
            for round in 0..=rounds {
                for index in in_turn(round) {
                    let mut running = JoinSet::new();
                    for (client, worker) in workers[index].iter().take(clients).enumerate() {
                        let name = format!("c{clients}-r{round}-w{client}");
                        running.spawn(worker.clone().cycle(cycle, name));
                    }
                    while let Some(joined) = running.join_next().await {
                        match joined {
                            Ok(Ok(took)) if round > 0 => taken[index].0.push(took),
                            Ok(Ok(_)) => {}
                            Ok(Err(why)) => {
                                for message in why {
                                    tally.record(index, message);
                                }
                            }
                            Err(e) => tally.record(index, format!("a client task: {e}")),
                        }
                    }
                }
            }
            let name = format!(
                "{}, {clients} client{}",
                cycle.label(),
                if clients == 1 { "" } else { "s" }
            );
            rows.push(Row::new(
                format!("{name}: p50"),
                [taken[0].p50(), taken[1].p50()],
                cycle.target(),
            ));
            rows.push(Row::new(
                format!("{name}: p95"),
                [taken[0].p95(), taken[1].p95()],
                Target::None,
            ));
        }
    }
    for (index, server_workers) in workers.iter_mut().enumerate() {
        for worker in server_workers {
            let id = worker.home.id.clone();
            if let Err(e) = cri::stop_pod(&mut worker.client, &id).await {
                failures.record(index, format!("StopPodSandbox home: {e}"));
            }
            if let Err(e) = cri::remove_pod(&mut worker.client, &id).await {
                failures.record(index, format!("RemovePodSandbox home: {e}"));
            }
        }
    }
    Ok(())
}

/// The ids made by [`populate`] per server.
#[derive(Debug, Default)]
struct Population {
    pods: [Vec<String>; 2],
    containers: [Vec<String>; 2],
}

/// `plan.pods` pods of two sleeping containers each on both servers, [`PARALLEL`] at a time
/// per server, the servers in turn; a row of the time per pod.
async fn populate(
    plan: Plan,
    servers: &[Server; 2],
    busybox: &str,
    rows: &mut Vec<Row>,
    failures: &mut Failures,
) -> Result<Population, String> {
    eprintln!(
        "== {} pods of 2 sleeping containers on each server",
        plan.pods
    );
    let mut connections = [Vec::new(), Vec::new()];
    for (index, server) in servers.iter().enumerate() {
        for _ in 0..PARALLEL {
            connections[index].push(server.runtime().await?);
        }
    }
    let mut population = Population::default();
    let mut per_pod = [Samples::default(), Samples::default()];
    let batches = plan.pods.div_ceil(PARALLEL);
    for batch in 0..batches {
        for index in in_turn(batch) {
            let mut running = JoinSet::new();
            let first = batch * PARALLEL;
            for (n, client) in (first..plan.pods.min(first + PARALLEL)).zip(&connections[index]) {
                let server = servers[index].clone();
                let mut client = client.clone();
                let busybox = busybox.to_string();
                running.spawn(async move {
                    let began = Instant::now();
                    let name = format!("pod-{n}");
                    let config = server.pod_config(&name);
                    let pod = cri::run_pod(&mut client, &config)
                        .await
                        .map_err(|e| (None, vec![], format!("RunPodSandbox {name}: {e}")))?;
                    let mut containers = Vec::new();
                    for container in ["first", "second"] {
                        let made = cri::create_and_start(
                            &mut client,
                            &pod,
                            &config,
                            cri::container_config(
                                container,
                                &busybox,
                                &["sleep", "3600"],
                                &format!("{name}_{container}.log"),
                            ),
                        )
                        .await
                        .map_err(|e| {
                            (
                                Some(pod.clone()),
                                containers.clone(),
                                format!("a container in {name}: {e}"),
                            )
                        })?;
                        containers.push(made);
                    }
                    Ok((pod, containers, began.elapsed()))
                });
            }
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(Ok((pod, containers, took))) => {
                        population.pods[index].push(pod);
                        population.containers[index].extend(containers);
                        per_pod[index].0.push(took);
                    }
                    Ok(Err((pod, containers, why))) => {
                        population.pods[index].extend(pod);
                        population.containers[index].extend(containers);
                        failures.record(index, why);
                    }
                    Err(e) => failures.record(index, format!("a client task: {e}")),
                }
            }
        }
    }
    rows.push(Row::new(
        format!("start a pod of 2 containers, {PARALLEL} at a time: p50"),
        [per_pod[0].p50(), per_pod[1].p50()],
        Target::None,
    ));
    Ok(population)
}

/// One list call timed, with a check of what it answered.
async fn timed<F>(call: F) -> Result<Duration, String>
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let began = Instant::now();
    call.await?;
    Ok(began.elapsed())
}

/// ListContainers, ListPodSandbox, ContainerStatus and ListContainerStats with the
/// population running, the servers in turn each round; rows of p50s.
async fn lists(
    plan: Plan,
    servers: &[Server; 2],
    population: &Population,
    rows: &mut Vec<Row>,
    failures: &mut Failures,
) -> Result<(), String> {
    let pods = plan.pods;
    let containers = pods * 2;
    eprintln!("== list calls: {} rounds", plan.lists);
    let mut clients = [servers[0].runtime().await?, servers[1].runtime().await?];
    let mut taken: [[Samples; 4]; 2] = Default::default();
    // Round 0 warms up (containerd's first stats call starts its collection) unrecorded.
    for round in 0..=plan.lists {
        for index in in_turn(round) {
            let client = &mut clients[index];
            let expected_containers = population.containers[index].len();
            let expected_pods = population.pods[index].len();
            let listed = timed(async {
                let items = client
                    .list_containers(ListContainersRequest { filter: None })
                    .await
                    .map_err(|e| format!("ListContainers: {e}"))?
                    .into_inner()
                    .containers;
                let running = items
                    .iter()
                    .filter(|c| c.state == ContainerState::ContainerRunning as i32)
                    .count();
                if running < expected_containers {
                    return Err(format!(
                        "ListContainers: {running} running, {expected_containers} started"
                    ));
                }
                Ok(())
            })
            .await;
            let pods_listed = timed(async {
                let items = client
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
                    .map_err(|e| format!("ListPodSandbox: {e}"))?
                    .into_inner()
                    .items;
                let ready = items
                    .iter()
                    .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
                    .count();
                if ready < expected_pods {
                    return Err(format!(
                        "ListPodSandbox: {ready} ready, {expected_pods} started"
                    ));
                }
                Ok(())
            })
            .await;
            let all = &population.containers[index];
            let statused = match all.get(round % all.len().max(1)) {
                Some(id) => {
                    timed(async {
                        let status = cri::status(client, id)
                            .await
                            .map_err(|e| format!("ContainerStatus: {e}"))?;
                        if status.state != ContainerState::ContainerRunning as i32 {
                            return Err(format!("ContainerStatus: {id} is not running"));
                        }
                        Ok(())
                    })
                    .await
                }
                None => Err("ContainerStatus: no container to ask about".to_string()),
            };
            let stats = timed(async {
                let stats = client
                    .list_container_stats(ListContainerStatsRequest { filter: None })
                    .await
                    .map_err(|e| format!("ListContainerStats: {e}"))?
                    .into_inner()
                    .stats;
                if stats.len() < expected_containers {
                    return Err(format!(
                        "ListContainerStats: {} answered, {expected_containers} running",
                        stats.len()
                    ));
                }
                Ok(())
            })
            .await;
            for (slot, outcome) in [listed, pods_listed, statused, stats]
                .into_iter()
                .enumerate()
            {
                match outcome {
                    Ok(took) if round > 0 => taken[index][slot].0.push(took),
                    Ok(_) => {}
                    Err(why) => failures.record(index, why),
                }
            }
        }
    }
    let names = [
        format!("ListContainers, {containers} containers: p50"),
        format!("ListPodSandbox, {pods} pods: p50"),
        format!("ContainerStatus, {containers} containers: p50"),
        format!("ListContainerStats, {pods} pods: p50"),
    ];
    for (slot, name) in names.into_iter().enumerate() {
        rows.push(Row::new(
            name,
            [taken[0][slot].p50(), taken[1][slot].p50()],
            Target::RatioAtMost(0.5),
        ));
    }
    Ok(())
}

/// A field of `/proc/<pid>/status` or `smaps_rollup` in KiB (`VmRSS:`, `Pss:`).
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The resident set of process `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// The proportional set of process `pid` (shared pages split among their users), in MiB.
fn pss_mib(pid: i32) -> Option<f64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&rollup, "Pss:").map(|kib| kib as f64 / 1024.0)
}

/// The servers' RSS, and with pods running their shims' count and PSS per pod; rows.
fn memory(servers: &[Server; 2], pods: Option<usize>, rows: &mut Vec<Row>) {
    let rss = servers.each_ref().map(|server| rss_mib(server.pid));
    let Some(pods) = pods else {
        rows.push(Row::new("server RSS, idle (MiB)", rss, Target::None));
        return;
    };
    rows.push(Row::new(
        format!("server RSS, {pods} pods running (MiB)"),
        rss,
        Target::RatioAtMost(0.3),
    ));
    let shims = servers.each_ref().map(Server::shim_pids);
    rows.push(Row::new(
        format!("shim processes, {pods} pods"),
        shims.each_ref().map(|pids| Some(pids.len() as f64)),
        Target::None,
    ));
    let per_pod = shims.map(|pids| {
        let measured: Vec<f64> = pids.iter().filter_map(|&pid| pss_mib(pid)).collect();
        (!measured.is_empty() && pods > 0).then(|| measured.iter().sum::<f64>() / pods as f64)
    });
    rows.push(Row::new("shims' PSS per pod (MiB)", per_pod, Target::None));
}

/// Stops and removes the population, [`PARALLEL`] pods at a time per server, the servers in
/// turn.
async fn depopulate(
    servers: &[Server; 2],
    population: Population,
    failures: &mut Failures,
) -> Result<(), String> {
    eprintln!("== removing the pods");
    let mut connections = [Vec::new(), Vec::new()];
    for (index, server) in servers.iter().enumerate() {
        for _ in 0..PARALLEL {
            connections[index].push(server.runtime().await?);
        }
    }
    let batches = population
        .pods
        .iter()
        .map(|pods| pods.len().div_ceil(PARALLEL))
        .max()
        .unwrap_or(0);
    for batch in 0..batches {
        for index in in_turn(batch) {
            let mut running = JoinSet::new();
            let pods = population.pods[index]
                .iter()
                .skip(batch * PARALLEL)
                .take(PARALLEL);
            for (pod, client) in pods.zip(&connections[index]) {
                let mut client = client.clone();
                let pod = pod.clone();
                running.spawn(async move {
                    let mut why = Vec::new();
                    if let Err(e) = cri::stop_pod(&mut client, &pod).await {
                        why.push(format!("StopPodSandbox {pod}: {e}"));
                    }
                    if let Err(e) = cri::remove_pod(&mut client, &pod).await {
                        why.push(format!("RemovePodSandbox {pod}: {e}"));
                    }
                    why
                });
            }
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(why) => why.into_iter().for_each(|w| failures.record(index, w)),
                    Err(e) => failures.record(index, format!("a client task: {e}")),
                }
            }
        }
    }
    Ok(())
}

// ---- the run ----

/// What the run has measured: kept when a section fails, so that the table still shows it.
#[derive(Debug, Default)]
struct Measured {
    rows: Vec<Row>,
    /// Failed calls but those of the parallel runs.
    failures: Failures,
    /// Failed calls of the runs at [`PARALLEL`] clients.
    parallel_failures: Failures,
}

impl Measured {
    /// The rows of failed calls, last.
    fn finish(mut self) -> (Vec<Row>, Failures) {
        self.rows.push(Row::new(
            format!("failed calls at {PARALLEL} clients"),
            self.parallel_failures.values(),
            Target::Exactly(0.0),
        ));
        self.failures.absorb(self.parallel_failures);
        self.rows.push(Row::new(
            "failed calls, all sections",
            self.failures.values(),
            Target::Exactly(0.0),
        ));
        (self.rows, self.failures)
    }
}

async fn bench(plan: Plan, measured: &mut Measured) -> Result<(), String> {
    eprintln!("== starting crustd, a registry and containerd 1.6 with its CRI plugin");
    let with_image = WithImage::start_logging(false, "", NODE_LOG).await?;
    let (sandbox, images) = push_images(&with_image.registry, &with_image.image, plan).await?;
    let containerd = CriContainerd::start(&CriSetup {
        registry: with_image.registry.host.clone(),
        sandbox_image: sandbox.clone(),
    })
    .await?;
    let logs = tempfile::Builder::new()
        .prefix("crust-cri-bench-logs-")
        .tempdir()
        .map_err(|e| format!("a log directory: {e}"))?;
    let servers = [
        Server::crustd(&with_image.crustd, logs.path())?,
        Server::containerd(&containerd, logs.path())?,
    ];
    for server in &servers {
        fs::create_dir_all(&server.logs)
            .map_err(|e| format!("create {}: {e}", server.logs.display()))?;
    }
    // What kubelet has pulled before it runs pods: the containers' image, and containerd's
    // sandbox image (crustd's infra process needs no image).
    let mut containerd_images = servers[1].images().await?;
    for reference in [&images.busybox, &sandbox] {
        pull(&mut containerd_images, reference)
            .await
            .map_err(|e| format!("containerd: {e}\n{}", containerd.log()))?;
    }

    let Measured {
        rows,
        failures,
        parallel_failures,
    } = measured;
    // Idle: settled after start-up and the first pulls, before any pod.
    tokio::time::sleep(Duration::from_secs(1)).await;
    memory(&servers, None, rows);
    for image in [&images.small, &images.large] {
        pulls(plan, &servers, image, rows, failures).await?;
    }
    cycles(
        plan,
        &servers,
        &images.busybox,
        rows,
        failures,
        parallel_failures,
    )
    .await?;
    let population = populate(plan, &servers, &images.busybox, rows, failures).await?;
    lists(plan, &servers, &population, rows, failures).await?;
    memory(&servers, Some(plan.pods), rows);
    depopulate(&servers, population, failures).await?;
    // Whatever a failure above left: through CRI, before the fixtures go.
    for message in containerd.remove_all_pods().await {
        failures.record(1, message);
    }
    let mut crustd = servers[0].runtime().await?;
    if let Err(e) = cri::remove_all_pods(&mut crustd).await {
        failures.record(0, format!("removing every pod: {e}"));
    }
    Ok(())
}

fn print_machine() {
    let first_line = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("?")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|e| format!("{program}: {e}"))
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cri-bench on {}", first_line("uname", "-sr"));
    println!("cpu: {cpu} × {cores}");
    println!(
        "{}; {}",
        first_line("containerd", "--version"),
        first_line("runc", "--version")
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = match Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("cri-bench: {why}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cri-bench: run as root (it runs containers)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cri-bench: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let began = Instant::now();
    print_machine();
    println!(
        "plan: {} pulls per image, {} cycles ({} ExecSync) per client count, {} pods of 2 containers, {} list rounds",
        plan.pulls,
        plan.cycles,
        Cycle::Exec.samples(plan),
        plan.pods,
        plan.lists
    );
    let mut measured = Measured::default();
    // The fixtures are gone (everything removed) when this returns, failed or not.
    let outcome = runtime.block_on(bench(plan, &mut measured));
    let (rows, failures) = measured.finish();
    println!();
    print_table(&rows);
    println!("({:.0} s in all)", began.elapsed().as_secs_f64());
    for (server, messages) in SERVERS.iter().zip(&failures.messages) {
        for message in messages {
            eprintln!("{server}: {message}");
        }
    }
    if let Err(why) = outcome {
        eprintln!("cri-bench: stopped: {why}");
        return ExitCode::FAILURE;
    }
    let broken: Vec<String> = rows.iter().filter_map(Row::broken).collect();
    if plan.check && !broken.is_empty() {
        eprintln!("\ncri-bench --check: the measurement is broken:");
        for why in &broken {
            eprintln!("  {why}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quick_makes_counts_small_and_given_counts_still_win() {
        let plan = Plan::from_args(&args(&["--pods", "7", "--quick", "--check"])).unwrap();
        assert_eq!(plan.pods, 7);
        assert_eq!(plan.pulls, Plan::QUICK.pulls);
        assert!(plan.check);
        assert_eq!(Plan::from_args(&args(&[])).unwrap().pods, 100);
        assert!(Plan::from_args(&args(&["--pods", "0"])).is_err());
        assert!(Plan::from_args(&args(&["--pods"])).is_err());
        assert!(Plan::from_args(&args(&["--nope"])).is_err());
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let samples = Samples([5, 1, 3, 2, 4].map(Duration::from_millis).to_vec());
        assert_eq!(samples.p50(), Some(3.0));
        assert_eq!(samples.p95(), Some(5.0));
        assert_eq!(Samples::default().p50(), None);
    }

    #[test]
    fn verdicts_follow_their_targets() {
        let verdict = |crustd, containerd, target| {
            Row::new("r", [Some(crustd), Some(containerd)], target).verdict()
        };
        assert_eq!(verdict(5.0, 10.0, Target::RatioAtMost(0.5)), Verdict::Met);
        assert_eq!(
            verdict(5.1, 10.0, Target::RatioAtMost(0.5)),
            Verdict::Missed
        );
        assert_eq!(verdict(1.0, 1.0, Target::None), Verdict::Untargeted);
        assert_eq!(verdict(0.0, 3.0, Target::Exactly(0.0)), Verdict::Met);
        let half = Row::new("r", [Some(1.0), None], Target::RatioAtMost(0.5));
        assert_eq!(half.verdict(), Verdict::NotMeasured);
        assert!(half.broken().is_some());
    }

    #[test]
    fn only_unmeasured_values_and_failures_break_the_measurement() {
        let slow = Row::new("slow", [Some(9.0), Some(1.0)], Target::RatioAtMost(0.5));
        assert_eq!(slow.verdict(), Verdict::Missed);
        assert!(slow.broken().is_none(), "a missed target is a result");
        let failed = Row::new("failed", [Some(0.0), Some(2.0)], Target::Exactly(0.0));
        assert_eq!(failed.verdict(), Verdict::Met);
        assert!(
            failed.broken().is_some(),
            "containerd failing breaks the comparison"
        );
        assert!(
            Row::new("ok", [Some(0.0), Some(0.0)], Target::Exactly(0.0))
                .broken()
                .is_none()
        );
    }

    #[test]
    fn the_servers_take_turns() {
        assert_eq!(in_turn(0), [0, 1]);
        assert_eq!(in_turn(1), [1, 0]);
    }

    #[test]
    fn random_bytes_do_not_compress() {
        use std::io::Write;
        let mut bytes = vec![0u8; 1 << 16];
        RandomBytes(1).fill(&mut bytes);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&bytes).unwrap();
        assert!(gzip.finish().unwrap().len() >= bytes.len());
    }

    #[test]
    fn kib_fields_are_read_by_name() {
        let status = "Name:\tcrustd\nVmRSS:\t   20480 kB\nPss:  12 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(20480));
        assert_eq!(kib_field(status, "Pss:"), Some(12));
        assert_eq!(kib_field(status, "VmHWM:"), None);
    }
}
