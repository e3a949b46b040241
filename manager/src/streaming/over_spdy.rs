//! Exec, attach and port-forward over SPDY/3.1 as kubelet's clients drive them: the client
//! opens one stream per channel, named by its `streamtype` header (port-forward: an `error`
//! and a `data` stream per request, paired by `requestid`), within 30 seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::portforward;
use super::protocols::{spdy_resizes, status_format};
use super::remote::{Input, Output, Remote};
use super::remotecommand;
use super::spdy::{self, Incoming, Stream};
use super::tokens::StreamRequest;
use crate::runtime::Runtime;

/// How long a client may take to open the streams of its request (kubelet's).
const STREAM_CREATION_LIMIT: Duration = Duration::from_secs(30);
/// Most port-forward requests of one connection waiting for their second stream.
const MAX_HALF_OPEN_PAIRS: usize = 128;

/// Serves `request` to a client that upgraded to SPDY/3.1 with subprotocol `protocol`.
pub async fn serve<T>(
    io: T,
    protocol: String,
    request: StreamRequest,
    runtime: Arc<Runtime>,
    limits: spdy::Limits,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let incoming = spdy::serve(io, limits);
    match request {
        StreamRequest::PortForward { pod_id } => forward_ports(incoming, pod_id, runtime).await,
        request => remote_command(incoming, protocol, request, runtime).await,
    }
}

/// The streams an exec or attach client opens, by type.
#[derive(Default)]
struct Opened {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn remote_command(
    mut incoming: Incoming,
    protocol: String,
    request: StreamRequest,
    runtime: Arc<Runtime>,
) {
    let (tty, streams) = match &request {
        StreamRequest::Exec { tty, streams, .. } | StreamRequest::Attach { tty, streams, .. } => {
            (*tty, *streams)
        }
        StreamRequest::PortForward { .. } => return,
    };
    let expected = 1
        + usize::from(streams.stdin)
        + usize::from(streams.stdout)
        + usize::from(streams.stderr && !tty)
        + usize::from(tty && spdy_resizes(&protocol));
    let mut opened = Opened::default();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_LIMIT;
    while count < expected {
        let stream = match tokio::time::timeout_at(deadline, incoming.next()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                log::debug!("a streaming client did not open its streams in time");
                incoming.close();
                return;
            }
        };
        let slot = match stream.header("streamtype").unwrap_or_default() {
            "error" => &mut opened.error,
            "stdin" if streams.stdin => &mut opened.stdin,
            "stdout" if streams.stdout => &mut opened.stdout,
            "stderr" if streams.stderr => &mut opened.stderr,
            "resize" if tty => &mut opened.resize,
            other => {
                log::debug!("refusing stream {} of type {other:?}", stream.id());
                stream.reject();
                continue;
            }
        };
        if slot.is_some() {
            stream.reject();
            continue;
        }
        *slot = Some(stream);
        count += 1;
    }
    let (gone_tx, gone) = oneshot::channel();
    let remote = Remote {
        stdin: opened.stdin.map(input),
        stdout: opened.stdout.map(output),
        stderr: opened.stderr.map(output),
        resize: opened.resize.map(input),
        error: opened.error.map(output),
        format: status_format(&protocol),
        gone,
    };
    let serving = remotecommand::serve(runtime, request, remote);
    let watching = async {
        // More streams are refused; the end of the connection is the client gone.
        while let Some(stream) = incoming.next().await {
            stream.reject();
        }
        drop(gone_tx);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = serving => {}
        _ = watching => {}
    }
    incoming.close();
}

fn input(stream: Stream) -> Input {
    let (reader, _writer) = stream.accept();
    Box::new(reader)
}

fn output(stream: Stream) -> Output {
    let (_reader, writer) = stream.accept();
    Box::new(writer)
}

/// A port-forward request whose streams are arriving.
struct Pair {
    port: u16,
    error: Option<Stream>,
    data: Option<Stream>,
    since: Instant,
}

async fn forward_ports(mut incoming: Incoming, pod_id: String, runtime: Arc<Runtime>) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.next().await {
        pairs.retain(|_, pair| pair.since.elapsed() < STREAM_CREATION_LIMIT);
        let Some(port) = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
        else {
            log::debug!(
                "refusing port-forward stream {} without a valid port: {:?}",
                stream.id(),
                stream.headers()
            );
            stream.reject();
            continue;
        };
        let request = stream.header("requestid").unwrap_or_default().to_string();
        if !pairs.contains_key(&request) && pairs.len() >= MAX_HALF_OPEN_PAIRS {
            stream.reject();
            continue;
        }
        let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
            port,
            error: None,
            data: None,
            since: Instant::now(),
        });
        let slot = match stream.header("streamtype") {
            Some("error") => &mut pair.error,
            Some("data") => &mut pair.data,
            _ => {
                stream.reject();
                continue;
            }
        };
        if slot.is_some() || pair.port != port {
            stream.reject();
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                port,
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request)
        {
            tokio::spawn(forward_pair(
                Arc::clone(&runtime),
                pod_id.clone(),
                port,
                error,
                data,
            ));
        }
    }
}

async fn forward_pair(
    runtime: Arc<Runtime>,
    pod_id: String,
    port: u16,
    error: Stream,
    data: Stream,
) {
    let (_, mut error_writer) = error.accept();
    let (data_reader, data_writer) = data.accept();
    let connected = portforward::connect_in_pod(&runtime, &pod_id, port).await;
    match connected {
        Ok(connection) => {
            portforward::forward(connection, Box::new(data_reader), Box::new(data_writer)).await
        }
        Err(message) => {
            let _ = error_writer.write_all(message.as_bytes()).await;
            // Aborted, not ended: the client must not take it for an empty connection.
            data_writer.reset();
        }
    }
    let _ = error_writer.shutdown().await;
}
