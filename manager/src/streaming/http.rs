//! The streaming server's HTTP side: `/{exec,attach,portforward}/<token>` on HTTP/1.1 (TLS
//! optional), the token exchanged for its request, the upgrade negotiated and answered with
//! 101, and the upgraded connection handed to SPDY or WebSocket.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_native_tls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::protocols::{Refusal, Transport, negotiate};
use super::tokens::{RequestCache, StreamRequest};
use super::{over_spdy, spdy, websocket};
use crate::runtime::Runtime;

/// How long a client may take to send its request's head.
const HEADER_LIMIT: Duration = Duration::from_secs(30);
/// The idle timeout of a SPDY session when `stream_idle_timeout` is "0" (a century).
const NO_IDLE_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Most streams one SPDY connection may have open (20 port-forwards are 40).
const MAX_SPDY_STREAMS: usize = 1000;
/// Bytes one SPDY stream buffers before the connection stops reading.
const SPDY_STREAM_BUFFER: usize = 256 * 1024;

/// What every connection of the server shares.
pub struct Shared {
    /// The requests waiting for their clients.
    pub cache: Arc<RequestCache>,
    /// What serves the requests.
    pub runtime: Arc<Runtime>,
    /// The idle timeout of an upgraded connection.
    pub idle_limit: Option<Duration>,
    /// TLS, when enabled.
    pub tls: Option<TlsAcceptor>,
}

/// Accepts connections until the task is dropped.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            match &shared.tls {
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => serve_connection(stream, shared).await,
                    Err(e) => log::debug!("streaming server: TLS with {peer}: {e}"),
                },
                None => serve_connection(tcp, shared).await,
            }
        });
    }
}

async fn serve_connection<T>(io: T, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(shared, request)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_LIMIT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        log::debug!("streaming server: connection: {e}");
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers one request; an accepted upgrade continues in a task of its own.
fn handle(shared: Arc<Shared>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some(kind @ ("exec" | "attach" | "portforward")), Some(token), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    if request.method() != Method::GET && request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let Some(stream_request) = shared.cache.take(kind, token) else {
        return plain(
            StatusCode::NOT_FOUND,
            "no such streaming request: its token is unknown, used or expired",
        );
    };
    let transport = match negotiate(kind, request.headers()) {
        Ok(transport) => transport,
        Err(Refusal::NotAnUpgrade) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "upgrade to SPDY/3.1 or websocket required",
            );
        }
        Err(Refusal::NoCommonProtocol(ours)) => {
            let mut response = plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "no common stream protocol: crustd speaks {}",
                    ours.join(", ")
                ),
            );
            for protocol in ours {
                response.headers_mut().append(
                    "X-Accepted-Stream-Protocol-Versions",
                    HeaderValue::from_static(protocol),
                );
            }
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let mut ports = Vec::new();
    match &transport {
        Transport::Spdy(protocol) => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            if let Ok(value) = HeaderValue::from_str(protocol) {
                headers.insert("X-Stream-Protocol-Version", value);
            }
        }
        Transport::WebSocket(protocol) => {
            let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
                return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing");
            };
            if request
                .headers()
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_none_or(|v| v != "13")
            {
                return plain(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
            }
            if matches!(stream_request, StreamRequest::PortForward { .. }) {
                ports = match query_ports(request.uri().query().unwrap_or_default()) {
                    Ok(ports) => ports,
                    Err(why) => return plain(StatusCode::BAD_REQUEST, &why),
                };
            }
            let accept = derive_accept_key(key.as_bytes());
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(value) = HeaderValue::from_str(&accept) {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
            }
            if !protocol.is_empty()
                && let Ok(value) = HeaderValue::from_str(protocol)
            {
                headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                log::debug!("streaming server: upgrade: {e}");
                return;
            }
        };
        let runtime = Arc::clone(&shared.runtime);
        match transport {
            Transport::Spdy(protocol) => {
                let limits = spdy::Limits {
                    // "0" turns the idle timeout off: a limit no connection reaches.
                    idle_timeout: shared.idle_limit.unwrap_or(NO_IDLE_LIMIT),
                    max_streams: MAX_SPDY_STREAMS,
                    stream_buffer: SPDY_STREAM_BUFFER,
                };
                over_spdy::serve(upgraded, protocol, stream_request, runtime, limits).await
            }
            Transport::WebSocket(protocol) => {
                websocket::serve(
                    upgraded,
                    protocol,
                    stream_request,
                    ports,
                    runtime,
                    shared.idle_limit,
                )
                .await
            }
        }
    });
    response
}

/// The `port` parameters of a WebSocket port-forward URL (kubelet's form: `?port=80&port=81`
/// or `?port=80,81`; the API server's name, `ports`, is taken too).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "port" && name != "ports" {
            continue;
        }
        for value in value.split(',').filter(|v| !v.is_empty()) {
            match value.parse::<u16>() {
                Ok(port) if port != 0 => ports.push(port),
                _ => return Err(format!("{value:?} is not a port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > 128 {
        return Err("at most 128 ports".into());
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(query_ports("port=80&port=8080"), Ok(vec![80, 8080]));
        assert_eq!(query_ports("port=80,81&x=y"), Ok(vec![80, 81]));
        assert_eq!(query_ports("ports=9000"), Ok(vec![9000]));
        assert!(query_ports("").is_err());
        assert!(query_ports("port=0").is_err());
        assert!(query_ports("port=http").is_err());
        assert!(query_ports("port=70000").is_err());
    }
}
