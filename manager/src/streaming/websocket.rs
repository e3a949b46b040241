//! Exec, attach and port-forward over WebSocket (kubelet's channel protocols): every message
//! starts with its channel's number (an ASCII digit in the base64 variants, whose payloads
//! are base64 text). Each channel becomes a pipe of its own for the code that serves the
//! request, so exec and attach run the same over WebSocket as over SPDY.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::portforward;
use super::protocols::{is_base64, status_format};
use super::remote::{Input, Output, Remote};
use super::remotecommand;
use super::tokens::StreamRequest;
use crate::runtime::Runtime;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client's input on the channel named by the payload has ended.
const CLOSE: u8 = 255;
/// Bytes a channel's pipe holds before its writer waits.
const CHANNEL_BUFFER: usize = 64 * 1024;
/// Most payload bytes per message sent.
const MESSAGE_PAYLOAD: usize = 32 * 1024;
/// Largest message or frame accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// Messages waiting for the socket.
const SEND_QUEUE: usize = 16;

/// How one connection's messages are framed.
#[derive(Debug, Clone, Copy)]
struct Framing {
    base64: bool,
}

impl Framing {
    fn encode(self, channel: u8, payload: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + payload.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            STANDARD.encode_string(payload, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + payload.len());
            bytes.push(channel);
            bytes.extend_from_slice(payload);
            Message::binary(bytes)
        }
    }

    /// The channel and payload of a client's message; None for what carries no data.
    fn decode(self, message: Message) -> Option<(u8, Vec<u8>)> {
        let (channel, payload) = match message {
            Message::Binary(bytes) if !self.base64 => {
                let (&channel, payload) = bytes.split_first()?;
                (channel, payload.to_vec())
            }
            Message::Text(text) if self.base64 => {
                let bytes = text.as_bytes();
                let (&digit, payload) = bytes.split_first()?;
                let channel = digit.checked_sub(b'0')?;
                (channel, STANDARD.decode(payload).ok()?)
            }
            _ => return None,
        };
        Some((channel, payload))
    }
}

/// When the connection last carried anything, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One WebSocket connection split into channels.
struct Channels {
    framing: Framing,
    inbound: HashMap<u8, DuplexStream>,
    outgoing: mpsc::Sender<Message>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Channels {
    /// A channel the client writes to: the pipe the serving code reads.
    fn input(&mut self, channel: u8) -> Input {
        let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
        self.inbound.insert(channel, ours);
        Box::new(theirs)
    }

    /// A channel the client reads: the pipe the serving code writes; `first` goes out
    /// before anything written (port-forward's port number).
    fn output(&mut self, channel: u8, first: Option<Vec<u8>>) -> Output {
        let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
        let sender = self.outgoing.clone();
        let framing = self.framing;
        self.pumps.push(tokio::spawn(async move {
            pump(ours, channel, first, framing, sender).await;
        }));
        Box::new(theirs)
    }
}

/// Sends what is written to a channel's pipe as messages until the pipe's writer is gone.
async fn pump(
    mut from: DuplexStream,
    channel: u8,
    first: Option<Vec<u8>>,
    framing: Framing,
    to: mpsc::Sender<Message>,
) {
    if let Some(first) = first
        && to.send(framing.encode(channel, &first)).await.is_err()
    {
        return;
    }
    let mut buffer = vec![0u8; MESSAGE_PAYLOAD];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to
                    .send(framing.encode(channel, &buffer[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Serves `request` to a client that upgraded to WebSocket subprotocol `protocol` on `io`.
/// `ports` are port-forward's, from the URL's query.
pub async fn serve<T>(
    io: T,
    protocol: String,
    request: StreamRequest,
    ports: Vec<u16>,
    runtime: Arc<Runtime>,
    idle_limit: Option<Duration>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut incoming) = socket.split();
    let (outgoing, mut queued) = mpsc::channel::<Message>(SEND_QUEUE);
    let mut channels = Channels {
        framing: Framing {
            base64: is_base64(&protocol),
        },
        inbound: HashMap::new(),
        outgoing,
        pumps: Vec::new(),
    };
    let (gone_tx, gone) = oneshot::channel::<()>();
    let activity = Arc::new(Activity::new());

    let forwarding = matches!(request, StreamRequest::PortForward { .. });
    let served = match request {
        StreamRequest::PortForward { pod_id } => {
            let mut forwards = Vec::new();
            for (index, port) in ports.iter().copied().enumerate() {
                let Ok(data) = u8::try_from(index * 2) else {
                    break;
                };
                let announce = Some(port.to_le_bytes().to_vec());
                let from_client = channels.input(data);
                let to_client = channels.output(data, announce.clone());
                let errors = channels.output(data + 1, announce);
                forwards.push(forward_port(
                    Arc::clone(&runtime),
                    pod_id.clone(),
                    port,
                    from_client,
                    to_client,
                    errors,
                ));
            }
            tokio::spawn(async move {
                futures_util::future::join_all(forwards).await;
            })
        }
        request => {
            let (tty, streams) = match &request {
                StreamRequest::Exec { tty, streams, .. }
                | StreamRequest::Attach { tty, streams, .. } => (*tty, *streams),
                StreamRequest::PortForward { .. } => (false, Default::default()),
            };
            let remote = Remote {
                stdin: streams.stdin.then(|| channels.input(STDIN)),
                stdout: streams.stdout.then(|| channels.output(STDOUT, None)),
                stderr: streams.stderr.then(|| channels.output(STDERR, None)),
                resize: tty.then(|| channels.input(RESIZE)),
                error: Some(channels.output(ERROR, None)),
                format: status_format(&protocol),
                gone,
            };
            tokio::spawn(remotecommand::serve(runtime, request, remote))
        }
    };
    let Channels {
        framing,
        mut inbound,
        outgoing,
        pumps,
    } = channels;
    // Only the pumps send from here on: when they are done, so is the connection.
    drop(outgoing);

    let writer_activity = Arc::clone(&activity);
    let writer = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            writer_activity.touch();
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    let check_every = idle_limit.map_or(Duration::from_secs(3600), |l| {
        (l / 4).max(Duration::from_millis(50))
    });
    let mut served = served;
    loop {
        tokio::select! {
            message = incoming.next() => {
                let Some(Ok(message)) = message else { break };
                activity.touch();
                if message.is_close() {
                    break;
                }
                let Some((channel, payload)) = framing.decode(message) else { continue };
                if channel == CLOSE {
                    // v5: the client's input on that channel ended.
                    if let Some(closed) = payload.first() {
                        inbound.remove(closed);
                    }
                    continue;
                }
                if let Some(pipe) = inbound.get_mut(&channel)
                    && pipe.write_all(&payload).await.is_err()
                {
                    inbound.remove(&channel);
                }
            }
            _ = tokio::time::sleep(check_every), if idle_limit.is_some() => {
                if idle_limit.is_some_and(|limit| activity.idle_for() >= limit) {
                    log::debug!("closing an idle streaming connection");
                    break;
                }
            }
            _ = &mut served => {
                // Served: what is queued goes out, then the close.
                inbound.clear();
                for pump in pumps {
                    let _ = pump.await;
                }
                let _ = writer.await;
                return;
            }
        }
    }
    // The client is gone (or idle): its input ends, and whatever serves it learns so. An exec
    // or attach cleans up after itself; forwarded connections are just dropped (a pod that
    // keeps one open without sending would otherwise hold it forever).
    inbound.clear();
    drop(gone_tx);
    if forwarding {
        served.abort();
    }
    let _ = served.await;
    for pump in pumps {
        pump.abort();
    }
    writer.abort();
}

/// Connects to `port` in pod `pod_id` and forwards it over one pair of channels.
async fn forward_port(
    runtime: Arc<Runtime>,
    pod_id: String,
    port: u16,
    from_client: Input,
    to_client: Output,
    mut errors: Output,
) {
    let connected = portforward::connect_in_pod(&runtime, &pod_id, port).await;
    match connected {
        Ok(connection) => portforward::forward(connection, from_client, to_client).await,
        Err(message) => {
            let _ = errors.write_all(message.as_bytes()).await;
            drop(to_client);
        }
    }
    let _ = errors.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing_round_trip() {
        let binary = Framing { base64: false };
        let message = binary.encode(STDOUT, b"hi");
        assert_eq!(message, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(binary.decode(message), Some((1, b"hi".to_vec())));
        let text = Framing { base64: true };
        let message = text.encode(STDERR, b"hi");
        assert_eq!(message, Message::text("2aGk="));
        assert_eq!(text.decode(message), Some((2, b"hi".to_vec())));
        // The wrong kind of message for the protocol, or an empty one, carries nothing.
        assert_eq!(binary.decode(Message::text("1aGk=")), None);
        assert_eq!(binary.decode(Message::binary(Vec::new())), None);
        assert_eq!(text.decode(Message::text("1!!")), None);
    }
}
