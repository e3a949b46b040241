//! One forwarded connection: a TCP connection to a port on the pod's loopback, made inside
//! its network namespace, copied both ways to a client's data channel.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::remote::{Input, Output};
use crate::network::netns;
use crate::runtime::Runtime;

/// How long connecting to a pod's port may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback of the namespace pinned at `netns` (the host's for a
/// pod on the host's network).
pub async fn connect(netns: Option<PathBuf>, port: u16) -> io::Result<TcpStream> {
    let connected = tokio::task::spawn_blocking(move || {
        netns::connect_loopback(netns.as_deref(), port, CONNECT_LIMIT)
    })
    .await
    .map_err(io::Error::other)??;
    connected.set_nonblocking(true)?;
    connected.set_nodelay(true)?;
    TcpStream::from_std(connected)
}

/// Copies `connection` to `to_client` and `from_client` to `connection` until both ways
/// ended: the client's end of data half-closes the connection, the connection's end of
/// data ends the client's channel. A client channel that fails (reset, connection gone) drops
/// the connection at once, whether or not the pod is still sending.
pub async fn forward(connection: TcpStream, mut from_client: Input, mut to_client: Output) {
    let (mut read, mut write) = connection.into_split();
    let outbound = async {
        let copied = tokio::io::copy(&mut from_client, &mut write).await;
        let _ = write.shutdown().await;
        copied
    };
    let inbound = async {
        if let Err(e) = tokio::io::copy(&mut read, &mut to_client).await {
            log::debug!("port-forward: pod to client: {e}");
        }
        let _ = to_client.shutdown().await;
    };
    tokio::pin!(outbound, inbound);
    tokio::select! {
        copied = &mut outbound => match copied {
            Ok(_) => inbound.await,
            Err(e) => log::debug!("port-forward: client to pod: {e}"),
        },
        () = &mut inbound => {
            if let Err(e) = outbound.await {
                log::debug!("port-forward: client to pod: {e}");
            }
        }
    }
}

/// Connects to `port` in pod `pod_id`; an error is the message for the client's error
/// channel.
pub async fn connect_in_pod(
    runtime: &Runtime,
    pod_id: &str,
    port: u16,
) -> std::result::Result<TcpStream, String> {
    let (_, netns) = runtime
        .pod_network_namespace(pod_id)
        .map_err(|e| e.to_string())?;
    connect(netns, port)
        .await
        .map_err(|e| connect_failure(pod_id, port, &e))
}

/// What the client's error channel says when `port` could not be reached in pod `pod_id`.
fn connect_failure(pod_id: &str, port: u16, error: &io::Error) -> String {
    format!(
        "error forwarding port {port} to pod {pod_id}: failed to connect to localhost:{port} inside the pod's network namespace: {error}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_go_both_ways_and_ends_pass_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.unwrap();
            socket.write_all(&got).await.unwrap();
            socket.write_all(b"!").await.unwrap();
        });
        let connection = connect(None, port).await.unwrap();
        let (client_in, mut feed) = tokio::io::duplex(1024);
        let (mut take, client_out) = tokio::io::duplex(1024);
        let forwarding = tokio::spawn(forward(
            connection,
            Box::new(client_in),
            Box::new(client_out),
        ));
        feed.write_all(b"hello").await.unwrap();
        drop(feed);
        let mut back = Vec::new();
        take.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello!");
        forwarding.await.unwrap();
        server.await.unwrap();
    }

    /// A client channel that fails at once, as a reset stream does.
    struct Reset;

    impl tokio::io::AsyncRead for Reset {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    #[tokio::test]
    async fn a_failed_client_drops_the_connection_though_the_pod_is_silent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connection = connect(None, port).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let (_take, client_out) = tokio::io::duplex(1024);
        tokio::time::timeout(
            Duration::from_secs(5),
            forward(connection, Box::new(Reset), Box::new(client_out)),
        )
        .await
        .expect("forward ends without the pod sending anything");
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = connect(None, port).await.unwrap_err();
        let message = connect_failure("p", port, &error);
        assert!(message.contains(&format!("localhost:{port}")), "{message}");
    }
}
