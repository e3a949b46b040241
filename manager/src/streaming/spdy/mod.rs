//! SPDY/3.1, server side: what kubectl, kubelet and crictl speak for exec, attach and
//! port-forward after an `Upgrade: SPDY/3.1` (no maintained Rust crate implements it).
//!
//! [`serve`] takes the upgraded connection and yields the [`Stream`]s the client opens, in
//! order; each is accepted (SYN_REPLY; then a [`StreamReader`] and a [`StreamWriter`], tokio
//! `AsyncRead`/`AsyncWrite`) or rejected. Headers (`streamtype`, `port`, `requestid`) tell the
//! caller what a stream is for.
//!
//! - `frame.rs`: the wire format of every frame.
//! - `headers.rs` and `dictionary.rs`: header blocks and their zlib compression.
//! - `session.rs`: the connection (reader, writer and watchdog tasks; flow control).
//!
//! The session ends when the client closes the connection, sends a malformed frame (GOAWAY
//! PROTOCOL_ERROR), stays idle for [`Limits::idle_timeout`] (GOAWAY), when
//! [`Incoming::close`] is called, or when `Incoming` and every stream handle are dropped.
//! Then every reader sees EOF (if the client had finished the stream) or an error, every write
//! fails, and [`Incoming::next`] returns `None`.
//!
//! The application must keep reading the streams it accepted (or drop their readers): with a
//! client that does no flow control (kubectl's), a full stream buffer stops the session reading
//! the connection, which holds up every stream of it, as it does in kubelet.

mod dictionary;
mod frame;
mod headers;
mod session;

use std::time::Duration;

pub use session::{Incoming, Stream, serve};

/// Bounds of one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No frame either way for this long ends the session with GOAWAY.
    pub idle_timeout: Duration,
    /// Streams open at once; more are refused (RST_STREAM REFUSED_STREAM).
    pub max_streams: usize,
    /// Received bytes buffered per stream before the session stops reading the socket; also
    /// the receive window announced to clients that do flow control.
    pub stream_buffer: usize,
}

impl Default for Limits {
    /// Kubelet's streaming idle timeout (4 h), and room for a few dozen port-forwards.
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            max_streams: 100,
            stream_buffer: 256 * 1024,
        }
    }
}
