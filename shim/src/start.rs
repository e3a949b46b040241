//! `start`: find or launch the daemon serving a task's group, and tell containerd its address.
//!
//! containerd 1.6–2.2 pass runtime options as an `Any` on stdin and read a plain address back
//! (which every version accepts). containerd 2.3+ pass `BootstrapParams` on stdin and prefer a
//! `BootstrapResult`. An `Any` can happen to decode as `BootstrapParams`, so a caller counts as
//! 2.3+ only when the decoded id and namespace match the command line.
//!
//! Nothing may be written to stderr on success: containerd 1.6 reads stdout and stderr combined.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crust_proto::bootstrap::{BootstrapParams, BootstrapResult, LogLevel};
use crust_proto::protobuf::{Enum, Message};
use crust_proto::runc_options::Options;
use crust_proto::typeurl;
use crust_proto::wellknown::Any;

use crate::address::{self, Claim};
use crate::cgroup;
use crate::cli::Flags;
use crate::error::{Result, ShimError};
use crate::sys;

/// Most stdin `start` accepts; options and bootstrap parameters are a few hundred bytes.
const MAX_INPUT: u64 = 1 << 20;
/// The task API version reported to 2.3+ callers. The daemon serves v2 and v3 alike.
const TASK_API_VERSION: i32 = 3;

/// What containerd sent on stdin.
#[derive(Debug, PartialEq)]
pub enum Caller {
    /// containerd before 2.3: flags, environment, and maybe runtime options.
    Legacy,
    /// containerd 2.3+: bootstrap parameters.
    Bootstrap(Box<BootstrapParams>),
}

impl Caller {
    /// Tells the two protocols apart.
    pub fn detect(input: &[u8], flags: &Flags) -> Self {
        if input.is_empty() {
            return Caller::Legacy;
        }
        match BootstrapParams::parse_from_bytes(input) {
            Ok(params)
                if !params.instance_id.is_empty()
                    && (flags.id.is_empty() || params.instance_id == flags.id)
                    && (flags.namespace.is_empty() || params.namespace == flags.namespace) =>
            {
                Caller::Bootstrap(Box::new(params))
            }
            _ => Caller::Legacy,
        }
    }
}

/// Runs `start`; on success the reply is on stdout.
pub fn run(mut flags: Flags) -> Result<()> {
    let mut input = Vec::new();
    io::stdin()
        .take(MAX_INPUT)
        .read_to_end(&mut input)
        .map_err(|e| ShimError::io("read stdin", e))?;
    let caller = Caller::detect(&input, &flags);
    if let Caller::Bootstrap(params) = &caller {
        // Flags are deprecated for 2.3+ callers and may be absent.
        if flags.id.is_empty() {
            flags.id = params.instance_id.clone();
        }
        if flags.namespace.is_empty() {
            flags.namespace = params.namespace.clone();
        }
        if flags.address.is_empty() {
            flags.address = params.containerd_grpc_address.clone();
        }
        if params.log_level.value() <= LogLevel::LOG_LEVEL_DEBUG.value() {
            flags.debug = true;
        }
    }
    flags.validate_identity()?;
    let bundle = flags.bundle_dir()?;
    let group = address::group_of(&bundle, &flags.id)?;
    let socket_dir = match &caller {
        Caller::Bootstrap(params) if params.has_socket_dir() && !params.socket_dir().is_empty() => {
            let dir = PathBuf::from(params.socket_dir());
            if !dir.is_absolute() {
                return Err(ShimError::InvalidArgument(format!(
                    "socket_dir {} is not absolute",
                    dir.display()
                )));
            }
            dir
        }
        _ => PathBuf::from(address::DEFAULT_SOCKET_DIR),
    };
    let socket = address::socket_path(&socket_dir, &flags.address, &flags.namespace, &group)?;
    let uri = address::to_uri(&socket);
    if let Claim::New(listener) = address::claim(&socket)? {
        let shim_cgroup = runtime_options(&input, &caller)
            .map(|options| options.shim_cgroup)
            .unwrap_or_default();
        if let Err(e) = spawn_daemon(&flags, &bundle, &listener, &caller, &shim_cgroup) {
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    }
    address::write_address_file(&bundle, &uri)?;
    let reply = match caller {
        Caller::Legacy => uri.into_bytes(),
        Caller::Bootstrap(_) => BootstrapResult {
            version: TASK_API_VERSION,
            address: uri,
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encode bootstrap result: {e}")))?,
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&reply)
        .and_then(|()| stdout.flush())
        .map_err(|e| ShimError::io("write reply", e))
}

/// The runc options containerd passed to `start`: the `Any` on stdin (before 2.3) or a
/// bootstrap extension (2.3+).
fn runtime_options(input: &[u8], caller: &Caller) -> Option<Options> {
    let unpack = |any: &Any| -> Option<Options> {
        typeurl::is(any, typeurl::RUNC_OPTIONS)
            .then(|| typeurl::unpack(any).ok())
            .flatten()
    };
    match caller {
        Caller::Legacy => Any::parse_from_bytes(input).ok().as_ref().and_then(unpack),
        Caller::Bootstrap(params) => params
            .extensions
            .iter()
            .find_map(|extension| extension.value.as_ref().and_then(unpack)),
    }
}

/// Launches the daemon with the bound listener on fd 3, detached in its own process group,
/// in `shim_cgroup` when one is named.
fn spawn_daemon(
    flags: &Flags,
    bundle: &Path,
    listener: &UnixListener,
    caller: &Caller,
    shim_cgroup: &str,
) -> Result<()> {
    let binary = std::env::current_exe().map_err(|e| ShimError::io("find own binary", e))?;
    let mut command = Command::new(binary);
    command
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
        ])
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if !flags.publish_binary.is_empty() {
        command.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        command.arg("-debug");
    }
    if let Caller::Bootstrap(params) = caller {
        if !params.containerd_ttrpc_address.is_empty() {
            command.env("TTRPC_ADDRESS", &params.containerd_ttrpc_address);
        }
    }
    sys::pass_listener(&mut command, listener.as_raw_fd());
    let mut daemon = command
        .spawn()
        .map_err(|e| ShimError::io("spawn shim daemon", e))?;
    if !shim_cgroup.is_empty() {
        if let Err(e) = cgroup::add_process(shim_cgroup, daemon.id()) {
            // A daemon outside the cgroup the operator asked for must not serve.
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(ShimError::io(
                format!("move the shim into cgroup {shim_cgroup}"),
                e,
            ));
        }
    }
    // Like containerd's shim: the OOM killer should pick the shim before containerd, and
    // nothing here is worth failing the start for.
    let _ = raise_oom_score(daemon.id());
    // The daemon is not waited for: it outlives `start` and is adopted by init.
    Ok(())
}

fn raise_oom_score(pid: u32) -> io::Result<()> {
    let own: i32 = fs::read_to_string("/proc/self/oom_score_adj")?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    let adjusted = (own + 1).min(1000);
    fs::write(format!("/proc/{pid}/oom_score_adj"), adjusted.to_string())
}

#[cfg(test)]
mod tests {
    use crust_proto::runc_options::Options;
    use crust_proto::typeurl;

    use super::*;

    fn flags(id: &str, namespace: &str) -> Flags {
        let mut flags = Flags::default();
        flags.id = id.into();
        flags.namespace = namespace.into();
        flags
    }

    #[test]
    fn empty_stdin_and_runtime_options_are_legacy() {
        assert_eq!(Caller::detect(b"", &flags("t1", "default")), Caller::Legacy);
        let options = Options {
            binary_name: "runc".into(),
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::RUNC_OPTIONS, &options).unwrap();
        let bytes = any.write_to_bytes().unwrap();
        // The Any decodes as BootstrapParams (type_url lands in instance_id), but the identity
        // does not match the command line.
        assert!(BootstrapParams::parse_from_bytes(&bytes).is_ok());
        assert_eq!(
            Caller::detect(&bytes, &flags("t1", "default")),
            Caller::Legacy
        );
    }

    #[test]
    fn shim_cgroup_is_read_from_either_protocol() {
        let options = Options {
            shim_cgroup: "/crust/shims".into(),
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::RUNC_OPTIONS, &options).unwrap();
        let legacy = any.write_to_bytes().unwrap();
        let found = runtime_options(&legacy, &Caller::Legacy).unwrap();
        assert_eq!(found.shim_cgroup, "/crust/shims");
        let params = BootstrapParams {
            instance_id: "t1".into(),
            extensions: vec![crust_proto::bootstrap::Extension {
                value: crust_proto::protobuf::MessageField::some(any),
                ..Default::default()
            }],
            ..Default::default()
        };
        let found = runtime_options(&[], &Caller::Bootstrap(Box::new(params))).unwrap();
        assert_eq!(found.shim_cgroup, "/crust/shims");
        assert!(runtime_options(b"", &Caller::Legacy).is_none());
    }

    #[test]
    fn matching_bootstrap_params_are_23_plus() {
        let params = BootstrapParams {
            instance_id: "t1".into(),
            namespace: "default".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            ..Default::default()
        };
        let bytes = params.write_to_bytes().unwrap();
        assert!(matches!(
            Caller::detect(&bytes, &flags("t1", "default")),
            Caller::Bootstrap(_)
        ));
        assert_eq!(
            Caller::detect(&bytes, &flags("t2", "default")),
            Caller::Legacy
        );
        assert!(matches!(
            Caller::detect(&bytes, &flags("", "")),
            Caller::Bootstrap(_)
        ));
    }
}
