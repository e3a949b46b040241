//! The shim under test driven by a real containerd 1.6 through `ctr`.
//!
//! Every test passes against crust's shim and, with `CRUST_TEST_SHIM=runc`, against
//! containerd's own Go shim.

use std::time::Duration;

use crust_tests::cleanup::{self, is_gone};
use crust_tests::command::wait_until;
use crust_tests::containerd::Containerd;
use crust_tests::parity;

#[test]
fn stdout_and_stderr_reach_the_client() {
    let containerd = Containerd::start("stdout_and_stderr");
    let ran = containerd.run("io", &["sh", "-c", "echo to-stdout; echo to-stderr >&2"]);
    assert!(ran.success(), "{ran:?}");
    assert_eq!(ran.stdout, "to-stdout\n");
    assert_eq!(ran.stderr, "to-stderr\n");
}

#[test]
fn exit_codes_pass_through() {
    let containerd = Containerd::start("exit_codes");
    for code in [0, 3, 255] {
        let ran = containerd.run(
            &format!("exit{code}"),
            &["sh", "-c", &format!("exit {code}")],
        );
        assert_eq!(ran.code, Some(code), "{ran:?}");
    }
}

#[test]
fn stdin_is_piped_in_and_echoed_back() {
    let containerd = Containerd::start("stdin");
    // ctr never closes a task's stdin (that takes CloseIO, see the direct tests), so the task
    // reads what it needs and exits on its own.
    let ran = containerd.run_with(
        "echo-back",
        &["--rm"],
        &[
            "sh",
            "-c",
            "read first; read second; echo \"$second/$first\"",
        ],
        Some(b"one\ntwo\n"),
    );
    assert!(ran.success(), "{ran:?}");
    assert_eq!(ran.stdout, "two/one\n");
}

#[test]
fn sigterm_gives_143_and_sigkill_gives_137() {
    let containerd = Containerd::start("signals");
    // A pid namespace's init ignores SIGTERM it has no handler for, so the SIGTERM case runs
    // in the test's own pid namespace, where `sleep` is an ordinary process and dies of it.
    let own_pid_namespace = format!("pid:/proc/{}/ns/pid", std::process::id());
    for (id, signal, options, expected) in [
        (
            "term",
            "SIGTERM",
            vec!["--rm", "--with-ns", own_pid_namespace.as_str()],
            143,
        ),
        ("kill", "SIGKILL", vec!["--rm"], 137),
    ] {
        std::thread::scope(|scope| {
            let running =
                scope.spawn(|| containerd.run_with(id, &options, &["sleep", "1000"], None));
            assert!(
                containerd.wait_for_status(id, "RUNNING"),
                "{id} never ran:\n{}",
                containerd.log()
            );
            let killed = containerd.ctr(&["task", "kill", "-s", signal, id]);
            assert!(killed.success(), "{killed:?}");
            let ran = running.join().expect("ctr run thread");
            assert_eq!(ran.code, Some(expected), "{signal}: {ran:?}");
        });
    }
}

#[test]
fn states_and_pids_of_a_running_task() {
    let containerd = Containerd::start("states_pids");
    let started = containerd.run_detached("st", &["sh", "-c", "sleep 1000 & exec sleep 1001"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("st", "RUNNING"));
    let (init, _) = containerd.task("st").expect("task listed");
    // Both sleeps are in the container: the init and its child.
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let listed = containerd.ctr(&["task", "ps", "st"]);
        pids = listed
            .stdout
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse::<i32>().ok())
            .collect();
        pids.len() == 2
    }));
    assert!(pids.contains(&init), "init {init} not in {pids:?}");
    let killed = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "st"]);
    assert!(killed.success(), "{killed:?}");
    assert!(containerd.wait_for_status("st", "STOPPED"));
    // A finished task cannot be signalled.
    let again = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "st"]);
    assert!(!again.success());
    assert!(again.stderr.contains("not found"), "{again:?}");
    let removed = containerd.ctr(&["task", "rm", "st"]);
    assert!(removed.success(), "{removed:?}");
    assert!(containerd.ctr(&["container", "rm", "st"]).success());
}

#[test]
fn missing_binary_fails_create_with_runcs_message() {
    let containerd = Containerd::start("missing_binary");
    let ran = containerd.run("missing", &["nosuch-binary"]);
    assert!(!ran.success());
    assert!(
        ran.stderr
            .contains(r#"exec: "nosuch-binary": executable file not found in $PATH"#),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("OCI runtime create failed"), "{ran:?}");
    assert!(
        wait_until(Duration::from_secs(10), || containerd
            .shim_pids()
            .into_iter()
            .all(is_gone)),
        "a shim outlived the failed create"
    );
}

#[test]
fn twenty_containers_in_parallel() {
    let containerd = Containerd::start("parallel");
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let containerd = &containerd;
                scope.spawn(move || {
                    (
                        i,
                        containerd.run(&format!("p{i}"), &["sh", "-c", &format!("echo hello {i}")]),
                    )
                })
            })
            .collect();
        let mut lost = Vec::new();
        for run in runs {
            let (i, ran) = run.join().expect("run thread");
            assert!(ran.success(), "p{i}: {ran:?}");
            match ran.stdout.as_str() {
                out if out == format!("hello {i}\n") => {}
                "" => lost.push(i),
                other => panic!("p{i} printed {other:?}"),
            }
        }
        let outcome = if lost.is_empty() {
            "complete"
        } else {
            "some lost"
        };
        eprintln!("output lost by containers {lost:?}");
        parity::expect(
            containerd.shim,
            "ctr run output of 20 short-lived containers at once",
            outcome,
        );
    });
    assert!(wait_until(Duration::from_secs(20), || containerd
        .shim_pids()
        .into_iter()
        .all(is_gone)));
}

#[test]
fn nothing_is_left_after_delete() {
    let containerd = Containerd::start("nothing_left");
    let ran = containerd.run("clean", &["echo", "done"]);
    assert!(ran.success(), "{ran:?}");
    assert!(
        wait_until(Duration::from_secs(10), || containerd
            .shim_pids()
            .into_iter()
            .all(is_gone)),
        "shim still running"
    );
    assert_eq!(
        cleanup::mounts_below(&containerd.state_dir()),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        !containerd.runc_root().join("clean").exists(),
        "runc state left"
    );
    assert!(
        !containerd.shim_socket("clean").exists(),
        "shim socket left"
    );
    assert!(!containerd.bundle("clean").exists(), "bundle left");
}

#[test]
fn tasks_survive_a_containerd_restart() {
    let mut containerd = Containerd::start("restart");
    let started = containerd.run_detached("survivor", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("survivor", "RUNNING"));
    containerd.restart();
    assert!(
        containerd.wait_for_status("survivor", "RUNNING"),
        "task not listed after restart:\n{}",
        containerd.log()
    );

    // The exit must reach the restarted containerd as an event.
    let mut events = containerd.watch_events();
    let killed = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "survivor"]);
    assert!(killed.success(), "{killed:?}");
    let exit_event = events
        .wait_for(Duration::from_secs(20), |line| {
            line.contains("/tasks/exit") && line.contains("survivor")
        })
        .unwrap_or_else(|| panic!("no exit event; saw {:?}", events.seen));
    // `<time> <namespace> /tasks/exit {"container_id":…,"exit_status":137,…}`
    let payload: serde_json::Value = exit_event
        .find('{')
        .and_then(|at| serde_json::from_str(&exit_event[at..]).ok())
        .unwrap_or_else(|| panic!("no JSON payload in {exit_event:?}"));
    assert_eq!(payload["container_id"], "survivor", "{exit_event}");
    assert_eq!(payload["exit_status"], 137, "{exit_event}");
    assert!(containerd.wait_for_status("survivor", "STOPPED"));
    containerd.remove("survivor");
}

#[test]
fn a_killed_shim_is_cleaned_up_through_delete() {
    let containerd = Containerd::start("killed_shim");
    let started = containerd.run_detached("orphan", &["sleep", "1000"]);
    assert!(started.success(), "{started:?}");
    assert!(containerd.wait_for_status("orphan", "RUNNING"));
    let (init, _) = containerd.task("orphan").expect("task listed");
    let shims = containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    cleanup::kill_all(&shims);
    // containerd sees the connection drop, runs the shim's `delete`, then forgets the task.
    let cleaned = wait_until(Duration::from_secs(20), || {
        containerd.task("orphan").is_none()
            && !containerd.runc_root().join("orphan").exists()
            && cleanup::mounts_below(&containerd.bundle("orphan")).is_empty()
            && is_gone(init)
    });
    assert!(cleaned, "not cleaned up:\n{}", containerd.log());
    let removed = containerd.ctr(&["container", "rm", "orphan"]);
    assert!(removed.success(), "{removed:?}");
}
