//! shim-bench: crust's shim and containerd's Go shim (`io.containerd.runc.v2`) measured in one
//! run on this machine, printed side by side with the ratio crust/Go and the targets crust sets
//! itself. Run it through `packaging/bench.sh`, which builds the shim as it is installed.
//!
//! - run-to-exit: `ctr run --rm … echo hi` against a private containerd 1.6, the two shims
//!   alternating so that drift on the machine hits both alike;
//! - create→start and kill→TaskExit: the Task API driven directly (as containerd does), the
//!   exit latency taken from the `kill(2)` of the container's init to the `TaskExit` arriving at
//!   the Events service;
//! - idle memory: N sleeping containers through containerd, RSS and PSS of every shim process
//!   from `/proc/<pid>/smaps_rollup`;
//! - stdout throughput: a container writing 256 MiB to its stdout FIFO, timed from Start until
//!   the reader sees end of file, and the bytes that did not arrive.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crust_tests::command;
use crust_tests::containerd::Containerd;
use crust_tests::direct::{Direct, TaskApi, open_for_reading, read_until_writer_leaves};
use crust_tests::shim::Shim;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SHIMS: [Shim; 2] = [Shim::Crust, Shim::GoRunc];
const LIMIT: Duration = Duration::from_secs(60);

/// How much to measure; `--quick` makes every count small, for a smoke run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    idle: usize,
    megabytes: u64,
    throughput_runs: usize,
}

impl Plan {
    fn from_args() -> Result<Self, String> {
        let mut plan = Plan {
            runs: 30,
            idle: 50,
            megabytes: 256,
            throughput_runs: 3,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut number = |name: &str| -> Result<u64, String> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{name} needs a number"))
            };
            match flag.as_str() {
                "--runs" => plan.runs = number("--runs")?.max(1) as usize,
                "--idle" => plan.idle = number("--idle")?.max(1) as usize,
                "--megabytes" => plan.megabytes = number("--megabytes")?.max(1),
                "--quick" => {
                    plan = Plan {
                        runs: 5,
                        idle: 5,
                        megabytes: 32,
                        throughput_runs: 1,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}\nusage: shim-bench [--runs N] [--idle N] [--megabytes N] [--quick]"
                    ));
                }
            }
        }
        Ok(plan)
    }
}

/// Durations of repeated runs.
#[derive(Debug, Default, Clone)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return f64::NAN;
        }
        // Nearest rank: the smallest sample at or above the q-th fraction.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1000.0
    }

    fn min(&self) -> f64 {
        self.quantile(0.0)
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    fn p95(&self) -> f64 {
        self.quantile(0.95)
    }
}

/// One line of the table: a value per shim, and what crust promises about it.
struct Row {
    name: String,
    crust: f64,
    go: f64,
    target: Target,
}

enum Target {
    None,
    /// crust's value at most this.
    AtMost(f64, &'static str),
    /// crust's value at most this fraction of Go's.
    RatioAtMost(f64),
    /// crust's value at least Go's.
    AtLeastGo,
    /// crust's value exactly this.
    Exactly(f64),
}

impl Row {
    fn new(name: impl Into<String>, crust: f64, go: f64, target: Target) -> Self {
        Row {
            name: name.into(),
            crust,
            go,
            target,
        }
    }

    fn verdict(&self) -> String {
        let (text, met) = match self.target {
            Target::None => return String::new(),
            Target::AtMost(limit, unit) => (format!("< {limit} {unit}"), self.crust < limit),
            Target::RatioAtMost(ratio) => (format!("≤ {ratio}× Go"), self.crust <= ratio * self.go),
            Target::AtLeastGo => ("≥ Go".to_string(), self.crust >= self.go),
            Target::Exactly(value) => (format!("= {value}"), self.crust == value),
        };
        format!("{text:<12} {}", if met { "met" } else { "MISSED" })
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>12} {:>12} {:>9}   target",
        "", "crust", "Go runc.v2", "crust/Go"
    );
    for row in rows {
        let ratio = if row.go == 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}", row.crust / row.go)
        };
        let line = format!(
            "{:<44} {:>12} {:>12} {:>9}   {}",
            row.name,
            format_value(row.crust),
            format_value(row.go),
            ratio,
            row.verdict()
        );
        println!("{}", line.trim_end());
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e12 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn main() -> ExitCode {
    let plan = match Plan::from_args() {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("shim-bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("shim-bench: run as root (it runs containers)");
        return ExitCode::FAILURE;
    }
    print_machine();
    let mut rows = Vec::new();
    run_to_exit(plan, &mut rows);
    idle_memory(plan, &mut rows);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        start_and_exit_latency(plan, &mut rows).await;
        stdout_throughput(plan, &mut rows).await;
    });
    println!();
    print_table(&rows);
    ExitCode::SUCCESS
}

fn print_machine() {
    let first_line = |argv: &[&str]| {
        let outcome = command::run(
            std::process::Command::new(argv[0]).args(&argv[1..]),
            None,
            LIMIT,
        );
        format!("{}{}", outcome.stdout, outcome.stderr)
            .lines()
            .next()
            .unwrap_or("?")
            .trim()
            .to_string()
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
    println!("shim-bench on {}", first_line(&["uname", "-sr"]));
    println!("cpu: {cpu} × {cores}");
    println!(
        "{}; {}; crust shim {}",
        first_line(&["containerd", "--version"]),
        first_line(&["runc", "--version"]),
        Shim::Crust.binary().display()
    );
}

/// `ctr run --rm` of `echo hi`, alternating shims, after one warm-up run of each.
fn run_to_exit(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!("== run-to-exit: {} runs of echo per shim", plan.runs);
    let mut containerd = Containerd::start_with("bench-run", Shim::Crust);
    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..=plan.runs {
        for (index, shim) in SHIMS.into_iter().enumerate() {
            containerd.use_shim(shim);
            let id = format!("echo-{index}-{round}");
            let began = Instant::now();
            let ran = containerd.run(&id, &["echo", "hi"]);
            let took = began.elapsed();
            assert!(ran.success() && ran.stdout == "hi\n", "{shim:?}: {ran:?}");
            if round > 0 {
                samples[index].push(took);
            }
        }
    }
    let [crust, go] = samples;
    rows.push(Row::new(
        "run-to-exit, echo: min (ms)",
        crust.min(),
        go.min(),
        Target::None,
    ));
    rows.push(Row::new(
        "run-to-exit, echo: median (ms)",
        crust.median(),
        go.median(),
        Target::RatioAtMost(0.9),
    ));
    rows.push(Row::new(
        "run-to-exit, echo: p95 (ms)",
        crust.p95(),
        go.p95(),
        Target::None,
    ));
}

/// Memory of one shim process, from its smaps_rollup, in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    rss: u64,
    pss: u64,
}

fn memory_of(pid: i32) -> Option<Memory> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss: field("Rss")?,
        pss: field("Pss")?,
    })
}

/// Pids among `pids` whose executable is `shim`'s binary.
fn processes_of(shim: Shim, pids: &[i32]) -> Vec<i32> {
    let name = shim.binary().file_name().map(|n| n.to_os_string());
    pids.iter()
        .copied()
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n.to_os_string()))
                == name
        })
        .collect()
}

/// N sleeping containers per shim, then the shims' memory; the containers are removed after.
fn idle_memory(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!("== idle memory: {} sleeping containers per shim", plan.idle);
    let mut containerd = Containerd::start_with("bench-idle", Shim::Crust);
    let mut measured = Vec::new();
    for shim in SHIMS {
        containerd.use_shim(shim);
        let ids: Vec<String> = (0..plan.idle).map(|i| format!("idle-{i}")).collect();
        for id in &ids {
            let started = containerd.run_detached(id, &["sleep", "100000"]);
            assert!(started.success(), "{shim:?}: {started:?}");
        }
        // Let start-up allocations settle, as an idle pod's shim would have.
        std::thread::sleep(Duration::from_secs(2));
        let shims = processes_of(shim, &containerd.shim_pids());
        let memories: Vec<Memory> = shims.iter().filter_map(|&pid| memory_of(pid)).collect();
        let threads: usize = shims.iter().map(|&pid| threads_of(pid)).sum();
        measured.push((shims.len(), memories, threads));
        for id in &ids {
            containerd.remove(id);
        }
    }
    let [
        (crust_count, crust, crust_threads),
        (go_count, go, go_threads),
    ] = <[_; 2]>::try_from(measured).expect("two shims measured");
    let mean = |values: &[Memory], pick: fn(&Memory) -> u64| {
        values.iter().map(pick).sum::<u64>() as f64 / values.len().max(1) as f64 / 1024.0
    };
    let total = |values: &[Memory], pick: fn(&Memory) -> u64| {
        values.iter().map(pick).sum::<u64>() as f64 / 1024.0
    };
    let containers = plan.idle as f64;
    rows.push(Row::new(
        format!("{} idle containers: shim processes", plan.idle),
        crust_count as f64,
        go_count as f64,
        Target::None,
    ));
    rows.push(Row::new(
        format!("{} idle containers: threads, all shims", plan.idle),
        crust_threads as f64,
        go_threads as f64,
        Target::None,
    ));
    rows.push(Row::new(
        "RSS per shim (MiB)",
        mean(&crust, |m| m.rss),
        mean(&go, |m| m.rss),
        Target::AtMost(2.0, "MiB"),
    ));
    rows.push(Row::new(
        "PSS per shim (MiB)",
        mean(&crust, |m| m.pss),
        mean(&go, |m| m.pss),
        Target::AtMost(1.0, "MiB"),
    ));
    rows.push(Row::new(
        "RSS, all shims (MiB)",
        total(&crust, |m| m.rss),
        total(&go, |m| m.rss),
        Target::None,
    ));
    rows.push(Row::new(
        "PSS, all shims (MiB)",
        total(&crust, |m| m.pss),
        total(&go, |m| m.pss),
        Target::None,
    ));
    rows.push(Row::new(
        "PSS per container (MiB)",
        total(&crust, |m| m.pss) / containers,
        total(&go, |m| m.pss) / containers,
        Target::None,
    ));
}

fn threads_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// Create and Start timed at the Task API, and kill(2) → TaskExit at the Events service.
async fn start_and_exit_latency(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!(
        "== create/start and exit-event latency: {} tasks per shim",
        plan.runs
    );
    let mut results = Vec::new();
    for shim in SHIMS {
        let direct = Direct::with_shim("bench-latency", shim).await;
        let (mut create, mut start, mut exit) =
            (Samples::default(), Samples::default(), Samples::default());
        for round in 0..=plan.runs {
            let id = format!("lat-{round}");
            let bundle = direct.bundle(&id, &["sleep", "100000"], &[]);
            bundle.attach_output();
            let api = direct.start_and_connect(&bundle).await;
            let began = Instant::now();
            let created = api.create(&bundle.create_request()).await.expect("create");
            let created_at = Instant::now();
            api.start(&id).await.expect("start");
            let started_at = Instant::now();
            let killed_at = Instant::now();
            kill(Pid::from_raw(created.pid as i32), Signal::SIGKILL).expect("kill the init");
            let exited = direct
                .events
                .wait_matching(LIMIT, |e| e.topic == "/tasks/exit" && e.pid == created.pid)
                .await
                .expect("TaskExit");
            if round > 0 {
                create.push(created_at - began);
                start.push(started_at - created_at);
                exit.push(exited.received.saturating_duration_since(killed_at));
            }
            finish(&api, &id).await;
        }
        results.push((create, start, exit));
    }
    let [
        (crust_create, crust_start, crust_exit),
        (go_create, go_start, go_exit),
    ] = <[_; 2]>::try_from(results).unwrap_or_else(|_| unreachable!("two shims"));
    rows.push(Row::new(
        "Create RPC: median (ms)",
        crust_create.median(),
        go_create.median(),
        Target::None,
    ));
    rows.push(Row::new(
        "Start RPC: median (ms)",
        crust_start.median(),
        go_start.median(),
        Target::None,
    ));
    let sum = |a: &Samples, b: &Samples| a.median() + b.median();
    rows.push(Row::new(
        "create→start, medians summed (ms)",
        sum(&crust_create, &crust_start),
        sum(&go_create, &go_start),
        Target::None,
    ));
    rows.push(Row::new(
        "kill → TaskExit received: median (ms)",
        crust_exit.median(),
        go_exit.median(),
        Target::AtMost(1.0, "ms"),
    ));
    rows.push(Row::new(
        "kill → TaskExit received: p95 (ms)",
        crust_exit.p95(),
        go_exit.p95(),
        Target::None,
    ));
}

/// Waits for, deletes and shuts down task `id`.
async fn finish(api: &TaskApi, id: &str) {
    api.wait(id).await.expect("wait");
    api.delete(id).await.expect("delete");
    let _ = api.shutdown(id).await;
}

/// A container writes `plan.megabytes` MiB to stdout; timed from Start to end of file.
async fn stdout_throughput(plan: Plan, rows: &mut Vec<Row>) {
    let bytes = plan.megabytes << 20;
    eprintln!(
        "== stdout throughput: {} MiB, {} run(s) per shim",
        plan.megabytes, plan.throughput_runs
    );
    let mut results = Vec::new();
    for shim in SHIMS {
        let direct = Direct::with_shim("bench-stdout", shim).await;
        let mut rates = Vec::new();
        let mut lost = 0u64;
        for round in 0..plan.throughput_runs {
            let id = format!("out-{round}");
            let count = format!("count={}", plan.megabytes);
            let bundle = direct.bundle(&id, &["dd", "if=/dev/zero", "bs=1M", &count], &[]);
            let stdout = count_from(&bundle.io.stdout);
            let stderr = count_from(&bundle.io.stderr);
            let api = direct.start_and_connect(&bundle).await;
            api.create(&bundle.create_request()).await.expect("create");
            let began = Instant::now();
            api.start(&id).await.expect("start");
            let (read, finished) = stdout.join().expect("stdout reader");
            let _ = stderr.join();
            let seconds = finished.saturating_duration_since(began).as_secs_f64();
            rates.push(read as f64 / (1 << 20) as f64 / seconds);
            lost += bytes.saturating_sub(read);
            finish(&api, &id).await;
        }
        rates.sort_by(f64::total_cmp);
        results.push((rates[rates.len() / 2], lost));
    }
    let [(crust_rate, crust_lost), (go_rate, go_lost)] =
        <[_; 2]>::try_from(results).unwrap_or_else(|_| unreachable!("two shims"));
    rows.push(Row::new(
        format!("stdout {} MiB: throughput (MiB/s)", plan.megabytes),
        crust_rate,
        go_rate,
        Target::AtLeastGo,
    ));
    rows.push(Row::new(
        format!("stdout {} MiB: bytes lost", plan.megabytes),
        crust_lost as f64,
        go_lost as f64,
        Target::Exactly(0.0),
    ));
}

/// Opens `fifo` for reading before Create and counts what arrives until the writer leaves:
/// (bytes, when the end of file was seen).
fn count_from(fifo: &Path) -> JoinHandle<(u64, Instant)> {
    let file = open_for_reading(fifo);
    std::thread::spawn(move || {
        let mut total = 0u64;
        read_until_writer_leaves(file, Duration::from_secs(600), |chunk| {
            total += chunk.len() as u64
        });
        (total, Instant::now())
    })
}
