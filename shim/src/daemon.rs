//! The serving daemon: one per pod (or task), started by `start`, serving the Task API on the
//! socket `start` bound and passed as fd 3.

use std::fs;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crust_proto::ttrpc::r#async::Server;
use crust_proto::ttrpc::r#async::transport::Listener;
use futures_core::Stream;
use log::LevelFilter;
use nix::unistd::{getegid, geteuid};

use crate::cli::Flags;
use crate::error::{Result, ShimError};
use crate::events::Publisher;
use crate::logging::{self, Sink};
use crate::reaper::{Reaper, reap_on_sigchld};
use crate::service::{TaskService, services};
use crate::signals::SignalPipe;
use crate::sys;
use crate::task::Tasks;

/// How long a shutting-down daemon waits for containerd to take its last events.
const EVENT_FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// Runs the daemon until Shutdown (with no containers left) or SIGTERM.
pub fn run(flags: &Flags) -> Result<()> {
    // Adopt container processes when runc exits, and catch SIGCHLD before any child exists, so
    // that no exit can happen unobserved.
    prctl::set_child_subreaper(true).map_err(|errno| {
        ShimError::io(
            "become child subreaper",
            io::Error::from_raw_os_error(errno),
        )
    })?;
    let sigchld = SignalPipe::install(&[libc::SIGCHLD])
        .map_err(|e| ShimError::io("install SIGCHLD handler", e))?;
    let terminate = SignalPipe::install(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| ShimError::io("install SIGTERM handler", e))?;
    sys::ignore_sigpipe().map_err(|e| ShimError::io("ignore SIGPIPE", e))?;
    flags.validate_identity()?;

    let bundle = flags.bundle_dir()?;
    let sink = Sink::bundle_fifo(&bundle).unwrap_or(Sink::Stderr);
    let level = if flags.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    logging::init(sink, level, &flags.namespace);

    let listener = sys::inherited_listener().map_err(|e| ShimError::io("take listener", e))?;
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|address| address.as_pathname().map(PathBuf::from));
    // One thread: a shim per pod must stay small, and nothing it does needs a second core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ShimError::io("build runtime", e))?;
    let result = runtime.block_on(serve(
        &flags.namespace,
        listener,
        socket,
        sigchld,
        terminate,
    ));
    if let Err(e) = &result {
        log::error!("shim daemon failed: {e}");
    }
    result
}

async fn serve(
    namespace: &str,
    listener: UnixListener,
    socket: Option<PathBuf>,
    sigchld: SignalPipe,
    mut terminate: SignalPipe,
) -> Result<()> {
    let reaper = Reaper::new();
    let reaping = Arc::clone(&reaper);
    tokio::spawn(async move {
        if let Err(e) = reap_on_sigchld(reaping, sigchld).await {
            log::error!("reaper stopped: {e}");
        }
    });
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty());
    let (events, _sender) = Publisher::start(ttrpc_address, namespace);
    let tasks = Tasks::new(namespace, reaper, events.clone());
    let service = Arc::new(TaskService::new(Arc::clone(&tasks)));
    let mut server = Server::new()
        .add_listener(same_user_only(listener).map_err(|e| ShimError::io("listen", e))?)
        .register_service(services(service));
    server
        .start()
        .await
        .map_err(|e| ShimError::io("start ttrpc server", io::Error::other(e.to_string())))?;
    log::info!(
        "serving {} pid={}",
        socket
            .as_ref()
            .map_or("fd 3".into(), |s| s.display().to_string()),
        std::process::id()
    );

    tokio::select! {
        _ = tasks.shutdown_requested() => {}
        result = terminate.next() => {
            if let Err(e) = result {
                log::error!("termination signal pipe failed: {e}");
            }
            log::info!("terminated by signal");
        }
    }
    // Unlink first: a `start` for this group from now on binds a new daemon instead of
    // handing containerd the address of one that is going away.
    if let Some(socket) = &socket {
        if let Err(e) = fs::remove_file(socket) {
            log::warn!("removing socket {}: {e}", socket.display());
        }
    }
    if let Err(e) = server.shutdown().await {
        log::warn!("closing connections: {e}");
    }
    if !events.wait_delivered(EVENT_FLUSH_LIMIT).await {
        log::warn!("exiting with events containerd did not take");
    }
    log::info!("shim exiting");
    Ok(())
}

/// The listener, accepting only peers running as the daemon's own user (containerd's shims
/// require the same).
fn same_user_only(listener: UnixListener) -> io::Result<Listener> {
    listener.set_nonblocking(true)?;
    Ok(Listener::new(SameUser {
        listener: tokio::net::UnixListener::from_std(listener)?,
        uid: geteuid().as_raw(),
        gid: getegid().as_raw(),
    }))
}

struct SameUser {
    listener: tokio::net::UnixListener,
    uid: u32,
    gid: u32,
}

impl Stream for SameUser {
    type Item = io::Result<tokio::net::UnixStream>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (stream, _) = match self.listener.poll_accept(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(accepted)) => accepted,
            };
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == self.uid && peer.gid() == self.gid => {
                    return Poll::Ready(Some(Ok(stream)));
                }
                Ok(peer) => log::warn!(
                    "refused connection from uid {} gid {}",
                    peer.uid(),
                    peer.gid()
                ),
                Err(e) => log::warn!("refused connection without credentials: {e}"),
            }
        }
    }
}
