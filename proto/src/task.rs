//! containerd's shim Task API.
//!
//! containerd 1.6 and 1.7 call the service `containerd.task.v2.Task`; containerd 2.x shims
//! register `containerd.task.v3.Task`. The two `shim.proto` files differ only in their package
//! name, so the messages are byte-for-byte the same and one implementation serves both names.

use std::collections::HashMap;
use std::sync::Arc;

pub use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, Mount,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
pub use containerd_shim_protos::shim_async::{Task, TaskClient};

use crate::ttrpc::r#async::Service;

/// Service name containerd 1.6–1.7 (and 2.x through its bridge) call.
pub const SERVICE_V2: &str = "containerd.task.v2.Task";
/// Service name containerd 2.x calls when a shim reports task API version 3.
pub const SERVICE_V3: &str = "containerd.task.v3.Task";

/// The ttrpc service table for `task` under both the v2 and the v3 name.
pub fn services(task: Arc<dyn Task + Send + Sync>) -> HashMap<String, Service> {
    let mut table = containerd_shim_protos::shim_async::create_task(task.clone());
    let second = containerd_shim_protos::shim_async::create_task(task);
    for (name, service) in second {
        // The generated table is keyed by the v3 name; the same handlers answer under v2.
        if name == SERVICE_V3 {
            table.insert(SERVICE_V2.to_string(), service);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task service that keeps every generated default.
    #[derive(Debug)]
    struct NoopTask;
    impl Task for NoopTask {}

    #[test]
    fn both_service_names_are_registered() {
        let table = services(Arc::new(NoopTask));
        assert!(table.contains_key(SERVICE_V2), "{:?}", table.keys());
        assert!(table.contains_key(SERVICE_V3), "{:?}", table.keys());
        assert_eq!(table.len(), 2);
    }
}
