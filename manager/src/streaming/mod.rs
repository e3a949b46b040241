//! The streaming server of Exec, Attach and PortForward: the CRI calls hand out a URL with a
//! single-use token; the client (kubelet's proxy, crictl, kubectl) connects to it and
//! upgrades the connection to SPDY/3.1 or WebSocket, over which crustd runs the command,
//! joins the container's stdio or forwards ports.

mod http;
mod over_spdy;
mod portforward;
mod protocols;
mod remote;
mod remotecommand;
pub mod spdy;
pub mod tokens;
mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{ManagerError, Result};
use crate::runtime::Runtime;
use crate::runtime::interactive::{Wanted, check_wanted};
pub use tokens::StreamRequest;

/// The running streaming server.
pub struct Streaming {
    runtime: Arc<Runtime>,
    cache: Arc<tokens::RequestCache>,
    /// `http://host:port` or `https://…`, without a trailing slash.
    base_url: String,
    accepting: JoinHandle<()>,
}

impl Streaming {
    /// Binds `config`'s streaming address and serves `runtime`'s requests on it.
    pub async fn start(config: &Config, runtime: Arc<Runtime>) -> Result<Self> {
        let address: IpAddr = config
            .stream_server_address
            .parse()
            .map_err(|_| ManagerError::Config("stream_server_address".into()))?;
        let port: u16 = config
            .stream_server_port
            .parse()
            .map_err(|_| ManagerError::Config("stream_server_port".into()))?;
        let listener = TcpListener::bind(SocketAddr::new(address, port))
            .await
            .map_err(|e| {
                ManagerError::io(format!("bind the streaming server to {address}:{port}"), e)
            })?;
        let bound = listener
            .local_addr()
            .map_err(|e| ManagerError::io("streaming server address", e))?;
        let tls = if config.enable_tls_streaming {
            Some(tls_acceptor(config)?)
        } else {
            None
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        // A wildcard address is no place to connect to: clients on this node use loopback.
        let host = match bound.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base_url = format!("{scheme}://{}", SocketAddr::new(host, bound.port()));
        let cache = Arc::new(tokens::RequestCache::default());
        let shared = Arc::new(http::Shared {
            cache: Arc::clone(&cache),
            runtime: Arc::clone(&runtime),
            idle_limit: config.stream_idle_limit(),
            tls,
        });
        log::info!("crustd streaming on {base_url}");
        Ok(Streaming {
            runtime,
            cache,
            base_url,
            accepting: tokio::spawn(http::accept(listener, shared)),
        })
    }

    /// Exec: the URL where a client runs `cmd` in running container `container_id`.
    pub fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        tty: bool,
        streams: Wanted,
    ) -> Result<String> {
        if cmd.is_empty() {
            return Err(ManagerError::InvalidArgument("no command given".into()));
        }
        check_wanted(tty, streams)?;
        let (container_id, _) = self.runtime.running_container(container_id)?;
        self.url(StreamRequest::Exec {
            container_id,
            cmd,
            tty,
            streams,
        })
    }

    /// Attach: the URL where a client joins running container `container_id`'s stdio.
    pub fn attach(&self, container_id: &str, streams: Wanted) -> Result<String> {
        let (container_id, tty) = self.runtime.running_container(container_id)?;
        // A terminal has one output: a client asking for stderr too gets it all on stdout.
        let streams = Wanted {
            stderr: streams.stderr && !tty,
            ..streams
        };
        check_wanted(tty, streams)?;
        self.url(StreamRequest::Attach {
            container_id,
            tty,
            streams,
        })
    }

    /// PortForward: the URL where a client reaches ports of ready pod `pod_id`.
    pub fn port_forward(&self, pod_id: &str) -> Result<String> {
        let (pod_id, _) = self.runtime.pod_network_namespace(pod_id)?;
        self.url(StreamRequest::PortForward { pod_id })
    }

    /// The URL a client connects to for `request`.
    fn url(&self, request: StreamRequest) -> Result<String> {
        let kind = request.kind();
        let token = self.cache.insert(request)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The TLS side of the server, from `x509_key_pair_streaming`'s PEM files.
fn tls_acceptor(config: &Config) -> Result<tokio_native_tls::TlsAcceptor> {
    let pair = &config.x509_key_pair_streaming;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ManagerError::io(format!("read {}", path.display()), e))
    };
    let certificate = read(&pair.tls_cert_file)?;
    let key = read(&pair.tls_key_file)?;
    let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(&certificate, &key)
        .map_err(|e| ManagerError::Config(format!("x509_key_pair_streaming: {e}")))?;
    let acceptor = tokio_native_tls::native_tls::TlsAcceptor::new(identity)
        .map_err(|e| ManagerError::Config(format!("x509_key_pair_streaming: {e}")))?;
    Ok(tokio_native_tls::TlsAcceptor::from(acceptor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed pair made by Debian's openssl, as an operator would make one.
    fn key_pair(dir: &std::path::Path) -> crate::config::KeyPair {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "{made:?}");
        crate::config::KeyPair {
            tls_cert_file: cert,
            tls_key_file: key,
        }
    }

    #[tokio::test]
    async fn the_configured_pair_serves_tls() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            enable_tls_streaming: true,
            x509_key_pair_streaming: key_pair(dir.path()),
            ..Config::default()
        };
        let acceptor = tls_acceptor(&config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            tls.write_all(b"over TLS").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let connector = tokio_native_tls::native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let connector = tokio_native_tls::TlsConnector::from(connector);
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut tls = connector.connect("127.0.0.1", tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"over TLS");
        server.await.unwrap();
    }

    #[test]
    fn a_bad_pair_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        let config = Config {
            enable_tls_streaming: true,
            x509_key_pair_streaming: crate::config::KeyPair {
                tls_cert_file: dir.path().join("cert.pem"),
                tls_key_file: dir.path().join("key.pem"),
            },
            ..Config::default()
        };
        assert!(matches!(
            tls_acceptor(&config),
            Err(ManagerError::Config(_))
        ));
        let missing = Config {
            x509_key_pair_streaming: crate::config::KeyPair {
                tls_cert_file: dir.path().join("none.pem"),
                tls_key_file: dir.path().join("none.pem"),
            },
            ..config
        };
        assert!(matches!(
            tls_acceptor(&missing),
            Err(ManagerError::Io { .. })
        ));
    }
}
