//! The shim under test driven the way containerd 1.6 drives it, with a fake containerd that
//! records the events the shim forwards.
//!
//! Every test passes against crust's shim and, with `CRUST_TEST_SHIM=runc`, against
//! containerd's own Go shim; where the two answer differently (error codes), each is held to
//! its column of the parity table (`tests/src/parity.rs`).

use std::time::Duration;

use crust_proto::protobuf::Message;
use crust_proto::task::{DeleteResponse, Status};
use crust_tests::cleanup::{self, is_gone};
use crust_tests::command::wait_until;
use crust_tests::direct::{Direct, code_of};
use crust_tests::parity::{self, code_name};

const EVENT_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_states_and_events_in_containerds_order() {
    let direct = Direct::new("lifecycle").await;
    let bundle = direct.bundle("life", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;

    let created = api.create(&bundle.create_request()).await.expect("create");
    assert!(created.pid > 0);
    let state = api.state("life").await.expect("state");
    assert_eq!(state.status.enum_value(), Ok(Status::CREATED));
    assert_eq!(state.pid, created.pid);
    assert_eq!(state.bundle, bundle.dir.display().to_string());

    let started = api.start("life").await.expect("start");
    assert_eq!(started.pid, created.pid);
    let state = api.state("life").await.expect("state");
    assert_eq!(state.status.enum_value(), Ok(Status::RUNNING));

    // A running task can be neither started again nor deleted.
    let restarted = api.start("life").await.unwrap_err();
    let deleted_running = api.delete("life").await.unwrap_err();
    parity::expect(
        direct.shim,
        "start a running task",
        &code_name(code_of(&restarted)),
    );
    parity::expect(
        direct.shim,
        "delete a running task",
        &code_name(code_of(&deleted_running)),
    );
    assert_eq!(
        api.state("life").await.expect("state").status.enum_value(),
        Ok(Status::RUNNING)
    );

    api.kill("life", libc::SIGKILL as u32, false)
        .await
        .expect("kill");
    let waited = api.wait("life").await.expect("wait");
    assert_eq!(waited.exit_status, 137);
    let state = api.state("life").await.expect("state");
    assert_eq!(state.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(state.exit_status, 137);

    let again = api
        .kill("life", libc::SIGKILL as u32, false)
        .await
        .unwrap_err();
    parity::expect(
        direct.shim,
        "kill an exited task",
        &code_name(code_of(&again)),
    );

    let deleted = api.delete("life").await.expect("delete");
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(deleted.pid, created.pid);
    let gone = api.state("life").await.unwrap_err();
    parity::expect(
        direct.shim,
        "state of a deleted task",
        &code_name(code_of(&gone)),
    );

    direct
        .events
        .wait_for("/tasks/delete", "life", EVENT_LIMIT)
        .await
        .expect("delete event");
    assert_eq!(
        direct.events.topics("life"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    for event in direct.events.all() {
        assert_eq!(event.namespace, direct.namespace, "{event:?}");
        assert_eq!(
            event.metadata_namespace.as_deref(),
            Some(direct.namespace.as_str())
        );
        assert_eq!(event.pid, created.pid, "{event:?}");
    }
    let exit = direct
        .events
        .wait_for("/tasks/exit", "life", EVENT_LIMIT)
        .await;
    assert_eq!(exit.and_then(|e| e.exit_status), Some(137));

    // With no container left, Shutdown ends the daemon and removes its socket.
    let shims = direct.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let _ = api.shutdown("life").await;
    assert!(
        wait_until(Duration::from_secs(10), || is_gone(shims[0])),
        "shim did not exit"
    );
    assert!(!direct.shim_socket("life").exists(), "socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_exit_status_of_a_short_task() {
    let direct = Direct::new("short_task").await;
    let bundle = direct.bundle(
        "short",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        &[],
    );
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request()).await.expect("create");
    api.start("short").await.expect("start");
    // The task may be gone before Wait is even called: its exit must not be lost.
    let waited = api.wait("short").await.expect("wait");
    assert_eq!(waited.exit_status, 7);
    let deleted = api.delete("short").await.expect("delete");
    assert_eq!(deleted.exit_status, 7);
    assert_eq!(bundle.output(), ("out\n".to_string(), "err\n".to_string()));
    direct
        .events
        .wait_for("/tasks/delete", "short", EVENT_LIMIT)
        .await
        .expect("delete event");
    assert_eq!(
        direct.events.topics("short"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let _ = api.shutdown("short").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_until_closeio() {
    let direct = Direct::new("stdin_closeio").await;
    let bundle = direct.bundle("cat", &["cat"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    api.create(&bundle.create_request_with_stdin())
        .await
        .expect("create");
    api.start("cat").await.expect("start");
    // A client that writes and goes away does not end the container's input...
    bundle.write_stdin(b"first\n");
    bundle.write_stdin(b"second\n");
    let waiting = tokio::time::timeout(Duration::from_millis(500), api.wait("cat")).await;
    assert!(waiting.is_err(), "cat saw EOF without CloseIO: {waiting:?}");
    // ...CloseIO does.
    api.close_stdin("cat").await.expect("close io");
    assert_eq!(api.wait("cat").await.expect("wait").exit_status, 0);
    api.delete("cat").await.expect("delete");
    assert_eq!(bundle.output().0, "first\nsecond\n");
    let _ = api.shutdown("cat").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_lose_nothing() {
    let direct = Direct::new("bad_requests").await;
    let bundle = direct.bundle("good", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;

    let unknown = api.kill("nosuch", 9, false).await.unwrap_err();
    parity::expect(
        direct.shim,
        "kill an unknown task",
        &code_name(code_of(&unknown)),
    );

    for bad_id in ["../escape", "a/b", ".."] {
        let mut request = bundle.create_request();
        request.id = bad_id.into();
        let refused = api.create(&request).await.unwrap_err();
        parity::expect(
            direct.shim,
            "create with an id that is a path",
            &code_name(code_of(&refused)),
        );
    }

    api.create(&bundle.create_request()).await.expect("create");
    let duplicate = api.create(&bundle.create_request()).await.unwrap_err();
    parity::expect(
        direct.shim,
        "create a task twice",
        &code_name(code_of(&duplicate)),
    );
    // The refused requests did not disturb the container that exists.
    let state = api.state("good").await.expect("state");
    assert_eq!(state.status.enum_value(), Ok(Status::CREATED));
    api.start("good").await.expect("start");
    api.kill("good", 9, false).await.expect("kill");
    assert_eq!(api.wait("good").await.expect("wait").exit_status, 137);
    api.delete("good").await.expect("delete");
    let _ = api.shutdown("good").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_fails_create_with_runcs_message() {
    let direct = Direct::new("missing_binary").await;
    let bundle = direct.bundle("nobin", &["nosuch-binary"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    let failed = api.create(&bundle.create_request()).await.unwrap_err();
    let text = format!("{failed:?}");
    assert!(
        text.contains(r#"exec: \"nosuch-binary\": executable file not found in $PATH"#),
        "{text}"
    );
    assert!(
        cleanup::mounts_below(&bundle.dir).is_empty(),
        "rootfs left mounted after a failed create"
    );
    let _ = api.shutdown("nobin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_one_pod_share_one_shim() {
    let direct = Direct::new("grouping").await;
    let pod = [("io.kubernetes.cri.sandbox-id", "pod1")];
    let first = direct.bundle("first", &["sleep", "1000"], &pod);
    let second = direct.bundle("second", &["sleep", "1000"], &pod);
    first.attach_output();
    second.attach_output();
    let first_start = direct.start_shim(&first, b"");
    let second_start = direct.start_shim(&second, b"");
    assert!(
        first_start.success() && second_start.success(),
        "{first_start:?} {second_start:?}"
    );
    assert_eq!(
        first_start.stdout, second_start.stdout,
        "one address for the pod"
    );
    assert_eq!(direct.shim_pids().len(), 1, "one daemon for the pod");

    let api =
        crust_tests::direct::TaskApi::connect(first_start.stdout.trim(), &direct.namespace).await;
    for bundle in [&first, &second] {
        api.create(&bundle.create_request()).await.expect("create");
        api.start(&bundle.id).await.expect("start");
    }
    api.kill("first", 9, false).await.expect("kill");
    api.wait("first").await.expect("wait");
    api.delete("first").await.expect("delete");
    // Shutdown while the pod still has a container does nothing.
    let _ = api.shutdown("first").await;
    assert_eq!(
        api.state("second")
            .await
            .expect("state")
            .status
            .enum_value(),
        Ok(Status::RUNNING)
    );
    api.kill("second", 9, false).await.expect("kill");
    api.wait("second").await.expect("wait");
    api.delete("second").await.expect("delete");
    let shims = direct.shim_pids();
    let _ = api.shutdown("second").await;
    assert!(wait_until(Duration::from_secs(10), || shims
        .iter()
        .all(|&p| is_gone(p))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cleans_up_after_a_killed_daemon() {
    let direct = Direct::new("delete_action").await;
    let bundle = direct.bundle("lost", &["sleep", "1000"], &[]);
    bundle.attach_output();
    let api = direct.start_and_connect(&bundle).await;
    let created = api.create(&bundle.create_request()).await.expect("create");
    api.start("lost").await.expect("start");
    let shims = direct.shim_pids();
    cleanup::kill_all(&shims);

    let deleted = direct.delete_shim(&bundle);
    assert!(deleted.success(), "{deleted:?}");
    let response = DeleteResponse::parse_from_bytes(&deleted.stdout_bytes).expect("DeleteResponse");
    assert_eq!(response.exit_status, 137);
    assert_eq!(response.pid, created.pid);
    assert!(response.exited_at.is_some());
    assert!(
        wait_until(Duration::from_secs(10), || is_gone(created.pid as i32)),
        "container outlived delete"
    );
    assert!(
        cleanup::mounts_below(&bundle.dir).is_empty(),
        "rootfs still mounted"
    );
    assert!(
        !std::path::Path::new(crust_tests::containerd::RUNC_ROOT)
            .join(&direct.namespace)
            .join("lost")
            .exists(),
        "runc state left"
    );
}
