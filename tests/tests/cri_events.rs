//! GetContainerEvents end to end: what kubelet's evented PLEG subscribes to, from crustd's CRI
//! socket, with real pods and containers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crust_proto::cri::tonic::{Code, Streaming};
use crust_proto::cri::*;
use crust_tests::cri::{self, Client};
use crust_tests::crustd::WithImage;

/// How far behind crustd lets a subscriber fall in these tests (small, to overflow it fast).
const BUFFER: usize = 32;

/// What a subscriber received: each event with when it arrived, then how its stream ended.
#[derive(Default)]
struct Received {
    events: Vec<(Instant, ContainerEventResponse)>,
    ended: Option<Option<Code>>,
}

/// A subscriber that reads everything as it comes, in a task of its own.
struct Reader {
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    async fn subscribe(client: &mut Client) -> Self {
        let stream = client
            .get_container_events(GetEventsRequest {})
            .await
            .expect("subscribe")
            .into_inner();
        let received = Arc::new(Mutex::new(Received::default()));
        let task = tokio::spawn(read_all(stream, Arc::clone(&received)));
        Reader { received, task }
    }

    /// The (id, type) of every event so far.
    fn kinds(&self) -> Vec<(String, i32)> {
        self.received
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|(_, e)| (e.container_id.clone(), e.container_event_type))
            .collect()
    }

    fn events(&self) -> Vec<ContainerEventResponse> {
        let received = self.received.lock().unwrap();
        received.events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Waits up to `limit` for an event (`id`, `kind`); when it arrived.
    async fn wait_for(&self, id: &str, kind: ContainerEventType, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .received
                .lock()
                .unwrap()
                .events
                .iter()
                .find(|(_, e)| e.container_id == id && e.container_event_type == kind as i32)
                .map(|(at, _)| *at);
            if let Some(at) = found {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind:?} of {id} within {limit:?}; got {:?}",
                self.kinds()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_all(mut stream: Streaming<ContainerEventResponse>, into: Arc<Mutex<Received>>) {
    loop {
        let next = stream.message().await;
        let mut received = into.lock().unwrap();
        match next {
            Ok(Some(event)) => received.events.push((Instant::now(), event)),
            Ok(None) => {
                received.ended = Some(None);
                return;
            }
            Err(status) => {
                received.ended = Some(Some(status.code()));
                return;
            }
        }
    }
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

async fn create(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("create container")
        .into_inner()
        .container_id
}

fn config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut config = cri::container_config(name, image, command, "");
    config.log_path.clear();
    config
}

use ContainerEventType::{
    ContainerCreatedEvent as Created, ContainerDeletedEvent as Deleted,
    ContainerStartedEvent as Started, ContainerStoppedEvent as Stopped,
};

/// Waits until crustd's log has `text`.
async fn wait_for_log(setup: &WithImage, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if setup.crustd.log().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_see_a_pods_whole_life_in_order_with_its_status() {
    let setup = WithImage::start_configured(false, &format!("container_events_buffer = {BUFFER}"))
        .await
        .expect("crustd with the test image");
    let mut client = setup.crustd.runtime().await;
    let first = Reader::subscribe(&mut setup.crustd.runtime().await).await;
    let second = Reader::subscribe(&mut setup.crustd.runtime().await).await;

    let pod_config = pod_config("events");
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    // Stopped by StopContainer.
    let stopped = create(
        &mut client,
        &pod,
        &pod_config,
        config("sleeper", &setup.image, &["sleep", "1000"]),
    )
    .await;
    cri::start(&mut client, &stopped).await.expect("start");
    cri::stop(&mut client, &stopped, 0).await.expect("stop");
    cri::remove(&mut client, &stopped).await.expect("remove");
    // Exits on its own: its STOPPED comes from the pod's supervisor.
    let quick = create(
        &mut client,
        &pod,
        &pod_config,
        config("quick", &setup.image, &["sh", "-c", "exit 3"]),
    )
    .await;
    cri::start(&mut client, &quick).await.expect("start");
    let exited = cri::wait_exited(&mut client, &quick, Duration::from_secs(10))
        .await
        .expect("status");
    assert_eq!(exited.exit_code, 3);
    first
        .wait_for(&quick, Stopped, Duration::from_secs(10))
        .await;
    cri::remove(&mut client, &quick).await.expect("remove");
    cri::stop_pod(&mut client, &pod).await.expect("stop pod");
    cri::remove_pod(&mut client, &pod)
        .await
        .expect("remove pod");
    first.wait_for(&pod, Deleted, Duration::from_secs(10)).await;
    second
        .wait_for(&pod, Deleted, Duration::from_secs(10))
        .await;

    let expected: Vec<(String, i32)> = [
        (&pod, Created),
        (&pod, Started),
        (&stopped, Created),
        (&stopped, Started),
        (&stopped, Stopped),
        (&stopped, Deleted),
        (&quick, Created),
        (&quick, Started),
        (&quick, Stopped),
        (&quick, Deleted),
        (&pod, Stopped),
        (&pod, Deleted),
    ]
    .iter()
    .map(|(id, kind)| (id.to_string(), *kind as i32))
    .collect();
    assert_eq!(first.kinds(), expected, "{}", setup.crustd.log());
    assert_eq!(second.kinds(), expected);

    // The pod's status as it was right after each change.
    let ready = PodSandboxState::SandboxReady as i32;
    let not_ready = PodSandboxState::SandboxNotready as i32;
    let events = first.events();
    let mut last_at = 0;
    for event in &events {
        assert!(event.created_at >= last_at, "timestamps in order");
        last_at = event.created_at;
        let kind = event.container_event_type;
        let is_pod = event.container_id == pod;
        let status = event
            .pod_sandbox_status
            .as_ref()
            .unwrap_or_else(|| panic!("no pod status in {event:?}"));
        assert_eq!(status.id, pod);
        assert_eq!(status.labels.get("app").map(String::as_str), Some("events"));
        // A deleted pod is reported as it was last (kubelet skips an event without one).
        let pod_state = if !is_pod || kind == Started as i32 {
            ready
        } else {
            not_ready
        };
        assert_eq!(status.state, pod_state, "{event:?}");
        if is_pod {
            continue;
        }
        let own = event
            .containers_statuses
            .iter()
            .find(|c| c.id == event.container_id);
        let state = own.map(|c| c.state);
        let expected_state = match kind {
            k if k == Created as i32 => Some(ContainerState::ContainerCreated as i32),
            k if k == Started as i32 => Some(ContainerState::ContainerRunning as i32),
            k if k == Stopped as i32 => Some(ContainerState::ContainerExited as i32),
            _ => None,
        };
        assert_eq!(state, expected_state, "{event:?}");
    }
    let quick_stopped = events
        .iter()
        .find(|e| e.container_id == quick && e.container_event_type == Stopped as i32)
        .and_then(|e| e.containers_statuses.iter().find(|c| c.id == quick))
        .expect("quick's stop");
    assert_eq!(
        (quick_stopped.exit_code, quick_stopped.reason.as_str()),
        (3, "Error")
    );

    // Subscribers that leave are let go.
    drop(first);
    drop(second);
    assert!(
        wait_for_log(&setup, "a container events subscriber left (0 remain)").await,
        "{}",
        setup.crustd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_without_delaying_anyone() {
    let setup = WithImage::start_configured(false, &format!("container_events_buffer = {BUFFER}"))
        .await
        .expect("crustd with the test image");
    let mut client = setup.crustd.runtime().await;
    let pod_config = pod_config("busy");
    let pod = cri::run_pod(&mut client, &pod_config)
        .await
        .expect("run pod");
    // Never read: once its small HTTP/2 window is full crustd cannot send it more, and the
    // ring passes it by.
    let mut slow = cri::Client::new(setup.crustd.channel_with_window(65_535).await)
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let fast = Reader::subscribe(&mut setup.crustd.runtime().await).await;

    // Large annotations make large events: the slow one's window fills after a few.
    let mut container = config("churn", &setup.image, &["true"]);
    container
        .annotations
        .insert("padding".into(), "x".repeat(4096));
    const ROUNDS: usize = 60;
    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let mut config = container.clone();
        if let Some(metadata) = config.metadata.as_mut() {
            metadata.attempt = round as u32;
        }
        let called = Instant::now();
        let id = create(&mut client, &pod, &pod_config, config).await;
        cri::remove(&mut client, &id).await.expect("remove");
        let arrived = fast.wait_for(&id, Deleted, Duration::from_secs(5)).await;
        slowest = slowest.max(arrived.duration_since(called));
        ids.push(id);
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a create and remove took {slowest:?} to reach the fast subscriber"
    );
    let expected: Vec<(String, i32)> = ids
        .iter()
        .flat_map(|id| [(id.clone(), Created as i32), (id.clone(), Deleted as i32)])
        .collect();
    assert_eq!(fast.kinds(), expected, "the fast one kept everything");
    assert!(fast.received.lock().unwrap().ended.is_none());

    // The slow one gets what fitted, then is told it fell behind.
    let mut got = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message()).await {
            Ok(Ok(Some(_))) => got += 1,
            Ok(Ok(None)) => break None,
            Ok(Err(status)) => break Some(status.code()),
            Err(_) => panic!("the slow subscriber's stream neither ended nor failed"),
        }
    };
    assert_eq!(ended, Some(Code::ResourceExhausted), "after {got} events");
    assert!(got < 2 * ROUNDS, "{got} events reached the slow one");
    assert!(
        wait_for_log(&setup, "fell").await,
        "crustd logs the drop:\n{}",
        setup.crustd.log()
    );

    cri::stop_pod(&mut client, &pod).await.expect("stop pod");
    cri::remove_pod(&mut client, &pod)
        .await
        .expect("remove pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_events_stream_does_not_hold_crustd_when_it_stops() {
    let setup = WithImage::start(false)
        .await
        .expect("crustd with the test image");
    let reader = Reader::subscribe(&mut setup.crustd.runtime().await).await;
    // The fixture stops crustd with SIGTERM and SIGKILLs it only after 10 s.
    let started = Instant::now();
    setup.crustd.restart();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "crustd took {took:?} to stop and start"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.received.lock().unwrap().ended.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reader.received.lock().unwrap().ended.is_some(),
        "the stream ended when crustd stopped"
    );
}
