//! `delete`: clean up a task whose daemon is gone (or whose connection containerd closed).
//!
//! containerd runs it with the bundle as working directory and gives it 5 seconds. It removes
//! the runc container (forcibly: its processes are unsupervised now), unmounts the rootfs, and
//! prints a `DeleteResponse` whose status, 137, says the task was killed. The bundle itself is
//! containerd's to remove.

use std::fs;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use crust_proto::protobuf::{Message, MessageField};
use crust_proto::task::DeleteResponse;
use log::LevelFilter;

use crate::cli::Flags;
use crate::error::{Result, ShimError};
use crate::events::timestamp;
use crate::logging::{self, Sink};
use crate::mount;
use crate::options::RuncConfig;
use crate::reaper::{Reaper, reap_on_sigchld};
use crate::runc::Runtime;
use crate::signals::SignalPipe;

/// The status of a task cleaned up this way: 128 + SIGKILL, as containerd's shim reports.
const KILLED_STATUS: u32 = 137;
/// Time left for runc within containerd's 5 s budget for the whole `delete`.
const RUNC_DELETE_LIMIT: Duration = Duration::from_secs(3);

/// Runs `delete`; the response goes to stdout, warnings to stderr.
pub fn run(flags: &Flags) -> Result<()> {
    flags.validate_identity()?;
    // The reaper collects runc: install its signal before spawning anything.
    let sigchld = SignalPipe::install(&[libc::SIGCHLD])
        .map_err(|e| ShimError::io("install SIGCHLD handler", e))?;
    let level = if flags.debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Warn
    };
    logging::init(Sink::Stderr, level, &flags.namespace);
    let bundle = flags.bundle_dir()?;
    let config = RuncConfig::load_or_default(&bundle, &flags.namespace);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ShimError::io("build runtime", e))?;
    runtime.block_on(async {
        let reaper = Reaper::new();
        tokio::spawn(reap_on_sigchld(reaper.clone(), sigchld));
        match Runtime::new(&config, &bundle, reaper) {
            Ok(runc) => {
                match tokio::time::timeout(RUNC_DELETE_LIMIT, runc.delete(&flags.id, true)).await {
                    Ok(Ok(())) | Ok(Err(ShimError::NotFound(_))) => {}
                    Ok(Err(e)) => log::warn!("removing container {}: {e}", flags.id),
                    // runc dies with this process (parent-death signal); the rest still runs.
                    Err(_) => log::warn!(
                        "removing container {} took over {}s",
                        flags.id,
                        RUNC_DELETE_LIMIT.as_secs()
                    ),
                }
            }
            Err(e) => log::warn!("cannot run the OCI runtime to remove {}: {e}", flags.id),
        }
    });

    mount::unmount_all(&bundle.join("rootfs"));
    let pid = fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let response = DeleteResponse {
        pid,
        exit_status: KILLED_STATUS,
        exited_at: MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encode delete response: {e}")))?;
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| ShimError::io("write delete response", e))
}
