//! crustd's streaming server end to end: CRI Exec, Attach and PortForward answer URLs, and
//! independent clients use them with real containers under runc. Every case runs over SPDY/3.1
//! (npm's `spdy-transport`) and over WebSocket (the `kubernetes` Python client); raw HTTP,
//! malformed frames and a timed round trip use crust's own client (`crust_tests::streaming`).
//! Each test's crustd (and everything it started) goes away with the fixture, also on failure.

use std::path::Path;
use std::time::{Duration, Instant};

use crust_proto::cri::tonic::Code;
use crust_proto::cri::*;
use crust_tests::cri::{self, Client};
use crust_tests::crustd::WithImage;
use crust_tests::streaming::{
    self, Report, SpdyClient, Transport, WsClient, client, opcode, seq_output, sha256_hex,
    spdy_control, spdy_type,
};
use serde_json::json;

const MIB: usize = 1 << 20;
const CLIENT_LIMIT: Duration = Duration::from_secs(120);
/// The echo server the port-forward tests run in their pods.
const ECHO_PORT: u16 = 8080;

/// A pod of the test image, and a client for crustd.
struct Pod {
    setup: WithImage,
    client: Client,
    id: String,
    config: PodSandboxConfig,
}

impl Pod {
    async fn start(name: &str) -> Pod {
        Self::start_with(name, None).await
    }

    async fn start_with(name: &str, linux: Option<LinuxPodSandboxConfig>) -> Pod {
        Self::start_configured(name, linux, "").await
    }

    /// As [`Pod::start_with`], with `extra` in crustd's config.
    async fn start_configured(
        name: &str,
        linux: Option<LinuxPodSandboxConfig>,
        extra: &str,
    ) -> Pod {
        let setup = WithImage::start_configured(false, extra)
            .await
            .unwrap_or_else(|why| panic!("crustd with the test image: {why}"));
        let mut client = setup.crustd.runtime().await;
        let mut config = cri::pod_config(name, "default", setup.logs.path());
        config.linux = linux;
        let id = cri::run_pod(&mut client, &config).await.expect("run pod");
        Pod {
            setup,
            client,
            id,
            config,
        }
    }

    /// A pod with one container sleeping for an hour; its id.
    async fn with_sleeper(name: &str) -> (Pod, String) {
        let mut pod = Self::start(name).await;
        let id = pod.sleeper().await;
        (pod, id)
    }

    /// Starts a container that sleeps for an hour; its id.
    async fn sleeper(&mut self) -> String {
        self.container("sleeper", &["sleep", "3600"], false, false, false)
            .await
    }

    /// Removes every pod the test made.
    async fn finish(mut self) {
        cri::remove_all_pods(&mut self.client)
            .await
            .expect("remove pods");
    }

    /// Starts container `name` running `command`; `tty`/`stdin`/`stdin_once` as in its config.
    async fn container(
        &mut self,
        name: &str,
        command: &[&str],
        tty: bool,
        stdin: bool,
        once: bool,
    ) -> String {
        let mut config =
            cri::container_config(name, &self.setup.image, command, &format!("{name}.log"));
        config.tty = tty;
        config.stdin = stdin;
        config.stdin_once = once;
        cri::create_and_start(&mut self.client, &self.id, &self.config, config)
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}\n{}", self.setup.crustd.log()))
    }

    fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.setup.logs.path().join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.setup.logs.path().join(format!("{name}.log"))
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        self.client
            .exec(ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}"))
            .into_inner()
            .url
    }

    async fn attach_url(&mut self, id: &str, tty: bool, stdin: bool) -> String {
        self.client
            .attach(AttachRequest {
                container_id: id.into(),
                stdin,
                tty,
                stdout: true,
                stderr: !tty,
            })
            .await
            .unwrap_or_else(|e| panic!("Attach: {e}"))
            .into_inner()
            .url
    }

    async fn port_forward_url(&mut self, port: u16) -> String {
        let pod = self.id.clone();
        self.client
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![i32::from(port)],
            })
            .await
            .unwrap_or_else(|e| panic!("PortForward: {e}"))
            .into_inner()
            .url
    }

    /// Runs `transport`'s exec of `cmd` with the client flags and steps given.
    async fn exec(
        &mut self,
        transport: Transport,
        id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
        steps: serde_json::Value,
    ) -> Report {
        let url = self.exec_url(id, cmd, tty, stdin).await;
        client(
            transport,
            "exec",
            &[url],
            &flags(tty, stdin, steps),
            CLIENT_LIMIT,
        )
        .await
    }

    /// crustd still serves: Version answers and a fresh exec runs.
    async fn assert_still_serving(&mut self, id: &str, when: &str) {
        let version = self
            .client
            .version(VersionRequest {
                version: String::new(),
            })
            .await;
        assert!(
            version.is_ok(),
            "{when}: crustd no longer answers: {version:?}\n{}",
            self.setup.crustd.log()
        );
        let (code, out) = cri::sh(&mut self.client, id, "echo alive")
            .await
            .expect("ExecSync");
        assert_eq!((code, out.as_str()), (0, "alive\n"), "{when}");
        let url = self.exec_url(id, &["echo", "fresh"], false, false).await;
        let outcome = tokio::task::spawn_blocking(move || {
            let session = SpdyClient::connect(&url, &["v4.channel.k8s.io"])
                .expect("connect")
                .expect("101");
            session.run_exec(false).expect("exec over SPDY")
        })
        .await
        .expect("join");
        assert_eq!(outcome.exit_code, Some(0), "{when}: {outcome:?}");
        assert_eq!(outcome.stdout, b"fresh\n", "{when}: {outcome:?}");
    }

    /// Processes in container `id` whose command line contains `needle` (by `ps` inside).
    async fn processes(&mut self, id: &str, needle: &str) -> Vec<String> {
        let (_, out) = cri::sh(&mut self.client, id, "ps -o pid,args")
            .await
            .expect("ps");
        out.lines()
            .filter(|l| l.contains(needle) && !l.contains("ps -o"))
            .map(str::to_string)
            .collect()
    }

    async fn wait_gone(&mut self, id: &str, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.processes(id, needle).await;
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn running(&mut self, id: &str) -> bool {
        cri::status(&mut self.client, id)
            .await
            .map(|s| s.state)
            .ok()
            == Some(ContainerState::ContainerRunning as i32)
    }

    /// Waits until the echo server in container `id` listens on `port`.
    async fn wait_listening(&mut self, id: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let needle = format!(":{port} ");
        loop {
            let (_, out) = cri::sh(&mut self.client, id, "netstat -ltn")
                .await
                .expect("netstat");
            if out.contains(&needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn flags(tty: bool, stdin: bool, steps: serde_json::Value) -> Vec<String> {
    let mut out = vec!["--steps".to_string(), steps.to_string()];
    if tty {
        out.push("--tty".into());
    }
    if stdin {
        out.push("--stdin".into());
    }
    out
}

fn no_failure(report: &Report, what: &str) {
    assert!(report.failure().is_none(), "{what}: {report:?}");
    assert_eq!(report.http_status(), Some(101), "{what}: {report:?}");
}

/// The protocol each client should end up with when it offers its defaults.
fn default_protocol(transport: Transport) -> &'static str {
    match transport {
        // spdyclient offers v4, v3, v2, channel.k8s.io in that order.
        Transport::Spdy => "v4.channel.k8s.io",
        // kubernetes 37's WSClient offers v5 then v4.
        Transport::WebSocket => "v5.channel.k8s.io",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_output_and_exit_codes_over_both_transports() {
    let (mut pod, id) = Pod::with_sleeper("exec-codes").await;
    for transport in Transport::selected() {
        let what = transport.name();
        let ok = pod
            .exec(
                transport,
                &id,
                &["sh", "-c", "echo out; echo err >&2"],
                false,
                false,
                json!([]),
            )
            .await;
        no_failure(&ok, what);
        assert_eq!(ok.protocol(), default_protocol(transport), "{what}: {ok:?}");
        assert_eq!(ok.exit_code(), Some(0), "{what}: {ok:?}");
        assert_eq!(ok.text("stdout"), "out\n", "{what}: {ok:?}");
        assert_eq!(ok.text("stderr"), "err\n", "{what}: {ok:?}");
        assert_eq!(ok.get("status")["status"], "Success", "{what}: {ok:?}");

        for (script, code) in [("exit 1", 1), ("exit 42", 42), ("kill -9 $$", 137)] {
            let report = pod
                .exec(
                    transport,
                    &id,
                    &["sh", "-c", script],
                    false,
                    false,
                    json!([]),
                )
                .await;
            no_failure(&report, what);
            assert_eq!(
                report.exit_code(),
                Some(code),
                "{what} {script}: {report:?}"
            );
            let status = report.get("status");
            assert_eq!(status["status"], "Failure", "{what} {script}: {report:?}");
            assert_eq!(
                status["reason"], "NonZeroExitCode",
                "{what} {script}: {report:?}"
            );
        }

        let missing = pod
            .exec(
                transport,
                &id,
                &["/no/such/binary"],
                false,
                false,
                json!([]),
            )
            .await;
        assert_ne!(
            missing.exit_code(),
            Some(0),
            "{what}: a missing binary: {missing:?}"
        );
        assert!(
            !missing.error_text().is_empty(),
            "{what}: a missing binary says why: {missing:?}"
        );
    }

    // v4 offered alone over WebSocket: no close signal, same exit codes.
    let url = pod
        .exec_url(&id, &["sh", "-c", "echo v4; exit 3"], false, false)
        .await;
    let v4 = client(
        Transport::WebSocket,
        "exec",
        &[url],
        &["--protocol".into(), "v4.channel.k8s.io".into()],
        CLIENT_LIMIT,
    )
    .await;
    no_failure(&v4, "WebSocket v4");
    assert_eq!(
        (v4.protocol(), v4.exit_code(), v4.text("stdout")),
        ("v4.channel.k8s.io", Some(3), "v4\n"),
        "{v4:?}"
    );

    // Older remotecommand versions over SPDY: the error stream carries text, not a Status.
    for protocol in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = pod
            .exec_url(&id, &["sh", "-c", "echo old; exit 2"], false, false)
            .await;
        let old = client(
            Transport::Spdy,
            "exec",
            &[url],
            &["--protocol".into(), protocol.into()],
            CLIENT_LIMIT,
        )
        .await;
        no_failure(&old, protocol);
        assert_eq!(old.protocol(), protocol, "{old:?}");
        assert_eq!(old.text("stdout"), "old\n", "{protocol}: {old:?}");
        assert!(
            !old.error_text().is_empty(),
            "{protocol}: a failure is reported: {old:?}"
        );
    }

    // crust's own SPDY client (the benchmark's), for the same answers.
    let url = pod
        .exec_url(&id, &["sh", "-c", "echo own; exit 5"], false, false)
        .await;
    let own = tokio::task::spawn_blocking(move || {
        SpdyClient::connect(&url, &["v4.channel.k8s.io"])
            .expect("connect")
            .expect("101")
            .run_exec(false)
            .expect("exec")
    })
    .await
    .expect("join");
    assert_eq!(
        (own.exit_code, own.stdout.as_slice()),
        (Some(5), &b"own\n"[..]),
        "{own:?}"
    );
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_sees_resizes_and_stdin() {
    let (mut pod, id) = Pod::with_sleeper("exec-tty").await;
    for transport in Transport::selected() {
        let what = transport.name();
        // Resizes and input travel on different streams: after each line of input the shell
        // waits for its terminal to have the size (the client's wait step bounds it).
        let steps = json!([
            {"resize": [100, 40]}, {"stdin": "go\n"}, {"wait": "size 40 100"},
            {"resize": [120, 50]}, {"stdin": "go\n"}, {"wait": "size 50 120"},
        ]);
        let report = pod
            .exec(
                transport,
                &id,
                &[
                    "sh",
                    "-c",
                    "read a; until [ \"$(stty size)\" = '40 100' ]; do sleep 0.05; done; \
                     echo size $(stty size); \
                     read b; until [ \"$(stty size)\" = '50 120' ]; do sleep 0.05; done; \
                     echo size $(stty size); tty; exit 7",
                ],
                true,
                true,
                steps,
            )
            .await;
        no_failure(&report, what);
        let out = report.text("stdout");
        assert!(
            out.contains("size 40 100") && out.contains("size 50 120"),
            "{what}: {report:?}"
        );
        // A terminal: output lines end in CRLF, the process has a tty, there is no stderr.
        assert!(
            out.contains("\r\n") && out.contains("/dev/pts/"),
            "{what}: {report:?}"
        );
        assert_eq!(report.len("stderr"), 0, "{what}: {report:?}");
        assert_eq!(report.exit_code(), Some(7), "{what}: {report:?}");
    }
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_and_large_output_are_byte_exact() {
    let (mut pod, id) = Pod::with_sleeper("exec-bytes").await;
    let expected = seq_output(64 * MIB);
    let expected_sha = sha256_hex(&expected);
    for transport in Transport::selected() {
        let what = transport.name();
        // 8 MiB through `cat` and back: stdin reaches the process, and closing it ends `cat`
        // (SPDY: FIN on the stdin stream; WebSocket: v5's close signal).
        let steps = json!([{"stdin_bytes": 8 * MIB}, {"close_stdin": true}]);
        let report = pod.exec(transport, &id, &["cat"], false, true, steps).await;
        no_failure(&report, what);
        assert_eq!(report.exit_code(), Some(0), "{what}: {report:?}");
        assert_eq!(report.len("stdout"), (8 * MIB) as u64, "{what}: {report:?}");
        assert_eq!(
            report.sha256("stdout"),
            report.get("stdin")["sha256"].as_str().unwrap_or("-"),
            "{what}: {report:?}"
        );

        // 64 MiB out, byte for byte.
        let started = Instant::now();
        let report = pod
            .exec(
                transport,
                &id,
                &["sh", "-c", "seq 1 10000000 | head -c 67108864"],
                false,
                false,
                json!([]),
            )
            .await;
        let seconds = started.elapsed().as_secs_f64();
        no_failure(&report, what);
        assert_eq!(report.exit_code(), Some(0), "{what}: {report:?}");
        assert_eq!(report.len("stdout"), expected.len() as u64, "{what}");
        assert_eq!(
            report.sha256("stdout"),
            expected_sha,
            "{what}: the 64 MiB differ"
        );
        eprintln!(
            "{what}: 64 MiB of exec output in {seconds:.1} s ({:.0} MiB/s)",
            64.0 / seconds
        );
    }
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_leaves_no_exec_behind() {
    let (mut pod, id) = Pod::with_sleeper("exec-vanish").await;
    for transport in Transport::selected() {
        let what = transport.name();
        // Mid-stream: `yes` writes as fast as it can; the client reads 1 MiB and drops the
        // connection without a goodbye.
        let steps = json!([{"wait_bytes": MIB}, {"disconnect": true}]);
        let report = pod
            .exec(transport, &id, &["yes", "vanish-yes"], false, false, steps)
            .await;
        assert!(report.len("stdout") >= MIB as u64, "{what}: {report:?}");
        assert_eq!(
            report.get("disconnected"),
            &json!(true),
            "{what}: {report:?}"
        );
        let left = pod
            .wait_gone(&id, "vanish-yes", Duration::from_secs(15))
            .await;
        assert!(
            left.is_empty(),
            "{what}: the exec outlived its client: {left:?}"
        );

        // Idle: a process that writes nothing more and reads nothing (terminal and not).
        for tty in [false, true] {
            // Not the container's own `sleep 3600`.
            let marker = format!("sleep 361{}", u8::from(tty));
            let script = format!("echo ready; exec {marker}");
            let steps = json!([{"wait": "ready"}, {"disconnect": true}]);
            let report = pod
                .exec(transport, &id, &["sh", "-c", &script], tty, true, steps)
                .await;
            assert_eq!(
                report.get("steps")[0]["ok"],
                json!(true),
                "{what} tty={tty}: {report:?}"
            );
            let left = pod.wait_gone(&id, &marker, Duration::from_secs(15)).await;
            assert!(
                left.is_empty(),
                "{what} tty={tty}: an idle exec outlived its client: {left:?}"
            );
        }
        assert!(
            pod.running(&id).await,
            "{what}: the container itself must live on"
        );
        pod.assert_still_serving(&id, what).await;
    }
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_reaches_stdin_and_output_of_non_tty_and_tty_containers() {
    let mut pod = Pod::start("attach").await;
    let cat = pod.container("cat", &["cat"], false, true, false).await;
    let shell = pod.container("shell", &["sh"], true, true, false).await;
    let errors = pod
        .container(
            "errors",
            &[
                "sh",
                "-c",
                "while read l; do echo \"out $l\"; echo \"err $l\" >&2; done",
            ],
            false,
            true,
            false,
        )
        .await;
    for transport in Transport::selected() {
        let what = transport.name();
        let word = format!("ping-{}", transport as u8);

        // stdin reaching `cat`, and `cat`'s output back (the client leaves; `cat` stays).
        let url = pod.attach_url(&cat, false, true).await;
        let steps = json!([{"stdin": format!("{word}\n")}, {"wait": word}, {"disconnect": true}]);
        let report = client(
            transport,
            "attach",
            &[url],
            &flags(false, true, steps),
            CLIENT_LIMIT,
        )
        .await;
        assert_eq!(
            report.get("steps")[1]["ok"],
            json!(true),
            "{what}: cat echoed nothing: {report:?}"
        );
        assert!(
            pod.running(&cat).await,
            "{what}: detaching must not stop the container"
        );
        assert!(
            pod.log_of("cat").contains(&word),
            "{what}: the log has the line too"
        );

        // stdout and stderr apart.
        let url = pod.attach_url(&errors, false, true).await;
        let steps = json!([{"stdin": format!("{word}\n")}, {"wait": format!("out {word}")}, {"sleep": 1}, {"disconnect": true}]);
        let report = client(
            transport,
            "attach",
            &[url],
            &flags(false, true, steps),
            CLIENT_LIMIT,
        )
        .await;
        assert!(
            report.text("stdout").contains(&format!("out {word}")),
            "{what}: {report:?}"
        );
        assert!(
            report.text("stderr").contains(&format!("err {word}")),
            "{what}: {report:?}"
        );
        assert!(
            !report.text("stdout").contains("err "),
            "{what}: {report:?}"
        );

        // A terminal: what is typed echoes, commands run, resizes reach the shell's pty.
        let url = pod.attach_url(&shell, true, true).await;
        let steps = json!([
            {"resize": [90, 33]}, {"sleep": 0.5},
            {"stdin": "echo tty-$((6*7)); echo rows-cols $(stty size)\n"},
            {"wait": "rows-cols 33 90"}, {"disconnect": true},
        ]);
        let report = client(
            transport,
            "attach",
            &[url],
            &flags(true, true, steps),
            CLIENT_LIMIT,
        )
        .await;
        let out = report.text("stdout");
        assert!(
            out.contains("tty-42") && out.contains("rows-cols 33 90"),
            "{what}: {report:?}"
        );
        assert!(
            pod.running(&shell).await,
            "{what}: the shell lives on after the client left"
        );
    }

    // stdin_once: the first attach's end of input closes the container's stdin; `cat` exits.
    for transport in Transport::selected() {
        let name = format!("once-{}", transport as u8);
        let once = pod.container(&name, &["cat"], false, true, true).await;
        let url = pod.attach_url(&once, false, true).await;
        let steps =
            json!([{"stdin": "last words\n"}, {"wait": "last words"}, {"close_stdin": true}]);
        let report = client(
            transport,
            "attach",
            &[url],
            &flags(false, true, steps),
            CLIENT_LIMIT,
        )
        .await;
        assert!(
            report.text("stdout").contains("last words"),
            "{}: {report:?}",
            transport.name()
        );
        let status = cri::wait_exited(&mut pod.client, &once, Duration::from_secs(15))
            .await
            .expect("status");
        assert_eq!(
            (status.state, status.exit_code),
            (ContainerState::ContainerExited as i32, 0),
            "{}: closing stdin with stdin_once ends cat: {status:?}",
            transport.name()
        );
    }
    pod.finish().await;
}

/// The numbers of `tick N` lines in `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').rsplit_once("tick "))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_output_is_live_and_the_log_keeps_every_line() {
    let mut pod = Pod::start("attach-live").await;
    let id = pod
        .container(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while :; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done",
            ],
            false,
            false,
            false,
        )
        .await;
    for transport in Transport::selected() {
        let what = transport.name();
        let url = pod.attach_url(&id, false, false).await;
        let steps = json!([{"wait": "tick"}, {"sleep": 2}, {"disconnect": true}]);
        let report = client(
            transport,
            "attach",
            &[url],
            &flags(false, false, steps),
            CLIENT_LIMIT,
        )
        .await;
        let first_ms = report.get("stdout")["first_ms"]
            .as_u64()
            .unwrap_or(u64::MAX);
        assert!(
            first_ms < 3000,
            "{what}: the first line came after {first_ms} ms: {report:?}"
        );
        let seen = ticks(report.text("stdout"));
        // Ten lines a second for two seconds, as they are written (not at the end).
        assert!(seen.len() >= 10, "{what}: {report:?}");
        assert!(
            seen.windows(2).all(|w| w[1] == w[0] + 1),
            "{what}: lines lost or reordered: {seen:?}"
        );
        let log = ticks(&pod.log_of("ticker"));
        assert!(
            log.first() == Some(&1) && log.windows(2).all(|w| w[1] == w[0] + 1),
            "the log lost lines: {log:?}"
        );
        let last_seen = seen.last().copied().unwrap_or(0);
        assert!(
            log.contains(&last_seen),
            "{what}: the log has every line the client saw"
        );
    }
    pod.finish().await;
}

fn log_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attached_reader_does_not_stall_the_container() {
    let mut pod = Pod::start("attach-slow").await;
    // About 5 MB/s: more than any client buffer holds over a 6 s stall.
    let id = pod
        .container(
            "writer",
            &["sh", "-c", "while :; do seq 100000 180000; sleep 0.1; done"],
            false,
            false,
            false,
        )
        .await;
    let log = pod.log_path("writer");
    for transport in Transport::selected() {
        let what = transport.name();
        let url = pod.attach_url(&id, false, false).await;
        let steps =
            json!([{"wait_bytes": 100_000}, {"stall": 6}, {"sleep": 1}, {"disconnect": true}]);
        let mut options = flags(false, false, steps);
        if transport == Transport::Spdy {
            // A small SPDY window: crustd meets flow control within milliseconds of the stall.
            options.extend(["--window".to_string(), "65536".to_string()]);
        }
        let run = tokio::task::spawn_blocking(move || {
            streaming::run_client(transport, "attach", &[url], &options, CLIENT_LIMIT)
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = log_size(&log);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let grown = log_size(&log).saturating_sub(before);
        let report = run.await.expect("client");
        assert!(
            grown > 2_000_000,
            "{what}: the log grew {grown} bytes in 2 s of a stalled reader"
        );
        assert!(report.len("stdout") > 100_000, "{what}: {report:?}");
        let after_stall = report.get("steps")[2]["ms"].as_u64();
        assert!(
            after_stall.is_some(),
            "{what}: the client came back after its stall: {report:?}"
        );
        assert!(pod.running(&id).await);
    }
    pod.assert_still_serving(&id, "after slow readers").await;
    pod.finish().await;
}

fn assert_echoed(report: &Report, connections: usize, bytes: usize, what: &str) {
    assert!(report.failure().is_none(), "{what}: {report:?}");
    let all = report.connections();
    assert_eq!(all.len(), connections, "{what}: {report:?}");
    for c in all {
        assert!(c["failure"].is_null(), "{what}: {c}");
        assert_eq!(c["sent"].as_u64(), Some(bytes as u64), "{what}: {c}");
        assert_eq!(c["received"].as_u64(), Some(bytes as u64), "{what}: {c}");
        assert_eq!(
            c["received_sha256"], c["sent_sha256"],
            "{what}: bytes differ: {c}"
        );
    }
}

/// One port-forward run of `connections` echo connections of `bytes` each way.
async fn forward(
    pod: &mut Pod,
    transport: Transport,
    port: u16,
    connections: usize,
    bytes: usize,
) -> Report {
    let options = vec![
        "--port".to_string(),
        port.to_string(),
        "--bytes".to_string(),
        bytes.to_string(),
        "--timeout".to_string(),
        "280".to_string(),
    ];
    let limit = Duration::from_secs(300);
    match transport {
        // kubectl's way: one SPDY connection, a stream pair per connection.
        Transport::Spdy => {
            let url = pod.port_forward_url(port).await;
            let mut options = options;
            options.extend(["--connections".to_string(), connections.to_string()]);
            client(transport, "portforward", &[url], &options, limit).await
        }
        // One WebSocket (and so one URL) per connection.
        Transport::WebSocket => {
            let mut urls = Vec::new();
            for _ in 0..connections {
                urls.push(pod.port_forward_url(port).await);
            }
            client(transport, "portforward", &urls, &options, limit).await
        }
    }
}

/// MiB per connection each way over WebSocket: `CRUST_STREAM_WS_MIB`, else 64.
fn websocket_mib() -> usize {
    std::env::var("CRUST_STREAM_WS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_twenty_connections_byte_exact() {
    let mut pod = Pod::start("forward").await;
    let port = ECHO_PORT.to_string();
    let echo = pod
        .container(
            "echo",
            &["nc", "-ll", "-p", &port, "-e", "cat"],
            false,
            false,
            false,
        )
        .await;
    pod.wait_listening(&echo, ECHO_PORT).await;
    for transport in Transport::selected() {
        let what = transport.name();
        let mib = if transport == Transport::WebSocket {
            websocket_mib()
        } else {
            64
        };
        let started = Instant::now();
        let report = forward(&mut pod, transport, ECHO_PORT, 20, mib * MIB).await;
        let seconds = started.elapsed().as_secs_f64();
        assert_echoed(&report, 20, mib * MIB, what);
        eprintln!(
            "{what}: 20 connections × {mib} MiB each way in {seconds:.1} s ({:.0} MiB/s each way)",
            20.0 * mib as f64 / seconds
        );
    }

    // Nothing listening: the error reaches the client, crustd carries on.
    for transport in Transport::selected() {
        let report = forward(&mut pod, transport, 9, 1, 1024).await;
        let c = report.connections().first().cloned().unwrap_or_default();
        assert!(
            !c["error_text"].as_str().unwrap_or_default().is_empty() || !c["failure"].is_null(),
            "{}: a refused connection is reported: {report:?}",
            transport.name()
        );
    }
    pod.assert_still_serving(&echo, "after port-forwards").await;
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_host_network_pod() {
    let linux = LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pod = Pod::start_with("forward-host", Some(linux)).await;
    // A port free on the node (the pod shares the node's network).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let echo = pod
        .container(
            "echo",
            &["nc", "-ll", "-p", &port.to_string(), "-e", "cat"],
            false,
            false,
            false,
        )
        .await;
    pod.wait_listening(&echo, port).await;
    for transport in Transport::selected() {
        let report = forward(&mut pod, transport, port, 4, 4 * MIB).await;
        assert_echoed(&report, 4, 4 * MIB, transport.name());
    }
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reused_and_foreign_tokens_are_refused() {
    let (mut pod, id) = Pod::with_sleeper("tokens").await;
    let url = pod.exec_url(&id, &["echo", "once"], false, false).await;
    let (authority, path) =
        streaming::split_url(&url).unwrap_or_else(|| panic!("Exec answered {url:?}"));
    assert!(path.starts_with("/exec/"), "{url}");
    let spdy = streaming::spdy_upgrade_headers(&["v4.channel.k8s.io"]);
    let spdy: Vec<(&str, &str)> = spdy.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let status_of = |path: String| {
        let authority = authority.clone();
        let spdy = spdy
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>();
        move || {
            let headers: Vec<(&str, &str)> =
                spdy.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            streaming::raw_request(&authority, "POST", &path, &headers).map(|(r, _)| r.status)
        }
    };
    let token = path.trim_start_matches("/exec/").to_string();
    let long = "a".repeat(8192);
    // Unknown tokens and paths; none of them is the token itself on a streaming path, so it
    // stays usable.
    for bad in [
        "/exec/nosuchtoken".to_string(),
        format!("/exec/{token}x"),
        format!("/nosuch/{token}"),
        "/exec/".to_string(),
        "/".to_string(),
        format!("/exec/{long}"),
        "/exec/..%2f..%2fetc".to_string(),
    ] {
        let status = tokio::task::spawn_blocking(status_of(bad.clone()))
            .await
            .expect("join")
            .expect("HTTP answer");
        let shown: String = bad.chars().take(60).collect();
        if bad.len() > 1000 {
            assert!((400..500).contains(&status), "{shown}: {status}");
        } else {
            assert_eq!(status, 404, "{shown}");
        }
    }
    // A token on another kind's path is refused (and, as kubelet's cache does, spent).
    for kind in ["attach", "portforward"] {
        let other = pod.exec_url(&id, &["true"], false, false).await;
        let (_, path) = streaming::split_url(&other).expect("URL");
        let moved = path.replacen("/exec/", &format!("/{kind}/"), 1);
        let status = tokio::task::spawn_blocking(status_of(moved))
            .await
            .expect("join")
            .expect("HTTP answer");
        assert_eq!(status, 404, "an exec token on /{kind}/");
    }
    // The token still works once, whatever was tried with it, and only once.
    let first = client(
        Transport::Spdy,
        "exec",
        std::slice::from_ref(&url),
        &[],
        CLIENT_LIMIT,
    )
    .await;
    no_failure(&first, "first use");
    assert_eq!(first.text("stdout"), "once\n");
    for transport in Transport::selected() {
        let again = client(
            transport,
            "exec",
            std::slice::from_ref(&url),
            &[],
            CLIENT_LIMIT,
        )
        .await;
        assert_eq!(
            again.http_status(),
            Some(404),
            "{}: a reused token: {again:?}",
            transport.name()
        );
    }
    // Tokens are for the kind of request they were issued for, also over WebSocket.
    let attach = pod.attach_url(&id, false, false).await;
    let as_exec = attach.replacen("/attach/", "/exec/", 1);
    let report = client(Transport::WebSocket, "exec", &[as_exec], &[], CLIENT_LIMIT).await;
    assert_eq!(report.http_status(), Some(404), "{report:?}");
    let forward = pod.port_forward_url(ECHO_PORT).await;
    let report = client(
        Transport::Spdy,
        "portforward",
        &[forward.replacen("/portforward/", "/nosuch/", 1)],
        &["--port".into(), "80".into()],
        CLIENT_LIMIT,
    )
    .await;
    assert_eq!(report.http_status(), Some(404), "{report:?}");

    // A streaming URL without an upgrade is no stream.
    let plain = pod.exec_url(&id, &["echo", "x"], false, false).await;
    let (answer, _) =
        tokio::task::spawn_blocking(move || streaming::request_url(&plain, "GET", &[]))
            .await
            .expect("join")
            .expect("HTTP answer");
    assert!(
        (400..500).contains(&answer.status),
        "no upgrade: {answer:?}"
    );

    // Wrong containers and pods are CRI errors, not URLs.
    let unknown = pod
        .client
        .exec(ExecRequest {
            container_id: "nosuch".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    assert_eq!(unknown.map(drop).unwrap_err().code(), Code::NotFound);
    let unknown = pod
        .client
        .attach(AttachRequest {
            container_id: "nosuch".into(),
            stdout: true,
            ..Default::default()
        })
        .await;
    assert_eq!(unknown.map(drop).unwrap_err().code(), Code::NotFound);
    let unknown = pod
        .client
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "nosuch".into(),
            port: vec![80],
        })
        .await;
    assert_eq!(unknown.map(drop).unwrap_err().code(), Code::NotFound);
    let done = pod.container("done", &["true"], false, false, false).await;
    cri::wait_exited(&mut pod.client, &done, Duration::from_secs(10))
        .await
        .expect("status");
    let stopped = pod
        .client
        .exec(ExecRequest {
            container_id: done.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    assert!(
        stopped.is_err(),
        "Exec into an exited container: {stopped:?}"
    );
    let empty = pod
        .client
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec![],
            stdout: true,
            ..Default::default()
        })
        .await;
    assert!(empty.is_err(), "Exec of no command: {empty:?}");
    pod.assert_still_serving(&id, "after bad tokens").await;
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_after_a_minute() {
    let (mut pod, id) = Pod::with_sleeper("expiry").await;
    let url = pod.exec_url(&id, &["echo", "late"], false, false).await;
    let fresh = pod.exec_url(&id, &["echo", "in time"], false, false).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    let in_time = client(Transport::WebSocket, "exec", &[fresh], &[], CLIENT_LIMIT).await;
    no_failure(&in_time, "a token used within its minute");
    tokio::time::sleep(Duration::from_secs(12)).await;
    for transport in Transport::selected() {
        let late = client(
            transport,
            "exec",
            std::slice::from_ref(&url),
            &[],
            CLIENT_LIMIT,
        )
        .await;
        assert_eq!(
            late.http_status(),
            Some(404),
            "{}: an expired token: {late:?}",
            transport.name()
        );
    }
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_their_exec_reaped() {
    let mut pod = Pod::start_configured("idle", None, "stream_idle_timeout = \"2s\"").await;
    let id = pod.sleeper().await;
    // SPDY: the streams opened, then nothing either way.
    let url = pod.exec_url(&id, &["sleep", "3621"], false, false).await;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let mut session = SpdyClient::connect(&url, &["v4.channel.k8s.io"])
            .expect("connect")
            .expect("101");
        for kind in ["error", "stdout", "stderr"] {
            session
                .open(&[("streamtype", kind)])
                .expect("open a stream");
        }
        ends(session.stream, "SPDY: an idle connection");
    })
    .await
    .expect("join");
    // WebSocket: the exec's output channels silent, the client sending nothing.
    let url = pod.exec_url(&id, &["sleep", "3622"], false, false).await;
    tokio::task::spawn_blocking(move || {
        let ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
            .expect("connect")
            .expect("101");
        ends(ws.stream, "WebSocket: an idle connection");
    })
    .await
    .expect("join");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(4),
        "closed before 2 s of idleness each: {elapsed:?}"
    );
    for marker in ["sleep 3621", "sleep 3622"] {
        let left = pod.wait_gone(&id, marker, Duration::from_secs(15)).await;
        assert!(
            left.is_empty(),
            "{marker} outlived its idle client: {left:?}"
        );
    }
    assert!(pod.running(&id).await, "the container itself lives on");
    pod.assert_still_serving(&id, "idle connections closed")
        .await;
    pod.finish().await;
}

/// What a malformed-frame case ends with: crustd ends the connection within 10 s.
fn ends(mut stream: std::net::TcpStream, what: &str) -> Vec<u8> {
    streaming::closes_within(&mut stream, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Sends `bytes` on a connection `send` upgraded at `url`: crustd must end that connection
/// within 10 s and go on serving `id`.
async fn refused(
    pod: &mut Pod,
    id: &str,
    what: String,
    url: String,
    bytes: Vec<u8>,
    send: fn(&str, &[u8]) -> std::net::TcpStream,
) {
    let check = what.clone();
    tokio::task::spawn_blocking(move || ends(send(&url, &bytes), &check))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    pod.assert_still_serving(id, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_end_the_connection_and_crustd_stays_up() {
    let (mut pod, id) = Pod::with_sleeper("malformed").await;

    // SPDY: frames no SPDY/3.1 peer may send.
    let mut bad_header_block = 1u32.to_be_bytes().to_vec();
    bad_header_block.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    bad_header_block.extend_from_slice(b"this is not zlib at all");
    let spdy_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "version 2 control frame",
            vec![0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
        ),
        (
            "SYN_STREAM with a corrupt header block",
            spdy_control(spdy_type::SYN_STREAM, 0, &bad_header_block),
        ),
        (
            "SYN_STREAM shorter than its fields",
            spdy_control(spdy_type::SYN_STREAM, 0, &[0, 0, 0, 1]),
        ),
        (
            "SETTINGS counting 100 entries and carrying none",
            spdy_control(spdy_type::SETTINGS, 0, &[0, 0, 0, 100]),
        ),
    ];
    for (what, bytes) in spdy_cases {
        let url = pod.exec_url(&id, &["sleep", "3602"], false, false).await;
        let send = |url: &str, bytes: &[u8]| {
            let mut session = SpdyClient::connect(url, &["v4.channel.k8s.io"])
                .expect("connect")
                .expect("101");
            session.send_raw(bytes).expect("send");
            session.stream
        };
        refused(&mut pod, &id, format!("SPDY: {what}"), url, bytes, send).await;
    }
    // A data frame on a stream never opened, then a sane exec on the same connection is not
    // required to work; crustd only must not fall over.
    let url = pod.exec_url(&id, &["true"], false, false).await;
    tokio::task::spawn_blocking(move || {
        let mut session = SpdyClient::connect(&url, &["v4.channel.k8s.io"])
            .expect("connect")
            .expect("101");
        let _ = session.send_raw(&streaming::spdy_data(99, true, b"who am I"));
        let _ = session.send_raw(&streaming::spdy_window_update(0, 0x7fff_ffff));
        let _ = session.send_raw(&streaming::spdy_window_update(0, 0x7fff_ffff));
        let _ = streaming::closes_within(&mut session.stream, Duration::from_secs(3));
    })
    .await
    .expect("join");
    pod.assert_still_serving(&id, "SPDY: data on an unknown stream, window overflow")
        .await;

    // WebSocket: frames RFC 6455 says a server must fail the connection for.
    let ws_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unmasked client frame",
            streaming::ws_frame(true, opcode::BINARY, b"\x00hello", None),
        ),
        (
            "reserved opcode 3",
            streaming::ws_frame(true, 0x3, b"\x00x", Some([9, 8, 7, 6])),
        ),
        ("RSV bits set", {
            let mut f = streaming::ws_frame(true, opcode::BINARY, b"\x00x", Some([1, 1, 1, 1]));
            f[0] |= 0x70;
            f
        }),
        (
            "fragmented control frame",
            streaming::ws_frame(false, opcode::PING, b"", Some([1, 2, 3, 4])),
        ),
        ("a 2^62-byte frame", {
            let mut f = vec![0x82, 0xff];
            f.extend_from_slice(&(1u64 << 62).to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
            f
        }),
    ];
    for (what, bytes) in ws_cases {
        let url = pod.exec_url(&id, &["sleep", "3603"], false, true).await;
        let send = |url: &str, bytes: &[u8]| {
            let mut ws = WsClient::connect(url, &["v4.channel.k8s.io"])
                .expect("connect")
                .expect("101");
            ws.send_raw(bytes).expect("send");
            ws.stream
        };
        refused(
            &mut pod,
            &id,
            format!("WebSocket: {what}"),
            url,
            bytes,
            send,
        )
        .await;
    }
    // Unknown channels and an undecodable resize are ignored or refused, never a crash.
    let url = pod
        .exec_url(&id, &["sh", "-c", "echo done"], true, true)
        .await;
    tokio::task::spawn_blocking(move || {
        let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
            .expect("connect")
            .expect("101");
        let _ = ws.send(opcode::BINARY, b"\x07unknown channel");
        let _ = ws.send(opcode::BINARY, b"\x04{not json");
        let _ = ws.send(opcode::BINARY, b"");
        let _ = ws.run_exec();
    })
    .await
    .expect("join");
    pod.assert_still_serving(&id, "WebSocket: unknown channel, bad resize")
        .await;

    // The processes of the broken sessions do not outlive them.
    for marker in ["sleep 3602", "sleep 3603"] {
        let left = pod.wait_gone(&id, marker, Duration::from_secs(15)).await;
        assert!(
            left.is_empty(),
            "execs of broken connections left behind: {left:?}"
        );
    }
    pod.finish().await;
}
