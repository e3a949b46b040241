//! The shim's command line, exactly as containerd builds it.
//!
//! containerd passes Go-style flags (`-namespace ns -id id -address a -publish-binary b
//! [-bundle b] [-debug] start|delete`); with no action the binary is the serving daemon.

use std::ffi::OsString;
use std::path::PathBuf;

use crust_proto::identifiers;

use crate::error::{Result, ShimError};

/// What the shim binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Print the version and exit.
    Version,
    /// Read runtime options on stdin and print a `RuntimeInfo` describing the shim.
    Info,
    /// Start (or reuse) the serving daemon for a task and print its address.
    Start,
    /// Clean up after a daemon that is gone.
    Delete,
    /// Serve the Task API on the listener inherited from `start`.
    Serve,
}

/// Parsed command line.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// containerd namespace.
    pub namespace: String,
    /// Task id.
    pub id: String,
    /// containerd's gRPC address; the socket address is derived from it.
    pub address: String,
    /// containerd binary, for the deprecated publish path (unused: events go over ttrpc).
    pub publish_binary: String,
    /// Bundle directory when it is not the working directory.
    pub bundle: String,
    /// Debug logging.
    pub debug: bool,
    /// Positional action, empty for the daemon.
    pub action: String,
    version: bool,
    info: bool,
}

impl Flags {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[OsString]) -> Result<Self> {
        let mut flags = Flags::default();
        let mut version_long = false;
        // Accepted for compatibility with containerd's flag set; crust derives both itself.
        let mut socket = String::new();
        let mut debug_socket = String::new();
        let positional: Vec<String> = go_flag::parse_args(args, |f| {
            f.add_flag("namespace", &mut flags.namespace);
            f.add_flag("id", &mut flags.id);
            f.add_flag("address", &mut flags.address);
            f.add_flag("publish-binary", &mut flags.publish_binary);
            f.add_flag("bundle", &mut flags.bundle);
            f.add_flag("debug", &mut flags.debug);
            f.add_flag("v", &mut flags.version);
            f.add_flag("version", &mut version_long);
            f.add_flag("socket", &mut socket);
            f.add_flag("debug-socket", &mut debug_socket);
            f.add_flag("info", &mut flags.info);
        })
        .map_err(|e| ShimError::InvalidArgument(format!("bad command line: {e}")))?;
        flags.version |= version_long;
        if let Some(action) = positional.first() {
            flags.action = action.clone();
        }
        Ok(flags)
    }

    /// The requested action.
    pub fn action(&self) -> Result<Action> {
        if self.version {
            return Ok(Action::Version);
        }
        if self.info {
            return Ok(Action::Info);
        }
        match self.action.as_str() {
            "start" => Ok(Action::Start),
            "delete" => Ok(Action::Delete),
            "" => Ok(Action::Serve),
            other => Err(ShimError::InvalidArgument(format!(
                "unknown action {other:?}: expected start, delete or none"
            ))),
        }
    }

    /// Checks the namespace and id every action but `-v` needs.
    pub fn validate_identity(&self) -> Result<()> {
        identifiers::validate(&self.namespace)
            .map_err(|e| ShimError::InvalidArgument(format!("namespace: {e}")))?;
        identifiers::validate(&self.id)
            .map_err(|e| ShimError::InvalidArgument(format!("id: {e}")))?;
        Ok(())
    }

    /// The bundle: `-bundle` when given, else the working directory containerd set.
    pub fn bundle_dir(&self) -> Result<PathBuf> {
        if !self.bundle.is_empty() {
            return Ok(PathBuf::from(&self.bundle));
        }
        std::env::current_dir().map_err(|e| ShimError::io("read working directory", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Flags {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Flags::parse(&args).unwrap()
    }

    #[test]
    fn parses_containerd_16_start() {
        let flags = parse(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ]);
        assert_eq!(flags.namespace, "k8s.io");
        assert_eq!(flags.id, "abc");
        assert_eq!(flags.address, "/run/containerd/containerd.sock");
        assert!(flags.debug);
        assert_eq!(flags.action().unwrap(), Action::Start);
        flags.validate_identity().unwrap();
    }

    #[test]
    fn parses_delete_with_bundle_and_equals_syntax() {
        let flags = parse(&["-namespace=default", "-id=t1", "-bundle", "/b", "delete"]);
        assert_eq!(flags.action().unwrap(), Action::Delete);
        assert_eq!(flags.bundle_dir().unwrap(), PathBuf::from("/b"));
    }

    #[test]
    fn no_action_is_the_daemon_and_v_is_version() {
        assert_eq!(
            parse(&["-namespace", "n", "-id", "i"]).action().unwrap(),
            Action::Serve
        );
        assert_eq!(parse(&["-v"]).action().unwrap(), Action::Version);
        assert_eq!(parse(&["-version"]).action().unwrap(), Action::Version);
        assert_eq!(parse(&["-info"]).action().unwrap(), Action::Info);
    }

    #[test]
    fn refuses_traversal_in_ids_and_unknown_actions() {
        let flags = parse(&["-namespace", "default", "-id", "../x", "start"]);
        assert!(matches!(
            flags.validate_identity(),
            Err(ShimError::InvalidArgument(_))
        ));
        let flags = parse(&["-namespace", "a/b", "-id", "x", "start"]);
        assert!(matches!(
            flags.validate_identity(),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse(&["run"]).action(),
            Err(ShimError::InvalidArgument(why)) if why.contains("unknown action \"run\"")
        ));
        let args: Vec<OsString> = ["-nosuchflag"].iter().map(OsString::from).collect();
        assert!(matches!(
            Flags::parse(&args),
            Err(ShimError::InvalidArgument(why)) if why.starts_with("bad command line")
        ));
    }
}
