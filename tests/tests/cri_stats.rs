//! crustd's stats calls end to end: real containers burning CPU, holding memory, writing to
//! their writable layer and receiving traffic, measured through the CRI socket.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crust_proto::cri::tonic::Code;
use crust_proto::cri::*;
use crust_tests::cri::{self, Client, exec};
use crust_tests::crustd::WithImage;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const MIB: u64 = 1 << 20;

fn pod_config(name: &str, log_directory: &Path) -> PodSandboxConfig {
    cri::pod_config(name, "default", log_directory)
}

async fn run(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    name: &str,
    image: &str,
    command: &[&str],
) -> String {
    let config = cri::container_config(name, image, command, &format!("{name}.log"));
    cri::create_and_start(client, pod, pod_config, config)
        .await
        .expect("create and start container")
}

async fn container_stats(client: &mut Client, id: &str) -> ContainerStats {
    client
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("container stats")
        .into_inner()
        .stats
        .expect("stats in the answer")
}

async fn pod_stats(client: &mut Client, id: &str) -> PodSandboxStats {
    client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("pod stats")
        .into_inner()
        .stats
        .expect("stats in the answer")
}

async fn list_container_stats(
    client: &mut Client,
    filter: ContainerStatsFilter,
) -> Vec<ContainerStats> {
    client
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .expect("list container stats")
        .into_inner()
        .stats
}

fn value(v: &Option<UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

fn working_set(stats: &ContainerStats) -> u64 {
    value(
        &stats
            .memory
            .as_ref()
            .expect("memory stats")
            .working_set_bytes,
    )
}

fn layer_bytes(stats: &ContainerStats) -> u64 {
    value(
        &stats
            .writable_layer
            .as_ref()
            .expect("writable layer stats")
            .used_bytes,
    )
}

fn eth0_bytes(stats: &PodSandboxStats) -> (u64, u64) {
    let network = stats
        .linux
        .as_ref()
        .and_then(|l| l.network.as_ref())
        .expect("network stats");
    let eth0 = network
        .default_interface
        .as_ref()
        .expect("a default interface");
    assert_eq!(eth0.name, "eth0");
    (value(&eth0.rx_bytes), value(&eth0.tx_bytes))
}

async fn pod_ip(client: &mut Client, id: &str) -> String {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_measure_cpu_memory_layers_and_network_of_real_containers() {
    let WithImage {
        registry: _registry,
        crustd,
        image,
        logs,
    } = WithImage::started(false).await;
    let mut client = crustd.runtime().await;

    // Unknown ids.
    let unknown = client
        .container_stats(ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await;
    assert_eq!(unknown.map(drop).unwrap_err().code(), Code::NotFound);
    let unknown = client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "nope".into(),
        })
        .await;
    assert_eq!(unknown.map(drop).unwrap_err().code(), Code::NotFound);

    // A pod of three: a CPU burner, a memory holder, a sleeper.
    let config = pod_config("stats", logs.path());
    let pod = cri::run_pod(&mut client, &config).await.expect("run pod");
    let burner = run(
        &mut client,
        &pod,
        &config,
        "burner",
        &image,
        &["sh", "-c", "while :; do :; done"],
    )
    .await;
    let holder = run(
        &mut client,
        &pod,
        &config,
        "holder",
        &image,
        &["sleep", "3600"],
    )
    .await;
    let sleeper = run(
        &mut client,
        &pod,
        &config,
        "sleeper",
        &image,
        &["sleep", "3600"],
    )
    .await;

    // CPU: one busy loop is about one core, over a window of a second and more.
    let first = container_stats(&mut client, &burner).await;
    let first_cpu = first.cpu.expect("cpu stats");
    assert!(value(&first_cpu.usage_core_nano_seconds) > 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = container_stats(&mut client, &burner).await;
    let second_cpu = second.cpu.expect("cpu stats");
    let nano_cores = value(&second_cpu.usage_nano_cores);
    assert!(
        (500_000_000..=1_300_000_000).contains(&nano_cores),
        "a busy loop used {nano_cores} nano cores"
    );
    assert!(
        value(&second_cpu.usage_core_nano_seconds)
            >= value(&first_cpu.usage_core_nano_seconds) + 500_000_000
    );
    assert_eq!(
        second.attributes.as_ref().map(|a| a.id.as_str()),
        Some(burner.as_str())
    );

    // Memory: 64 MiB written to the pod's tmpfs /dev/shm (its size limit is exactly that, so a
    // little less) is charged to the writer, raising its working set by as much.
    let written = 60 * MIB;
    let baseline = working_set(&container_stats(&mut client, &holder).await);
    let wrote = exec(
        &mut client,
        &holder,
        &[
            "sh",
            "-c",
            &format!("head -c {written} /dev/zero > /dev/shm/x"),
        ],
        30,
    )
    .await
    .expect("exec");
    assert_eq!(
        wrote.exit_code,
        0,
        "{:?}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let holding = container_stats(&mut client, &holder).await;
    let grown = working_set(&holding).saturating_sub(baseline);
    assert!(
        grown.abs_diff(written) <= written / 10,
        "working set grew by {grown} bytes for {written} written (baseline {baseline})"
    );
    let memory = holding.memory.as_ref().expect("memory");
    assert!(value(&memory.usage_bytes) >= working_set(&holding));
    assert!(value(&memory.page_faults) > 0);

    // The pod: three containers, its memory at least theirs together.
    let stats = pod_stats(&mut client, &pod).await;
    let linux = stats.linux.as_ref().expect("linux stats");
    assert_eq!(linux.containers.len(), 3, "{:?}", linux.containers);
    let containers_usage: u64 = linux
        .containers
        .iter()
        .map(|c| value(&c.memory.as_ref().expect("memory").usage_bytes))
        .sum();
    let pod_usage = value(&linux.memory.as_ref().expect("pod memory").usage_bytes);
    assert!(
        pod_usage >= containers_usage && containers_usage >= written,
        "pod {pod_usage}, containers {containers_usage}"
    );
    let processes = value(&linux.process.as_ref().expect("process stats").process_count);
    assert!(processes >= 4, "infra and three containers: {processes}");
    assert!(
        linux
            .cpu
            .as_ref()
            .is_some_and(|c| value(&c.usage_core_nano_seconds) > 0)
    );

    // Network: connections from the host reach the pod's eth0 (refused, so both ways).
    let (rx_before, tx_before) = eth0_bytes(&stats);
    let ip = pod_ip(&mut client, &pod).await;
    let address: SocketAddr = format!("{ip}:9").parse().expect("pod address");
    for _ in 0..20 {
        let _ = TcpStream::connect_timeout(&address, Duration::from_secs(1));
    }
    let (rx_after, tx_after) = eth0_bytes(&pod_stats(&mut client, &pod).await);
    assert!(
        rx_after >= rx_before + 20 * 40 && tx_after > tx_before,
        "rx {rx_before} → {rx_after}, tx {tx_before} → {tx_after}"
    );

    // The writable layer grows with a file written into it (walks are cached for seconds).
    let layer_before = layer_bytes(&container_stats(&mut client, &sleeper).await);
    let wrote = exec(
        &mut client,
        &sleeper,
        &["sh", "-c", "head -c 2097152 /dev/zero > /written"],
        30,
    )
    .await
    .expect("exec");
    assert_eq!(wrote.exit_code, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let layer_after = loop {
        let bytes = layer_bytes(&container_stats(&mut client, &sleeper).await);
        if bytes >= layer_before + 2 * MIB || Instant::now() > deadline {
            break bytes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        layer_after >= layer_before + 2 * MIB,
        "layer {layer_before} → {layer_after}"
    );

    // Filters, as ListContainers filters.
    let all = list_container_stats(&mut client, ContainerStatsFilter::default()).await;
    assert_eq!(all.len(), 3);
    let of_pod = list_container_stats(
        &mut client,
        ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(of_pod.len(), 3);
    let by_label = list_container_stats(
        &mut client,
        ContainerStatsFilter {
            label_selector: [("container".to_string(), "holder".to_string())].into(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<_> = by_label
        .iter()
        .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
        .collect();
    assert_eq!(ids, std::slice::from_ref(&holder));
    let by_id = list_container_stats(
        &mut client,
        ContainerStatsFilter {
            id: burner[..12].to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_id.len(), 1);
    let none = list_container_stats(
        &mut client,
        ContainerStatsFilter {
            pod_sandbox_id: "nope".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let pods = client
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: [("app".to_string(), "stats".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list pod stats")
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);

    // The metrics kubelet would serve as cAdvisor's.
    let descriptors = client
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .expect("descriptors")
        .into_inner()
        .descriptors;
    assert!(
        descriptors
            .iter()
            .any(|d| d.name == "container_memory_working_set_bytes")
    );
    let metrics = client
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .expect("pod metrics")
        .into_inner()
        .pod_metrics;
    let ours = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == pod)
        .expect("our pod's metrics");
    assert_eq!(ours.container_metrics.len(), 3);
    assert!(
        ours.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total")
    );

    // A pod whose shim is gone: Unavailable for it; the lists leave it out and answer.
    let doomed_config = pod_config("doomed", logs.path());
    let doomed = cri::run_pod(&mut client, &doomed_config)
        .await
        .expect("run pod");
    run(
        &mut client,
        &doomed,
        &doomed_config,
        "sleeper",
        &image,
        &["sleep", "3600"],
    )
    .await;
    let shim = crustd.shim_pid_of(&doomed).expect("the doomed pod's shim");
    kill(Pid::from_raw(shim), Signal::SIGKILL).expect("kill the shim");
    let gone = client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: doomed.clone(),
        })
        .await;
    assert_eq!(gone.map(drop).unwrap_err().code(), Code::Unavailable);
    let listed: Vec<String> = client
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .expect("list pod stats with a shim gone")
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| s.attributes.map(|a| a.id))
        .collect();
    assert_eq!(listed, std::slice::from_ref(&pod));
    list_container_stats(&mut client, ContainerStatsFilter::default()).await;
    cri::stop_pod(&mut client, &doomed).await.expect("stop pod");
    cri::remove_pod(&mut client, &doomed)
        .await
        .expect("remove pod");

    // After a restart, the stats still answer.
    crustd.restart();
    let mut client = crustd.runtime().await;
    let after = container_stats(&mut client, &burner).await;
    assert!(value(&after.cpu.expect("cpu").usage_core_nano_seconds) > 0);
    assert_eq!(
        pod_stats(&mut client, &pod)
            .await
            .linux
            .unwrap()
            .containers
            .len(),
        3
    );

    // A stopped container has its layer but no CPU or memory.
    cri::stop(&mut client, &burner, 0).await.expect("stop");
    let stopped = container_stats(&mut client, &burner).await;
    assert!(
        stopped.cpu.is_none() && stopped.memory.is_none(),
        "{stopped:?}"
    );
    assert!(stopped.writable_layer.is_some());

    cri::stop_pod(&mut client, &pod).await.expect("stop pod");
    let not_ready = client
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    assert_eq!(not_ready.map(drop).unwrap_err().code(), Code::Unavailable);
    cri::remove_pod(&mut client, &pod)
        .await
        .expect("remove pod");
}

/// The pod's cumulative CPU time, as PodSandboxStats reports it.
async fn pod_cpu(client: &mut Client, pod: &str) -> u64 {
    let stats = pod_stats(client, pod).await;
    let cpu = stats.linux.and_then(|l| l.cpu).expect("pod cpu");
    value(&cpu.usage_core_nano_seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_cpu_time_keeps_what_its_exited_containers_used() {
    let WithImage {
        registry: _registry,
        crustd,
        image,
        logs,
    } = WithImage::started(false).await;
    let mut client = crustd.runtime().await;
    let config = pod_config("exited-cpu", logs.path());
    let pod = cri::run_pod(&mut client, &config).await.expect("run pod");
    run(
        &mut client,
        &pod,
        &config,
        "stays",
        &image,
        &["sleep", "3600"],
    )
    .await;
    // Burns some CPU (about a second here), then exits.
    let burner = run(
        &mut client,
        &pod,
        &config,
        "burner",
        &image,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
        ],
    )
    .await;
    let exited = cri::wait_exited(&mut client, &burner, Duration::from_secs(20))
        .await
        .expect("status");
    assert_eq!(exited.state, ContainerState::ContainerExited as i32);
    let after_exit = pod_cpu(&mut client, &pod).await;
    assert!(
        after_exit >= 200_000_000,
        "the pod's CPU time keeps the exited container's: {after_exit} ns"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pod_cpu(&mut client, &pod).await >= after_exit,
        "never goes down"
    );
    cri::stop_pod(&mut client, &pod).await.expect("stop pod");
    cri::remove_pod(&mut client, &pod)
        .await
        .expect("remove pod");
}
