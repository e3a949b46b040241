//! The ttrpc Events endpoint crustd gives its shims as `TTRPC_ADDRESS`: task exits and OOM
//! kills arrive here as containerd would receive them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crust_proto::events::{Events, ForwardRequest, TaskEvent, TaskExit, TaskOOM, create_events};
use crust_proto::protobuf::Message;
use crust_proto::ttrpc::{self, r#async::Server, r#async::TtrpcContext};
use crust_proto::wellknown::Empty;

use super::Core;
use super::shim::{Exit, nanos};
use crate::config::Config;
use crate::error::{ManagerError, Result};

/// The Events socket: crustd's CRI socket + `.ttrpc`, as containerd names its own. Shims keep
/// it for life, so it must stay the same across crustd restarts.
pub fn address(config: &Config) -> PathBuf {
    let mut path = config.socket.clone().into_os_string();
    path.push(".ttrpc");
    PathBuf::from(path)
}

/// How long an event may wait for room in a pod supervisor's mailbox; past that the shim is
/// told to try again later (it retries with backoff).
const DELIVERY_LIMIT: Duration = Duration::from_secs(5);

struct Receiver {
    core: Arc<Core>,
}

impl Receiver {
    /// The supervisor of the pod `task` belongs to; none for a pod crustd no longer knows
    /// (its events are dropped).
    fn supervisor_of(&self, task: &str) -> Option<super::Supervisor> {
        self.core
            .pod_of_task(task)
            .and_then(|pod| self.core.supervisor(&pod).ok())
    }
}

/// Waits for `delivery` up to [`DELIVERY_LIMIT`]; past that, or if it failed, the shim is
/// answered Unavailable and sends the event again later.
async fn deliver(delivery: impl std::future::Future<Output = Result<()>>) -> ttrpc::Result<()> {
    let failed =
        |why: String| ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNAVAILABLE, why));
    match tokio::time::timeout(DELIVERY_LIMIT, delivery).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("the pod's supervisor is busy; send it again".into())),
    }
}

#[async_trait]
impl Events for Receiver {
    async fn forward(
        &self,
        _context: &TtrpcContext,
        request: ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let envelope = request.envelope.unwrap_or_default();
        let value = envelope
            .event
            .as_ref()
            .map(|e| e.value.as_slice())
            .unwrap_or_default();
        match envelope.topic.as_str() {
            TaskExit::TOPIC => {
                // Exec exits carry the exec's id: ExecSync waits for those itself.
                if let Ok(exit) = TaskExit::parse_from_bytes(value)
                    && (exit.id.is_empty() || exit.id == exit.container_id)
                {
                    if let Some(supervisor) = self.supervisor_of(&exit.container_id) {
                        let status = Exit {
                            status: exit.exit_status,
                            at: nanos(&exit.exited_at),
                        };
                        deliver(supervisor.exit(exit.container_id, status)).await?;
                    }
                }
            }
            TaskOOM::TOPIC => {
                if let Ok(oom) = TaskOOM::parse_from_bytes(value) {
                    if let Some(supervisor) = self.supervisor_of(&oom.container_id) {
                        deliver(supervisor.oom(oom.container_id)).await?;
                    }
                }
            }
            topic => log::debug!("event {topic}"),
        }
        Ok(Empty::new())
    }
}

/// Serves the Events endpoint at `path` (replacing a stale socket).
pub async fn serve(core: Arc<Core>, path: &Path) -> Result<Server> {
    let _ = std::fs::remove_file(path);
    let receiver: Arc<dyn Events + Send + Sync> = Arc::new(Receiver { core });
    let mut server = Server::new()
        .bind(&format!("unix://{}", path.display()))
        .map_err(|e| {
            ManagerError::io(format!("bind {}", path.display()), std::io::Error::other(e))
        })?
        .register_service(create_events(receiver));
    server
        .start()
        .await
        .map_err(|e| ManagerError::io("start events server", std::io::Error::other(e)))?;
    Ok(server)
}
