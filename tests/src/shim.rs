//! Which shim the suite drives: crust's, or containerd's own Go shim as the reference.
//!
//! `CRUST_TEST_SHIM=runc` runs the same tests against containerd's `io.containerd.runc.v2`, so
//! the suite's expectations are checked against the behaviour crust must match.

use std::path::{Path, PathBuf};

/// Environment variable choosing the shim under test.
pub const SELECT_ENV: &str = "CRUST_TEST_SHIM";
/// Environment variable overriding where crust's shim binary is.
pub const BINARY_ENV: &str = "CRUST_SHIM_BIN";

/// The shim under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shim {
    /// crust's `containerd-shim-crust-v2`.
    Crust,
    /// containerd's `containerd-shim-runc-v2`.
    GoRunc,
}

impl Shim {
    /// The shim chosen by [`SELECT_ENV`] (crust when unset).
    pub fn from_env() -> Self {
        match std::env::var(SELECT_ENV).as_deref() {
            Ok("runc") | Ok("go") => Shim::GoRunc,
            Ok("crust") | Ok("") | Err(_) => Shim::Crust,
            Ok(other) => panic!("{SELECT_ENV}={other}: expected crust or runc"),
        }
    }

    /// The runtime name containerd resolves to this shim's binary.
    pub fn runtime(self) -> &'static str {
        match self {
            Shim::Crust => "io.containerd.crust.v2",
            Shim::GoRunc => "io.containerd.runc.v2",
        }
    }

    /// The shim binary.
    pub fn binary(self) -> PathBuf {
        match self {
            Shim::Crust => crust_binary(),
            Shim::GoRunc => PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
        }
    }

    /// Whether this is crust's shim.
    pub fn is_crust(self) -> bool {
        self == Shim::Crust
    }
}

/// crust's shim binary: [`BINARY_ENV`], else the one cargo built into the same profile
/// directory as the running test or program.
pub fn crust_binary() -> PathBuf {
    let binary = locate_crust_binary();
    assert!(
        binary.exists(),
        "{} is missing: build the shim first (cargo build -p crust-shim) or set {BINARY_ENV}",
        binary.display()
    );
    binary
}

/// Whether [`crust_binary`] would find the shim.
pub fn crust_binary_exists() -> bool {
    locate_crust_binary().exists()
}

fn locate_crust_binary() -> PathBuf {
    match std::env::var_os(BINARY_ENV) {
        Some(path) => PathBuf::from(path),
        None => built_binary("containerd-shim-crust-v2"),
    }
}

/// Where cargo put the workspace program `name`: the profile directory of the running test
/// (target/<profile>/deps) or program (target/<profile>).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    let beside = dir.join(name);
    if beside.exists() || dir.file_name().is_none_or(|n| n != "deps") {
        return beside;
    }
    dir.parent().unwrap_or(Path::new("/")).join(name)
}
