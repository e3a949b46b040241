//! crustd's one error type, and the one place it becomes a gRPC status.

use std::io;

use crust_proto::cri::tonic::{Code, Status};

/// What can go wrong in crustd.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is malformed: bad reference, bad id, path outside where it may go.
    #[error("{0}")]
    InvalidArgument(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A registry refused our credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A registry or another process did not answer in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Talking to a registry failed, or it sent content that does not match its digest.
    #[error("{0}")]
    Registry(String),
    /// A file system or system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What crustd was doing.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The configuration is not usable.
    #[error("config: {0}")]
    Config(String),
    /// A shim call failed (runc's own error included).
    #[error("{0}")]
    Shim(String),
    /// A CNI plugin failed (the plugin, the network and its own message included).
    #[error("{0}")]
    Network(String),
    /// A process crustd depends on is gone (a pod's shim, a pod's supervisor).
    #[error("{0}")]
    Unavailable(String),
    /// crustd does not offer this (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// A bounded resource (waiting streaming requests) is used up.
    #[error("{0}")]
    ResourceExhausted(String),
}

impl ManagerError {
    /// An I/O failure while doing `context`.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        ManagerError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code the error maps to.
    pub fn code(&self) -> Code {
        match self {
            ManagerError::InvalidArgument(_) => Code::InvalidArgument,
            ManagerError::NotFound(_) => Code::NotFound,
            ManagerError::AlreadyExists(_) => Code::AlreadyExists,
            ManagerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ManagerError::Unauthenticated(_) => Code::Unauthenticated,
            ManagerError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ManagerError::Registry(_) | ManagerError::Unavailable(_) => Code::Unavailable,
            ManagerError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Code::NotFound
            }
            ManagerError::Unimplemented(_) => Code::Unimplemented,
            ManagerError::ResourceExhausted(_) => Code::ResourceExhausted,
            ManagerError::Io { .. }
            | ManagerError::Config(_)
            | ManagerError::Shim(_)
            | ManagerError::Network(_) => Code::Internal,
        }
    }
}

impl From<ManagerError> for Status {
    fn from(error: ManagerError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// Result with [`ManagerError`].
pub type Result<T> = std::result::Result<T, ManagerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code_and_keeps_its_message() {
        let cases = [
            (
                ManagerError::InvalidArgument("bad".into()),
                Code::InvalidArgument,
            ),
            (ManagerError::NotFound("gone".into()), Code::NotFound),
            (
                ManagerError::AlreadyExists("twice".into()),
                Code::AlreadyExists,
            ),
            (
                ManagerError::FailedPrecondition("not now".into()),
                Code::FailedPrecondition,
            ),
            (
                ManagerError::Unauthenticated("denied".into()),
                Code::Unauthenticated,
            ),
            (
                ManagerError::DeadlineExceeded("slow".into()),
                Code::DeadlineExceeded,
            ),
            (ManagerError::Registry("down".into()), Code::Unavailable),
            (
                ManagerError::Unavailable("shim gone".into()),
                Code::Unavailable,
            ),
            (
                ManagerError::io("read x", io::Error::from(io::ErrorKind::NotFound)),
                Code::NotFound,
            ),
            (
                ManagerError::io("write x", io::Error::from(io::ErrorKind::PermissionDenied)),
                Code::Internal,
            ),
            (ManagerError::Config("bad knob".into()), Code::Internal),
            (ManagerError::Shim("runc failed".into()), Code::Internal),
            (
                ManagerError::Network("bridge failed".into()),
                Code::Internal,
            ),
            (
                ManagerError::Unimplemented("no streaming".into()),
                Code::Unimplemented,
            ),
            (
                ManagerError::ResourceExhausted("too many".into()),
                Code::ResourceExhausted,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
