//! crustd's side of the shim: the binary run as containerd runs it (`start`, `delete`), the
//! daemon as a process, and the Task API calls made on it.

mod client;
mod launcher;
mod process;

pub use client::{
    Exit, ShimClient, TaskMetrics, TaskStatus, create_request, is_shim_trouble, nanos, process_any,
    socket_path,
};
pub use launcher::ShimLauncher;
pub use process::ShimProcess;
