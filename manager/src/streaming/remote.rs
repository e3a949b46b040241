//! A streaming client's channels, whatever carries them (SPDY streams or WebSocket channels):
//! what exec and attach read from and write to, and how they report the outcome.

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Bytes from the client.
pub type Input = Box<dyn AsyncRead + Send + Unpin>;
/// Bytes to the client.
pub type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// How the outcome is written on the error channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// `v4.channel.k8s.io` and later: a JSON `metav1.Status`, success included, the exit
    /// code of a failed command as a cause.
    Json,
    /// Earlier protocols: only a failure, as text.
    Text,
}

/// The channels of one exec or attach client.
pub struct Remote {
    /// Input for the process.
    pub stdin: Option<Input>,
    /// The process's output.
    pub stdout: Option<Output>,
    /// The process's errors.
    pub stderr: Option<Output>,
    /// Terminal sizes, JSON objects back to back.
    pub resize: Option<Input>,
    /// Where the outcome goes.
    pub error: Option<Output>,
    /// How the outcome is written.
    pub format: StatusFormat,
    /// Resolves (with an error) once the client's connection is gone.
    pub gone: oneshot::Receiver<()>,
}

/// How an exec or attach ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end; a command's exit code.
    Exited { code: i32, command: Vec<String> },
    /// It could not be done.
    Failed(String),
}

impl Outcome {
    /// The outcome as the error channel carries it in `format`; None when nothing is
    /// written (success in the text format).
    pub fn encode(&self, format: StatusFormat) -> Option<Vec<u8>> {
        let status = match self {
            Outcome::Exited { code: 0, .. } => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited { code, command } => {
                let message = format!(
                    "command terminated with non-zero exit code: command '{}' exited with {code}",
                    command.join(" ")
                );
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                })
            }
            Outcome::Failed(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            }),
        };
        match format {
            StatusFormat::Json => Some(status.to_string().into_bytes()),
            StatusFormat::Text => status
                .get("message")
                .and_then(|m| m.as_str())
                .map(|m| m.as_bytes().to_vec()),
        }
    }

    /// Writes the outcome on `error` and closes it.
    pub async fn report(&self, format: StatusFormat, error: Option<Output>) {
        let Some(mut error) = error else { return };
        if let Some(bytes) = self.encode(format)
            && let Err(e) = error.write_all(&bytes).await
        {
            log::debug!("writing a stream's outcome: {e}");
        }
        let _ = error.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(outcome: &Outcome) -> serde_json::Value {
        serde_json::from_slice(&outcome.encode(StatusFormat::Json).unwrap()).unwrap()
    }

    #[test]
    fn success_and_exit_codes_are_statuses_in_json() {
        let ok = Outcome::Exited {
            code: 0,
            command: vec!["true".into()],
        };
        assert_eq!(decoded(&ok), json!({"metadata": {}, "status": "Success"}));
        assert_eq!(ok.encode(StatusFormat::Text), None);
        let failed = Outcome::Exited {
            code: 137,
            command: vec!["sh".into(), "-c".into(), "kill -9 $$".into()],
        };
        let status = decoded(&failed);
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "137");
        let text = String::from_utf8(failed.encode(StatusFormat::Text).unwrap()).unwrap();
        assert!(text.contains("exited with 137"), "{text}");
    }

    #[test]
    fn a_failure_carries_its_message() {
        let failed = Outcome::Failed("container x is not running".into());
        let status = decoded(&failed);
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["message"], "container x is not running");
        assert_eq!(status["code"], 500);
        assert_eq!(
            failed.encode(StatusFormat::Text).unwrap(),
            b"container x is not running"
        );
    }
}
