//! Limits on CRI client connections, so that no client can make crustd hold resources
//! forever or starve the others:
//!
//! - at most [`MAX_CONNECTIONS`] at once; more are closed as they arrive;
//! - a connection must send its first request within [`FIRST_REQUEST_LIMIT`], and is closed
//!   after [`IDLE_LIMIT`] with no request in flight and nothing received (a gRPC client dials
//!   again when it needs to);
//! - a request's body (its message) must arrive in full within [`REQUEST_BODY_LIMIT`] of its
//!   headers, else the request fails with a status instead of waiting forever.
//!
//! [`Guarded`] wraps each accepted connection and closes it when it is due; [`ActivityLayer`]
//! sees each request (through the connection's [`ConnectionInfo`], which tonic attaches to
//! every request) to count those in flight and to bound their bodies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crust_proto::cri::tonic::body::Body;
use crust_proto::cri::tonic::transport::server::Connected;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most client connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a new connection may take to send its first request.
pub const FIRST_REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long a connection may sit with no request in flight and nothing received.
pub const IDLE_LIMIT: Duration = Duration::from_secs(300);
/// How long a request's body may take to arrive after its headers.
pub const REQUEST_BODY_LIMIT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one connection is doing, shared by its [`Guarded`] stream and its requests.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// When it last received bytes or finished a request.
    last: Mutex<Option<Instant>>,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// When the connection is due to close, as things stand; None while requests run.
    fn closes_at(&self, accepted: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return Some(accepted + FIRST_REQUEST_LIMIT);
        }
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(accepted);
        Some(last + IDLE_LIMIT)
    }
}

/// One request in flight; dropped when its response is ready (or it is abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::AcqRel);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What tonic attaches to each request of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    activity: Arc<Activity>,
}

/// Hands out connection slots.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Default for Slots {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_CONNECTIONS)))
    }
}

impl Slots {
    /// A slot for a new connection; None when all are taken (the connection is refused).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }
}

/// An accepted connection that closes itself when due (see the module docs).
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    accepted: Instant,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    /// Guards `inner`, holding `slot` for as long as it is open.
    pub fn new(inner: S, slot: OwnedSemaphorePermit) -> Self {
        let accepted = Instant::now();
        Self {
            inner,
            accepted,
            activity: Arc::default(),
            timer: Box::pin(tokio::time::sleep_until(accepted + FIRST_REQUEST_LIMIT)),
            _slot: slot,
        }
    }

    /// Whether the connection is due to close now; re-arms the timer otherwise.
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.activity.closes_at(self.accepted) {
                Some(at) if at <= Instant::now() => return true,
                Some(at) => self.timer.as_mut().reset(at),
                // Requests run: look again later (they touch the activity when done).
                None => self.timer.as_mut().reset(Instant::now() + IDLE_LIMIT),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.due(cx) => {
                log::debug!(
                    "closing a CRI connection with nothing to do ({} requests served)",
                    this.activity.requests.load(Ordering::Acquire)
                );
                // End of stream: the HTTP/2 server closes the connection.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connected for Guarded<S> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Counts each request of a connection while it runs, and bounds the time its body takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ActivityService<S>
where
    S: tower::Service<http::Request<Body>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| InFlight::begin(&info.activity));
        let request = request.map(|body| Body::new(Deadline::new(body, REQUEST_BODY_LIMIT)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// A request body that fails if it has not ended by its deadline.
struct Deadline<B> {
    inner: B,
    timer: Pin<Box<Sleep>>,
    limit: Duration,
}

impl<B> Deadline<B> {
    fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "the request's message did not arrive within {}s",
                    this.limit.as_secs()
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_connection_is_due_only_when_idle_past_its_limit() {
        let activity = Arc::new(Activity::default());
        let accepted = Instant::now();
        assert_eq!(
            activity.closes_at(accepted),
            Some(accepted + FIRST_REQUEST_LIMIT),
            "a new connection must ask something soon"
        );
        let request = InFlight::begin(&activity);
        assert_eq!(
            activity.closes_at(accepted),
            None,
            "never while a request runs"
        );
        let before_end = Instant::now();
        drop(request);
        let closes = activity.closes_at(accepted).expect("idle now");
        assert!(
            closes >= before_end + IDLE_LIMIT && closes <= Instant::now() + IDLE_LIMIT,
            "idle from the end of its last request"
        );
    }

    /// A body whose message never comes.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_that_never_ends_fails_at_its_deadline() {
        let started = Instant::now();
        let mut body = Deadline::new(Stalled, Duration::from_millis(50));
        let error = body.frame().await.expect("a frame").expect_err("timed out");
        assert!(error.to_string().contains("did not arrive"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(50));

        let complete = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let body = Deadline::new(complete, Duration::from_secs(30));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn slots_run_out_and_come_back() {
        let slots = Slots(Arc::new(Semaphore::new(2)));
        let first = slots.take().unwrap();
        let _second = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(first);
        assert!(slots.take().is_some());
    }
}
