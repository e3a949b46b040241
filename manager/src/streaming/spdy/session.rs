//! One SPDY/3.1 connection, server side: a reader task (frames in), a writer task (frames out),
//! a watchdog task (idle timeout, stuck shutdowns), and the state they share with the
//! application's stream handles.
//!
//! Memory is bounded everywhere: a stream buffers at most `Limits::stream_buffer` received bytes
//! (when full, the reader task stops reading the socket, so TCP pushes back on the peer); a
//! stream has at most one outgoing chunk of [`CHUNK`] bytes queued (its writer waits until the
//! writer task took it); queued control frames are bounded too. The writer task takes one chunk
//! per ready stream in turn, so a stream writing 64 MiB cannot starve the others.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Limits;
use super::frame::{self, Frame, Head, Setting, goaway, rst};
use super::headers::{Deflater, Inflater};

/// Most bytes in one data frame we send.
pub const CHUNK: usize = 16 * 1024;
/// Windows are 31-bit.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Every window starts at this size (SPDY/3.1 section 2.6.8).
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// What we grow the session receive window to at the start. Per-stream windows (and, for peers
/// without flow control, the per-stream buffers) already bound memory, so the session window
/// only has to stay out of the way.
const SESSION_WINDOW: i64 = 16 * 1024 * 1024;
/// Largest control frame read: header blocks of kubectl's streams are tiny.
const MAX_CONTROL_FRAME: usize = 256 * 1024;
/// Control frames queued before the reader task waits for the writer task.
const CONTROL_QUEUE: usize = 256;
/// Bytes the writer task gathers before one write to the socket.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing session may take to get its last frames out before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A control frame waiting for the writer task. A reply's headers are compressed when it is
/// written: the zlib context is shared, so blocks must be compressed in wire order.
#[derive(Debug)]
enum Out {
    Frame(Frame),
    Reply {
        stream_id: u32,
        headers: Vec<(String, String)>,
    },
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Send what the streams already handed over, then GOAWAY with this status.
    Flush(u32),
    /// GOAWAY with this status now; pending data is dropped.
    Now(u32),
    /// The socket is dead: nothing more to send.
    Gone,
}

#[derive(Debug)]
struct StreamState {
    inbound: VecDeque<Bytes>,
    inbound_len: usize,
    /// The peer sent FIN.
    remote_fin: bool,
    /// Reset by either side (or refused): both directions are over.
    reset: bool,
    reader_gone: bool,
    reader_waker: Option<Waker>,
    /// Bytes the application read that the peer's stream window has not been given back yet.
    unacked: usize,
    send_window: i64,
    out: Option<Bytes>,
    /// FIN goes out with (or after) `out`.
    out_fin: bool,
    /// In the writer task's ready list.
    queued: bool,
    /// FIN queued or sent, or the stream is unidirectional: we send nothing more.
    local_done: bool,
    writer_gone: bool,
    writer_waker: Option<Waker>,
}

impl StreamState {
    fn new(send_window: i64) -> StreamState {
        StreamState {
            inbound: VecDeque::new(),
            inbound_len: 0,
            remote_fin: false,
            reset: false,
            reader_gone: false,
            reader_waker: None,
            unacked: 0,
            send_window,
            out: None,
            out_fin: false,
            queued: false,
            local_done: false,
            writer_gone: false,
            writer_waker: None,
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }
}

/// A stream the peer opened that the application has not taken yet.
#[derive(Debug)]
struct Opened {
    id: u32,
    headers: Vec<(String, String)>,
    unidirectional: bool,
}

#[derive(Debug)]
struct State {
    streams: HashMap<u32, StreamState>,
    /// Highest stream id the peer opened (ids must grow).
    last_peer_id: u32,
    control: VecDeque<Out>,
    ready: VecDeque<u32>,
    session_send_window: i64,
    initial_send_window: i64,
    /// The peer sent SETTINGS or WINDOW_UPDATE: it does flow control, so we honour its windows.
    peer_flow_control: bool,
    /// Bytes received since the session receive window was last topped up.
    session_unacked: usize,
    opened: VecDeque<Opened>,
    opened_waker: Option<Waker>,
    /// New streams are welcome (no GOAWAY either way).
    accepting: bool,
    incoming_alive: bool,
    closing: Option<Closing>,
    closing_since: Option<Instant>,
    /// No more frames will be read or written.
    ended: bool,
    last_activity: Instant,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
    /// Our receive window per stream, announced in our SETTINGS.
    recv_window: usize,
    writer_wake: Notify,
    reader_wake: Notify,
    watchdog_wake: Notify,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        self.lock().last_activity = Instant::now();
    }

    /// Starts ending the session (the first reason wins, except that a dead socket overrides).
    fn shut(&self, how: Closing) {
        let mut state = self.lock();
        self.shut_locked(&mut state, how);
    }

    fn shut_locked(&self, state: &mut State, how: Closing) {
        if state.ended {
            return;
        }
        match state.closing {
            None => {
                state.closing = Some(how);
                state.closing_since = Some(Instant::now());
            }
            Some(_) if how == Closing::Gone => state.closing = Some(how),
            Some(_) => return,
        }
        state.accepting = false;
        wake_all(state);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
        self.watchdog_wake.notify_one();
    }

    /// The session is over: every handle gets its answer now.
    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.accepting = false;
        if state.closing.is_none() {
            state.closing = Some(Closing::Gone);
        }
        state.control.clear();
        state.ready.clear();
        wake_all(&mut state);
        drop(state);
        self.stop.send_replace(true);
        self.writer_wake.notify_one();
        self.reader_wake.notify_one();
        self.watchdog_wake.notify_one();
    }

    fn push_control(&self, state: &mut State, out: Out) {
        state.control.push_back(out);
        self.writer_wake.notify_one();
    }

    /// Forgets a stream once the application has let go of both halves and nothing of it is
    /// left to send; a session whose `Incoming` is gone ends with its last stream.
    fn maybe_remove(&self, state: &mut State, id: u32) {
        let Some(stream) = state.streams.get(&id) else {
            return;
        };
        if stream.reader_gone && stream.writer_gone && !stream.queued {
            state.streams.remove(&id);
            if !state.incoming_alive && state.streams.is_empty() && state.opened.is_empty() {
                self.shut_locked(state, Closing::Flush(goaway::OK));
            }
        }
    }
}

fn wake_all(state: &mut State) {
    for stream in state.streams.values_mut() {
        stream.wake();
    }
    if let Some(waker) = state.opened_waker.take() {
        waker.wake();
    }
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Starts serving a SPDY/3.1 session on `io` (after the HTTP upgrade). Must be called within a
/// tokio runtime.
pub fn serve<T>(io: T, mut limits: Limits) -> Incoming
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // A stream that can buffer nothing could never take its data.
    limits.stream_buffer = limits.stream_buffer.max(1);
    let recv_window = limits.stream_buffer.clamp(1, MAX_WINDOW as usize);
    let (stop, stop_rx) = watch::channel(false);
    let mut control = VecDeque::new();
    // Our stream receive window is the stream buffer, so a peer that does flow control never
    // fills a buffer to the point where the reader task has to stop reading the socket (which
    // would hold up every other stream too).
    control.push_back(Out::Frame(Frame::Settings {
        clear: false,
        entries: vec![Setting {
            flags: 0,
            id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
            value: recv_window as u32,
        }],
    }));
    control.push_back(Out::Frame(Frame::WindowUpdate {
        stream_id: 0,
        delta: (SESSION_WINDOW - DEFAULT_WINDOW) as u32,
    }));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            streams: HashMap::new(),
            last_peer_id: 0,
            control,
            ready: VecDeque::new(),
            session_send_window: DEFAULT_WINDOW,
            initial_send_window: DEFAULT_WINDOW,
            peer_flow_control: false,
            session_unacked: 0,
            opened: VecDeque::new(),
            opened_waker: None,
            accepting: true,
            incoming_alive: true,
            closing: None,
            closing_since: None,
            ended: false,
            last_activity: Instant::now(),
        }),
        limits,
        recv_window,
        writer_wake: Notify::new(),
        reader_wake: Notify::new(),
        watchdog_wake: Notify::new(),
        stop,
    });
    let (read_half, write_half) = tokio::io::split(io);
    match Deflater::new() {
        Ok(deflater) => {
            tokio::spawn(write_loop(
                shared.clone(),
                write_half,
                deflater,
                stop_rx.clone(),
            ));
            tokio::spawn(read_task(shared.clone(), read_half, stop_rx.clone()));
            tokio::spawn(watchdog(shared.clone(), stop_rx));
        }
        Err(error) => {
            log::error!("SPDY: cannot set up header compression: {error}");
            shared.end();
        }
    }
    Incoming { shared }
}

/// The streams a client opens, in order.
#[derive(Debug)]
pub struct Incoming {
    shared: Arc<Shared>,
}

impl Incoming {
    /// The next stream the peer opened; `None` once the session stopped taking new streams
    /// (it ended, the peer sent GOAWAY, or [`Incoming::close`] was called).
    pub async fn next(&mut self) -> Option<Stream> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            while let Some(opened) = state.opened.pop_front() {
                let alive = state.streams.get(&opened.id).is_some_and(|s| !s.reset);
                if !alive {
                    // Reset before the application saw it.
                    if let Some(stream) = state.streams.get_mut(&opened.id) {
                        stream.reader_gone = true;
                        stream.writer_gone = true;
                    }
                    self.shared.maybe_remove(&mut state, opened.id);
                    continue;
                }
                return Poll::Ready(Some(Stream {
                    shared: self.shared.clone(),
                    id: opened.id,
                    headers: opened.headers,
                    unidirectional: opened.unidirectional,
                    answered: false,
                }));
            }
            if !state.accepting || state.closing.is_some() || state.ended {
                return Poll::Ready(None);
            }
            state.opened_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Ends the session: GOAWAY once what the streams already handed over is sent, then the
    /// connection closes. Streams still open fail.
    pub fn close(&self) {
        self.shared.shut(Closing::Flush(goaway::OK));
    }
}

impl Drop for Incoming {
    /// Without `Incoming` nobody takes new streams: the session lives on for the streams the
    /// application holds and ends with the last of them.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.incoming_alive = false;
        state.accepting = false;
        let opened: Vec<u32> = state.opened.drain(..).map(|o| o.id).collect();
        for id in opened {
            if let Some(stream) = state.streams.get_mut(&id) {
                if !stream.reset {
                    stream.reset = true;
                    self.shared.push_control(
                        &mut state,
                        Out::Frame(Frame::RstStream {
                            stream_id: id,
                            status: rst::REFUSED_STREAM,
                        }),
                    );
                }
            }
            if let Some(stream) = state.streams.get_mut(&id) {
                stream.reader_gone = true;
                stream.writer_gone = true;
            }
            state.streams.remove(&id);
        }
        if state.streams.is_empty() {
            self.shared
                .shut_locked(&mut state, Closing::Flush(goaway::OK));
        }
    }
}

/// A stream the peer opened, not yet accepted or rejected. Dropping it rejects it.
#[derive(Debug)]
pub struct Stream {
    shared: Arc<Shared>,
    id: u32,
    headers: Vec<(String, String)>,
    unidirectional: bool,
    answered: bool,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, names lowercased, one pair per value.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Takes the stream: sends SYN_REPLY (with `:status: 200` and `:version: HTTP/1.1`, which
    /// SPDY/3 responses carry; kubectl ignores them, node's spdy-transport insists on
    /// `:status`). A unidirectional stream gets no reply and its writer is closed from the start.
    pub fn accept(mut self) -> (StreamReader, StreamWriter) {
        self.answered = true;
        let mut state = self.shared.lock();
        if !self.unidirectional {
            let reset = state.streams.get(&self.id).is_none_or(|s| s.reset);
            if !reset && state.closing.is_none() {
                self.shared.push_control(
                    &mut state,
                    Out::Reply {
                        stream_id: self.id,
                        headers: vec![
                            (":status".to_owned(), "200".to_owned()),
                            (":version".to_owned(), "HTTP/1.1".to_owned()),
                        ],
                    },
                );
            }
        }
        drop(state);
        (
            StreamReader {
                shared: self.shared.clone(),
                id: self.id,
            },
            StreamWriter {
                shared: self.shared.clone(),
                id: self.id,
            },
        )
    }

    /// Refuses the stream (RST_STREAM REFUSED_STREAM).
    pub fn reject(mut self) {
        self.refuse();
    }

    fn refuse(&mut self) {
        self.answered = true;
        let mut state = self.shared.lock();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            let was_reset = stream.reset;
            stream.reset = true;
            stream.reader_gone = true;
            stream.writer_gone = true;
            stream.inbound.clear();
            if !was_reset && state.closing.is_none() {
                self.shared.push_control(
                    &mut state,
                    Out::Frame(Frame::RstStream {
                        stream_id: self.id,
                        status: rst::REFUSED_STREAM,
                    }),
                );
            }
        }
        self.shared.maybe_remove(&mut state, self.id);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.answered {
            self.refuse();
        }
    }
}

/// What the peer sends on a stream: EOF after its FIN, an error when the stream was reset or
/// the session died.
#[derive(Debug)]
pub struct StreamReader {
    shared: Arc<Shared>,
    id: u32,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let ended = state.ended;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(front) = stream.inbound.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                stream.inbound.pop_front();
            }
            stream.inbound_len -= n;
            stream.unacked += n;
            // Give the peer its window back in halves, not per read.
            let mut update = None;
            if !stream.remote_fin && stream.unacked >= (shared.recv_window / 2).max(1) {
                update = Some(stream.unacked);
                stream.unacked = 0;
            }
            if let Some(delta) = update {
                shared.push_control(
                    &mut state,
                    Out::Frame(Frame::WindowUpdate {
                        stream_id: self.id,
                        delta: delta as u32,
                    }),
                );
            }
            // The reader task may be waiting for room in this buffer.
            shared.reader_wake.notify_one();
            return Poll::Ready(Ok(()));
        }
        if stream.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "SPDY stream reset",
            )));
        }
        if stream.remote_fin || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "SPDY session ended",
            )));
        }
        stream.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream.reader_gone = true;
            stream.inbound.clear();
            stream.inbound_len = 0;
        }
        self.shared.reader_wake.notify_one();
        self.shared.maybe_remove(&mut state, self.id);
    }
}

/// What we send on a stream, in data frames of at most [`CHUNK`] bytes. Shutting it down (or
/// dropping it) sends FIN.
#[derive(Debug)]
pub struct StreamWriter {
    shared: Arc<Shared>,
    id: u32,
}

fn broken(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, what)
}

impl StreamWriter {
    /// Aborts the stream both ways: RST_STREAM CANCEL; what was not sent yet is dropped.
    pub fn reset(self) {
        let mut state = self.shared.lock();
        let sending = state.closing.is_none();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            if !stream.reset {
                stream.reset = true;
                stream.local_done = true;
                stream.out = None;
                stream.out_fin = false;
                stream.wake();
                if sending {
                    self.shared.push_control(
                        &mut state,
                        Out::Frame(Frame::RstStream {
                            stream_id: self.id,
                            status: rst::CANCEL,
                        }),
                    );
                }
            }
        }
        // Drop runs next and finds the stream done.
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let state = &mut *state;
        if state.closing.is_some() || state.ended {
            return Poll::Ready(Err(broken("SPDY session ended")));
        }
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(broken("SPDY stream closed")));
        };
        if stream.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "SPDY stream reset",
            )));
        }
        if stream.local_done {
            return Poll::Ready(Err(broken("SPDY stream already finished")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if stream.out.is_some() {
            stream.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = buf.len().min(CHUNK);
        // Why windows count only once the peer has shown it does flow control: the Kubernetes
        // clients (moby/spdystream) never send WINDOW_UPDATE or SETTINGS. Honouring the
        // default 64 KiB windows toward them would stall every stream after 64 KiB, forever;
        // they rely on TCP for back-pressure, so we do too. A peer that sends SETTINGS or
        // WINDOW_UPDATE (node's spdy-transport sends SETTINGS first thing) gets its windows
        // honoured. Windows are counted all along, so they are right when that happens.
        if state.peer_flow_control {
            let window = stream.send_window.min(state.session_send_window);
            if window <= 0 {
                stream.writer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(window as usize);
        }
        stream.send_window -= n as i64;
        state.session_send_window -= n as i64;
        stream.out = Some(Bytes::copy_from_slice(&buf[..n]));
        if !stream.queued {
            stream.queued = true;
            state.ready.push_back(self.id);
        }
        shared.writer_wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let ended = state.ended;
        match state.streams.get_mut(&self.id) {
            Some(stream) if stream.queued && !ended && !stream.reset => {
                stream.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(stream) if stream.queued => Poll::Ready(Err(broken("SPDY session ended"))),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let state = &mut *state;
        let over = state.ended || state.closing.is_some();
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if stream.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "SPDY stream reset",
            )));
        }
        if !stream.local_done {
            if over {
                return Poll::Ready(Err(broken("SPDY session ended")));
            }
            stream.local_done = true;
            stream.out_fin = true;
            if !stream.queued {
                stream.queued = true;
                state.ready.push_back(self.id);
            }
            shared.writer_wake.notify_one();
        }
        if stream.queued {
            if over {
                return Poll::Ready(Err(broken("SPDY session ended")));
            }
            stream.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamWriter {
    /// An unfinished stream still gets its FIN (after what was handed over already).
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        let over = state.ended
            || state
                .closing
                .is_some_and(|c| !matches!(c, Closing::Flush(_)));
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream.writer_gone = true;
            if !stream.local_done && !stream.reset && !over {
                stream.local_done = true;
                stream.out_fin = true;
                if !stream.queued {
                    stream.queued = true;
                    state.ready.push_back(self.id);
                }
                self.shared.writer_wake.notify_one();
            }
        }
        self.shared.maybe_remove(state, self.id);
    }
}

/// The writer task: control frames first, then one chunk per ready stream in turn.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut io: W,
    mut deflater: Deflater,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH + CHUNK + 64);
    loop {
        let notified = shared.writer_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        batch.clear();
        let mut last_words = None;
        let gone = {
            let state = shared.lock();
            state.ended || state.closing == Some(Closing::Gone)
        };
        if gone {
            shared.end();
            return;
        }
        {
            let mut state = shared.lock();
            let state = &mut *state;
            let now = matches!(state.closing, Some(Closing::Now(_)));
            if !now {
                while let Some(out) = state.control.pop_front() {
                    if let Err(error) = encode_control(&mut deflater, out, &mut batch) {
                        log::warn!("SPDY: {error}");
                        state.closing = Some(Closing::Now(goaway::INTERNAL_ERROR));
                        break;
                    }
                    if batch.len() >= WRITE_BATCH {
                        break;
                    }
                }
            }
            while !now && state.control.is_empty() && batch.len() < WRITE_BATCH {
                let Some(id) = state.ready.pop_front() else {
                    break;
                };
                let Some(stream) = state.streams.get_mut(&id) else {
                    continue;
                };
                stream.queued = false;
                if let Some(waker) = stream.writer_waker.take() {
                    waker.wake();
                }
                if stream.reset {
                    stream.out = None;
                    shared.maybe_remove(state, id);
                    continue;
                }
                let data = stream.out.take().unwrap_or_default();
                let fin = std::mem::take(&mut stream.out_fin);
                frame::put_data_head(&mut batch, id, fin, data.len());
                batch.extend_from_slice(&data);
                shared.maybe_remove(state, id);
            }
            match state.closing {
                Some(Closing::Now(status)) => last_words = Some(status),
                Some(Closing::Flush(status))
                    if state.control.is_empty() && state.ready.is_empty() =>
                {
                    last_words = Some(status)
                }
                _ => {}
            }
            if let Some(status) = last_words {
                frame::encode(
                    &Frame::GoAway {
                        last_good_id: state.last_peer_id,
                        status,
                    },
                    &mut batch,
                );
            }
        }
        // Room in the control queue for the reader task.
        shared.reader_wake.notify_one();
        if !batch.is_empty() {
            let written = tokio::select! {
                result = io.write_all(&batch) => result,
                _ = stop.wait_for(|stop| *stop) => Err(io::ErrorKind::ConnectionAborted.into()),
            };
            if let Err(error) = written {
                log::debug!("SPDY: write: {error}");
                shared.end();
                return;
            }
            shared.touch();
        }
        if last_words.is_some() {
            let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
            shared.end();
            return;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = notified => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        }
    }
}

fn encode_control(deflater: &mut Deflater, out: Out, batch: &mut Vec<u8>) -> io::Result<()> {
    match out {
        Out::Frame(frame) => frame::encode(&frame, batch),
        Out::Reply { stream_id, headers } => {
            let block = deflater.compress(&headers)?;
            frame::encode(
                &Frame::SynReply {
                    stream_id,
                    fin: false,
                    block,
                },
                batch,
            );
        }
    }
    Ok(())
}

/// The reader task: reads frames until the socket ends, the peer misbehaves, or the session is
/// stopped.
async fn read_task<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    io: R,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = Reader {
        shared: shared.clone(),
        io: BufReader::with_capacity(64 * 1024, io),
        inflater: Inflater::new(),
    };
    let result = tokio::select! {
        result = reader.run() => result,
        _ = stop.wait_for(|stop| *stop) => Ok(()),
    };
    match result {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            log::debug!("SPDY: protocol error: {error}");
            shared.shut(Closing::Now(goaway::PROTOCOL_ERROR));
        }
        Err(error) => {
            log::debug!("SPDY: read: {error}");
            shared.shut(Closing::Gone);
        }
    }
}

struct Reader<R> {
    shared: Arc<Shared>,
    io: BufReader<R>,
    inflater: Inflater,
}

/// What to do with the data of one frame.
enum Sink {
    Deliver,
    Discard,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let mut head = [0u8; frame::HEADER_LEN];
            self.io.read_exact(&mut head).await?;
            self.shared.touch();
            match Head::parse(&head) {
                Head::Data {
                    stream_id,
                    flags,
                    length,
                } => {
                    self.data(stream_id, flags & frame::FLAG_FIN != 0, length)
                        .await?
                }
                Head::Control {
                    version,
                    kind,
                    flags,
                    length,
                } => {
                    if length > MAX_CONTROL_FRAME {
                        return Err(protocol_error("control frame too large"));
                    }
                    let mut body = vec![0; length];
                    self.io.read_exact(&mut body).await?;
                    if version != frame::VERSION {
                        return Err(protocol_error(format!("SPDY version {version}")));
                    }
                    let frame = frame::decode_control(kind, flags, &body)?;
                    self.control(frame).await?;
                }
            }
        }
    }
}

async fn reset_stream(shared: &Shared, stream_id: u32, status: u32) -> io::Result<()> {
    send_control(shared, Out::Frame(Frame::RstStream { stream_id, status })).await
}

/// Queues a control frame from the reader task, waiting while the writer task is behind (so a
/// peer flooding PINGs without reading is held back by TCP).
async fn send_control(shared: &Shared, out: Out) -> io::Result<()> {
    loop {
        let notified = shared.reader_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = shared.lock();
            match state.closing {
                // A graceful close still sends control frames (it ends with GOAWAY anyway).
                None | Some(Closing::Flush(_)) if !state.ended => {}
                // Nothing more goes out: not an error of the peer's, so the reader carries on
                // until the session stops it.
                _ => return Ok(()),
            }
            if state.control.len() < CONTROL_QUEUE {
                shared.push_control(&mut state, out);
                return Ok(());
            }
        }
        notified.await;
    }
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn data(&mut self, stream_id: u32, fin: bool, length: usize) -> io::Result<()> {
        if stream_id == 0 {
            return Err(protocol_error("data frame on stream 0"));
        }
        let sink = {
            let state = self.shared.lock();
            match state.streams.get(&stream_id) {
                Some(s) if s.remote_fin && !s.reset => Err(rst::STREAM_ALREADY_CLOSED),
                Some(s) if !s.reset && !s.reader_gone => Ok(Sink::Deliver),
                Some(_) => Ok(Sink::Discard),
                // Never opened and longer than any window we announced: no SPDY peer sends
                // that (it is what bytes of another protocol look like), and reading its
                // megabytes of "payload" would only wait on a confused client.
                None if (stream_id % 2 == 0 || stream_id > state.last_peer_id)
                    && length > self.shared.recv_window =>
                {
                    return Err(protocol_error("a data frame on a stream never opened"));
                }
                // Never opened: tell the peer. Opened and forgotten: drop silently (the
                // peer may not have seen our FIN or RST yet).
                None if stream_id % 2 == 0 || stream_id > state.last_peer_id => {
                    Err(rst::INVALID_STREAM)
                }
                None => Ok(Sink::Discard),
            }
        };
        let sink = match sink {
            Ok(sink) => sink,
            Err(status) => {
                reset_stream(&self.shared, stream_id, status).await?;
                Sink::Discard
            }
        };
        let mut remaining = length;
        let mut chunk = vec![0u8; CHUNK];
        while remaining > 0 {
            let room = match sink {
                Sink::Deliver => room(&self.shared, stream_id).await,
                Sink::Discard => CHUNK,
            };
            let want = remaining.min(room.max(1)).min(CHUNK);
            let n = self.io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            remaining -= n;
            let top_up = {
                let mut state = self.shared.lock();
                if let (Sink::Deliver, Some(stream)) = (&sink, state.streams.get_mut(&stream_id)) {
                    if !stream.reset && !stream.reader_gone {
                        stream
                            .inbound
                            .push_back(Bytes::copy_from_slice(&chunk[..n]));
                        stream.inbound_len += n;
                        if let Some(waker) = stream.reader_waker.take() {
                            waker.wake();
                        }
                    }
                }
                // The session window comes back on receipt: stream windows bound memory.
                state.session_unacked += n;
                if state.session_unacked as i64 >= SESSION_WINDOW / 2 {
                    Some(std::mem::take(&mut state.session_unacked))
                } else {
                    None
                }
            };
            if let Some(delta) = top_up {
                send_control(
                    &self.shared,
                    Out::Frame(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: delta as u32,
                    }),
                )
                .await?;
            }
        }
        if fin && matches!(sink, Sink::Deliver) {
            self.finish_remote(stream_id);
        }
        Ok(())
    }

    fn finish_remote(&self, id: u32) {
        let mut state = self.shared.lock();
        if let Some(stream) = state.streams.get_mut(&id) {
            stream.remote_fin = true;
            stream.wake();
        }
    }

    async fn control(&mut self, frame: Frame) -> io::Result<()> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                flags,
                block,
                ..
            } => {
                // Always decoded, whatever becomes of the stream: the zlib context is shared.
                let headers = self.inflater.decompress(&block)?;
                self.syn_stream(stream_id, associated_id, flags, headers)
                    .await?;
            }
            Frame::SynReply {
                stream_id, block, ..
            } => {
                self.inflater.decompress(&block)?;
                if stream_id == 0 {
                    return Err(protocol_error("SYN_REPLY on stream 0"));
                }
                // We never open streams, so there is nothing to reply to.
                reset_stream(&self.shared, stream_id, rst::PROTOCOL_ERROR).await?;
            }
            Frame::Headers {
                stream_id,
                fin,
                block,
            } => {
                self.inflater.decompress(&block)?;
                if stream_id == 0 {
                    return Err(protocol_error("HEADERS on stream 0"));
                }
                let known = {
                    let state = self.shared.lock();
                    match state.streams.get(&stream_id) {
                        Some(_) => Ok(true),
                        None if stream_id % 2 == 0 || stream_id > state.last_peer_id => Err(()),
                        None => Ok(false),
                    }
                };
                match known {
                    Ok(true) if fin => self.finish_remote(stream_id),
                    Ok(_) => {}
                    Err(()) => reset_stream(&self.shared, stream_id, rst::INVALID_STREAM).await?,
                }
            }
            Frame::RstStream { stream_id, .. } => {
                let mut state = self.shared.lock();
                if let Some(stream) = state.streams.get_mut(&stream_id) {
                    stream.reset = true;
                    stream.local_done = true;
                    stream.out = None;
                    stream.wake();
                }
                self.shared.reader_wake.notify_one();
            }
            Frame::Settings { entries, .. } => {
                let mut state = self.shared.lock();
                state.peer_flow_control = true;
                for entry in entries {
                    if entry.id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                        let new = i64::from(entry.value).min(MAX_WINDOW);
                        let delta = new - state.initial_send_window;
                        state.initial_send_window = new;
                        for stream in state.streams.values_mut() {
                            stream.send_window += delta;
                        }
                    }
                }
                wake_writers(&mut state);
            }
            Frame::Ping { id } => {
                // Odd ids are the client's to echo; even ones would be answers to pings we
                // never send.
                if id % 2 == 1 {
                    send_control(&self.shared, Out::Frame(Frame::Ping { id })).await?;
                }
            }
            Frame::GoAway { .. } => {
                let mut state = self.shared.lock();
                state.accepting = false;
                if let Some(waker) = state.opened_waker.take() {
                    waker.wake();
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let overflow = {
                    let mut state = self.shared.lock();
                    state.peer_flow_control = true;
                    let delta = i64::from(delta);
                    let overflow = if stream_id == 0 {
                        state.session_send_window += delta;
                        if state.session_send_window > MAX_WINDOW {
                            return Err(protocol_error("session window overflow"));
                        }
                        false
                    } else {
                        match state.streams.get_mut(&stream_id) {
                            Some(stream) => {
                                stream.send_window += delta;
                                stream.send_window > MAX_WINDOW
                            }
                            None => false,
                        }
                    };
                    wake_writers(&mut state);
                    overflow
                };
                if overflow {
                    {
                        let mut state = self.shared.lock();
                        if let Some(stream) = state.streams.get_mut(&stream_id) {
                            stream.reset = true;
                            stream.local_done = true;
                            stream.out = None;
                            stream.wake();
                        }
                    }
                    reset_stream(&self.shared, stream_id, rst::FLOW_CONTROL_ERROR).await?;
                }
            }
            Frame::Data { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    async fn syn_stream(
        &mut self,
        id: u32,
        associated_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    ) -> io::Result<()> {
        if id == 0 {
            return Err(protocol_error("SYN_STREAM for stream 0"));
        }
        let refusal = {
            let mut state = self.shared.lock();
            let state = &mut *state;
            if id % 2 == 0 || id <= state.last_peer_id {
                // A client's ids are odd and grow; one reused while open resets that stream.
                if let Some(stream) = state.streams.get_mut(&id) {
                    stream.reset = true;
                    stream.local_done = true;
                    stream.out = None;
                    stream.wake();
                }
                Some(rst::PROTOCOL_ERROR)
            } else {
                state.last_peer_id = id;
                if associated_id != 0 {
                    // Only servers push.
                    Some(rst::PROTOCOL_ERROR)
                } else if !state.accepting
                    || state.closing.is_some()
                    || state.streams.len() >= self.shared.limits.max_streams
                {
                    Some(rst::REFUSED_STREAM)
                } else {
                    let mut stream = StreamState::new(state.initial_send_window);
                    stream.remote_fin = flags & frame::FLAG_FIN != 0;
                    let unidirectional = flags & frame::FLAG_UNIDIRECTIONAL != 0;
                    stream.local_done = unidirectional;
                    state.streams.insert(id, stream);
                    state.opened.push_back(Opened {
                        id,
                        headers,
                        unidirectional,
                    });
                    if let Some(waker) = state.opened_waker.take() {
                        waker.wake();
                    }
                    None
                }
            }
        };
        if let Some(status) = refusal {
            reset_stream(&self.shared, id, status).await?;
        }
        Ok(())
    }
}

/// Waits until stream `id` can take more bytes; `usize::MAX` when it no longer wants any
/// (what comes is then dropped by the caller's next check).
async fn room(shared: &Shared, id: u32) -> usize {
    loop {
        let notified = shared.reader_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let state = shared.lock();
            match state.streams.get(&id) {
                Some(s) if !s.reset && !s.reader_gone => {
                    let room = shared.limits.stream_buffer.saturating_sub(s.inbound_len);
                    if room > 0 {
                        return room;
                    }
                }
                _ => return usize::MAX,
            }
        }
        // Back-pressure: the socket is not read until the application reads this stream.
        notified.await;
    }
}

fn wake_writers(state: &mut State) {
    for stream in state.streams.values_mut() {
        if let Some(waker) = stream.writer_waker.take() {
            waker.wake();
        }
    }
}

/// Ends an idle session, and cuts one whose last frames cannot get out.
async fn watchdog(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let notified = shared.watchdog_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (deadline, closing) = {
            let state = shared.lock();
            if state.ended {
                return;
            }
            match state.closing_since {
                Some(since) => (since + CLOSE_GRACE, true),
                None => (state.last_activity + shared.limits.idle_timeout, false),
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = notified => continue,
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if closing {
            log::debug!("SPDY: closing took too long; cutting the connection");
            shared.end();
            return;
        }
        let idle = {
            let state = shared.lock();
            state.last_activity + shared.limits.idle_timeout <= Instant::now()
        };
        if idle {
            log::debug!("SPDY: idle for {:?}; closing", shared.limits.idle_timeout);
            shared.shut(Closing::Now(goaway::OK));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::TcpListener;

    use super::*;

    fn limits() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(30),
            max_streams: 8,
            stream_buffer: 64 * 1024,
        }
    }

    /// A raw SPDY client made of our own frame encoder: it never sends SETTINGS or
    /// WINDOW_UPDATE unless told to, like moby/spdystream.
    struct Client {
        io: DuplexStream,
        buf: Vec<u8>,
        deflater: Deflater,
        inflater: Inflater,
    }

    impl Client {
        fn new(io: DuplexStream) -> Client {
            Client {
                io,
                buf: Vec::new(),
                deflater: Deflater::new().unwrap(),
                inflater: Inflater::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut wire = Vec::new();
            frame::encode(&frame, &mut wire);
            self.io.write_all(&wire).await.unwrap();
        }

        async fn open(&mut self, id: u32, flags: u8, headers: &[(&str, &str)]) {
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let block = self.deflater.compress(&headers).unwrap();
            self.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                flags,
                block,
            })
            .await;
        }

        async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
            self.send(Frame::Data {
                stream_id: id,
                fin,
                data: data.to_vec(),
            })
            .await;
        }

        /// The next frame, or None at EOF. Server SETTINGS and WINDOW_UPDATE are skipped.
        async fn frame(&mut self) -> Option<Frame> {
            loop {
                let frame = self.any_frame().await?;
                if !matches!(frame, Frame::Settings { .. } | Frame::WindowUpdate { .. }) {
                    return Some(frame);
                }
            }
        }

        async fn any_frame(&mut self) -> Option<Frame> {
            loop {
                if let Some((frame, used)) = frame::decode(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    if let Frame::SynReply { block, .. } = &frame {
                        let headers = self.inflater.decompress(block).unwrap();
                        assert!(headers.contains(&(":status".into(), "200".into())));
                    }
                    return Some(frame);
                }
                let mut chunk = vec![0; 64 * 1024];
                let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk))
                    .await
                    .expect("the server said nothing for 10 s")
                    .unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn pair(limits: Limits) -> (Incoming, Client) {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        (serve(ours, limits), Client::new(theirs))
    }

    async fn next(incoming: &mut Incoming) -> Option<Stream> {
        tokio::time::timeout(Duration::from_secs(10), incoming.next())
            .await
            .expect("no stream for 10 s")
    }

    #[tokio::test]
    async fn ping_is_echoed_and_even_pings_ignored() {
        let (_incoming, mut client) = pair(limits());
        client.send(Frame::Ping { id: 2 }).await;
        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.frame().await, Some(Frame::Ping { id: 7 }));
    }

    #[tokio::test]
    async fn the_server_announces_its_stream_window_and_a_larger_session_window() {
        let (_incoming, mut client) = pair(limits());
        assert_eq!(
            client.any_frame().await,
            Some(Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 64 * 1024,
                }],
            })
        );
        assert!(matches!(
            client.any_frame().await,
            Some(Frame::WindowUpdate { stream_id: 0, delta }) if delta as i64 == SESSION_WINDOW - DEFAULT_WINDOW
        ));
    }

    #[tokio::test]
    async fn headers_data_and_fin_reach_the_application_and_a_peer_without_flow_control_gets_everything()
     {
        let (mut incoming, mut client) = pair(limits());
        client
            .open(1, 0, &[("streamtype", "stdin"), ("Port", "80")])
            .await;
        let stream = next(&mut incoming).await.unwrap();
        assert_eq!(stream.id(), 1);
        assert_eq!(stream.header("StreamType"), Some("stdin"));
        assert_eq!(stream.header("port"), Some("80"));
        assert_eq!(stream.headers().len(), 2);
        let (mut reader, mut writer) = stream.accept();
        client.data(1, b"hello ", false).await;
        client.data(1, b"world", true).await;
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");

        // Far beyond the 64 KiB default windows, with no WINDOW_UPDATE from the client.
        let total = 1024 * 1024 + 5;
        let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let send = tokio::spawn(async move {
            writer.write_all(&payload).await.unwrap();
            writer.shutdown().await.unwrap();
            payload
        });
        assert!(matches!(
            client.frame().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        let mut received = Vec::new();
        loop {
            match client.frame().await.unwrap() {
                Frame::Data {
                    stream_id: 1,
                    fin,
                    data,
                } => {
                    assert!(data.len() <= CHUNK);
                    received.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, send.await.unwrap());
    }

    #[tokio::test]
    async fn a_flow_controlled_peer_gets_no_more_than_its_window() {
        let (mut incoming, mut client) = pair(limits());
        client
            .send(Frame::Settings {
                clear: false,
                entries: vec![Setting {
                    flags: 0,
                    id: frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 1000,
                }],
            })
            .await;
        client.open(1, 0, &[]).await;
        let (_reader, mut writer) = next(&mut incoming).await.unwrap().accept();
        tokio::spawn(async move {
            let _ = writer.write_all(&[7u8; 5000]).await;
            let _ = writer.shutdown().await;
        });
        assert!(matches!(client.frame().await, Some(Frame::SynReply { .. })));
        let mut got = 0;
        while got < 1000 {
            match client.frame().await.unwrap() {
                Frame::Data { data, fin, .. } => {
                    assert!(!fin);
                    got += data.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 1000);
        // Nothing more until the window opens.
        let more = tokio::time::timeout(Duration::from_millis(200), client.frame()).await;
        assert!(more.is_err(), "sent beyond the window: {more:?}");
        client
            .send(Frame::WindowUpdate {
                stream_id: 1,
                delta: 10_000,
            })
            .await;
        let mut fin = false;
        while !fin {
            match client.frame().await.unwrap() {
                Frame::Data { data, fin: f, .. } => {
                    got += data.len();
                    fin = f;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 5000);
    }

    #[tokio::test]
    async fn reading_gives_the_window_back() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        let (mut reader, _writer) = next(&mut incoming).await.unwrap().accept();
        client.data(1, &[1u8; 40 * 1024], false).await;
        let mut buf = vec![0; 40 * 1024];
        reader.read_exact(&mut buf).await.unwrap();
        loop {
            match client.any_frame().await.unwrap() {
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta,
                } => {
                    // Given back in halves of the 64 KiB window, not per read.
                    assert!((32 * 1024..=40 * 1024).contains(&delta), "{delta}");
                    break;
                }
                Frame::WindowUpdate { stream_id: 0, .. }
                | Frame::Settings { .. }
                | Frame::SynReply { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_stops_the_session_reading_and_stays_bounded() {
        let limits = Limits {
            stream_buffer: 32 * 1024,
            ..limits()
        };
        let (ours, theirs) = tokio::io::duplex(8 * 1024);
        let mut incoming = serve(ours, limits);
        let mut client = Client::new(theirs);
        client.open(1, 0, &[]).await;
        let stream = next(&mut incoming).await.unwrap();
        let shared = stream.shared.clone();
        let (mut reader, _writer) = stream.accept();
        let total = 4 * 1024 * 1024;
        let (mut client_read, mut client_write) = tokio::io::split(client.io);
        // Keep draining what the server sends so only our reading can hold things up.
        tokio::spawn(async move {
            let mut sink = vec![0; 64 * 1024];
            while client_read.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        let sender = tokio::spawn(async move {
            for _ in 0..total / CHUNK {
                let mut wire = Vec::new();
                frame::encode(
                    &Frame::Data {
                        stream_id: 1,
                        fin: false,
                        data: vec![9u8; CHUNK],
                    },
                    &mut wire,
                );
                client_write.write_all(&wire).await.unwrap();
            }
            client_write
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!sender.is_finished(), "the session read everything unasked");
        let buffered = shared.lock().streams[&1].inbound_len;
        assert!(buffered <= 32 * 1024, "{buffered} bytes buffered");
        // Reading lets it all through.
        let mut got = 0;
        let mut buf = vec![0; 64 * 1024];
        while got < total {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0);
            assert!(buf[..n].iter().all(|b| *b == 9));
            got += n;
        }
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_from_the_client_fails_both_halves() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        let (mut reader, mut writer) = next(&mut incoming).await.unwrap().accept();
        client
            .send(Frame::RstStream {
                stream_id: 1,
                status: rst::CANCEL,
            })
            .await;
        let mut buf = [0; 10];
        let error = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        let error = writer.write_all(b"x").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn writer_reset_reject_and_bad_ids_send_the_right_rst() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        let (_reader, writer) = next(&mut incoming).await.unwrap().accept();
        assert!(matches!(
            client.frame().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        writer.reset();
        assert_eq!(
            client.frame().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: rst::CANCEL
            })
        );
        client.open(3, 0, &[]).await;
        next(&mut incoming).await.unwrap().reject();
        assert_eq!(
            client.frame().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: rst::REFUSED_STREAM
            })
        );
        for id in [4, 3, 1] {
            client.open(id, 0, &[]).await;
            assert_eq!(
                client.frame().await,
                Some(Frame::RstStream {
                    stream_id: id,
                    status: rst::PROTOCOL_ERROR
                })
            );
        }
        // Data on a stream never opened.
        client.data(99, b"x", false).await;
        assert_eq!(
            client.frame().await,
            Some(Frame::RstStream {
                stream_id: 99,
                status: rst::INVALID_STREAM
            })
        );
        // The session is still good.
        client.open(5, 0, &[("a", "b")]).await;
        assert_eq!(next(&mut incoming).await.unwrap().header("a"), Some("b"));
    }

    #[tokio::test]
    async fn another_protocol_spoken_ends_the_session_at_once() {
        let (mut incoming, mut client) = pair(limits());
        // "GET / HT…" reads as a data frame of 5.5 MB on a stream never opened.
        client
            .io
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        loop {
            match client.frame().await {
                Some(Frame::GoAway { status, .. }) => {
                    assert_eq!(status, goaway::PROTOCOL_ERROR);
                    break;
                }
                Some(_) => continue,
                None => panic!("the session ended without GOAWAY"),
            }
        }
        assert!(next(&mut incoming).await.is_none());
    }

    #[tokio::test]
    async fn too_many_streams_are_refused() {
        let limits = Limits {
            max_streams: 2,
            ..limits()
        };
        let (mut incoming, mut client) = pair(limits);
        for id in [1, 3, 5] {
            client.open(id, 0, &[]).await;
        }
        assert_eq!(
            client.frame().await,
            Some(Frame::RstStream {
                stream_id: 5,
                status: rst::REFUSED_STREAM
            })
        );
        assert_eq!(next(&mut incoming).await.unwrap().id(), 1);
        assert_eq!(next(&mut incoming).await.unwrap().id(), 3);
    }

    #[tokio::test]
    async fn finished_streams_free_their_place() {
        let limits = Limits {
            max_streams: 1,
            ..limits()
        };
        let (mut incoming, mut client) = pair(limits);
        for id in [1, 3, 5] {
            client.open(id, frame::FLAG_FIN, &[]).await;
            let stream = next(&mut incoming).await.unwrap();
            assert_eq!(stream.id(), id);
            let (mut reader, mut writer) = stream.accept();
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).await.unwrap();
            writer.write_all(b"bye").await.unwrap();
            if id == 3 {
                // A reset while the FIN may still be queued frees the place too.
                client
                    .send(Frame::RstStream {
                        stream_id: id,
                        status: rst::CANCEL,
                    })
                    .await;
            }
            drop((reader, writer));
            let mut fin = false;
            while !fin {
                match client.frame().await.unwrap() {
                    Frame::Data { fin: f, .. } => fin = f,
                    Frame::SynReply { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
                if id == 3 {
                    break;
                }
            }
            // Wait for the session to forget it.
            for _ in 0..100 {
                if incoming.shared.lock().streams.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                incoming.shared.lock().streams.is_empty(),
                "stream {id} kept"
            );
        }
    }

    #[tokio::test]
    async fn unidirectional_and_fin_on_open() {
        let (mut incoming, mut client) = pair(limits());
        client
            .open(1, frame::FLAG_UNIDIRECTIONAL | frame::FLAG_FIN, &[])
            .await;
        let (mut reader, mut writer) = next(&mut incoming).await.unwrap().accept();
        let mut buf = Vec::new();
        assert_eq!(reader.read_to_end(&mut buf).await.unwrap(), 0);
        assert!(writer.write_all(b"no").await.is_err());
        // No SYN_REPLY for it: the next thing the client sees is the echo of this ping.
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.frame().await, Some(Frame::Ping { id: 1 }));
    }

    #[tokio::test]
    async fn goaway_from_the_client_ends_new_streams_but_not_open_ones() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        let (mut reader, _writer) = next(&mut incoming).await.unwrap().accept();
        client
            .send(Frame::GoAway {
                last_good_id: 0,
                status: goaway::OK,
            })
            .await;
        assert!(next(&mut incoming).await.is_none());
        client.open(3, 0, &[]).await;
        assert!(matches!(
            client.frame().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        assert_eq!(
            client.frame().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: rst::REFUSED_STREAM
            })
        );
        client.data(1, b"still", true).await;
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "still");
    }

    #[tokio::test]
    async fn close_flushes_then_goaway() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        let (_reader, mut writer) = next(&mut incoming).await.unwrap().accept();
        writer.write_all(b"last words").await.unwrap();
        writer.shutdown().await.unwrap();
        incoming.close();
        assert!(matches!(client.frame().await, Some(Frame::SynReply { .. })));
        assert_eq!(
            client.frame().await,
            Some(Frame::Data {
                stream_id: 1,
                fin: true,
                data: b"last words".to_vec()
            })
        );
        assert_eq!(
            client.frame().await,
            Some(Frame::GoAway {
                last_good_id: 1,
                status: goaway::OK
            })
        );
        assert_eq!(client.frame().await, None);
        assert!(next(&mut incoming).await.is_none());
    }

    #[tokio::test]
    async fn frames_from_the_client_during_a_close_do_not_cut_it_short() {
        // A small pipe the client does not read yet: the close has to wait for it.
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut incoming = serve(ours, limits());
        let mut client = Client::new(theirs);
        // More than one write batch of data, handed over before the close.
        let mut halves = Vec::new();
        for id in [1, 3, 5, 7, 9] {
            client.open(id, 0, &[]).await;
            let (reader, mut writer) = next(&mut incoming).await.unwrap().accept();
            writer.write_all(&[5u8; CHUNK]).await.unwrap();
            halves.push((reader, writer));
        }
        incoming.close();
        assert!(halves[0].1.write_all(b"late").await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        for id in [1, 3, 5] {
            client.send(Frame::Ping { id }).await;
        }
        let mut data = 0;
        let mut pings = 0;
        loop {
            match client.frame().await {
                Some(Frame::Data { data: d, .. }) => data += d.len(),
                Some(Frame::Ping { .. }) => pings += 1,
                Some(Frame::SynReply { .. }) => {}
                Some(Frame::GoAway { status, .. }) => {
                    assert_eq!(status, goaway::OK);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data, 5 * CHUNK);
        assert!(pings <= 3);
        assert_eq!(client.frame().await, None);
    }

    #[tokio::test]
    async fn an_idle_session_says_goaway_and_ends() {
        let limits = Limits {
            idle_timeout: Duration::from_millis(200),
            ..limits()
        };
        let (mut incoming, mut client) = pair(limits);
        client.open(1, 0, &[]).await;
        let (mut reader, mut writer) = next(&mut incoming).await.unwrap().accept();
        let started = Instant::now();
        assert!(matches!(client.frame().await, Some(Frame::SynReply { .. })));
        assert_eq!(
            client.frame().await,
            Some(Frame::GoAway {
                last_good_id: 1,
                status: goaway::OK
            })
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(client.frame().await, None);
        let mut buf = [0; 4];
        assert!(reader.read(&mut buf).await.is_err());
        assert!(writer.write_all(b"x").await.is_err());
        assert!(next(&mut incoming).await.is_none());
    }

    #[tokio::test]
    async fn the_client_going_away_ends_everything() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        client.open(3, 0, &[]).await;
        let (mut finished, _w1) = next(&mut incoming).await.unwrap().accept();
        let (mut open, mut writer) = next(&mut incoming).await.unwrap().accept();
        client.data(1, b"done", true).await;
        client.data(3, b"part", false).await;
        // Let the session read those before the connection goes.
        let mut got = String::new();
        finished.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "done");
        drop(client);
        let mut buf = [0; 4];
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"part");
        assert!(open.read(&mut buf).await.is_err());
        assert!(next(&mut incoming).await.is_none());
        // Writes fail once the session has noticed.
        let mut failed = false;
        for _ in 0..100 {
            if writer.write_all(&[0; 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn malformed_frames_end_the_session_with_a_protocol_error() {
        let bad: Vec<Vec<u8>> = vec![
            // PING with a 3-byte body.
            vec![0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1],
            // SPDY/2 frame.
            vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
            // SYN_STREAM whose header block is not zlib.
            vec![
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ],
            // Data on stream 0.
            vec![0, 0, 0, 0, 0, 0, 0, 1, 0],
            // A control frame claiming 16 MiB.
            vec![0x80, 3, 0, 4, 0, 0xff, 0xff, 0xff],
        ];
        for wire in bad {
            let (mut incoming, mut client) = pair(limits());
            client.io.write_all(&wire).await.unwrap();
            assert!(
                matches!(
                    client.frame().await,
                    Some(Frame::GoAway {
                        status: goaway::PROTOCOL_ERROR,
                        ..
                    })
                ),
                "{wire:?}"
            );
            assert_eq!(client.frame().await, None);
            assert!(next(&mut incoming).await.is_none());
        }
    }

    #[tokio::test]
    async fn garbage_and_truncated_input_never_panic_and_always_end() {
        let mut state = 0x9e37_79b9_u32;
        for round in 0..64 {
            let (mut incoming, client) = pair(limits());
            let mut io = client.io;
            let len = 1 + (round * 37) % 300;
            let mut junk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            if round % 2 == 0 {
                // A plausible control header with a random body, cut short.
                junk.splice(0..0, [0x80, 3, 0, (round % 10) as u8, 0, 0, 1, 0]);
            }
            io.write_all(&junk).await.unwrap();
            drop(io);
            assert!(next(&mut incoming).await.is_none() || next(&mut incoming).await.is_none());
        }
    }

    #[tokio::test]
    async fn big_writers_do_not_starve_small_ones() {
        let (mut incoming, mut client) = pair(limits());
        client.open(1, 0, &[]).await;
        client.open(3, 0, &[]).await;
        let (_r1, mut big) = next(&mut incoming).await.unwrap().accept();
        let (_r3, mut small) = next(&mut incoming).await.unwrap().accept();
        tokio::spawn(async move {
            big.write_all(&vec![1u8; 8 * 1024 * 1024]).await.unwrap();
            big.shutdown().await.unwrap();
        });
        tokio::spawn(async move {
            small.write_all(&vec![3u8; 64 * 1024]).await.unwrap();
            small.shutdown().await.unwrap();
        });
        let mut big_bytes = 0;
        loop {
            match client.frame().await.unwrap() {
                Frame::Data {
                    stream_id: 1,
                    data,
                    fin,
                } => {
                    big_bytes += data.len();
                    assert!(!fin, "the big stream finished before the small one");
                }
                Frame::Data {
                    stream_id: 3,
                    fin: true,
                    ..
                } => break,
                _ => {}
            }
        }
        assert!(
            big_bytes < 1024 * 1024,
            "{big_bytes} bytes of the big stream first"
        );
    }

    /// Echoes every stream until the client goes; returns the bytes echoed.
    async fn echo_server(mut incoming: Incoming) -> (usize, Vec<String>) {
        let mut tasks = Vec::new();
        let mut kinds = Vec::new();
        while let Some(stream) = incoming.next().await {
            kinds.push(format!(
                "{}:{}",
                stream.header("streamtype").unwrap_or("-"),
                stream.header("x-size").unwrap_or("-")
            ));
            let (mut reader, mut writer) = stream.accept();
            tasks.push(tokio::spawn(async move {
                let copied = tokio::io::copy(&mut reader, &mut writer).await.unwrap();
                writer.shutdown().await.unwrap();
                copied as usize
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        kinds.sort();
        (total, kinds)
    }

    #[tokio::test]
    async fn node_spdy_transport_client_echo() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/streaming/node-client");
        assert!(
            dir.join("node_modules/spdy-transport").is_dir(),
            "run `npm ci` in {} first (the test needs spdy-transport)",
            dir.display()
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            echo_server(serve(socket, limits())).await
        });
        let script = dir.join("spdy_echo_client.js");
        let output = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(script)
                .arg(port.to_string())
                .output()
                .expect("run node")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "node client failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let sizes = [0usize, 1, 70000, 1536 * 1024, 300000];
        let total: usize = sizes.iter().sum();
        assert!(
            stdout.contains(&format!("\"sent\":{total},\"received\":{total}")),
            "{stdout}"
        );
        let (echoed, kinds) = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server did not see the client go")
            .unwrap();
        assert_eq!(echoed, total);
        let mut expected: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| format!("echo-{i}:{size}"))
            .collect();
        expected.sort();
        assert_eq!(kinds, expected);
    }
}
