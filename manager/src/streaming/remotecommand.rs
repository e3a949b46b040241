//! Exec and attach for a connected client: the process's pipes copied to and from the
//! client's channels, terminal sizes passed on, the outcome reported, and a client that
//! vanished cleaned up after.

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::remote::{Input, Outcome, Output, Remote};
use super::tokens::StreamRequest;
use crate::runtime::DRAIN_LIMIT;
use crate::runtime::Runtime;
use crate::runtime::interactive::{Control, Session};

/// Bytes moved per read from a process's pipe.
const COPY_BUFFER: usize = 32 * 1024;
/// Most bytes of terminal sizes kept while waiting for one to be complete.
const RESIZE_BUFFER: usize = 4096;

/// A terminal size as clients send it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Serves an exec or attach request to the client at `remote`.
pub async fn serve(runtime: Arc<Runtime>, request: StreamRequest, remote: Remote) {
    let Remote {
        stdin,
        stdout,
        stderr,
        resize,
        error,
        format,
        gone,
    } = remote;
    let channels = Channels {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let started = match &request {
        StreamRequest::Exec {
            container_id,
            cmd,
            tty,
            streams,
        } => {
            runtime
                .exec_session(container_id, cmd.clone(), *tty, *streams)
                .await
        }
        StreamRequest::Attach {
            container_id,
            streams,
            ..
        } => runtime.attach_session(container_id, *streams).await,
        StreamRequest::PortForward { .. } => return,
    };
    let session = match started {
        Ok(session) => session,
        Err(e) => {
            Outcome::Failed(e.to_string()).report(format, error).await;
            return;
        }
    };
    let command = match request {
        StreamRequest::Exec { cmd, .. } => Some(cmd),
        _ => None,
    };
    if let Some(outcome) = interact(session, channels, command, gone).await {
        outcome.report(format, error).await;
    }
}

/// The client's channels a session is copied to and from.
struct Channels {
    stdin: Option<Input>,
    stdout: Option<Output>,
    stderr: Option<Output>,
    resize: Option<Input>,
}

/// Copies until the process exited (exec) or its output ended (attach); `command` is the
/// exec's. Returns the outcome, or None when the client left first (`gone`).
async fn interact(
    session: Session,
    channels: Channels,
    command: Option<Vec<String>>,
    gone: tokio::sync::oneshot::Receiver<()>,
) -> Option<Outcome> {
    let Session {
        stdin,
        stdout,
        stderr,
        control,
    } = session;
    let mut helpers: Vec<JoinHandle<()>> = Vec::new();
    match (channels.stdin, stdin) {
        (Some(from), Some(to)) => {
            helpers.push(tokio::spawn(forward_input(from, to, control.clone())));
        }
        // Input with nowhere to go is still read: an unread stream would hold up the
        // client's whole connection.
        (Some(mut from), None) => helpers.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
        })),
        (None, _) => {}
    }
    if let Some(resize) = channels.resize
        && control.terminal()
    {
        helpers.push(tokio::spawn(forward_sizes(resize, control.clone())));
    }
    let outputs = [(stdout, channels.stdout), (stderr, channels.stderr)]
        .into_iter()
        .filter_map(|(from, to)| Some(tokio::spawn(forward_output(from?, to))))
        .collect::<Vec<_>>();
    let aborts: Vec<_> = outputs.iter().map(JoinHandle::abort_handle).collect();
    let finishing = async {
        match command {
            Some(command) => finish_exec(&control, outputs, command).await,
            None => finish_attach(&control, outputs).await,
        }
    };
    let outcome = tokio::select! {
        outcome = finishing => outcome,
        _ = gone => None,
    };
    for helper in helpers {
        helper.abort();
    }
    for abort in aborts {
        abort.abort();
    }
    let mut control = control;
    match &outcome {
        Some(_) => control.end().await,
        None => control.abandon().await,
    }
    outcome
}

/// An exec ends when its process exits and its output is copied (for at most
/// [`DRAIN_LIMIT`] after the exit). A client that stopped taking output is gone.
async fn finish_exec(
    control: &Control,
    outputs: Vec<JoinHandle<bool>>,
    command: Vec<String>,
) -> Option<Outcome> {
    let code = match control.wait().await {
        Ok(code) => code,
        Err(e) => return Some(Outcome::Failed(e.to_string())),
    };
    let aborts: Vec<_> = outputs.iter().map(JoinHandle::abort_handle).collect();
    let delivered =
        tokio::time::timeout(DRAIN_LIMIT, futures_util::future::join_all(outputs)).await;
    for abort in aborts {
        abort.abort();
    }
    if let Ok(results) = delivered
        && results.iter().any(|r| matches!(r, Ok(false)))
    {
        return None;
    }
    Some(Outcome::Exited { code, command })
}

/// An attach ends when the container's output ends (it exited) or, with no output taken,
/// when it exits.
async fn finish_attach(control: &Control, outputs: Vec<JoinHandle<bool>>) -> Option<Outcome> {
    if outputs.is_empty() {
        return match control.wait().await {
            Ok(code) => Some(Outcome::Exited {
                code,
                command: Vec::new(),
            }),
            Err(e) => Some(Outcome::Failed(e.to_string())),
        };
    }
    let results = futures_util::future::join_all(outputs).await;
    if results.iter().any(|r| matches!(r, Ok(false))) {
        return None;
    }
    Some(Outcome::Exited {
        code: 0,
        command: Vec::new(),
    })
}

/// Copies the client's input to the process; at its end the process's stdin is closed.
async fn forward_input(mut from: Input, mut to: pipe::Sender, control: Control) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        log::debug!("copying a client's input: {e}");
    }
    drop(to);
    if let Err(e) = control.close_stdin().await {
        log::debug!("closing a process's stdin: {e}");
    }
}

/// Copies one output of the process to the client until the process's end; false when the
/// client stopped taking it (it is gone).
async fn forward_output(mut from: pipe::Receiver, to: Option<Output>) -> bool {
    let Some(mut to) = to else {
        // Nobody takes it: read it anyway, so the process never blocks on it.
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut from, &mut sink).await;
        return true;
    };
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                log::debug!("reading a process's output: {e}");
                break;
            }
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return false;
        }
    }
    to.shutdown().await.is_ok()
}

/// Reads terminal sizes (JSON objects back to back) and passes each on.
async fn forward_sizes(mut from: Input, control: Control) {
    let mut pending = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buffer[..n]);
        let (sizes, used) = parse_sizes(&pending);
        pending.drain(..used);
        if pending.len() > RESIZE_BUFFER {
            log::debug!("a client's terminal sizes are not JSON; ignoring them");
            return;
        }
        for size in sizes {
            if let Err(e) = control.resize(size.width, size.height).await {
                log::debug!("resizing a terminal: {e}");
            }
        }
    }
}

/// The complete sizes at the start of `bytes`, and how many bytes they took.
fn parse_sizes(bytes: &[u8]) -> (Vec<TerminalSize>, usize) {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<TerminalSize>();
    let mut sizes = Vec::new();
    let mut used = 0;
    loop {
        match stream.next() {
            Some(Ok(size)) => {
                used = stream.byte_offset();
                sizes.push(size);
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => {
                // Not a size: skip what was read so far, so garbage cannot pile up.
                used = bytes.len();
                break;
            }
            None => {
                used = bytes.len();
                break;
            }
        }
    }
    (sizes, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_whole_and_the_rest_waits() {
        let (sizes, used) = parse_sizes(br#"{"Width":80,"Height":24}{"Width":100,"He"#);
        assert_eq!(
            sizes,
            vec![TerminalSize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(used, r#"{"Width":80,"Height":24}"#.len());
        let (sizes, used) = parse_sizes(b"{\"Width\":1,\"Height\":2}\n{\"Width\":3,\"Height\":4}");
        assert_eq!(sizes.len(), 2);
        assert_eq!(
            used,
            "{\"Width\":1,\"Height\":2}\n{\"Width\":3,\"Height\":4}".len()
        );
        let (sizes, used) = parse_sizes(b"not json");
        assert!(sizes.is_empty());
        assert_eq!(used, 8);
    }
}
