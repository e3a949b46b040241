//! The wire contracts crust speaks.
//!
//! Every message here is generated from containerd's own `.proto` files by the maintained
//! `containerd-shim-protos` crate. This crate adds only what the generated code lacks: the task
//! service registered under both package names containerd uses, the type URLs containerd puts in
//! `Any` values, the event topics paired with their payloads, and containerd's identifier rule.

pub mod identifiers;
pub mod task;
pub mod typeurl;

pub use containerd_shim_protos::{protobuf, ttrpc};

/// Task lifecycle events a shim forwards to containerd (`containerd.events.*`).
pub mod events {
    pub use containerd_shim_protos::events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
        TaskOOM, TaskPaused, TaskResumed, TaskStart,
    };
    pub use containerd_shim_protos::shim::event::Envelope;
    pub use containerd_shim_protos::shim::events::ForwardRequest;
    pub use containerd_shim_protos::shim_async::{Events, EventsClient, create_events};

    /// ttrpc service name of containerd's event forwarding endpoint.
    pub const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";

    /// An event payload together with the topic and type URL containerd files it under.
    pub trait TaskEvent: protobuf::Message {
        /// Topic containerd publishes the event on, e.g. `/tasks/exit`.
        const TOPIC: &'static str;
        /// Type URL of the payload inside the envelope's `Any`.
        const TYPE_URL: &'static str;
    }

    macro_rules! task_event {
        ($($ty:ident => $topic:literal),* $(,)?) => {$(
            impl TaskEvent for $ty {
                const TOPIC: &'static str = $topic;
                const TYPE_URL: &'static str = concat!("containerd.events.", stringify!($ty));
            }
        )*};
    }

    task_event! {
        TaskCreate => "/tasks/create",
        TaskStart => "/tasks/start",
        TaskExit => "/tasks/exit",
        TaskDelete => "/tasks/delete",
        TaskOOM => "/tasks/oom",
        TaskExecAdded => "/tasks/exec-added",
        TaskExecStarted => "/tasks/exec-started",
        TaskPaused => "/tasks/paused",
        TaskResumed => "/tasks/resumed",
        TaskCheckpointed => "/tasks/checkpointed",
    }
}

/// `containerd.runc.v1` messages: the runtime options of `io.containerd.runc.v2` and friends.
pub mod runc_options {
    pub use containerd_shim_protos::shim::oci::{CheckpointOptions, Options, ProcessDetails};
}

/// The 2.3+ shim bootstrap messages (`containerd.runtime.bootstrap.v1`).
pub mod bootstrap {
    pub use containerd_shim_protos::bootstrap_api::{
        BootstrapParams, BootstrapResult, Extension, LogLevel,
    };
}

/// cgroup metrics as containerd reports them from `Stats`.
pub mod cgroups {
    /// `io.containerd.cgroups.v1`.
    pub mod v1 {
        pub use containerd_shim_protos::cgroups::metrics::*;
    }
    /// `io.containerd.cgroups.v2`.
    pub mod v2 {
        pub use containerd_shim_protos::cgroups_v2::metrics::*;
    }
}

/// What a runtime reports about itself (`containerd.types.RuntimeInfo`), answered to `-info`.
pub mod introspection {
    pub use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
}

/// `google.protobuf` well-known types as the generated code uses them.
pub mod wellknown {
    pub use containerd_shim_protos::protobuf::well_known_types::{
        any::Any, empty::Empty, timestamp::Timestamp,
    };
}

#[cfg(test)]
mod tests {
    use super::events::{TaskEvent, TaskExecStarted, TaskExit, TaskOOM};

    #[test]
    fn event_type_urls_are_full_message_names() {
        assert_eq!(TaskExit::TYPE_URL, "containerd.events.TaskExit");
        assert_eq!(TaskExit::TOPIC, "/tasks/exit");
        assert_eq!(TaskOOM::TYPE_URL, "containerd.events.TaskOOM");
        assert_eq!(TaskExecStarted::TOPIC, "/tasks/exec-started");
    }
}

/// crust's own shim services, for what containerd's Task API has no call for
/// (`proto/crust/shim/v1/*.proto`), served on the shim's ttrpc socket beside the Task API.
pub mod shim {
    /// Messages of the Logs service.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        dead_code,
        unsafe_code,
        unused_imports,
        unused_mut,
        unused_results,
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals,
        trivial_casts,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    pub mod logs {
        include!(concat!(env!("OUT_DIR"), "/crust/logs.rs"));
    }
    /// The Logs service: server trait, registration and client.
    #[allow(
        missing_docs,
        missing_debug_implementations,
        dead_code,
        unsafe_code,
        unused_imports,
        unused_mut,
        unused_results,
        non_camel_case_types,
        non_snake_case,
        non_upper_case_globals,
        trivial_casts,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    pub mod logs_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/crust/logs_ttrpc.rs"));
    }
    pub use logs::{ReopenLogRequest, ReopenLogResponse};
    pub use logs_ttrpc::{Logs, LogsClient, create_logs};

    /// The Logs service's ttrpc name.
    pub const LOGS_SERVICE: &str = "crust.shim.v1.Logs";
}

/// Kubernetes CRI `runtime.v1`: RuntimeService and ImageService messages, clients and servers,
/// generated by the `k8s-cri` crate from the upstream `api.proto`.
#[cfg(feature = "cri")]
pub mod cri {
    pub use k8s_cri::v1::*;
    pub use tonic;
}
