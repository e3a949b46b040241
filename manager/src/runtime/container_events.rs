//! Container events for kubelet's evented PLEG (GetContainerEvents): created, started,
//! stopped and deleted, for containers and for pods (a pod's events carry its own id as the
//! container id, as containerd sends them).
//!
//! Events come from the [store](super::store)'s observer, so every stored transition makes
//! one, whoever made it (a CRI handler, an exit the supervisor recorded, a restart's
//! reconciliation), only once it is on disk: an event never announces what a crash would
//! undo. Each event carries a snapshot of its pod's record and containers taken then.
//!
//! One broadcaster feeds every subscriber through one ring of [`CONTAINER_EVENTS_BUFFER`]
//! events: publishing never waits. A subscriber that falls further behind than that has
//! lost events; it is told so ([`FellBehind`]) and its stream ends, so it can list afresh
//! rather than go on believing a history with holes in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{broadcast, watch};

use super::records::{ContainerRecord, ContainerState, PodRecord, PodState};

/// How many events a subscriber may be behind before it is dropped (containerd buffers
/// 1000).
pub const CONTAINER_EVENTS_BUFFER: usize = 1024;

/// What happened to a container or pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// Its record was written.
    Created,
    /// Its process (a pod's infra process) runs.
    Started,
    /// Its process exited, could not start, or was lost (a pod: it is no longer ready).
    Stopped,
    /// Its record is gone.
    Deleted,
}

/// One event, with its pod as it was right after the change.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// The container's id, or the pod's for a pod's own event.
    pub container_id: String,
    /// What happened.
    pub kind: ContainerEventKind,
    /// When it was published, ns since the epoch.
    pub at: i64,
    /// The pod it belongs to (None once the pod is gone).
    pub pod: Option<PodRecord>,
    /// The pod's containers, oldest first.
    pub containers: Vec<ContainerRecord>,
}

/// The event a container record's change makes, if any.
pub fn container_transition(
    before: Option<&ContainerRecord>,
    after: Option<&ContainerRecord>,
) -> Option<ContainerEventKind> {
    match (before, after) {
        (None, Some(_)) => Some(ContainerEventKind::Created),
        (Some(_), None) => Some(ContainerEventKind::Deleted),
        (Some(before), Some(after)) if before.state != after.state => match after.state {
            ContainerState::Running => Some(ContainerEventKind::Started),
            ContainerState::Exited => Some(ContainerEventKind::Stopped),
            ContainerState::Created => None,
        },
        _ => None,
    }
}

/// The event a pod record's change makes, if any.
pub fn pod_transition(
    before: Option<&PodRecord>,
    after: Option<&PodRecord>,
) -> Option<ContainerEventKind> {
    match (before, after) {
        (None, Some(_)) => Some(ContainerEventKind::Created),
        (Some(_), None) => Some(ContainerEventKind::Deleted),
        (Some(before), Some(after)) if before.state != after.state => match after.state {
            PodState::Ready => Some(ContainerEventKind::Started),
            PodState::NotReady => Some(ContainerEventKind::Stopped),
        },
        _ => None,
    }
}

/// A subscriber lost events: it was `missed` events behind the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FellBehind {
    /// How many events it lost.
    pub missed: u64,
}

/// The one broadcaster of container events.
#[derive(Debug)]
pub struct ContainerEvents {
    sender: broadcast::Sender<Arc<ContainerEvent>>,
    /// Subscribers counted for the log: each join and leave changes it once, atomically, so
    /// two leaving at the same time report different counts.
    joined: Arc<AtomicUsize>,
    /// True once crustd stops: every subscription ends then (an open stream would otherwise
    /// hold the server's graceful shutdown forever).
    closed: watch::Sender<bool>,
}

impl ContainerEvents {
    /// A broadcaster whose subscribers may each be `buffer` events behind.
    pub fn new(buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        let (closed, _) = watch::channel(false);
        Self {
            sender,
            joined: Arc::new(AtomicUsize::new(0)),
            closed,
        }
    }

    /// Ends every subscription, now and to come (crustd is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Sends `event` to every subscriber; never waits (without subscribers it is dropped).
    pub fn publish(&self, event: ContainerEvent) {
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new subscriber, which sees the events published from now on.
    pub fn subscribe(&self) -> Subscription {
        let subscription = Subscription {
            receiver: self.sender.subscribe(),
            joined: Arc::clone(&self.joined),
            closed: self.closed.subscribe(),
        };
        let now = self.joined.fetch_add(1, Ordering::SeqCst) + 1;
        log::info!("a container events subscriber joined ({now} now)");
        subscription
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// One subscriber's view of the events; its place in the ring goes when it is dropped.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<ContainerEvent>>,
    /// To count who is left when it goes.
    joined: Arc<AtomicUsize>,
    /// Whether crustd is stopping.
    closed: watch::Receiver<bool>,
}

impl Subscription {
    /// The next event, in publication order; [`FellBehind`] once events were lost (the
    /// subscription is over then: call no more); None when crustd is shutting down.
    pub async fn next(&mut self) -> Option<Result<Arc<ContainerEvent>, FellBehind>> {
        if *self.closed.borrow() {
            return None;
        }
        let received = tokio::select! {
            received = self.receiver.recv() => received,
            // Closed, or the broadcaster is gone: either way crustd is stopping.
            _ = self.closed.wait_for(|closed| *closed) => return None,
        };
        match received {
            Ok(event) => Some(Ok(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Err(FellBehind { missed })),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let remain = self.joined.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        log::info!("a container events subscriber left ({remain} remain)");
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn closing_ends_every_subscription_even_one_waiting() {
        let events = ContainerEvents::new(4);
        let mut waiting = events.subscribe();
        let waiter = tokio::spawn(async move { waiting.next().await.is_none() });
        tokio::task::yield_now().await;
        events.close();
        assert!(waiter.await.unwrap(), "the waiting subscription ended");
        let mut late = events.subscribe();
        assert!(late.next().await.is_none(), "and one made after");
    }

    use super::*;
    use crate::runtime::records::tests::{container, pod};

    fn event(id: &str) -> ContainerEvent {
        ContainerEvent {
            container_id: id.into(),
            kind: ContainerEventKind::Created,
            at: 1,
            pod: None,
            containers: Vec::new(),
        }
    }

    async fn ids(subscription: &mut Subscription, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let event = subscription.next().await.unwrap().unwrap();
            ids.push(event.container_id.clone());
        }
        ids
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let events = ContainerEvents::new(16);
        let mut first = events.subscribe();
        let mut second = events.subscribe();
        for id in ["a", "b", "c"] {
            events.publish(event(id));
        }
        assert_eq!(ids(&mut first, 3).await, ["a", "b", "c"]);
        assert_eq!(ids(&mut second, 3).await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_subscriber_sees_only_what_comes_after_it_joined() {
        let events = ContainerEvents::new(16);
        events.publish(event("before"));
        let mut late = events.subscribe();
        events.publish(event("after"));
        assert_eq!(ids(&mut late, 1).await, ["after"]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_the_fast_one_keeps_everything() {
        let events = ContainerEvents::new(4);
        let mut slow = events.subscribe();
        let mut fast = events.subscribe();
        let mut kept = Vec::new();
        for n in 0..10 {
            // Publishing never waits for the slow one.
            events.publish(event(&n.to_string()));
            kept.extend(ids(&mut fast, 1).await);
        }
        let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
        assert_eq!(kept, expected);
        assert_eq!(
            slow.next().await.unwrap().unwrap_err(),
            FellBehind { missed: 6 }
        );
    }

    #[test]
    fn subscribers_leaving_at_once_count_down_distinctly() {
        for _ in 0..100 {
            let events = ContainerEvents::new(4);
            let pair = [events.subscribe(), events.subscribe()];
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let leaving: Vec<_> = pair
                .into_iter()
                .map(|subscription| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        drop(subscription);
                    })
                })
                .collect();
            for thread in leaving {
                thread.join().unwrap();
            }
            assert_eq!(events.joined.load(Ordering::SeqCst), 0);
        }
    }

    #[tokio::test]
    async fn subscribers_that_leave_are_forgotten() {
        let events = ContainerEvents::new(4);
        let first = events.subscribe();
        let second = events.subscribe();
        assert_eq!(events.subscribers(), 2);
        drop(first);
        assert_eq!(events.subscribers(), 1);
        drop(second);
        assert_eq!(events.subscribers(), 0);
        events.publish(event("nobody listens"));
    }

    #[test]
    fn container_changes_map_to_events() {
        use ContainerEventKind::*;
        let created = container("c", "p");
        let mut running = created.clone();
        running.begin_start().unwrap();
        assert_eq!(container_transition(Some(&created), Some(&running)), None);
        running.mark_started(7, 2);
        let mut exited = running.clone();
        exited.mark_exited(0, 3);
        let mut failed = created.clone();
        failed.mark_start_failed("no".into(), 3);
        let mut oom = running.clone();
        oom.mark_oom();
        assert_eq!(container_transition(None, Some(&created)), Some(Created));
        assert_eq!(
            container_transition(Some(&created), Some(&running)),
            Some(Started)
        );
        assert_eq!(
            container_transition(Some(&running), Some(&exited)),
            Some(Stopped)
        );
        assert_eq!(
            container_transition(Some(&created), Some(&failed)),
            Some(Stopped)
        );
        assert_eq!(container_transition(Some(&running), Some(&oom)), None);
        assert_eq!(container_transition(Some(&exited), None), Some(Deleted));
    }

    #[test]
    fn pod_changes_map_to_events() {
        use ContainerEventKind::*;
        let fresh = pod("p");
        let mut ready = fresh.clone();
        ready.mark_shim_launched("unix:///x".into());
        assert_eq!(pod_transition(Some(&fresh), Some(&ready)), None);
        ready.mark_ready(9);
        let mut stopped = ready.clone();
        stopped.mark_not_ready();
        assert_eq!(pod_transition(None, Some(&fresh)), Some(Created));
        assert_eq!(pod_transition(Some(&fresh), Some(&ready)), Some(Started));
        assert_eq!(pod_transition(Some(&ready), Some(&stopped)), Some(Stopped));
        assert_eq!(pod_transition(Some(&stopped), Some(&stopped)), None);
        assert_eq!(pod_transition(Some(&stopped), None), Some(Deleted));
    }
}
