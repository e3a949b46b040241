//! The shim's one error type, and its mapping to ttrpc status codes.
//!
//! containerd acts on the code, not the text: NotFound on Kill or Delete means "already gone"
//! and is treated as success, FailedPrecondition is a state refusal, and so on. Every request
//! path returns [`ShimError`]; the conversion in this file is the only place codes are chosen.

use std::io;

use crust_proto::ttrpc::{self, Code};

/// Result of the shim's core operations.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The request is malformed: a bad id, path, mount or option.
    #[error("{0}")]
    InvalidArgument(String),
    /// No container or process by that id, or the process has already finished.
    #[error("{0}")]
    NotFound(String),
    /// A container or exec with that id already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The process is in a state that does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is not supported by this shim.
    #[error("{0}")]
    Unimplemented(String),
    /// A call to another process did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The OCI runtime failed; `message` is the runtime's own explanation.
    #[error("OCI runtime {operation} failed: {message}")]
    Runtime {
        /// The runc subcommand that failed.
        operation: &'static str,
        /// The runtime's last error message, from its JSON log when it wrote one.
        message: String,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the shim was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ShimError {
    /// Wraps an I/O error with what the shim was doing when it happened.
    pub fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The ttrpc status code containerd should see.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            // containerd's runc shim reports runtime failures as Unknown; clients (kubelet among
            // them) match on the message, which carries runc's own words.
            Self::Runtime { .. } => Code::UNKNOWN,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Code::NOT_FOUND,
            Self::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(error: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: ShimError) -> (Code, String) {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn every_kind_maps_to_its_code() {
        let cases = [
            (
                ShimError::InvalidArgument("bad".into()),
                Code::INVALID_ARGUMENT,
            ),
            (ShimError::NotFound("gone".into()), Code::NOT_FOUND),
            (
                ShimError::AlreadyExists("twice".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                ShimError::FailedPrecondition("running".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                ShimError::Unimplemented("pause".into()),
                Code::UNIMPLEMENTED,
            ),
            (
                ShimError::DeadlineExceeded("slow".into()),
                Code::DEADLINE_EXCEEDED,
            ),
            (
                ShimError::Runtime {
                    operation: "create",
                    message: "boom".into(),
                },
                Code::UNKNOWN,
            ),
            (
                ShimError::io(
                    "open fifo",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ),
                Code::INTERNAL,
            ),
            (
                ShimError::io("open fifo", io::Error::from(io::ErrorKind::NotFound)),
                Code::NOT_FOUND,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let (got_code, got_text) = status_of(error);
            assert_eq!(got_code, code, "{text}");
            assert_eq!(got_text, text);
        }
    }

    #[test]
    fn runtime_errors_read_like_containerds() {
        let error = ShimError::Runtime {
            operation: "create",
            message: "exec: \"nosuch\": executable file not found in $PATH".into(),
        };
        assert_eq!(
            error.to_string(),
            "OCI runtime create failed: exec: \"nosuch\": executable file not found in $PATH"
        );
    }
}
