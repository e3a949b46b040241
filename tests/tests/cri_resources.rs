//! Resources through crustd's CRI socket with real runc: every limit visible in the
//! container's cgroup files, an in-place resize raising and lowering memory and CPU (and one
//! the kernel refuses, which changes nothing), the new limits in ContainerStatus across a
//! crustd restart, pod-level limits on the pod cgroup crustd owns, oom_score_adj as this host
//! allows it, and CheckpointContainer as criu here allows it. What the host allows is read
//! from the host.

use std::fs;
use std::path::{Path, PathBuf};

use crust_proto::cri::tonic::Code;
use crust_proto::cri::*;
use crust_tests::cri::{self, Client};
use crust_tests::crustd::WithImage;
use crust_tests::host;

fn pod_config(name: &str, setup: &WithImage, linux: LinuxPodSandboxConfig) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(linux),
        ..cri::pod_config(name, "resources", setup.logs.path())
    }
}

/// A sleeping container of `pod` with `resources`, started.
async fn run_container(
    client: &mut Client,
    setup: &WithImage,
    pod: &str,
    pod_config: &PodSandboxConfig,
    name: &str,
    resources: LinuxContainerResources,
) -> String {
    let mut config = cri::container_config(
        name,
        &setup.image,
        &["sleep", "3600"],
        &format!("{name}.log"),
    );
    config.linux = Some(LinuxContainerConfig {
        resources: Some(resources),
        ..Default::default()
    });
    cri::create_and_start(client, pod, pod_config, config)
        .await
        .expect("create and start container")
}

/// `sh -c script` in the container: exit code and output (stderr after stdout).
async fn sh(client: &mut Client, id: &str, script: &str) -> (i32, String) {
    cri::sh(client, id, script).await.expect("exec")
}

/// The container's own cgroup file `controller/file`, as runc mounts it inside.
async fn cgroup_file(client: &mut Client, id: &str, file: &str) -> String {
    let (code, output) = sh(client, id, &format!("cat /sys/fs/cgroup/{file}")).await;
    assert_eq!(code, 0, "{file}: {output}");
    output.trim().to_string()
}

async fn update(
    client: &mut Client,
    id: &str,
    resources: LinuxContainerResources,
) -> Result<(), crust_proto::cri::tonic::Status> {
    client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn reported(client: &mut Client, id: &str) -> LinuxContainerResources {
    cri::status(client, id)
        .await
        .expect("status")
        .resources
        .and_then(|r| r.linux)
        .expect("linux resources in ContainerStatus")
}

const MIB: i64 = 1 << 20;

/// Whether this host's cgroup v1 memory controller accounts swap (memsw files).
fn swap_accounting() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
}

/// The lowest oom_score_adj a container gets here: this process's own (crustd's is the
/// same) when the bounding set lacks CAP_SYS_RESOURCE (bit 24), else none.
fn oom_score_floor() -> Option<i64> {
    let status = fs::read_to_string("/proc/self/status").expect("status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("mask"))
        .expect("CapBnd");
    (bounding & (1 << 24) == 0).then(|| {
        fs::read_to_string("/proc/self/oom_score_adj")
            .expect("own score")
            .trim()
            .parse()
            .expect("a number")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reach_the_cgroup_and_resize_in_place() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("limits", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("run pod");
    let limits = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 64 * MIB,
        cpuset_cpus: "0".into(),
        oom_score_adj: -997,
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        ..Default::default()
    };
    let id = run_container(&mut client, &setup, &pod, &config, "app", limits.clone()).await;
    assert_eq!(cgroup_file(&mut client, &id, "cpu/cpu.shares").await, "512");
    assert_eq!(
        cgroup_file(&mut client, &id, "cpu/cpu.cfs_quota_us").await,
        "50000"
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "cpu/cpu.cfs_period_us").await,
        "100000"
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "cpuset/cpuset.cpus").await,
        "0"
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "memory/memory.limit_in_bytes").await,
        (64 * MIB).to_string()
    );
    if swap_accounting() {
        assert_eq!(
            cgroup_file(&mut client, &id, "memory/memory.memsw.limit_in_bytes").await,
            (64 * MIB).to_string(),
            "no swap beyond the memory limit unless asked"
        );
    }
    let expected_score = oom_score_floor().map_or(-997, |floor| floor.max(-997));
    assert_eq!(
        sh(&mut client, &id, "cat /proc/1/oom_score_adj")
            .await
            .1
            .trim(),
        expected_score.to_string()
    );

    // Raise memory and CPU, then lower memory: the running container follows each time.
    let raised = LinuxContainerResources {
        memory_limit_in_bytes: 128 * MIB,
        cpu_quota: 100_000,
        ..limits.clone()
    };
    update(&mut client, &id, raised.clone())
        .await
        .expect("raise");
    assert_eq!(
        cgroup_file(&mut client, &id, "memory/memory.limit_in_bytes").await,
        (128 * MIB).to_string()
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "cpu/cpu.cfs_quota_us").await,
        "100000"
    );
    assert_eq!(
        reported(&mut client, &id).await.memory_limit_in_bytes,
        128 * MIB
    );
    let lowered = LinuxContainerResources {
        memory_limit_in_bytes: 96 * MIB,
        cpu_quota: 25_000,
        ..raised.clone()
    };
    update(&mut client, &id, lowered.clone())
        .await
        .expect("lower");
    assert_eq!(
        cgroup_file(&mut client, &id, "memory/memory.limit_in_bytes").await,
        (96 * MIB).to_string()
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "cpu/cpu.cfs_quota_us").await,
        "25000"
    );

    // Below what it uses: the kernel refuses, the error says so, nothing changes.
    let (code, output) = sh(
        &mut client,
        &id,
        "head -c 41943040 /dev/zero > /dev/shm/fill && echo filled",
    )
    .await;
    assert_eq!((code, output.trim()), (0, "filled"));
    let refused = update(
        &mut client,
        &id,
        LinuxContainerResources {
            memory_limit_in_bytes: 8 * MIB,
            ..lowered.clone()
        },
    )
    .await
    .expect_err("a limit below usage is refused");
    assert!(
        refused.message().contains("memory") || refused.message().contains("busy"),
        "{}",
        refused.message()
    );
    assert_eq!(
        cgroup_file(&mut client, &id, "memory/memory.limit_in_bytes").await,
        (96 * MIB).to_string(),
        "the old limit stays"
    );
    assert_eq!(
        reported(&mut client, &id).await.memory_limit_in_bytes,
        96 * MIB
    );

    // A bad value is refused before anything runs; an unknown container is NotFound.
    let bad = update(
        &mut client,
        &id,
        LinuxContainerResources {
            cpu_shares: 1,
            ..lowered.clone()
        },
    )
    .await
    .expect_err("cpu_shares 1");
    assert_eq!(bad.code(), Code::InvalidArgument, "{}", bad.message());
    let missing = update(&mut client, "no-such-container", lowered.clone())
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    // The resized limits are what a restarted crustd reports.
    setup.crustd.restart();
    let mut client = setup.crustd.runtime().await;
    let after = reported(&mut client, &id).await;
    assert_eq!(
        (after.memory_limit_in_bytes, after.cpu_quota),
        (96 * MIB, 25_000)
    );
    // A stopped container is not resized.
    cri::stop(&mut client, &id, 0).await.expect("stop");
    let stopped = update(&mut client, &id, lowered)
        .await
        .expect_err("stopped");
    assert_eq!(stopped.code(), Code::FailedPrecondition);
    remove_pod(&mut client, &pod).await;
}

async fn remove_pod(client: &mut Client, id: &str) {
    cri::stop_pod(client, id).await.expect("stop pod");
    cri::remove_pod(client, id).await.expect("remove pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cgroup_crustd_owns_gets_the_pods_limits_and_overhead() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let linux = LinuxPodSandboxConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 * MIB,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        overhead: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 * MIB,
            cpu_quota: 10_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let config = pod_config("pod-limits", &setup, linux);
    let pod = cri::run_pod(&mut client, &config).await.expect("run pod");
    let pod_cgroup = |controller: &str, file: &str| -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(setup.crustd.cgroup_root.trim_start_matches('/'))
            .join(&pod)
            .join(file)
    };
    let read = |path: PathBuf| {
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read(pod_cgroup("memory", "memory.limit_in_bytes")),
        (288 * MIB).to_string()
    );
    assert_eq!(read(pod_cgroup("cpu", "cpu.cfs_quota_us")), "60000");
    // A container below it is bound by it too.
    let id = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "inside",
        LinuxContainerResources::default(),
    )
    .await;
    assert!(
        pod_cgroup("memory", &id).is_dir(),
        "the container's cgroup is below the pod's"
    );
    remove_pod(&mut client, &pod).await;
    assert!(
        !pod_cgroup("memory", "").exists(),
        "the pod cgroup goes with the pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_taken_or_refused_in_crius_words_and_the_container_runs_on() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let config = pod_config("checkpoint", &setup, LinuxPodSandboxConfig::default());
    let pod = cri::run_pod(&mut client, &config).await.expect("run pod");
    let id = run_container(
        &mut client,
        &setup,
        &pod,
        &config,
        "checkpointed",
        LinuxContainerResources::default(),
    )
    .await;
    let out = tempfile::tempdir().expect("archive dir");
    let archive = out.path().join("checkpoint.tar");
    let answer = client
        .checkpoint_container(CheckpointContainerRequest {
            container_id: id.clone(),
            location: archive.display().to_string(),
            timeout: 60,
        })
        .await;
    match host::criu_refusal() {
        Some(reason) => {
            let status = answer.expect_err("criu cannot run here");
            assert!(
                status.message().contains(&reason),
                "{reason:?} not in {:?}",
                status.message()
            );
            assert!(!archive.exists(), "no partial archive");
        }
        None => {
            answer.expect("checkpoint");
            let names: Vec<String> = tar_names(&archive);
            for expected in ["spec.dump", "config.dump", "rootfs-diff.tar"] {
                assert!(
                    names.iter().any(|n| n == expected),
                    "{expected} in {names:?}"
                );
            }
            assert!(names.iter().any(|n| n.starts_with("checkpoint/")));
        }
    }
    // Either way the container runs on: it answers an exec, and crustd has recorded no exit.
    assert_eq!(
        sh(&mut client, &id, "echo alive").await,
        (0, "alive\n".into())
    );
    let status = cri::status(&mut client, &id).await.expect("status");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    let relative = client
        .checkpoint_container(CheckpointContainerRequest {
            container_id: id.clone(),
            location: "relative.tar".into(),
            timeout: 0,
        })
        .await
        .expect_err("relative location");
    assert_eq!(relative.code(), Code::InvalidArgument);
    remove_pod(&mut client, &pod).await;
}

fn tar_names(path: &Path) -> Vec<String> {
    let output = std::process::Command::new("tar")
        .arg("-tf")
        .arg(path)
        .output()
        .expect("tar");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
