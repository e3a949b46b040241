//! The Task API calls crustd makes on a pod's shim. Every call but Wait carries a deadline;
//! a failure comes back classified: the shim's own status (its code kept), no answer in time
//! (DeadlineExceeded), or the connection gone (Unavailable).

use std::path::Path;
use std::time::Duration;

use crust_proto::cgroups::{v1, v2};
use crust_proto::protobuf::MessageField;
use crust_proto::runc_options::CheckpointOptions;
use crust_proto::runc_options::Options;
use crust_proto::shim::{AttachClient, AttachRequest, LogsClient, ReopenLogRequest};
use crust_proto::task::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest,
    ExecProcessRequest, KillRequest, Mount, ResizePtyRequest, ShutdownRequest, StartRequest,
    StateRequest, StatsRequest, Status, TaskClient, UpdateTaskRequest, WaitRequest,
};
use crust_proto::ttrpc::{self, r#async::Client};
use crust_proto::typeurl;
use crust_proto::wellknown::Any;

use crate::error::{ManagerError, Result};

/// The containerd namespace crustd's tasks live in.
pub const NAMESPACE: &str = "k8s.io";
/// Calls that runc does not run under: state, signals, connect, shutdown, log reopening,
/// attaching, stdin closing, terminal resizing.
const QUICK_CALL: Duration = Duration::from_secs(10);
/// Calls that run runc (create, start, delete, exec) and may wait for output to drain.
const RUNC_CALL: Duration = Duration::from_secs(30);
/// A health probe: a shim that cannot answer Connect this fast is in trouble.
const PROBE_CALL: Duration = Duration::from_secs(5);
/// How long connecting to a shim may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// A connection to one pod's shim.
#[derive(Clone)]
pub struct ShimClient {
    tasks: TaskClient,
    logs: LogsClient,
    attach: AttachClient,
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

/// A failed Task API call in crustd's terms.
fn call_error(what: &str, limit: Duration, error: ttrpc::Error) -> ManagerError {
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
        // ttrpc's only word for its own deadline.
        ttrpc::Error::Others(text) if text.contains("deadline") => {
            ManagerError::DeadlineExceeded(format!(
                "{what}: the pod's shim did not answer within {}s",
                limit.as_secs()
            ))
        }
        // Everything else is the connection failing (closed, broken, or a shim that sends
        // what is not ttrpc): after a dead shim's EOF, ttrpc fails new calls with
        // `Others("… channel closed")`.
        _ => ManagerError::Unavailable(format!("{what}: the pod's shim is gone ({error})")),
    }
}

/// Whether `error` says the shim itself is in trouble (gone, or not answering), rather than
/// refusing the request.
pub fn is_shim_trouble(error: &ManagerError) -> bool {
    matches!(
        error,
        ManagerError::Unavailable(_) | ManagerError::DeadlineExceeded(_)
    )
}

/// An exit as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status (128 + signal for a signalled process).
    pub status: u32,
    /// When, ns since the epoch.
    pub at: i64,
}

/// What State says of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, not started.
    Created,
    /// Running (or paused) as `pid`.
    Running(u32),
    /// Exited.
    Stopped(Exit),
}

/// A task's cgroup metrics as the shim reads them: v1 on hosts whose controllers are v1
/// (hybrid included), v2 on unified hosts.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskMetrics {
    /// `io.containerd.cgroups.v1.Metrics`.
    V1(Box<v1::Metrics>),
    /// `io.containerd.cgroups.v2.Metrics`.
    V2(Box<v2::Metrics>),
}

impl TaskMetrics {
    /// Decodes the `Any` a Stats answer carries.
    pub fn decode(any: &Any) -> Result<Self> {
        let undecodable = |e: crust_proto::protobuf::Error| {
            ManagerError::Shim(format!("undecodable {} from the shim: {e}", any.type_url))
        };
        if typeurl::is(any, typeurl::CGROUPS_V1_METRICS) {
            return Ok(Self::V1(Box::new(
                typeurl::unpack(any).map_err(undecodable)?,
            )));
        }
        if typeurl::is(any, typeurl::CGROUPS_V2_METRICS) {
            return Ok(Self::V2(Box::new(
                typeurl::unpack(any).map_err(undecodable)?,
            )));
        }
        Err(ManagerError::Shim(format!(
            "the shim sent metrics of an unknown type {:?}",
            any.type_url
        )))
    }
}

/// A protobuf timestamp as ns since the epoch (0 when absent).
pub fn nanos(timestamp: &MessageField<crust_proto::wellknown::Timestamp>) -> i64 {
    timestamp
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos))
        .unwrap_or(0)
}

impl ShimClient {
    /// Connects to the shim serving `address` (`unix:///…`).
    pub async fn connect(address: &str) -> Result<Self> {
        let path = socket_path(address);
        let stream = tokio::time::timeout(CONNECT_LIMIT, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| {
                ManagerError::DeadlineExceeded(format!("connect to the shim at {address}"))
            })?
            .map_err(|e| {
                ManagerError::Unavailable(format!("connect to the shim at {address}: {e}"))
            })?;
        let client = Client::new(ttrpc::r#async::transport::Socket::new(stream));
        Ok(Self {
            tasks: TaskClient::new(client.clone()),
            logs: LogsClient::new(client.clone()),
            attach: AttachClient::new(client),
        })
    }

    /// The shim daemon's pid.
    pub async fn shim_pid(&self, id: &str) -> Result<u32> {
        let request = ConnectRequest {
            id: id.into(),
            ..Default::default()
        };
        self.tasks
            .connect(context(PROBE_CALL), &request)
            .await
            .map(|r| r.shim_pid)
            .map_err(|e| call_error("connect", PROBE_CALL, e))
    }

    /// Creates the task `request` describes, with runc `options`; returns its pid.
    pub async fn create(&self, request: CreateTaskRequest, options: &Options) -> Result<u32> {
        let mut request = request;
        request.options = MessageField::some(
            typeurl::pack(typeurl::RUNC_OPTIONS, options)
                .map_err(|e| ManagerError::io("encode runc options", std::io::Error::other(e)))?,
        );
        let what = format!("create task {}", request.id);
        self.tasks
            .create(context(RUNC_CALL), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| call_error(&what, RUNC_CALL, e))
    }

    /// Starts `id` (or its exec `exec_id`); returns the pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let request = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .start(context(RUNC_CALL), &request)
            .await
            .map(|r| r.pid)
            .map_err(|e| call_error(&format!("start {id} {exec_id}"), RUNC_CALL, e))
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
            .kill(context(QUICK_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("signal {id} {exec_id}"), QUICK_CALL, e))
    }

    /// Waits until `id` (or its exec) exits, at most `limit` (forever for zero): an exit
    /// can take as long as the process runs.
    pub async fn wait(&self, id: &str, exec_id: &str, limit: Duration) -> Result<Exit> {
        let request = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .wait(context(limit), &request)
            .await
            .map(|r| Exit {
                status: r.exit_status,
                at: nanos(&r.exited_at),
            })
            .map_err(|e| call_error(&format!("wait for {id} {exec_id}"), limit, e))
    }

    /// What the shim says of task `id`.
    pub async fn state(&self, id: &str) -> Result<TaskStatus> {
        let request = StateRequest {
            id: id.into(),
            ..Default::default()
        };
        let state = self
            .tasks
            .state(context(QUICK_CALL), &request)
            .await
            .map_err(|e| call_error(&format!("state of {id}"), QUICK_CALL, e))?;
        Ok(match state.status.enum_value_or_default() {
            Status::CREATED => TaskStatus::Created,
            Status::STOPPED => TaskStatus::Stopped(Exit {
                status: state.exit_status,
                at: nanos(&state.exited_at),
            }),
            _ => TaskStatus::Running(state.pid),
        })
    }

    /// The cgroup metrics of task `id`.
    pub async fn stats(&self, id: &str) -> Result<TaskMetrics> {
        let request = StatsRequest {
            id: id.into(),
            ..Default::default()
        };
        let what = format!("stats of {id}");
        let answer = self
            .tasks
            .stats(context(QUICK_CALL), &request)
            .await
            .map_err(|e| call_error(&what, QUICK_CALL, e))?;
        let any = answer
            .stats
            .as_ref()
            .ok_or_else(|| ManagerError::Shim(format!("{what}: the shim sent no metrics")))?;
        TaskMetrics::decode(any)
    }

    /// Deletes `id` (or its exec) from the shim: runc state and root file system mount go.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<()> {
        let request = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.tasks
            .delete(context(RUNC_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("delete {id} {exec_id}"), RUNC_CALL, e))
    }

    /// Adds the exec `request` describes.
    pub async fn exec(&self, request: ExecProcessRequest) -> Result<()> {
        let what = format!("exec in {}", request.id);
        self.tasks
            .exec(context(RUNC_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&what, RUNC_CALL, e))
    }

    /// Asks the shim to exit once it has no tasks left.
    pub async fn shutdown(&self, id: &str) -> Result<()> {
        let request = ShutdownRequest {
            id: id.into(),
            now: false,
            ..Default::default()
        };
        match self.tasks.shutdown(context(QUICK_CALL), &request).await {
            // The shim closes the connection as it leaves.
            Ok(_) | Err(ttrpc::Error::RemoteClosed) | Err(ttrpc::Error::LocalClosed) => Ok(()),
            Err(e) => Err(call_error(
                &format!("shutdown of shim for {id}"),
                QUICK_CALL,
                e,
            )),
        }
    }

    /// Applies new resource limits (`resources_json`, an OCI `LinuxResources`) to the
    /// running task `id` (`runc update`).
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let request = UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any {
                type_url: typeurl::OCI_LINUX_RESOURCES.into(),
                value: resources_json,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tasks
            .update(context(RUNC_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("update resources of {id}"), RUNC_CALL, e))
    }

    /// Checkpoints the running task `id` into the directory `image_path` with criu, leaving it
    /// running; criu may take up to `limit`.
    pub async fn checkpoint(&self, id: &str, image_path: &Path, limit: Duration) -> Result<()> {
        let options = CheckpointOptions {
            exit: false,
            image_path: image_path.display().to_string(),
            ..Default::default()
        };
        let request = CheckpointTaskRequest {
            id: id.into(),
            path: image_path.display().to_string(),
            options: MessageField::some(
                typeurl::pack(typeurl::RUNC_CHECKPOINT_OPTIONS, &options).map_err(|e| {
                    ManagerError::io("encode checkpoint options", std::io::Error::other(e))
                })?,
            ),
            ..Default::default()
        };
        self.tasks
            .checkpoint(context(limit), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("checkpoint {id}"), limit, e))
    }

    /// Makes the shim reopen `id`'s CRI log (after kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let request = ReopenLogRequest {
            id: id.into(),
            ..Default::default()
        };
        self.logs
            .reopen(context(QUICK_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("reopen log of {id}"), QUICK_CALL, e))
    }

    /// Makes the shim copy `id`'s (or its exec's) output, from now on, into the FIFOs at
    /// `stdout` and `stderr`, which the caller must already hold open for reading. Each FIFO
    /// reaches EOF when its stream ends; a reader too slow for the output loses chunks (the
    /// container never waits). A terminal's output comes as stdout; its stderr FIFO closes at
    /// once. FailedPrecondition: the FIFO has no reader, or the output is not a CRI log.
    pub async fn attach(
        &self,
        id: &str,
        exec_id: &str,
        stdout: Option<&Path>,
        stderr: Option<&Path>,
    ) -> Result<()> {
        let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
        let request = AttachRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdout: path(stdout),
            stderr: path(stderr),
            ..Default::default()
        };
        self.attach
            .attach(context(QUICK_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("attach to {id} {exec_id}"), QUICK_CALL, e))
    }

    /// Closes `id`'s (or its exec's) stdin once what was written to it has been delivered.
    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        let request = CloseIORequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        };
        self.tasks
            .close_io(context(QUICK_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("close stdin of {id} {exec_id}"), QUICK_CALL, e))
    }

    /// Sets the size of `id`'s (or its exec's) terminal; a process without one ignores it.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let request = ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
            ..Default::default()
        };
        self.tasks
            .resize_pty(context(QUICK_CALL), &request)
            .await
            .map(drop)
            .map_err(|e| call_error(&format!("resize terminal of {id} {exec_id}"), QUICK_CALL, e))
    }
}

/// The socket path of a `unix://` address.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: ttrpc::Code) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, "runc said so"))
    }

    #[test]
    fn shim_failures_keep_their_code_and_say_what_happened() {
        let limit = Duration::from_secs(7);
        let cases = [
            (status(ttrpc::Code::NOT_FOUND), "NotFound"),
            (status(ttrpc::Code::ALREADY_EXISTS), "AlreadyExists"),
            (
                status(ttrpc::Code::FAILED_PRECONDITION),
                "FailedPrecondition",
            ),
            (status(ttrpc::Code::INVALID_ARGUMENT), "InvalidArgument"),
            (status(ttrpc::Code::DEADLINE_EXCEEDED), "DeadlineExceeded"),
            (status(ttrpc::Code::INTERNAL), "Shim"),
            (
                ttrpc::Error::Others("Request deadline elapsed".into()),
                "DeadlineExceeded",
            ),
            (ttrpc::Error::RemoteClosed, "Unavailable"),
            (ttrpc::Error::LocalClosed, "Unavailable"),
            (ttrpc::Error::Socket("broken pipe".into()), "Unavailable"),
            (
                ttrpc::Error::Others("reserve channel capacity failed: channel closed".into()),
                "Unavailable",
            ),
        ];
        for (error, kind) in cases {
            let mapped = call_error("kill c1", limit, error);
            let debug = format!("{mapped:?}");
            assert!(debug.starts_with(kind), "{debug}");
            assert!(mapped.to_string().starts_with("kill c1: "), "{mapped}");
        }
        let timeout = call_error(
            "kill c1",
            limit,
            ttrpc::Error::Others("Request deadline elapsed".into()),
        );
        assert!(timeout.to_string().contains("within 7s"), "{timeout}");
        assert!(is_shim_trouble(&timeout));
        assert!(is_shim_trouble(&call_error(
            "x",
            limit,
            ttrpc::Error::RemoteClosed
        )));
        assert!(!is_shim_trouble(&call_error(
            "x",
            limit,
            status(ttrpc::Code::NOT_FOUND)
        )));
    }

    #[test]
    fn metrics_of_both_cgroup_versions_decode_and_others_are_refused() {
        let one = v1::Metrics {
            pids: MessageField::some(v1::PidsStat {
                current: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::CGROUPS_V1_METRICS, &one).unwrap();
        assert_eq!(
            TaskMetrics::decode(&any).unwrap(),
            TaskMetrics::V1(Box::new(one))
        );
        let two = v2::Metrics {
            pids: MessageField::some(v2::PidsStat {
                current: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::CGROUPS_V2_METRICS, &two).unwrap();
        assert_eq!(
            TaskMetrics::decode(&any).unwrap(),
            TaskMetrics::V2(Box::new(two))
        );
        let other = Any {
            type_url: "example.com/Other".into(),
            ..Default::default()
        };
        assert!(TaskMetrics::decode(&other).is_err());
    }

    #[test]
    fn timestamps_become_nanoseconds() {
        let stamp = crust_proto::wellknown::Timestamp {
            seconds: 2,
            nanos: 5,
            ..Default::default()
        };
        assert_eq!(nanos(&MessageField::some(stamp)), 2_000_000_005);
        assert_eq!(nanos(&MessageField::none()), 0);
    }

    /// A shim that records the stdio calls crustd makes and refuses attaching to "gone".
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    type Reply<T> = ttrpc::Result<T>;

    #[async_trait::async_trait]
    impl crust_proto::shim::Attach for Recorder {
        async fn attach(
            &self,
            _: &ttrpc::r#async::TtrpcContext,
            request: AttachRequest,
        ) -> Reply<crust_proto::shim::AttachResponse> {
            if request.id == "gone" {
                return Err(status(ttrpc::Code::NOT_FOUND));
            }
            self.0.lock().unwrap().push(format!(
                "attach {} {:?} {:?} {:?}",
                request.id, request.exec_id, request.stdout, request.stderr
            ));
            Ok(Default::default())
        }
    }

    #[async_trait::async_trait]
    impl crust_proto::task::Task for Recorder {
        async fn close_io(
            &self,
            _: &ttrpc::r#async::TtrpcContext,
            request: CloseIORequest,
        ) -> Reply<crust_proto::wellknown::Empty> {
            self.0.lock().unwrap().push(format!(
                "close_io {} {:?} stdin={}",
                request.id, request.exec_id, request.stdin
            ));
            Ok(Default::default())
        }

        async fn resize_pty(
            &self,
            _: &ttrpc::r#async::TtrpcContext,
            request: ResizePtyRequest,
        ) -> Reply<crust_proto::wellknown::Empty> {
            self.0.lock().unwrap().push(format!(
                "resize_pty {} {:?} {}x{}",
                request.id, request.exec_id, request.width, request.height
            ));
            Ok(Default::default())
        }
    }

    #[tokio::test]
    async fn stdio_calls_reach_the_shim_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", dir.path().join("shim.sock").display());
        let recorder = std::sync::Arc::new(Recorder::default());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&address)
            .unwrap()
            .register_service(crust_proto::task::services(recorder.clone()))
            .register_service(crust_proto::shim::create_attach(recorder.clone()));
        server.start().await.unwrap();
        let shim = ShimClient::connect(&address).await.unwrap();
        shim.attach("c1", "", Some(Path::new("/run/a/out")), None)
            .await
            .unwrap();
        shim.attach("c1", "e1", None, Some(Path::new("/run/a/err")))
            .await
            .unwrap();
        shim.close_io("c1", "e1").await.unwrap();
        shim.resize_pty("c1", "", 120, 40).await.unwrap();
        assert!(matches!(
            shim.attach("gone", "", Some(Path::new("/run/a/out")), None).await,
            Err(ManagerError::NotFound(message)) if message.starts_with("attach to gone")
        ));
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                r#"attach c1 "" "/run/a/out" """#,
                r#"attach c1 "e1" "" "/run/a/err""#,
                r#"close_io c1 "e1" stdin=true"#,
                r#"resize_pty c1 "" 120x40"#,
            ]
        );
        server.shutdown().await.unwrap();
    }
}
