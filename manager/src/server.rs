//! The CRI socket: bound owner-and-group only, served until SIGTERM or SIGINT.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri::image_service_server::ImageServiceServer;
use crust_proto::cri::runtime_service_server::RuntimeServiceServer;
use crust_proto::cri::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::authority::AuthorityFix;
use crate::config::Config;
use crate::connection::{self, ActivityLayer, Guarded, Slots};
use crate::cri::image_service::ImageApi;
use crate::cri::runtime_service::RuntimeApi;
use crate::error::{ManagerError, Result};
use crate::runtime::{Runtime, events};
use crate::streaming::Streaming;

/// Most requests one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Binds the CRI socket of `config` and serves until asked to stop.
pub async fn serve(config: Config) -> Result<()> {
    let listener = bind(&config.socket)?;
    let runtime = Arc::new(Runtime::open(&config)?);
    // Events first: shims queue what happened while crustd was away and deliver it now.
    let events_path = events::address(&config);
    let mut events_server = events::serve(runtime.core(), &events_path).await?;
    runtime.recover().await;
    let streaming = Arc::new(Streaming::start(&config, Arc::clone(&runtime)).await?);
    let network_watch = tokio::spawn(runtime.network().watch());
    log::info!("crustd serving CRI on {}", config.socket.display());
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| ManagerError::io("watch SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| ManagerError::io("watch SIGINT", e))?;
    let stopping = Arc::clone(&runtime);
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        log::info!("crustd stopping");
        // Open event streams would keep their connections, and so the server, alive.
        stopping.close_container_events();
    };
    let slots = Slots::default();
    let incoming = UnixListenerStream::new(listener).filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        let Some(slot) = slots.take() else {
            log::warn!(
                "refused a CRI connection: {} are open already",
                connection::MAX_CONNECTIONS
            );
            return None;
        };
        Some(Ok(Guarded::new(AuthorityFix::new(stream), slot)))
    });
    let served = Server::builder()
        // A peer that vanished with a request in flight is noticed within 40 s.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(ActivityLayer)
        .add_service(ImageServiceServer::new(ImageApi::new(runtime.images())))
        .add_service(RuntimeServiceServer::new(RuntimeApi::new(
            Arc::clone(&runtime),
            Arc::clone(&streaming),
        )))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    network_watch.abort();
    let _ = fs::remove_file(&config.socket);
    let _ = events_server.shutdown().await;
    let _ = fs::remove_file(&events_path);
    served.map_err(|e| ManagerError::io("serve CRI", std::io::Error::other(e)))
}

/// Binds `path` with mode 0660, replacing a stale socket but never a live one.
fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ManagerError::FailedPrecondition(format!(
                "{} is in use: another crustd is running",
                path.display()
            )));
        }
        fs::remove_file(path)
            .map_err(|e| ManagerError::io(format!("remove stale {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| ManagerError::io(format!("bind {}", path.display()), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(|e| ManagerError::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}
