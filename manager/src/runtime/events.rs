//! The ttrpc Events endpoint crustd gives its shims as `TTRPC_ADDRESS`: task exits and OOM
//! kills arrive here as containerd would receive them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use crust_proto::events::{Events, ForwardRequest, TaskEvent, TaskExit, TaskOOM, create_events};
use crust_proto::protobuf::Message;
use crust_proto::ttrpc::{self, r#async::Server, r#async::TtrpcContext};
use crust_proto::wellknown::Empty;

use super::Runtime;
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

struct Receiver {
    runtime: Arc<Runtime>,
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
                if let Ok(exit) = TaskExit::parse_from_bytes(value)
                    && (exit.id.is_empty() || exit.id == exit.container_id)
                {
                    self.runtime.task_exited(
                        &exit.container_id,
                        Exit {
                            status: exit.exit_status,
                            at: nanos(&exit.exited_at),
                        },
                    );
                }
            }
            TaskOOM::TOPIC => {
                if let Ok(oom) = TaskOOM::parse_from_bytes(value) {
                    self.runtime.task_oom(&oom.container_id);
                }
            }
            topic => log::debug!("event {topic}"),
        }
        Ok(Empty::new())
    }
}

/// Serves the Events endpoint at `path` (replacing a stale socket).
pub async fn serve(runtime: Arc<Runtime>, path: &Path) -> Result<Server> {
    let _ = std::fs::remove_file(path);
    let receiver: Arc<dyn Events + Send + Sync> = Arc::new(Receiver { runtime });
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
