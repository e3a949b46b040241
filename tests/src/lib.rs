//! Fixtures for crust's integration tests: a busybox image built from busybox-static, a
//! private containerd per test, a fake containerd that drives a shim directly, and cleanup of
//! everything a test started, run from `Drop` so failing tests clean up too.

pub mod cleanup;
pub mod command;
pub mod containerd;
pub mod cri;
pub mod crustd;
pub mod direct;
pub mod host;
pub mod image;
pub mod network;
pub mod parity;
pub mod pty;
pub mod registry;
pub mod shim;
pub mod streaming;
