//! crustd's side of the shim: starting a pod's shim with containerd's command line, and the
//! Task API calls made on it, each bounded by a timeout except Wait.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crust_proto::protobuf::{Message, MessageField};
use crust_proto::runc_options::Options;
use crust_proto::shim::{LogsClient, ReopenLogRequest};
use crust_proto::task::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, Mount, ShutdownRequest,
    StartRequest, StateRequest, Status, TaskClient, WaitRequest,
};
use crust_proto::ttrpc::{self, r#async::Client};
use crust_proto::typeurl;
use crust_proto::wellknown::Any;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{ManagerError, Result};

/// The containerd namespace crustd's tasks live in.
pub const NAMESPACE: &str = "k8s.io";
/// How long one Task API call (other than Wait) may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// How long the shim's `start` may take.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long connecting to a shim may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// How crustd invokes shims.
#[derive(Debug, Clone)]
pub struct ShimLauncher {
    /// The shim binary.
    pub binary: String,
    /// crustd's CRI socket, given as containerd's `-address` (it seeds the shim socket name).
    pub address: String,
    /// crustd's Events endpoint, given as `TTRPC_ADDRESS`.
    pub events_address: String,
}

impl ShimLauncher {
    /// Runs `<shim> … -id <id> start` in `bundle` as containerd 1.6 does, with `options` on
    /// stdin; returns the address the shim serves on (an existing one for a grouped pod).
    pub async fn start(&self, id: &str, bundle: &Path, options: &Options) -> Result<String> {
        let stdin = typeurl::pack(typeurl::RUNC_OPTIONS, options)
            .and_then(|any| any.write_to_bytes())
            .map_err(|e| ManagerError::io("encode runc options", std::io::Error::other(e)))?;
        let publisher = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "crustd".into());
        let mut child = Command::new(&self.binary)
            .args(["-namespace", NAMESPACE, "-address", &self.address])
            .args(["-publish-binary", &publisher, "-id", id, "start"])
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.events_address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ManagerError::io(format!("run shim {}", self.binary), e))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin)
                .await
                .map_err(|e| ManagerError::io("write shim options", e))?;
        }
        let output = tokio::time::timeout(START_LIMIT, child.wait_with_output())
            .await
            .map_err(|_| ManagerError::DeadlineExceeded(format!("shim start for {id} hung")))?
            .map_err(|e| ManagerError::io("wait for shim start", e))?;
        if !output.status.success() {
            return Err(ManagerError::FailedPrecondition(format!(
                "shim start for {id} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let address = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if address.is_empty() {
            return Err(ManagerError::FailedPrecondition(format!(
                "shim start for {id} printed no address"
            )));
        }
        Ok(address)
    }
}

/// A connection to one pod's shim.
#[derive(Clone)]
pub struct ShimClient {
    tasks: TaskClient,
    logs: LogsClient,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShimClient")
    }
}

/// The ttrpc context of a call: containerd's namespace header and a deadline (none for 0).
fn context(limit: Duration) -> ttrpc::context::Context {
    let mut context = ttrpc::context::with_timeout(limit.as_nanos() as i64);
    context.add("containerd-namespace-ttrpc".into(), NAMESPACE.into());
    context
}

/// A Task API failure in crustd's terms.
fn task_error(what: &str, error: ttrpc::Error) -> ManagerError {
    use ttrpc::Code;
    match &error {
        ttrpc::Error::RpcStatus(status) => {
            let message = format!("{what}: {}", status.message);
            match status.code() {
                Code::NOT_FOUND => ManagerError::NotFound(message),
                Code::ALREADY_EXISTS => ManagerError::AlreadyExists(message),
                Code::FAILED_PRECONDITION => ManagerError::FailedPrecondition(message),
                Code::INVALID_ARGUMENT => ManagerError::InvalidArgument(message),
                Code::DEADLINE_EXCEEDED => ManagerError::DeadlineExceeded(message),
                _ => ManagerError::Shim(message),
            }
        }
        _ => ManagerError::Shim(format!("{what}: {error}")),
    }
}

/// An exit as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status (128 + signal for a signalled process).
    pub status: u32,
    /// When, ns since the epoch.
    pub at: i64,
}

/// A protobuf timestamp as ns since the epoch (0 when absent).
pub fn nanos(timestamp: &MessageField<crust_proto::wellknown::Timestamp>) -> i64 {
    timestamp
        .as_ref()
        .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
        .unwrap_or(0)
}

impl ShimClient {
    /// Connects to the shim serving `address` (`unix:///…`).
    pub async fn connect(address: &str) -> Result<Self> {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_string();
        let stream = tokio::time::timeout(CONNECT_LIMIT, tokio::net::UnixStream::connect(&path))
            .await
            .map_err(|_| ManagerError::DeadlineExceeded(format!("connect to shim at {address}")))?
            .map_err(|e| ManagerError::io(format!("connect to shim at {address}"), e))?;
        let client = Client::new(ttrpc::r#async::transport::Socket::new(stream));
        Ok(Self {
            tasks: TaskClient::new(client.clone()),
            logs: LogsClient::new(client),
        })
    }

    /// Creates task `id` from `bundle` with its root file system `rootfs` and stdio.
    pub async fn create(&self, request: CreateTaskRequest, options: &Options) -> Result<u32> {
        let mut request = request;
        request.options = MessageField::some(
            typeurl::pack(typeurl::RUNC_OPTIONS, options)
                .map_err(|e| ManagerError::io("encode runc options", std::io::Error::other(e)))?,
        );
        let id = request.id.clone();
        self.tasks
            .create(context(CALL_LIMIT), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| task_error(&format!("create task {id}"), e))
    }

    /// Starts `id` (or its exec `exec_id`); returns the pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let request = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .start(context(CALL_LIMIT), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| task_error(&format!("start {id} {exec_id}"), e))
    }

    /// Sends `signal` to `id` (or its exec), to every process of it with `all`.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let request = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.tasks
            .kill(context(CALL_LIMIT), &request)
            .await
            .map(drop)
            .map_err(|e| task_error(&format!("signal {id} {exec_id}"), e))
    }

    /// Waits, without a deadline, until `id` (or its exec) exits.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let request = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .wait(context(Duration::ZERO), &request)
            .await
            .map(|r| Exit {
                status: r.exit_status,
                at: nanos(&r.exited_at),
            })
            .map_err(|e| task_error(&format!("wait for {id} {exec_id}"), e))
    }

    /// The state of `id`: whether it still runs, and its exit if not.
    pub async fn state(&self, id: &str) -> Result<Option<Exit>> {
        let request = StateRequest {
            id: id.into(),
            ..Default::default()
        };
        let state = self
            .tasks
            .state(context(CALL_LIMIT), &request)
            .await
            .map_err(|e| task_error(&format!("state of {id}"), e))?;
        Ok(
            (state.status.enum_value_or_default() == Status::STOPPED).then(|| Exit {
                status: state.exit_status,
                at: nanos(&state.exited_at),
            }),
        )
    }

    /// Deletes `id` (or its exec) from the shim: runc state and root file system mount go.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<()> {
        let request = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .delete(context(CALL_LIMIT), &request)
            .await
            .map(drop)
            .map_err(|e| task_error(&format!("delete {id} {exec_id}"), e))
    }

    /// Adds exec `exec_id` running `process` (OCI Process JSON) to `id`.
    pub async fn exec(&self, request: ExecProcessRequest) -> Result<()> {
        let what = format!("exec in {}", request.id);
        self.tasks
            .exec(context(CALL_LIMIT), &request)
            .await
            .map(drop)
            .map_err(|e| task_error(&what, e))
    }

    /// Asks the shim to exit once it has no tasks left.
    pub async fn shutdown(&self, id: &str) -> Result<()> {
        let request = ShutdownRequest {
            id: id.into(),
            now: false,
            ..Default::default()
        };
        match self.tasks.shutdown(context(CALL_LIMIT), &request).await {
            // The shim closes the connection as it leaves.
            Ok(_) | Err(ttrpc::Error::RemoteClosed) | Err(ttrpc::Error::LocalClosed) => Ok(()),
            Err(e) => Err(task_error(&format!("shutdown of shim for {id}"), e)),
        }
    }

    /// Makes the shim reopen `id`'s CRI log (after kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let request = ReopenLogRequest {
            id: id.into(),
            ..Default::default()
        };
        self.logs
            .reopen(context(CALL_LIMIT), &request)
            .await
            .map(drop)
            .map_err(|e| task_error(&format!("reopen log of {id}"), e))
    }
}

/// A CreateTask request for `id` in `bundle`.
pub fn create_request(
    id: &str,
    bundle: &Path,
    rootfs: Vec<Mount>,
    stdio: Option<&str>,
    terminal: bool,
) -> CreateTaskRequest {
    let output = stdio.unwrap_or_default().to_string();
    CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        rootfs,
        terminal,
        stdout: output.clone(),
        stderr: if terminal { String::new() } else { output },
        ..Default::default()
    }
}

/// `process_json` (an OCI Process) as the `Any` of an Exec request.
pub fn process_any(process_json: Vec<u8>) -> Any {
    Any {
        type_url: typeurl::OCI_PROCESS.into(),
        value: process_json,
        ..Default::default()
    }
}
