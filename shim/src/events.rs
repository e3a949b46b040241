//! Forwarding task events to containerd over ttrpc.
//!
//! Events go through one bounded queue to one sender task, so they reach containerd in the
//! order the shim produced them (create, start, exec exits, init exit, delete). A failed
//! forward is retried with backoff, reconnecting each time, for up to a minute: long enough to
//! outlast a containerd restart, bounded so a containerd that never returns cannot grow the
//! shim. Producers never wait: a full queue drops the event and says so in the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crust_proto::events::{Envelope, EventsClient, ForwardRequest, TaskEvent};
use crust_proto::protobuf::MessageField;
use crust_proto::ttrpc;
use crust_proto::ttrpc::r#async::transport::Socket;
use crust_proto::typeurl;
use crust_proto::wellknown::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Events waiting to be forwarded, as containerd's shim allows.
const QUEUE_CAPACITY: usize = 2048;
/// Deadline of one Forward call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one event is retried before it is given up.
const DELIVERY_BUDGET: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// ttrpc metadata key carrying the containerd namespace.
const NAMESPACE_KEY: &str = "containerd-namespace-ttrpc";

/// Queues events for containerd.
#[derive(Debug, Clone)]
pub struct Publisher {
    queue: mpsc::Sender<Envelope>,
    namespace: String,
    in_flight: Arc<InFlight>,
}

/// Events queued or being delivered, so shutdown can wait for them.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Publisher {
    /// Starts the sender task. `address` is containerd's ttrpc socket (`TTRPC_ADDRESS`); with
    /// none, events are dropped (the shim then runs without a containerd, as in tests).
    pub fn start(address: Option<String>, namespace: &str) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(InFlight::default());
        let sender = tokio::spawn(forward_all(
            receiver,
            address.map(socket_path),
            namespace.to_string(),
            Arc::clone(&in_flight),
        ));
        (
            Self {
                queue,
                namespace: namespace.to_string(),
                in_flight,
            },
            sender,
        )
    }

    /// Waits until every queued event was delivered or given up, for at most `limit`.
    pub async fn wait_delivered(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.in_flight.idle.notified();
                tokio::pin!(idle);
                // Registered before the check, so a notification in between is not lost.
                idle.as_mut().enable();
                if self.in_flight.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Queues `event` for containerd, without waiting.
    pub fn publish<E: TaskEvent>(&self, event: &E) {
        let payload = match typeurl::pack(E::TYPE_URL, event) {
            Ok(payload) => payload,
            Err(e) => {
                log::error!("encoding {} event: {e}", E::TOPIC);
                return;
            }
        };
        let envelope = Envelope {
            timestamp: MessageField::some(timestamp(SystemTime::now())),
            namespace: self.namespace.clone(),
            topic: E::TOPIC.to_string(),
            event: MessageField::some(payload),
            ..Default::default()
        };
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.queue.try_send(envelope) {
            self.in_flight.done();
            log::error!("event queue full, dropping {} event: {e}", E::TOPIC);
        }
    }
}

/// A protobuf timestamp of `time`.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// containerd 1.6 passes a bare path in `TTRPC_ADDRESS`, later versions a `unix://` URI.
fn socket_path(address: String) -> String {
    match address.strip_prefix("unix://") {
        Some(path) => path.to_string(),
        None => address,
    }
}

async fn forward_all(
    mut queue: mpsc::Receiver<Envelope>,
    address: Option<String>,
    namespace: String,
    in_flight: Arc<InFlight>,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = queue.recv().await {
        match address.as_deref() {
            Some(address) => deliver(&mut client, address, &namespace, envelope).await,
            None => log::debug!("no TTRPC_ADDRESS: not forwarding {}", envelope.topic),
        }
        in_flight.done();
    }
}

async fn deliver(
    client: &mut Option<EventsClient>,
    address: &str,
    namespace: &str,
    envelope: Envelope,
) {
    let topic = envelope.topic.clone();
    let request = ForwardRequest {
        envelope: MessageField::some(envelope),
        ..Default::default()
    };
    let give_up = Instant::now() + DELIVERY_BUDGET;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if client.is_none() {
            *client = connect(address).await;
        }
        if let Some(connected) = client.as_ref() {
            let mut context = ttrpc::context::with_duration(FORWARD_TIMEOUT);
            context.add(NAMESPACE_KEY.to_string(), namespace.to_string());
            match connected.forward(context, &request).await {
                Ok(_) => return,
                Err(e) => {
                    log::warn!("forwarding {topic} to containerd failed, retrying: {e}");
                    *client = None;
                }
            }
        }
        if Instant::now() + backoff > give_up {
            log::error!(
                "containerd at {address} did not take the {topic} event for {}s, dropping it",
                DELIVERY_BUDGET.as_secs()
            );
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(address: &str) -> Option<EventsClient> {
    // Connecting by hand keeps ttrpc's TCP and vsock transports (and with them the resolver)
    // out of the binary: containerd's event endpoint is always a unix socket.
    match tokio::time::timeout(FORWARD_TIMEOUT, tokio::net::UnixStream::connect(address)).await {
        Ok(Ok(stream)) => Some(EventsClient::new(ttrpc::r#async::Client::new(Socket::new(
            stream,
        )))),
        Ok(Err(e)) => {
            log::debug!("connecting to containerd at {address}: {e}");
            None
        }
        Err(_) => {
            log::debug!("connecting to containerd at {address} timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use crust_proto::events::{Events, TaskExit, TaskStart, create_events};
    use crust_proto::protobuf::Message;
    use crust_proto::ttrpc::r#async::TtrpcContext;
    use crust_proto::wellknown::Empty;

    use super::*;

    /// A containerd Events endpoint that records (namespace metadata, topic, pid).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String, u32)>>);

    #[derive(Clone)]
    struct Endpoint(Arc<Recorder>);

    #[async_trait]
    impl Events for Endpoint {
        async fn forward(
            &self,
            context: &TtrpcContext,
            request: ForwardRequest,
        ) -> ttrpc::Result<Empty> {
            let envelope = request.envelope.unwrap_or_default();
            let namespace = context
                .metadata
                .get(NAMESPACE_KEY)
                .and_then(|v| v.first().cloned())
                .unwrap_or_default();
            let payload = envelope.event.unwrap_or_default();
            let pid = match envelope.topic.as_str() {
                "/tasks/exit" => TaskExit::parse_from_bytes(&payload.value).map(|e| e.pid),
                _ => TaskStart::parse_from_bytes(&payload.value).map(|e| e.pid),
            }
            .unwrap_or_default();
            self.0
                .0
                .lock()
                .unwrap()
                .push((namespace, envelope.topic, pid));
            Ok(Empty::new())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_queued_before_containerd_listens_arrive_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let (publisher, _sender) = Publisher::start(Some(socket.display().to_string()), "ns1");
        publisher.publish(&TaskStart {
            pid: 1,
            ..Default::default()
        });
        publisher.publish(&TaskExit {
            pid: 1,
            exit_status: 137,
            ..Default::default()
        });
        publisher.publish(&TaskStart {
            pid: 2,
            ..Default::default()
        });
        // containerd comes up only after the events were produced (a restart, say).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let recorder = Arc::new(Recorder::default());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .unwrap()
            .register_service(create_events(Arc::new(Endpoint(Arc::clone(&recorder)))));
        server.start().await.unwrap();
        assert!(publisher.wait_delivered(Duration::from_secs(10)).await);
        let received = recorder.0.lock().unwrap().clone();
        assert_eq!(
            received,
            [
                ("ns1".to_string(), "/tasks/start".to_string(), 1),
                ("ns1".to_string(), "/tasks/exit".to_string(), 1),
                ("ns1".to_string(), "/tasks/start".to_string(), 2),
            ]
        );
    }

    #[test]
    fn addresses_with_or_without_scheme_name_the_socket() {
        assert_eq!(
            socket_path("/run/containerd/containerd.sock.ttrpc".into()),
            "/run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(socket_path("unix:///x".into()), "/x");
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let ts = timestamp(time);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }
}
