//! cri-stats-bench: what kubelet's stats calls cost crustd. Starts a private crustd, runs N
//! pods (default 100; `--pods N`, `--quick` = 10) of one sleeping container each, then times
//! ListContainerStats and ListPodSandboxStats (20 calls each) and reads crustd's CPU time
//! (utime + stime from /proc/<pid>/stat) around them. Prints a table; removes everything.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crust_proto::cri::*;
use crust_tests::cri::{self, Client, container_config, start};
use crust_tests::crustd::WithImage;

/// Calls timed per RPC.
const CALLS: usize = 20;

fn pods_from_args() -> Result<usize, String> {
    let mut pods = 100;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => pods = 10,
            "--pods" => {
                pods = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--pods takes a number")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(pods)
}

/// utime + stime of `pid`, in clock ticks (USER_HZ, 100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields after its ')' start at field 3 (state).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Timing {
    name: &'static str,
    items: usize,
    p50: Duration,
    p95: Duration,
    cpu_per_call: Duration,
}

async fn time_calls<F, Fut>(name: &'static str, pid: u32, mut call: F) -> Result<Timing, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, String>>,
{
    // One call first: CPU samples exist afterwards, as in steady state.
    call().await?;
    let ticks_before = cpu_ticks(pid);
    let mut times = Vec::with_capacity(CALLS);
    let mut items = 0;
    for _ in 0..CALLS {
        let started = Instant::now();
        items = call().await?;
        times.push(started.elapsed());
    }
    let ticks = cpu_ticks(pid).saturating_sub(ticks_before);
    times.sort();
    Ok(Timing {
        name,
        items,
        p50: percentile(&times, 0.5),
        p95: percentile(&times, 0.95),
        cpu_per_call: Duration::from_millis(ticks * 10) / CALLS as u32,
    })
}

async fn run_pods(client: &mut Client, image: &str, pods: usize) -> Result<Vec<String>, String> {
    let logs = std::env::temp_dir();
    let mut ids = Vec::with_capacity(pods);
    for n in 0..pods {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("bench-{n}"),
                namespace: "bench".into(),
                uid: format!("uid-bench-{n}"),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            ..Default::default()
        };
        let pod = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| format!("run pod {n}: {e}"))?
            .into_inner()
            .pod_sandbox_id;
        ids.push(pod.clone());
        let container = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(
                    "sleeper",
                    image,
                    &["sleep", "3600"],
                    &format!("bench-{n}.log"),
                )),
                sandbox_config: Some(config),
            })
            .await
            .map_err(|e| format!("create container {n}: {e}"))?
            .into_inner()
            .container_id;
        start(client, &container)
            .await
            .map_err(|e| format!("start container {n}: {e}"))?;
    }
    Ok(ids)
}

async fn bench(pods: usize) -> Result<(), String> {
    let WithImage {
        registry: _registry,
        crustd,
        image,
        ..
    } = WithImage::start(false).await?;
    let mut client = crustd.runtime().await;
    let started = Instant::now();
    let result = async {
        let ids = run_pods(&mut client, &image, pods).await?;
        println!(
            "{} pods with one sleeping container each, started in {:.1}s",
            ids.len(),
            started.elapsed().as_secs_f64()
        );
        let pid = crustd.pid().ok_or("crustd has no pid")?;
        let mut timings = Vec::new();
        let containers = client.clone();
        timings.push(
            time_calls("ListContainerStats", pid, || {
                let mut client = containers.clone();
                async move {
                    let stats = client
                        .list_container_stats(ListContainerStatsRequest { filter: None })
                        .await
                        .map_err(|e| format!("ListContainerStats: {e}"))?
                        .into_inner()
                        .stats;
                    if stats.iter().any(|s| s.cpu.is_none()) {
                        return Err("a running container without CPU stats".into());
                    }
                    Ok(stats.len())
                }
            })
            .await?,
        );
        timings.push(
            time_calls("ListPodSandboxStats", pid, || {
                let mut client = containers.clone();
                async move {
                    let stats = client
                        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
                        .await
                        .map_err(|e| format!("ListPodSandboxStats: {e}"))?
                        .into_inner()
                        .stats;
                    Ok(stats.len())
                }
            })
            .await?,
        );
        timings.push(
            time_calls("ListPodSandboxMetrics", pid, || {
                let mut client = containers.clone();
                async move {
                    let metrics = client
                        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
                        .await
                        .map_err(|e| format!("ListPodSandboxMetrics: {e}"))?
                        .into_inner()
                        .pod_metrics;
                    Ok(metrics.len())
                }
            })
            .await?,
        );
        println!(
            "\n{:<24} {:>6} {:>10} {:>10} {:>16}",
            "call", "items", "p50", "p95", "crustd CPU/call"
        );
        for t in &timings {
            println!(
                "{:<24} {:>6} {:>8.1}ms {:>8.1}ms {:>14.1}ms",
                t.name,
                t.items,
                t.p50.as_secs_f64() * 1e3,
                t.p95.as_secs_f64() * 1e3,
                t.cpu_per_call.as_secs_f64() * 1e3
            );
        }
        Ok::<_, String>(ids)
    }
    .await;
    // Remove what was made even after a failure; crustd's Drop cleans up the rest.
    let ids = match &result {
        Ok(ids) => ids.clone(),
        Err(_) => client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default(),
    };
    for id in ids {
        let _ = cri::stop_pod(&mut client, &id).await;
        let _ = cri::remove_pod(&mut client, &id).await;
    }
    result.map(drop)
}

fn main() -> ExitCode {
    let pods = match pods_from_args() {
        Ok(pods) => pods,
        Err(why) => {
            eprintln!("cri-stats-bench: {why}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cri-stats-bench: needs root (it runs containers)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cri-stats-bench: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(pods)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("cri-stats-bench: {why}");
            ExitCode::FAILURE
        }
    }
}
