//! containerd-shim-crust-v2: a drop-in for containerd's `io.containerd.runc.v2` shim.
//!
//! One binary, four roles chosen by containerd's command line: `start` launches (or reuses)
//! the serving daemon of a pod and prints its address, the daemon serves the Task API over
//! ttrpc, `delete` cleans up after a daemon that is gone, and `-v`/`-info` describe the shim.

pub mod address;
pub mod attach;
pub mod cgroup;
pub mod cli;
pub mod console;
pub mod crilog;
pub mod daemon;
pub mod delete;
pub mod error;
pub mod events;
pub mod info;
pub mod logging;
pub mod mount;
pub mod oom;
pub mod options;
pub mod reaper;
pub mod runc;
pub mod service;
pub mod signals;
pub mod spec;
pub mod start;
pub mod stdio;
pub mod sys;
pub mod task;

use std::ffi::OsString;

use cli::{Action, Flags};
use error::Result;

/// Runs the shim with the arguments after the program name.
pub fn run(args: &[OsString]) -> Result<()> {
    let flags = Flags::parse(args)?;
    match flags.action()? {
        Action::Version => {
            print!("{}", info::version_text());
            Ok(())
        }
        Action::Info => info::run(),
        Action::Start => start::run(flags),
        Action::Delete => delete::run(&flags),
        Action::Serve => daemon::run(&flags),
    }
}
