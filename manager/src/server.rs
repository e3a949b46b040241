//! The CRI socket: bound owner-and-group only, served until SIGTERM or SIGINT.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use crust_proto::cri::image_service_server::ImageServiceServer;
use crust_proto::cri::runtime_service_server::RuntimeServiceServer;
use crust_proto::cri::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::authority::AuthorityFix;
use crate::config::Config;
use crate::cri::image_service::ImageApi;
use crate::cri::runtime_service::RuntimeApi;
use crate::error::{ManagerError, Result};
use crate::runtime::{Runtime, events};

/// Binds the CRI socket of `config` and serves until asked to stop.
pub async fn serve(config: Config) -> Result<()> {
    let listener = bind(&config.socket)?;
    let runtime = Runtime::open(&config)?;
    // Events first: shims queue what happened while crustd was away and deliver it now.
    let events_path = events::address(&config);
    let mut events_server = events::serve(Arc::clone(&runtime), &events_path).await?;
    runtime.recover().await;
    log::info!("crustd serving CRI on {}", config.socket.display());
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| ManagerError::io("watch SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| ManagerError::io("watch SIGINT", e))?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        log::info!("crustd stopping");
    };
    let served = Server::builder()
        .add_service(ImageServiceServer::new(ImageApi::new(runtime.images())))
        .add_service(RuntimeServiceServer::new(RuntimeApi::new(Arc::clone(
            &runtime,
        ))))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener).map(|accepted| accepted.map(AuthorityFix::new)),
            stop,
        )
        .await;
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
