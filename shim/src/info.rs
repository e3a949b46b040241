//! `-v` and `-info`: what this shim is.
//!
//! containerd 2.x calls `-info` for runtimes other than its own runc shim: runtime options
//! (an `Any`) on stdin, a `RuntimeInfo` on stdout, with the OCI runtime's `features` JSON.

use std::io::{self, Read, Write};
use std::process::Command;

use crust_proto::introspection::{RuntimeInfo, RuntimeVersion};
use crust_proto::protobuf::{Message, MessageField};
use crust_proto::typeurl;
use crust_proto::wellknown::Any;

use crate::error::{Result, ShimError};
use crate::logging::RUNTIME_NAME;
use crate::options::RuncConfig;

/// The shim's version text for `-v`.
pub fn version_text() -> String {
    format!(
        "containerd-shim-crust-v2:\n  Version:  {}\n  Revision: {}\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("CRUST_REVISION").unwrap_or("unknown")
    )
}

/// Answers `-info`.
pub fn run() -> Result<()> {
    let mut input = Vec::new();
    io::stdin()
        .take(1 << 20)
        .read_to_end(&mut input)
        .map_err(|e| ShimError::io("read stdin", e))?;
    let options = if input.is_empty() {
        None
    } else {
        Some(
            Any::parse_from_bytes(&input)
                .map_err(|e| ShimError::InvalidArgument(format!("decode runtime options: {e}")))?,
        )
    };
    // Namespace does not matter here: only the binary is used.
    let config = RuncConfig::from_any(options.as_ref(), "default")?;
    let output = Command::new(&config.binary)
        .arg("features")
        .output()
        .map_err(|e| ShimError::io(format!("run {} features", config.binary), e))?;
    if !output.status.success() {
        return Err(ShimError::Runtime {
            operation: "features",
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let info = RuntimeInfo {
        name: RUNTIME_NAME.into(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").into(),
            revision: option_env!("CRUST_REVISION").unwrap_or_default().into(),
            ..Default::default()
        }),
        options: options.into(),
        features: MessageField::some(Any {
            type_url: typeurl::OCI_FEATURES.into(),
            value: output.stdout,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = info
        .write_to_bytes()
        .map_err(|e| ShimError::InvalidArgument(format!("encode runtime info: {e}")))?;
    io::stdout()
        .write_all(&bytes)
        .map_err(|e| ShimError::io("write runtime info", e))
}
