//! crustd's RuntimeService end to end: a CRI client over crustd's socket, images from a real
//! registry on 127.0.0.1, pods and containers run by crust's shim and runc.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_proto::cri::tonic::Code;
use crust_proto::cri::*;
use crust_tests::cleanup;
use crust_tests::cri::{self, Client, exec, start};
use crust_tests::crustd::WithImage;

fn pod_config(name: &str, log_directory: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        hostname: format!("{name}-host"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        ..cri::pod_config(name, "default", log_directory)
    }
}

/// A container of the pod's, logging where kubelet would put its first log.
fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    cri::container_config(name, image, command, &format!("{name}/0.log"))
}

async fn create(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, crust_proto::cri::tonic::Status> {
    client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn run(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create(client, pod, pod_config, config)
        .await
        .expect("create container");
    start(client, &id).await.expect("start container");
    id
}

async fn status(client: &mut Client, id: &str) -> ContainerStatus {
    cri::status(client, id).await.expect("container status")
}

async fn wait_exited(client: &mut Client, id: &str, limit: Duration) -> ContainerStatus {
    cri::wait_exited(client, id, limit)
        .await
        .expect("container status")
}

/// Waits until `path` holds at least `lines` lines; returns its text.
async fn log_lines(path: &Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The (stream, tag, content) of each CRI log record, after checking its timestamp.
fn records(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let time = fields.next().unwrap_or_default();
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "not an RFC 3339 time: {line:?}"
            );
            let stream = fields.next().unwrap_or_default().to_string();
            let tag = fields.next().unwrap_or_default().to_string();
            let content = fields.next().unwrap_or_default().to_string();
            (stream, tag, content)
        })
        .collect()
}

fn record(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.into(), tag.into(), content.into())
}

async fn remove_pod(client: &mut Client, id: &str) {
    cri::stop_pod(client, id).await.expect("stop pod");
    cri::remove_pod(client, id).await.expect("remove pod");
}

/// The code of a failed call (None if it succeeded).
fn code<T>(result: Result<T, crust_proto::cri::tonic::Status>) -> Option<Code> {
    result.err().map(|s| s.code())
}

fn cgroup_exists(relative: &str) -> bool {
    Path::new("/sys/fs/cgroup/memory")
        .join(relative.trim_start_matches('/'))
        .exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_containers_with_logs_exec_and_exit_reasons_and_leaves_nothing() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let pod_config = pod_config("web", setup.logs.path());
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    let shims = setup.crustd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim per pod");

    // Logs: both streams, CRI format, written by the shim; pod files in place.
    let app = run(
        &mut client,
        &pod,
        &pod_config,
        container_config(
            "app",
            &setup.image,
            &["sh", "-c", "echo hello; echo oops >&2; cat /etc/hostname; grep -v '^#' /etc/resolv.conf; while true; do sleep 0.2; echo tick; done"],
        ),
    )
    .await;
    let log = setup.logs.path().join("app/0.log");
    let text = log_lines(&log, 6).await;
    let got = records(&text);
    for expected in [
        record("stdout", "F", "hello"),
        record("stderr", "F", "oops"),
        record("stdout", "F", "web-host"),
        record("stdout", "F", "search default.svc.cluster.local"),
        record("stdout", "F", "nameserver 10.96.0.10"),
        record("stdout", "F", "options ndots:5"),
    ] {
        assert!(got.contains(&expected), "{expected:?} missing from\n{text}");
    }
    let running = status(&mut client, &app).await;
    assert_eq!(running.state, ContainerState::ContainerRunning as i32);
    assert_eq!(running.log_path, log.display().to_string());
    assert_eq!(
        setup.crustd.shim_pids(),
        shims,
        "the pod's containers share its shim"
    );

    // ExecSync: output, exit code, the pod's shared pid namespace, timeout.
    let done = exec(
        &mut client,
        &app,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        0,
    )
    .await
    .expect("exec sync");
    assert_eq!(
        (
            done.stdout.as_slice(),
            done.stderr.as_slice(),
            done.exit_code
        ),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let init = exec(&mut client, &app, &["cat", "/proc/1/cmdline"], 5)
        .await
        .expect("exec");
    assert!(
        String::from_utf8_lossy(&init.stdout).contains("/pause"),
        "{init:?}"
    );
    let started = Instant::now();
    let timed_out = exec(&mut client, &app, &["sleep", "60"], 1)
        .await
        .expect_err("must time out");
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    // The timeout, then a SIGKILL and the reaping of a sleep: well under 3 s in all.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "a 1 s ExecSync answered after {took:?}"
    );
    let busy = exec(&mut client, &app, &["ps"], 5).await.expect("ps");
    assert!(
        !String::from_utf8_lossy(&busy.stdout).contains("sleep 60"),
        "the timed-out exec was killed"
    );

    // ReopenContainerLog after a rotation: new records go to the new file.
    let rotated = setup.logs.path().join("app/0.log.1");
    fs::rename(&log, &rotated).expect("rotate");
    client
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: app.clone(),
        })
        .await
        .expect("reopen log");
    let fresh = records(&log_lines(&log, 1).await);
    assert!(fresh.contains(&record("stdout", "F", "tick")), "{fresh:?}");
    assert!(
        records(&fs::read_to_string(&rotated).unwrap_or_default())
            .contains(&record("stdout", "F", "hello"))
    );

    // Exit codes and reasons.
    let completed = run(
        &mut client,
        &pod,
        &pod_config,
        container_config("ok", &setup.image, &["true"]),
    )
    .await;
    let failed = run(
        &mut client,
        &pod,
        &pod_config,
        container_config("bad", &setup.image, &["sh", "-c", "exit 7"]),
    )
    .await;
    let ok = wait_exited(&mut client, &completed, Duration::from_secs(10)).await;
    assert_eq!((ok.exit_code, ok.reason.as_str()), (0, "Completed"));
    assert!(
        ok.finished_at >= ok.started_at && ok.started_at > 0,
        "started {} finished {}",
        ok.started_at,
        ok.finished_at
    );
    let bad = wait_exited(&mut client, &failed, Duration::from_secs(10)).await;
    assert_eq!((bad.exit_code, bad.reason.as_str()), (7, "Error"));

    // Stop: SIGTERM first (sh is not pid 1 in a shared pid namespace, so it dies of it).
    let stopping = Instant::now();
    client
        .stop_container(StopContainerRequest {
            container_id: app.clone(),
            timeout: 10,
        })
        .await
        .expect("stop");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let stopped = status(&mut client, &app).await;
    assert_eq!(
        (stopped.state, stopped.exit_code),
        (ContainerState::ContainerExited as i32, 143)
    );
    client
        .stop_container(StopContainerRequest {
            container_id: app.clone(),
            timeout: 0,
        })
        .await
        .expect("stopping twice is fine");

    // A container that ignores SIGTERM gets its grace period, then SIGKILL.
    let stubborn = run(
        &mut client,
        &pod,
        &pod_config,
        container_config(
            "stubborn",
            &setup.image,
            &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
        ),
    )
    .await;
    let stopping = Instant::now();
    client
        .stop_container(StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 2,
        })
        .await
        .expect("stop");
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "grace period of 2 s, then SIGKILL: {took:?}"
    );
    let killed = status(&mut client, &stubborn).await;
    assert_eq!(
        (killed.state, killed.exit_code, killed.reason.as_str()),
        (ContainerState::ContainerExited as i32, 137, "Error")
    );

    // Listing with filters.
    let listed = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: [("container".to_string(), "bad".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![failed.clone()]
    );
    let exited = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(exited.len(), 4, "ok, bad, app and stubborn");

    // Remove: idempotent, the status is gone.
    for _ in 0..2 {
        client
            .remove_container(RemoveContainerRequest {
                container_id: completed.clone(),
            })
            .await
            .expect("remove");
    }
    let gone = client
        .container_status(ContainerStatusRequest {
            container_id: completed.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);

    // The pod: status, stop twice, remove twice; shim, mounts and cgroup gone.
    let pod_status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32);
    let pod_cgroup = format!("{}/{pod}", setup.crustd.cgroup_root);
    assert!(cgroup_exists(&pod_cgroup));
    remove_pod(&mut client, &pod).await;
    remove_pod(&mut client, &pod).await;
    assert!(
        crust_tests::command::wait_until(Duration::from_secs(5), || shims
            .iter()
            .all(|&p| cleanup::is_gone(p))),
        "the pod's shim left"
    );
    assert!(
        cleanup::mounts_below(setup.crustd.dir()).is_empty(),
        "{:?}",
        cleanup::mounts_below(setup.crustd.dir())
    );
    assert!(!cgroup_exists(&pod_cgroup), "pod cgroup removed");
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    // Every place crustd keeps something must exist, and be empty.
    for dir in [
        "state/bundles",
        "state/pods",
        "state/exec",
        "root/containers",
        "root/records/pods",
        "root/records/containers",
    ] {
        let left: Vec<PathBuf> = fs::read_dir(setup.crustd.dir().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    let runc_left: Vec<PathBuf> = fs::read_dir(setup.crustd.runc_root())
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(runc_left.is_empty(), "runc state: {runc_left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crustd_killed_mid_run_loses_no_exit_and_recovers_every_pod() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let pod_config = pod_config("survivor", setup.logs.path());
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    let short = run(
        &mut client,
        &pod,
        &pod_config,
        container_config("short", &setup.image, &["sh", "-c", "sleep 2; exit 5"]),
    )
    .await;
    let long = run(
        &mut client,
        &pod,
        &pod_config,
        container_config("long", &setup.image, &["sleep", "3600"]),
    )
    .await;
    drop(client);

    setup.crustd.kill();
    let down = now_nanos();
    // The short container exits while crustd is down: runc's own state says when.
    let runc_root = setup.crustd.runc_root();
    let exited_while_down = crust_tests::command::wait_until(Duration::from_secs(10), || {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["state", &short])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"stopped\""))
    });
    assert!(
        exited_while_down,
        "the short container did not exit during the outage"
    );
    setup.crustd.start_again();
    let mut client = setup.crustd.runtime().await;

    let short_status = status(&mut client, &short).await;
    assert_eq!(
        (
            short_status.state,
            short_status.exit_code,
            short_status.reason.as_str()
        ),
        (ContainerState::ContainerExited as i32, 5, "Error"),
        "the exit that happened while crustd was down"
    );
    assert!(
        short_status.finished_at > down,
        "the real exit time is kept"
    );
    let long_status = status(&mut client, &long).await;
    assert_eq!(long_status.state, ContainerState::ContainerRunning as i32);
    let still = exec(&mut client, &long, &["echo", "alive"], 5)
        .await
        .expect("exec after restart");
    assert_eq!(still.stdout, b"alive\n");

    // Exits after the restart arrive too, within milliseconds of the death.
    client
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    let killed = status(&mut client, &long).await;
    assert_eq!(
        (killed.state, killed.exit_code),
        (ContainerState::ContainerExited as i32, 137)
    );

    // A graceful restart keeps everything too.
    drop(client);
    setup.crustd.restart();
    let mut client = setup.crustd.runtime().await;
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32);
    remove_pod(&mut client, &pod).await;
    assert!(
        // A shim that retried events while crustd was down flushes them (up to 3 s) first.
        crust_tests::command::wait_until(Duration::from_secs(15), || setup
            .crustd
            .shim_pids()
            .is_empty()),
        "the shim left: {:?}\n{}",
        setup.crustd.shim_pids(),
        setup.crustd.log()
    );
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;
    let pod_config = pod_config("hungry", setup.logs.path());
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    let mut config = container_config(
        "hog",
        &setup.image,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
    );
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 * 1024 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = run(&mut client, &pod, &pod_config, config).await;
    let done = wait_exited(&mut client, &hog, Duration::from_secs(20)).await;
    assert_eq!(
        (done.exit_code, done.reason.as_str()),
        (137, "OOMKilled"),
        "{done:?}"
    );
    remove_pod(&mut client, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_error_and_the_right_code() {
    let setup = WithImage::started(false).await;
    let mut client = setup.crustd.runtime().await;

    let version = client
        .version(VersionRequest::default())
        .await
        .expect("version")
        .into_inner();
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("crust", "v1")
    );
    let conditions = client
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status")
        .conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    );
    // The fixture's CNI network is configured and its plugins installed: ready (the reasons
    // it is not are tested in cri_network.rs).
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition");
    assert!(network.status, "{network:?}");
    client
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "10.244.0.0/24".into(),
                }),
            }),
        })
        .await
        .expect("update runtime config");
    let held = client
        .status(StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner()
        .info;
    assert_eq!(
        held.get("podCIDR").map(String::as_str),
        Some("10.244.0.0/24"),
        "{held:?}"
    );

    let unknown = "0".repeat(64);
    assert_eq!(
        code(start(&mut client, &unknown).await),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            client
                .container_status(ContainerStatusRequest {
                    container_id: unknown.clone(),
                    verbose: false
                })
                .await
                .map(drop)
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(exec(&mut client, &unknown, &["true"], 1).await.map(drop)),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            client
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: unknown.clone(),
                    verbose: false
                })
                .await
                .map(drop)
        ),
        Some(Code::NotFound)
    );
    // Stop and remove of what is not there succeed, as CRI asks.
    client
        .stop_container(StopContainerRequest {
            container_id: unknown.clone(),
            timeout: 0,
        })
        .await
        .expect("stop unknown");
    client
        .remove_container(RemoveContainerRequest {
            container_id: unknown.clone(),
        })
        .await
        .expect("remove unknown");
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("stop unknown pod");
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("remove unknown pod");

    // Pods.
    let run_with = |config: PodSandboxConfig, handler: &str| RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    };
    let mut no_metadata = pod_config("x", setup.logs.path());
    no_metadata.metadata = None;
    let mut relative_logs = pod_config("x", setup.logs.path());
    relative_logs.log_directory = "var/log/pods".into();
    for (request, why) in [
        (run_with(no_metadata, ""), "no metadata"),
        (run_with(relative_logs, ""), "relative log directory"),
        (
            run_with(pod_config("x", setup.logs.path()), "kata"),
            "unknown handler",
        ),
    ] {
        let error = client.run_pod_sandbox(request).await.expect_err(why);
        assert_eq!(error.code(), Code::InvalidArgument, "{why}: {error:?}");
    }
    let pod_config = pod_config("checks", setup.logs.path());
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    let again = client
        .run_pod_sandbox(run_with(pod_config.clone(), ""))
        .await
        .expect_err("same name");
    assert_eq!(again.code(), Code::AlreadyExists);

    // Containers.
    let image = setup.image.clone();
    let with = |change: &dyn Fn(&mut ContainerConfig)| {
        let mut config = container_config("c", &image, &["sleep", "3600"]);
        change(&mut config);
        config
    };
    let cases: Vec<(ContainerConfig, Code, &str)> = vec![
        (
            with(&|c| c.log_path = "../../escape.log".into()),
            Code::InvalidArgument,
            "log path climbing out",
        ),
        (
            with(&|c| c.log_path = "/etc/x.log".into()),
            Code::InvalidArgument,
            "absolute log path",
        ),
        (
            with(&|c| {
                c.mounts = vec![Mount {
                    host_path: "/tmp/../etc".into(),
                    container_path: "/data".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
            "mount host path with ..",
        ),
        (
            with(&|c| {
                c.mounts = vec![Mount {
                    host_path: "/tmp".into(),
                    container_path: "data/../../x".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
            "relative mount target",
        ),
        (
            with(&|c| c.metadata = None),
            Code::InvalidArgument,
            "no metadata",
        ),
        (with(&|c| c.image = None), Code::InvalidArgument, "no image"),
        (
            with(&|c| {
                c.image = Some(ImageSpec {
                    image: "Not A::Ref".into(),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "malformed image ref",
        ),
        (
            with(&|c| {
                c.image = Some(ImageSpec {
                    image: "127.0.0.1:1/never/pulled:1".into(),
                    ..Default::default()
                })
            }),
            Code::NotFound,
            "image not pulled",
        ),
    ];
    for (config, expected, why) in cases {
        let error = create(&mut client, &pod, &pod_config, config)
            .await
            .expect_err(why);
        assert_eq!(error.code(), expected, "{why}: {error:?}");
        assert!(!error.message().is_empty(), "{why}");
    }
    let unknown_pod = create(&mut client, &unknown, &pod_config, with(&|_| {}))
        .await
        .expect_err("unknown pod");
    assert_eq!(unknown_pod.code(), Code::NotFound);

    let first = create(&mut client, &pod, &pod_config, with(&|_| {}))
        .await
        .expect("create");
    let twice = create(&mut client, &pod, &pod_config, with(&|_| {}))
        .await
        .expect_err("same name");
    assert_eq!(twice.code(), Code::AlreadyExists);
    start(&mut client, &first).await.expect("start");
    let restart = start(&mut client, &first).await.expect_err("start twice");
    assert_eq!(restart.code(), Code::FailedPrecondition);

    // runc's own error surfaces for a missing binary; the container is left exited.
    let missing = create(
        &mut client,
        &pod,
        &pod_config,
        container_config("missing", &image, &["/no/such/binary"]),
    )
    .await
    .expect("create");
    let error = start(&mut client, &missing)
        .await
        .expect_err("cannot start");
    assert!(error.message().contains("no such file"), "{error:?}");
    let failed = status(&mut client, &missing).await;
    assert_eq!(
        (failed.state, failed.reason.as_str()),
        (ContainerState::ContainerExited as i32, "StartError")
    );
    let not_running = exec(&mut client, &missing, &["true"], 1)
        .await
        .expect_err("not running");
    assert_eq!(not_running.code(), Code::FailedPrecondition);

    // A container holds its image's layers: removing the image leaves them until it goes.
    let created = create(
        &mut client,
        &pod,
        &pod_config,
        container_config("late", &image, &["echo", "late"]),
    )
    .await
    .expect("create");
    let mut images = setup.crustd.images().await;
    images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("remove image");
    start(&mut client, &created)
        .await
        .expect("start after its image was removed");
    let late = wait_exited(&mut client, &created, Duration::from_secs(10)).await;
    assert_eq!(late.exit_code, 0);
    let layers = setup.crustd.root().join("layers");
    assert!(
        fs::read_dir(&layers).map(|e| e.count()).unwrap_or(0) > 0,
        "held by the containers"
    );
    remove_pod(&mut client, &pod).await;
    assert_eq!(
        fs::read_dir(&layers).map(|e| e.count()).unwrap_or(0),
        0,
        "released with the last container"
    );
}
