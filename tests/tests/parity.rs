//! Everything else containerd does with its runc shim: exec, terminals, pause and resume,
//! update, stats, OOM, checkpoint, runtime options and stdio schemes.
//!
//! Every test passes against crust's shim and, with `CRUST_TEST_SHIM=runc`, against
//! containerd's own Go shim; where the two answer differently, each is held to its column of
//! the parity table (`tests/src/parity.rs`), which the `deliberate_differences` test prints.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crust_proto::cgroups::v1;
use crust_proto::protobuf::Message;
use crust_proto::runc_options::Options;
use crust_proto::task::Status;
use crust_proto::ttrpc::Code;
use crust_proto::typeurl;
use crust_tests::cleanup::{self, is_gone};
use crust_tests::command::wait_until;
use crust_tests::containerd::Containerd;
use crust_tests::direct::{Direct, code_of};
use crust_tests::host;
use crust_tests::parity::{self, code_name};
use crust_tests::pty::Terminal;

const LIMIT: Duration = Duration::from_secs(20);

// ---- through ctr and a real containerd ----

#[test]
fn exec_runs_in_the_task_and_returns_its_status() {
    let containerd = Containerd::start("exec");
    let started = containerd.run_detached("host", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("host", "RUNNING"));
    let exec = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "host",
        "sh",
        "-c",
        "echo from exec; echo err >&2; exit 5",
    ]);
    assert_eq!(exec.code, Some(5), "{exec:?}");
    assert_eq!(exec.stdout, "from exec\n");
    assert_eq!(exec.stderr, "err\n");

    // A running exec is listed among the task's pids, named by its exec id.
    let detached = containerd.ctr(&[
        "task",
        "exec",
        "--detach",
        "--exec-id",
        "bg",
        "host",
        "sleep",
        "1000",
    ]);
    assert!(detached.success(), "{detached:?}");
    assert!(wait_until(LIMIT, || containerd
        .ctr(&["task", "ps", "host"])
        .stdout
        .contains("ExecID:bg")));
    containerd.remove("host");
}

#[test]
fn exec_with_a_terminal() {
    let containerd = Containerd::start("exec_tty");
    let started = containerd.run_detached("host", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("host", "RUNNING"));
    let mut terminal = Terminal::spawn(
        &mut containerd.ctr_command_with(&[
            "task",
            "exec",
            "-t",
            "--exec-id",
            "tty",
            "host",
            "sh",
            "-c",
            // ctr sends the window size after the exec started: poll until it lands.
            "tty; i=0; while [ $i -lt 100 ]; do case $(stty -a 2>&1 | head -1) in \
             *'rows 30; columns 100'*) echo sized; exit 0;; esac; sleep 0.1; i=$((i+1)); done; exit 1",
        ]),
        30,
        100,
    );
    assert_eq!(terminal.wait(LIMIT), Some(0), "{}", terminal.output());
    let output = terminal.output();
    assert!(output.contains("/dev/pts/"), "{output}");
    assert!(output.contains("sized"), "{output}");
    containerd.remove("host");
}

#[test]
fn exec_into_a_stopped_task_is_refused() {
    let containerd = Containerd::start("exec_stopped");
    let started = containerd.run_detached("done", &["true"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("done", "STOPPED"));
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "late", "done", "true"]);
    assert!(!exec.success(), "{exec:?}");
    parity::expect(
        containerd.shim,
        "ctr exec into a stopped task",
        parity::message_class(&exec.stderr),
    );
    containerd.remove("done");
}

#[test]
fn run_with_a_terminal_follows_the_window_size() {
    let containerd = Containerd::start("run_tty");
    let mut terminal = Terminal::spawn(
        &mut containerd.run_command(
            "tty",
            &["--rm", "-t"],
            &[
                "sh",
                "-c",
                "while true; do stty -a | head -1; sleep 0.2; done",
            ],
        ),
        24,
        80,
    );
    assert!(
        terminal.wait_for("rows 24; columns 80", LIMIT),
        "{}",
        terminal.output()
    );
    // The user resizes the window: ctr gets SIGWINCH and sends ResizePty.
    terminal.resize(50, 132);
    assert!(
        terminal.wait_for("rows 50; columns 132", LIMIT),
        "{}",
        terminal.output()
    );
    let killed = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "tty"]);
    assert!(killed.success(), "{killed:?}");
    assert_eq!(terminal.wait(LIMIT), Some(137));
}

#[test]
fn pause_and_resume_freeze_and_thaw_the_task() {
    let containerd = Containerd::start("pause");
    let started = containerd.run_detached("frozen", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("frozen", "RUNNING"));
    let mut events = containerd.watch_events();
    assert!(containerd.ctr(&["task", "pause", "frozen"]).success());
    assert!(containerd.wait_for_status("frozen", "PAUSED"));
    assert!(
        events
            .wait_for(LIMIT, |l| l.contains("/tasks/paused")
                && l.contains("frozen"))
            .is_some(),
        "{:?}",
        events.seen
    );
    assert!(containerd.ctr(&["task", "resume", "frozen"]).success());
    assert!(containerd.wait_for_status("frozen", "RUNNING"));
    assert!(
        events
            .wait_for(LIMIT, |l| l.contains("/tasks/resumed")
                && l.contains("frozen"))
            .is_some(),
        "{:?}",
        events.seen
    );
    containerd.remove("frozen");
}

fn metric(table: &str, name: &str) -> Option<u64> {
    table.lines().find_map(|line| {
        let mut columns = line.split_whitespace();
        (columns.next()? == name).then(|| columns.next()?.parse().ok())?
    })
}

#[test]
fn metrics_are_present_and_plausible() {
    let containerd = Containerd::start("metrics");
    const LIMIT_BYTES: u64 = 64 << 20;
    let started = containerd.run_with(
        "busy",
        &["-d", "--memory-limit", &LIMIT_BYTES.to_string()],
        &["sh", "-c", "sleep 1000 & sleep 1001 & wait"],
        None,
    );
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("busy", "RUNNING"));
    // The shell, and its two children once it has forked them.
    let mut table = String::new();
    let forked = wait_until(LIMIT, || {
        let shown = containerd.ctr(&["task", "metrics", "busy"]);
        assert!(shown.success(), "{shown:?}");
        table = shown.stdout;
        metric(&table, "pids.current") == Some(3)
    });
    assert!(forked, "{table}");
    let usage = metric(&table, "memory.usage_in_bytes").expect("memory usage");
    let limit = metric(&table, "memory.limit_in_bytes").expect("memory limit");
    assert_eq!(limit, LIMIT_BYTES, "the container's own limit: {table}");
    // A shell and two sleeps: more than nothing, far less than the limit.
    assert!(usage > 0 && usage < LIMIT_BYTES / 4, "{table}");
    assert!(
        metric(&table, "cpuacct.usage").expect("cpu usage") > 0,
        "{table}"
    );
    containerd.remove("busy");
}

#[test]
fn an_oom_kill_gives_137_and_an_oom_event() {
    let containerd = Containerd::start("oom");
    let mut events = containerd.watch_events();
    // dd allocates its 64 MiB block at once, well over the 20 MiB limit. The Go shim starts
    // watching for OOM only after Start returns, so it misses a hog that dies within the
    // first milliseconds; crust watches from Create on and must report that one too.
    let hog = "dd if=/dev/zero of=/dev/null bs=64M count=1";
    let delayed = format!("sleep 1; {hog}");
    for (id, script) in [("late-hog", delayed.as_str()), ("early-hog", hog)] {
        let ran = containerd.run_with(
            id,
            &["--rm", "--memory-limit", "20971520"],
            &["sh", "-c", script],
            None,
        );
        assert_eq!(ran.code, Some(137), "{id}: {ran:?}");
        let seen = events
            .wait_for(LIMIT, |l| l.contains("/tasks/oom") && l.contains(id))
            .is_some();
        if id == "late-hog" {
            assert!(seen, "{id}: {:?}", events.seen);
        } else {
            parity::expect(
                containerd.shim,
                "OOM event for a task killed in its first milliseconds",
                if seen { "seen" } else { "missed" },
            );
        }
    }
}

/// What a failed criu call told its caller, for the parity table: criu's own first error
/// (`reason`, from `criu check`), or only runc's summary.
fn criu_words(message: &str, reason: &str) -> &'static str {
    if message.contains(reason) {
        "criu's reason"
    } else if message.contains("criu failed") {
        "runc's summary"
    } else {
        "no criu failure"
    }
}

#[test]
fn checkpoint_through_ctr_as_the_host_allows_and_the_task_runs_on() {
    let containerd = Containerd::start("checkpoint");
    let started = containerd.run_detached("saved", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("saved", "RUNNING"));
    let checkpoint = containerd.ctr(&["task", "checkpoint", "saved"]);
    match host::criu_refusal() {
        // This project's machine: criu fails on the kernel's vdso (see README).
        Some(reason) => {
            assert!(!checkpoint.success(), "{checkpoint:?}");
            parity::expect(
                containerd.shim,
                "checkpoint when criu cannot run",
                criu_words(&checkpoint.stderr, &reason),
            );
        }
        None => assert!(checkpoint.success(), "{checkpoint:?}"),
    }
    assert!(containerd.wait_for_status("saved", "RUNNING"));
    containerd.remove("saved");
}

// ---- driven directly, as containerd does ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_lifecycle_and_events() {
    let direct = Direct::new("exec_events").await;
    let bundle = direct.bundle("box", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request()).await.expect("create");
    api.start("box").await.expect("start");

    let io = direct.fifos("e1");
    io.attach_output();
    let request = direct.exec_request(
        "box",
        "e1",
        &["sh", "-c", "read line; echo got $line; exit 4"],
        &io,
        true,
        false,
    );
    api.exec(&request).await.expect("exec");
    let duplicate = api.exec(&request).await.unwrap_err();
    parity::expect(
        direct.shim,
        "add an exec id twice",
        &code_name(code_of(&duplicate)),
    );
    let state = api.state_exec("box", "e1").await.expect("exec state");
    assert_eq!(state.status.enum_value(), Ok(Status::CREATED));
    let started = api.start_exec("box", "e1").await.expect("start exec");
    assert!(started.pid > 0);
    io.write_stdin(b"hello\n");
    let waited = api.wait_exec("box", "e1").await.expect("wait exec");
    assert_eq!(waited.exit_status, 4);
    let deleted = api.delete_exec("box", "e1").await.expect("delete exec");
    assert_eq!((deleted.pid, deleted.exit_status), (started.pid, 4));
    assert_eq!(io.output().0, "got hello\n");
    let gone = api.state_exec("box", "e1").await.unwrap_err();
    assert_eq!(code_of(&gone), Some(Code::NOT_FOUND), "{gone:?}");

    api.kill("box", 9, false).await.expect("kill");
    api.wait("box").await.expect("wait");
    api.delete("box").await.expect("delete");
    direct
        .events
        .wait_for("/tasks/delete", "box", LIMIT)
        .await
        .expect("delete event");
    assert_eq!(
        direct.events.topics("box"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let _ = api.shutdown("box").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exits_are_announced_before_the_init_exit() {
    let direct = Direct::new("exec_order").await;
    let bundle = direct.bundle("main", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    let created = api.create(&bundle.create_request()).await.expect("create");
    api.start("main").await.expect("start");
    let mut exec_pids = Vec::new();
    for exec_id in ["x1", "x2"] {
        let io = direct.fifos(exec_id);
        io.attach_output();
        api.exec(&direct.exec_request("main", exec_id, &["sleep", "1000"], &io, false, false))
            .await
            .expect("exec");
        exec_pids.push(
            api.start_exec("main", exec_id)
                .await
                .expect("start exec")
                .pid,
        );
    }
    // The init dies; the kernel takes its pid namespace, execs included, with it.
    api.kill("main", 9, false).await.expect("kill");
    assert_eq!(api.wait("main").await.expect("wait").exit_status, 137);
    direct
        .events
        .wait_matching(LIMIT, |e| e.topic == "/tasks/exit" && e.pid == created.pid)
        .await
        .expect("init exit");
    let exits: Vec<u32> = direct
        .events
        .all()
        .into_iter()
        .filter(|e| e.topic == "/tasks/exit")
        .map(|e| e.pid)
        .collect();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert_eq!(exits.last(), Some(&created.pid), "init last: {exits:?}");
    for pid in exec_pids {
        assert!(exits.contains(&pid), "{exits:?}");
    }
    api.delete("main").await.expect("delete");
    let _ = api.shutdown("main").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_a_stopped_container_is_failed_precondition() {
    let direct = Direct::new("exec_stopped").await;
    let bundle = direct.bundle("quick", &["true"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request()).await.expect("create");
    api.start("quick").await.expect("start");
    api.wait("quick").await.expect("wait");
    let io = direct.fifos("late");
    io.attach_output();
    let request = direct.exec_request("quick", "late", &["true"], &io, false, false);
    let refused = match api.exec(&request).await {
        Err(error) => error,
        Ok(_) => api.start_exec("quick", "late").await.unwrap_err(),
    };
    parity::expect(
        direct.shim,
        "exec into a stopped task",
        &code_name(code_of(&refused)),
    );
    api.delete("quick").await.expect("delete");
    let _ = api.shutdown("quick").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_is_wired_and_resized() {
    let direct = Direct::new("terminal").await;
    let bundle = direct.bundle_with(
        "tty",
        &["sh", "-c", "tty; read go; stty -a | head -1"],
        &[],
        |spec| {
            if let Some(process) = spec.process_mut() {
                process.set_terminal(Some(true));
            }
        },
    );
    bundle.attach_stdout();
    let api = direct.start_and_connect(&bundle).await;
    let mut request = bundle.create_request_with_stdin();
    request.terminal = true;
    request.stderr = String::new();
    api.create(&request).await.expect("create");
    api.start("tty").await.expect("start");
    api.resize("tty", "", 132, 50).await.expect("resize");
    bundle.write_stdin(b"\n");
    assert_eq!(api.wait("tty").await.expect("wait").exit_status, 0);
    api.delete("tty").await.expect("delete");
    let (output, _) = bundle.output();
    assert!(output.contains("/dev/pts/"), "{output:?}");
    assert!(output.contains("rows 50; columns 132"), "{output:?}");
    let _ = api.shutdown("tty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_update_and_stats() {
    let direct = Direct::new("pause_update").await;
    let bundle = direct.bundle("svc", &["sh", "-c", "sleep 1000 & sleep 1001 & wait"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request()).await.expect("create");
    api.start("svc").await.expect("start");

    api.pause("svc").await.expect("pause");
    assert_eq!(
        api.state("svc").await.expect("state").status.enum_value(),
        Ok(Status::PAUSED)
    );
    api.resume("svc").await.expect("resume");
    assert_eq!(
        api.state("svc").await.expect("state").status.enum_value(),
        Ok(Status::RUNNING)
    );
    let resumed_twice = api.resume("svc").await.unwrap_err();
    parity::expect(
        direct.shim,
        "resume a running task",
        &code_name(code_of(&resumed_twice)),
    );

    api.update("svc", r#"{"memory":{"limit":33554432}}"#)
        .await
        .expect("update");
    let limit_file = Path::new("/sys/fs/cgroup/memory")
        .join(&direct.namespace)
        .join("svc/memory.limit_in_bytes");
    assert_eq!(
        fs::read_to_string(&limit_file)
            .expect("cgroup limit")
            .trim(),
        "33554432"
    );
    let refused = api.update("svc", "not json").await.unwrap_err();
    parity::expect(
        direct.shim,
        "update with resources that are not JSON",
        &code_name(code_of(&refused)),
    );

    let stats = api.stats("svc").await.expect("stats");
    assert_eq!(stats.stats.type_url, typeurl::CGROUPS_V1_METRICS);
    let metrics = v1::Metrics::parse_from_bytes(&stats.stats.value).expect("v1 metrics");
    assert_eq!(metrics.memory.usage.limit, 33554432);
    assert!(metrics.memory.usage.usage > 0);
    assert_eq!(metrics.pids.current, 3);
    assert!(metrics.cpu.usage.total > 0);

    direct
        .events
        .wait_for("/tasks/resumed", "svc", LIMIT)
        .await
        .expect("resumed event");
    let topics = direct.events.topics("svc");
    assert_eq!(
        topics[2..4],
        ["/tasks/paused", "/tasks/resumed"],
        "{topics:?}"
    );

    api.kill("svc", 9, false).await.expect("kill");
    api.wait("svc").await.expect("wait");
    api.delete("svc").await.expect("delete");
    let _ = api.shutdown("svc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_restore_as_the_host_allows() {
    let direct = Direct::new("checkpoint_direct").await;
    let bundle = direct.bundle("cp", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request()).await.expect("create");
    api.start("cp").await.expect("start");
    let image = bundle.dir.join("checkpoint");
    fs::create_dir_all(&image).expect("image dir");
    let refusal = host::criu_refusal();
    let checkpointed = api.checkpoint("cp", &image).await;
    match &refusal {
        Some(reason) => {
            let error = checkpointed.expect_err("criu cannot run here");
            parity::expect(
                direct.shim,
                "checkpoint when criu cannot run",
                criu_words(&format!("{error:?}"), reason),
            );
        }
        None => {
            checkpointed.expect("checkpoint");
        }
    }
    // The checkpointed (or not) task runs on.
    assert_eq!(
        api.state("cp").await.expect("state").status.enum_value(),
        Ok(Status::RUNNING)
    );
    api.kill("cp", 9, false).await.expect("kill");
    api.wait("cp").await.expect("wait");
    api.delete("cp").await.expect("delete");

    // Restore: a new task created from the image (empty where criu could not dump) and started.
    let restored = direct.bundle("back", &["sleep", "1000"], &[]);
    restored.attach_output();
    let mut request = restored.create_request();
    request.checkpoint = image.display().to_string();
    let started = match api.create(&request).await {
        Ok(_) => api.start("back").await.map(drop),
        Err(error) => Err(error),
    };
    match &refusal {
        Some(reason) => {
            let error = started.expect_err("criu cannot restore here");
            parity::expect(
                direct.shim,
                "restore when criu cannot run",
                criu_words(&format!("{error:?}"), reason),
            );
            // Nothing of the failed restore is left running.
            let _ = api.delete("back").await;
            let gone = api.state("back").await.unwrap_err();
            assert_eq!(code_name(code_of(&gone)), "NOT_FOUND", "{gone:?}");
        }
        None => {
            started.expect("restore");
            assert_eq!(
                api.state("back").await.expect("state").status.enum_value(),
                Ok(Status::RUNNING)
            );
            api.kill("back", 9, false).await.expect("kill");
            api.wait("back").await.expect("wait");
            api.delete("back").await.expect("delete");
        }
    }
    let _ = api.shutdown("cp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_name_picks_the_runtime() {
    let direct = Direct::new("binary_name").await;
    // A wrapper that records each call and runs runc.
    let calls = direct.scratch("calls.log");
    let wrapper = direct.scratch("runc-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            calls.display()
        ),
    )
    .expect("write wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let bundle = direct.bundle("wrapped", &["echo", "wrapped"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    let options = Options {
        binary_name: wrapper.display().to_string(),
        ..Default::default()
    };
    api.create(&bundle.create_request_with_options(&options))
        .await
        .expect("create");
    api.start("wrapped").await.expect("start");
    assert_eq!(api.wait("wrapped").await.expect("wait").exit_status, 0);
    api.delete("wrapped").await.expect("delete");
    assert_eq!(bundle.output().0, "wrapped\n");
    let log = fs::read_to_string(&calls).expect("calls");
    for call in [" create ", " start ", " delete "] {
        assert!(log.contains(call), "{call}: {log}");
    }

    // crun is found and run by name: it runs the container, except on hybrid cgroups with
    // controllers on the unified hierarchy (this project's machine), which crun 1.x refuses in
    // its own words.
    let crun = direct.bundle("crun", &["true"], &[]);
    crun.attach_output();
    let options = Options {
        binary_name: "crun".into(),
        ..Default::default()
    };
    let created = api
        .create(&crun.create_request_with_options(&options))
        .await;
    if host::hybrid_cgroups_with_unified_controllers() {
        let error = created.expect_err("crun refuses hybrid cgroups");
        assert!(
            format!("{error:?}").contains("cgroups in hybrid mode not supported"),
            "crun's own words: {error:?}"
        );
    } else {
        created.expect("create with crun");
        api.start("crun").await.expect("start with crun");
        assert_eq!(api.wait("crun").await.expect("wait").exit_status, 0);
        api.delete("crun").await.expect("delete");
    }
    let _ = api.shutdown("wrapped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uid_owns_the_containers_pipes() {
    let direct = Direct::new("io_uid").await;
    let bundle = direct.bundle_with(
        "nobody",
        &["sh", "-c", "stat -L -c '%u:%g' /proc/self/fd/1"],
        &[],
        |spec| {
            if let Some(process) = spec.process_mut() {
                let mut user = process.user().clone();
                user.set_uid(65534);
                user.set_gid(65534);
                process.set_user(user);
            }
        },
    );
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    let options = Options {
        io_uid: 65534,
        io_gid: 65534,
        ..Default::default()
    };
    api.create(&bundle.create_request_with_options(&options))
        .await
        .expect("create");
    api.start("nobody").await.expect("start");
    assert_eq!(api.wait("nobody").await.expect("wait").exit_status, 0);
    api.delete("nobody").await.expect("delete");
    assert_eq!(bundle.output().0, "65534:65534\n");
    let _ = api.shutdown("nobody").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_binary_stdio_schemes() {
    let direct = Direct::new("stdio_schemes").await;
    // file:// appends stdout and stderr to one file.
    let log = direct.scratch("file-out.log");
    let bundle = direct.bundle("tofile", &["sh", "-c", "echo out; echo err >&2"], &[]);
    let api = direct.start_and_connect(&bundle).await;
    let mut request = bundle.create_request();
    request.stdout = format!("file://{}", log.display());
    request.stderr = request.stdout.clone();
    api.create(&request).await.expect("create");
    api.start("tofile").await.expect("start");
    api.wait("tofile").await.expect("wait");
    api.delete("tofile").await.expect("delete");
    let complete = |w: &str| w.contains("out\n") && w.contains("err\n");
    let at_delete = fs::read_to_string(&log).unwrap_or_default();
    parity::expect(
        direct.shim,
        "file:// output complete when Delete answers",
        if complete(&at_delete) {
            "complete"
        } else {
            "partial"
        },
    );
    // crust: all of it. containerd 1.6's shim can lose stderr for good (see the table).
    crust_tests::command::wait_until(Duration::from_secs(2), || {
        fs::read_to_string(&log).is_ok_and(|w| complete(&w))
    });
    let written = fs::read_to_string(&log).expect("file output");
    parity::expect(
        direct.shim,
        "file:// output complete in the end",
        if complete(&written) {
            "complete"
        } else {
            "stderr lost"
        },
    );
    assert!(written.contains("out\n"), "{written:?}");

    // binary:// hands the output pipes to a logger process (fds 3 and 4, ready on fd 5).
    // Shims send the logger SIGTERM when the process is deleted; this one finishes anyway.
    let logger = direct.scratch("logger");
    let logged = direct.scratch("logged");
    fs::write(
        &logger,
        "#!/bin/sh\ntrap '' TERM\nexec 5>&-\ncat <&3 > \"$2.out\" &\ncat <&4 > \"$2.err\" &\nwait\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2.env\"\n",
    )
    .expect("write logger");
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).expect("chmod");
    let bundle = direct.bundle(
        "tologger",
        &["sh", "-c", "echo to-logger; echo oops >&2"],
        &[],
    );
    let mut request = bundle.create_request();
    request.stdout = format!("binary://{}?path={}", logger.display(), logged.display());
    request.stderr = request.stdout.clone();
    api.create(&request).await.expect("create");
    api.start("tologger").await.expect("start");
    api.wait("tologger").await.expect("wait");
    api.delete("tologger").await.expect("delete");
    let read = |suffix: &str| fs::read_to_string(format!("{}{suffix}", logged.display()));
    assert!(
        wait_until(LIMIT, || read(".env").is_ok()),
        "logger did not finish"
    );
    assert_eq!(read(".out").expect("logged stdout"), "to-logger\n");
    assert_eq!(read(".err").expect("logged stderr"), "oops\n");
    assert_eq!(
        read(".env").expect("logger environment"),
        format!("{}/tologger\n", direct.namespace)
    );
    let _ = api.shutdown("tologger").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_cgroup_places_the_daemon() {
    let direct = Direct::new("shim_cgroup").await;
    // Below the test's namespace cgroup, which the fixture removes however the test ends.
    let cgroup = format!("/{}/shims", direct.namespace);
    let memory = Path::new("/sys/fs/cgroup/memory").join(cgroup.trim_start_matches('/'));
    fs::create_dir_all(&memory).expect("create shim cgroup");
    let bundle = direct.bundle("placed", &["true"], &[]);
    let options = Options {
        shim_cgroup: cgroup.clone(),
        ..Default::default()
    };
    let started = direct.start_shim_with_options(&bundle, &options);
    assert!(started.success(), "{started:?}");
    let shims = direct.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let members = fs::read_to_string(memory.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        members.lines().any(|pid| pid == shims[0].to_string()),
        "shim {} not in {members:?}",
        shims[0]
    );
    cleanup::kill_all(&shims);
    assert!(wait_until(LIMIT, || is_gone(shims[0])));
}

#[test]
fn deliberate_differences() {
    // The whole list of what crust does differently from containerd's Go shim, and why; each
    // row is checked against both shims by the tests above.
    println!("{}", parity::differences_table());
}
