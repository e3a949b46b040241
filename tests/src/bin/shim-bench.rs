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
//! - output throughput: a container writing 256 MiB to its stdout FIFO and as much to its
//!   stderr FIFO at once, timed from Start until the readers see end of file, and the bytes
//!   that did not arrive or arrived twice, on either stream.
//!
//! Every section measures the two shims in turn, so machine drift hits both alike. A value
//! that was not measured prints "n/a" and gets no verdict; with `--check` (as CI runs it) such
//! a value, or a byte lost, makes the program exit non-zero. Targets stay verdicts in the
//! table: missing one is a result, not a failure.

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
    /// Exit non-zero when a measurement is broken (a value not measured, bytes lost).
    check: bool,
}

impl Plan {
    fn from_args() -> Result<Self, String> {
        let mut plan = Plan {
            runs: 30,
            idle: 50,
            megabytes: 256,
            throughput_runs: 3,
            check: false,
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
                "--check" => plan.check = true,
                "--quick" => {
                    plan = Plan {
                        runs: 5,
                        idle: 5,
                        megabytes: 32,
                        throughput_runs: 1,
                        check: plan.check,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}\nusage: shim-bench [--runs N] [--idle N] [--megabytes N] [--quick] [--check]"
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

    /// The nearest-rank `q` quantile in ms; None without samples.
    fn quantile(&self, q: f64) -> Option<f64> {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return None;
        }
        // Nearest rank: the smallest sample at or above the q-th fraction.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1].as_secs_f64() * 1000.0)
    }

    fn min(&self) -> Option<f64> {
        self.quantile(0.0)
    }

    fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    fn p95(&self) -> Option<f64> {
        self.quantile(0.95)
    }
}

/// One line of the table: a value per shim (None when nothing was measured), and what crust
/// promises about it.
struct Row {
    name: String,
    crust: Option<f64>,
    go: Option<f64>,
    target: Target,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    None,
    /// crust's value below this.
    Below(f64, &'static str),
    /// crust's value at most this fraction of Go's.
    RatioAtMost(f64),
    /// crust's value at least Go's.
    AtLeastGo,
    /// crust's value exactly this: a correctness count (bytes lost), so a miss also breaks
    /// `--check`.
    Exactly(f64),
}

/// How a row came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No target.
    Untargeted,
    Met,
    Missed,
    /// A value the target needs was not measured: no verdict, and the measurement is broken.
    NotMeasured,
}

impl Row {
    fn new(name: impl Into<String>, crust: Option<f64>, go: Option<f64>, target: Target) -> Self {
        Row {
            name: name.into(),
            crust,
            go,
            target,
        }
    }

    fn verdict(&self) -> Verdict {
        let needs_go = matches!(self.target, Target::RatioAtMost(_) | Target::AtLeastGo);
        let (Some(crust), go) = (self.crust, self.go) else {
            return Verdict::NotMeasured;
        };
        if needs_go && go.is_none() {
            return Verdict::NotMeasured;
        }
        let go = go.unwrap_or(f64::NAN);
        let met = match self.target {
            Target::None => return Verdict::Untargeted,
            Target::Below(limit, _) => crust < limit,
            Target::RatioAtMost(ratio) => crust <= ratio * go,
            Target::AtLeastGo => crust >= go,
            Target::Exactly(value) => crust == value,
        };
        if met { Verdict::Met } else { Verdict::Missed }
    }

    /// Why this row makes `--check` fail: a value not measured, or a correctness count missed.
    fn broken(&self) -> Option<String> {
        if self.crust.is_none() || self.go.is_none() {
            return Some(format!("{}: not measured", self.name));
        }
        match (self.target, self.verdict()) {
            (Target::Exactly(_), Verdict::Missed) => Some(format!(
                "{}: crust {}, expected {}",
                self.name,
                format_value(self.crust),
                match self.target {
                    Target::Exactly(value) => format_value(Some(value)),
                    _ => String::new(),
                }
            )),
            (_, Verdict::NotMeasured) => Some(format!("{}: not measured", self.name)),
            _ => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => String::new(),
            Target::Below(limit, unit) => format!("< {limit} {unit}"),
            Target::RatioAtMost(ratio) => format!("≤ {ratio}× Go"),
            Target::AtLeastGo => "≥ Go".to_string(),
            Target::Exactly(value) => format!("= {value}"),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<44} {:>12} {:>12} {:>9}   target",
        "", "crust", "Go runc.v2", "crust/Go"
    );
    for row in rows {
        let ratio = match (row.crust, row.go) {
            (Some(crust), Some(go)) if go != 0.0 => format!("{:.2}", crust / go),
            _ => "-".to_string(),
        };
        let verdict = match row.verdict() {
            Verdict::Untargeted => "",
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "n/a",
        };
        let line = format!(
            "{:<44} {:>12} {:>12} {:>9}   {:<12} {verdict}",
            row.name,
            format_value(row.crust),
            format_value(row.go),
            ratio,
            row.target_text(),
        );
        println!("{}", line.trim_end());
    }
}

fn format_value(value: Option<f64>) -> String {
    let Some(value) = value else {
        return "n/a".to_string();
    };
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
    let broken: Vec<String> = rows.iter().filter_map(Row::broken).collect();
    if plan.check && !broken.is_empty() {
        eprintln!("\nshim-bench --check: the measurement is broken:");
        for why in &broken {
            eprintln!("  {why}");
        }
        return ExitCode::FAILURE;
    }
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

/// The two shims in the order round `round` measures them: alternating which goes first, so
/// that drift on the machine (and any first-in-round cost) falls on both alike.
fn in_turn(round: usize) -> [(usize, Shim); 2] {
    if round % 2 == 0 {
        [(0, SHIMS[0]), (1, SHIMS[1])]
    } else {
        [(1, SHIMS[1]), (0, SHIMS[0])]
    }
}

/// `ctr run --rm` of `echo hi`, the shims in turn, after one warm-up run of each.
fn run_to_exit(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!("== run-to-exit: {} runs of echo per shim", plan.runs);
    let mut containerd = Containerd::start_with("bench-run", Shim::Crust);
    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..=plan.runs {
        for (index, shim) in in_turn(round) {
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

/// What the idle containers of one shim cost.
#[derive(Debug, Default)]
struct IdleCost {
    processes: usize,
    threads: usize,
    memory: Vec<Memory>,
}

impl IdleCost {
    /// Mean per shim process in MiB; None when no process was measured.
    fn mean(&self, pick: fn(&Memory) -> u64) -> Option<f64> {
        (!self.memory.is_empty()).then(|| {
            self.memory.iter().map(pick).sum::<u64>() as f64 / self.memory.len() as f64 / 1024.0
        })
    }

    /// Sum over the shim processes in MiB; None when no process was measured.
    fn total(&self, pick: fn(&Memory) -> u64) -> Option<f64> {
        (!self.memory.is_empty()).then(|| self.memory.iter().map(pick).sum::<u64>() as f64 / 1024.0)
    }
}

/// N sleeping containers per shim, started in turn so both sets share the machine's state,
/// then every shim's memory; the containers are removed after.
fn idle_memory(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!("== idle memory: {} sleeping containers per shim", plan.idle);
    let mut containerd = Containerd::start_with("bench-idle", Shim::Crust);
    let mut ids = Vec::new();
    for round in 0..plan.idle {
        for (index, shim) in in_turn(round) {
            containerd.use_shim(shim);
            let id = format!("idle-{index}-{round}");
            let started = containerd.run_detached(&id, &["sleep", "100000"]);
            assert!(started.success(), "{shim:?}: {started:?}");
            ids.push(id);
        }
    }
    // Let start-up allocations settle, as an idle pod's shim would have.
    std::thread::sleep(Duration::from_secs(2));
    let all = containerd.shim_pids();
    let cost = SHIMS.map(|shim| {
        let shims = processes_of(shim, &all);
        IdleCost {
            processes: shims.len(),
            threads: shims.iter().map(|&pid| threads_of(pid)).sum(),
            memory: shims.iter().filter_map(|&pid| memory_of(pid)).collect(),
        }
    });
    for id in &ids {
        containerd.remove(id);
    }
    let [crust, go] = cost;
    let counted = |cost: &IdleCost, value: usize| (cost.processes > 0).then_some(value as f64);
    let containers = plan.idle as f64;
    rows.push(Row::new(
        format!("{} idle containers: shim processes", plan.idle),
        counted(&crust, crust.processes),
        counted(&go, go.processes),
        Target::None,
    ));
    rows.push(Row::new(
        format!("{} idle containers: threads, all shims", plan.idle),
        counted(&crust, crust.threads),
        counted(&go, go.threads),
        Target::None,
    ));
    rows.push(Row::new(
        "RSS per shim (MiB)",
        crust.mean(|m| m.rss),
        go.mean(|m| m.rss),
        Target::Below(2.0, "MiB"),
    ));
    rows.push(Row::new(
        "PSS per shim (MiB)",
        crust.mean(|m| m.pss),
        go.mean(|m| m.pss),
        Target::Below(1.0, "MiB"),
    ));
    rows.push(Row::new(
        "RSS, all shims (MiB)",
        crust.total(|m| m.rss),
        go.total(|m| m.rss),
        Target::None,
    ));
    rows.push(Row::new(
        "PSS, all shims (MiB)",
        crust.total(|m| m.pss),
        go.total(|m| m.pss),
        Target::None,
    ));
    rows.push(Row::new(
        "PSS per container (MiB)",
        crust.total(|m| m.pss).map(|t| t / containers),
        go.total(|m| m.pss).map(|t| t / containers),
        Target::None,
    ));
}

fn threads_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// Create and Start timed at the Task API, and kill(2) → TaskExit at the Events service, the
/// shims in turn.
async fn start_and_exit_latency(plan: Plan, rows: &mut Vec<Row>) {
    eprintln!(
        "== create/start and exit-event latency: {} tasks per shim",
        plan.runs
    );
    let drivers = [
        Direct::with_shim("bench-latency-crust", SHIMS[0]).await,
        Direct::with_shim("bench-latency-go", SHIMS[1]).await,
    ];
    let mut samples: [[Samples; 3]; 2] = Default::default();
    for round in 0..=plan.runs {
        for (index, _) in in_turn(round) {
            let direct = &drivers[index];
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
                let [create, start, exit] = &mut samples[index];
                create.push(created_at - began);
                start.push(started_at - created_at);
                exit.push(exited.received.saturating_duration_since(killed_at));
            }
            finish(&api, &id).await;
        }
    }
    let [
        [crust_create, crust_start, crust_exit],
        [go_create, go_start, go_exit],
    ] = samples;
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
    let sum = |a: &Samples, b: &Samples| Some(a.median()? + b.median()?);
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
        Target::Below(1.0, "ms"),
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

/// A container writes `plan.megabytes` MiB to stdout and as much to stderr at the same time;
/// timed from Start to the end of both, the shims in turn. Bytes that did not arrive and
/// bytes that arrived more than once both count as lost.
async fn stdout_throughput(plan: Plan, rows: &mut Vec<Row>) {
    let bytes = plan.megabytes << 20;
    eprintln!(
        "== stdout and stderr throughput: {} MiB each, {} run(s) per shim",
        plan.megabytes, plan.throughput_runs
    );
    let drivers = [
        Direct::with_shim("bench-stdout-crust", SHIMS[0]).await,
        Direct::with_shim("bench-stdout-go", SHIMS[1]).await,
    ];
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut lost = [0u64; 2];
    let count = format!("count={}", plan.megabytes);
    // Both streams at once; dd's own report goes nowhere, so each stream carries exactly N MiB.
    let script = format!(
        "dd if=/dev/zero bs=1M {count} 2>/dev/null & dd if=/dev/zero bs=1M {count} >&2 2>/dev/null; wait"
    );
    for round in 0..plan.throughput_runs {
        for (index, _) in in_turn(round) {
            let direct = &drivers[index];
            let id = format!("out-{round}");
            let bundle = direct.bundle(&id, &["sh", "-c", &script], &[]);
            let stdout = count_from(&bundle.io.stdout);
            let stderr = count_from(&bundle.io.stderr);
            let api = direct.start_and_connect(&bundle).await;
            api.create(&bundle.create_request()).await.expect("create");
            let began = Instant::now();
            api.start(&id).await.expect("start");
            let (out, out_done) = stdout.join().expect("stdout reader");
            let (err, err_done) = stderr.join().expect("stderr reader");
            let seconds = out_done
                .max(err_done)
                .saturating_duration_since(began)
                .as_secs_f64();
            rates[index].push((out + err) as f64 / (1 << 20) as f64 / seconds);
            lost[index] += out.abs_diff(bytes) + err.abs_diff(bytes);
            finish(&api, &id).await;
        }
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied()
    };
    let [crust_rates, go_rates] = &mut rates;
    rows.push(Row::new(
        format!("stdout+stderr 2×{} MiB: throughput (MiB/s)", plan.megabytes),
        median(crust_rates),
        median(go_rates),
        Target::AtLeastGo,
    ));
    let measured = |index: usize| (!rates[index].is_empty()).then_some(lost[index] as f64);
    rows.push(Row::new(
        format!("stdout+stderr 2×{} MiB: bytes lost", plan.megabytes),
        measured(0),
        measured(1),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_samples_no_verdict_and_a_broken_measurement() {
        let empty = Samples::default();
        assert_eq!(empty.median(), None);
        let row = Row::new("x", empty.median(), Some(1.0), Target::Below(1.0, "ms"));
        assert_eq!(row.verdict(), Verdict::NotMeasured);
        assert!(row.broken().is_some());
        let untargeted = Row::new("y", None, None, Target::None);
        assert!(
            untargeted.broken().is_some(),
            "no value is broken even without target"
        );
    }

    #[test]
    fn verdicts_follow_their_targets() {
        let row = |crust, go, target| Row::new("r", Some(crust), Some(go), target).verdict();
        assert_eq!(row(0.5, 9.0, Target::Below(1.0, "ms")), Verdict::Met);
        assert_eq!(row(1.0, 9.0, Target::Below(1.0, "ms")), Verdict::Missed);
        assert_eq!(row(9.0, 10.0, Target::RatioAtMost(0.9)), Verdict::Met);
        assert_eq!(row(9.1, 10.0, Target::RatioAtMost(0.9)), Verdict::Missed);
        assert_eq!(row(10.0, 10.0, Target::AtLeastGo), Verdict::Met);
        assert_eq!(row(0.0, 5.0, Target::Exactly(0.0)), Verdict::Met);
        assert_eq!(row(3.0, 0.0, Target::Exactly(0.0)), Verdict::Missed);
        assert!(
            Row::new("lost", Some(3.0), Some(0.0), Target::Exactly(0.0))
                .broken()
                .is_some(),
            "lost bytes break the measurement"
        );
        assert!(
            Row::new("slow", Some(3.0), Some(1.0), Target::Below(1.0, "ms"))
                .broken()
                .is_none(),
            "a missed performance target is a verdict, not a broken measurement"
        );
    }

    #[test]
    fn samples_take_the_nearest_rank() {
        let mut samples = Samples::default();
        for ms in [5, 1, 3, 2, 4] {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.min(), Some(1.0));
        assert_eq!(samples.median(), Some(3.0));
        assert_eq!(samples.p95(), Some(5.0));
    }

    #[test]
    fn the_shims_take_turns() {
        assert_eq!(in_turn(0).map(|(i, _)| i), [0, 1]);
        assert_eq!(in_turn(1).map(|(i, _)| i), [1, 0]);
    }
}
