//! Driving a shim exactly as containerd 1.6 does, without containerd: `start` with its flags,
//! working directory and environment, the Task API over ttrpc under `containerd.task.v2.Task`,
//! and an Events service at `TTRPC_ADDRESS` that records what the shim forwards.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use crust_proto::events::{
    Events, ForwardRequest, TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded,
    TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart, create_events,
};
use crust_proto::protobuf::{Message, MessageField};
use crust_proto::runc_options::Options;
use crust_proto::task::{
    CheckpointTaskRequest, CloseIORequest, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, ExecProcessRequest, KillRequest, Mount, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, SERVICE_V2, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use crust_proto::ttrpc::{self, r#async::TtrpcContext};
use crust_proto::typeurl;
use crust_proto::wellknown::Any;
use crust_proto::wellknown::Empty;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::unistd::mkfifo;
use oci_spec::runtime::{ProcessBuilder, Spec};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::Notify;

use crate::cleanup;
use crate::command::{self, Outcome};
use crate::containerd::{RUNC_ROOT, SHIM_SOCKET_DIR, unique_namespace};
use crate::image;
use crate::shim::Shim;

/// Deadline of one Task API call.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);
/// How long [`Fifos::write_stdin`] waits for the shim to open its end of the stdin FIFO.
const STDIN_READER_LIMIT: Duration = Duration::from_secs(10);

/// One event the shim forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Topic, e.g. `/tasks/exit`.
    pub topic: String,
    /// Namespace in the envelope.
    pub namespace: String,
    /// Namespace in the ttrpc metadata.
    pub metadata_namespace: Option<String>,
    /// The task's container id.
    pub container_id: String,
    /// Exit status, for exit and delete events.
    pub exit_status: Option<u32>,
    /// Pid the event names.
    pub pid: u32,
    /// When the Events service received it.
    pub received: std::time::Instant,
}

/// What the fake containerd's Events service received, in order.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<Vec<Recorded>>,
    arrived: Notify,
}

impl EventLog {
    /// Every event so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Topics received for `container_id`, in order.
    pub fn topics(&self, container_id: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|e| e.container_id == container_id)
            .map(|e| e.topic)
            .collect()
    }

    /// Waits until an event on `topic` for `container_id` arrived.
    pub async fn wait_for(
        &self,
        topic: &str,
        container_id: &str,
        limit: Duration,
    ) -> Option<Recorded> {
        self.wait_matching(limit, |e| {
            e.topic == topic && e.container_id == container_id
        })
        .await
    }

    /// Waits until an event that `wanted` accepts arrived.
    pub async fn wait_matching(
        &self,
        limit: Duration,
        wanted: impl Fn(&Recorded) -> bool,
    ) -> Option<Recorded> {
        let find = || self.all().into_iter().find(&wanted);
        tokio::time::timeout(limit, async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if let Some(event) = find() {
                    return event;
                }
                arrived.await;
            }
        })
        .await
        .ok()
    }
}

struct Collector(Arc<EventLog>);

fn decode(topic: &str, value: &[u8]) -> (String, Option<u32>, u32) {
    match topic {
        "/tasks/create" => TaskCreate::parse_from_bytes(value)
            .map(|e| (e.container_id, None, e.pid))
            .unwrap_or_default(),
        "/tasks/start" => TaskStart::parse_from_bytes(value)
            .map(|e| (e.container_id, None, e.pid))
            .unwrap_or_default(),
        "/tasks/exit" => TaskExit::parse_from_bytes(value)
            .map(|e| (e.container_id, Some(e.exit_status), e.pid))
            .unwrap_or_default(),
        "/tasks/delete" => TaskDelete::parse_from_bytes(value)
            .map(|e| (e.container_id, Some(e.exit_status), e.pid))
            .unwrap_or_default(),
        "/tasks/exec-added" => TaskExecAdded::parse_from_bytes(value)
            .map(|e| (e.container_id, None, 0))
            .unwrap_or_default(),
        "/tasks/exec-started" => TaskExecStarted::parse_from_bytes(value)
            .map(|e| (e.container_id, None, e.pid))
            .unwrap_or_default(),
        "/tasks/paused" => TaskPaused::parse_from_bytes(value)
            .map(|e| (e.container_id, None, 0))
            .unwrap_or_default(),
        "/tasks/resumed" => TaskResumed::parse_from_bytes(value)
            .map(|e| (e.container_id, None, 0))
            .unwrap_or_default(),
        "/tasks/oom" => TaskOOM::parse_from_bytes(value)
            .map(|e| (e.container_id, None, 0))
            .unwrap_or_default(),
        "/tasks/checkpointed" => TaskCheckpointed::parse_from_bytes(value)
            .map(|e| (e.container_id, None, 0))
            .unwrap_or_default(),
        _ => Default::default(),
    }
}

#[async_trait]
impl Events for Collector {
    async fn forward(
        &self,
        context: &TtrpcContext,
        request: ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let envelope = request.envelope.unwrap_or_default();
        let event = envelope.event.clone().unwrap_or_default();
        let (container_id, exit_status, pid) = decode(&envelope.topic, &event.value);
        let recorded = Recorded {
            topic: envelope.topic.clone(),
            namespace: envelope.namespace.clone(),
            metadata_namespace: context
                .metadata
                .get("containerd-namespace-ttrpc")
                .and_then(|values| values.first().cloned()),
            container_id,
            exit_status,
            pid,
            received: std::time::Instant::now(),
        };
        self.0
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(recorded);
        self.0.arrived.notify_waiters();
        Ok(Empty::new())
    }
}

/// A process's stdio FIFOs, made and read the way containerd's client does.
#[derive(Debug)]
pub struct Fifos {
    /// stdin FIFO path (used when a test asks for stdin).
    pub stdin: PathBuf,
    /// stdout FIFO path.
    pub stdout: PathBuf,
    /// stderr FIFO path.
    pub stderr: PathBuf,
    readers: Mutex<Vec<JoinHandle<String>>>,
    /// The shim under test, which decides whether the stdin reader may still be on its way.
    shim: Shim,
}

impl Fifos {
    fn new(dir: &Path, shim: Shim) -> Self {
        fs::create_dir_all(dir).expect("fifo dir");
        let fifos = Self {
            stdin: dir.join("stdin"),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            readers: Mutex::new(Vec::new()),
            shim,
        };
        for fifo in [&fifos.stdout, &fifos.stderr, &fifos.stdin] {
            mkfifo(fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        }
        fifos
    }

    /// Writes `input` into the stdin FIFO once the shim reads it, and closes this writer, as a
    /// client that detaches does.
    ///
    /// crust's shim opens its reader before Start answers, so for it the first open must
    /// succeed. containerd's Go shim opens its reader through containerd's FIFO library, in a
    /// goroutine that can still be on its way when Start has answered (a non-blocking open for
    /// writing meanwhile fails with ENXIO: seen under load in a full test run); containerd's
    /// client waits for that reader, and so does this, for the Go shim only.
    pub fn write_stdin(&self, input: &[u8]) {
        let deadline = std::time::Instant::now() + STDIN_READER_LIMIT;
        let mut writer = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.stdin)
            {
                Ok(writer) => break writer,
                Err(e)
                    if self.shim == Shim::GoRunc
                        && e.raw_os_error() == Some(libc::ENXIO)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("open stdin fifo: {e}"),
            }
        };
        std::io::Write::write_all(&mut writer, input).expect("write stdin");
    }

    /// Opens the output FIFOs for reading, as containerd's client does before Create, and
    /// collects everything written to them until the writer closes.
    pub fn attach_output(&self) {
        self.attach(&[&self.stdout, &self.stderr]);
    }

    /// Opens only stdout for reading: a terminal has no separate stderr, and a reader
    /// waiting on a FIFO no writer ever opens would wait forever.
    pub fn attach_stdout(&self) {
        self.attach(&[&self.stdout]);
    }

    fn attach(&self, fifos: &[&Path]) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        for fifo in fifos {
            let file = open_for_reading(fifo);
            readers.push(std::thread::spawn(move || {
                collect_until_writer_leaves(file)
            }));
        }
    }

    /// What was written to stdout and stderr, once both reached EOF.
    pub fn output(&self) -> (String, String) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let mut texts = readers
            .drain(..)
            .map(|reader| reader.join().unwrap_or_default());
        (
            texts.next().unwrap_or_default(),
            texts.next().unwrap_or_default(),
        )
    }
}

/// A container bundle made the way containerd makes one.
#[derive(Debug)]
pub struct Bundle {
    /// Task id.
    pub id: String,
    /// Bundle directory.
    pub dir: PathBuf,
    /// The init's stdio.
    pub io: Fifos,
    rootfs_source: PathBuf,
    shim_log: Mutex<Option<JoinHandle<String>>>,
}

impl Bundle {
    /// The Create request containerd would send for this bundle (rootfs as a read-only bind).
    pub fn create_request(&self) -> CreateTaskRequest {
        CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.dir.display().to_string(),
            rootfs: vec![Mount {
                type_: "bind".into(),
                source: self.rootfs_source.display().to_string(),
                options: vec!["rbind".into(), "ro".into()],
                ..Default::default()
            }],
            stdout: self.io.stdout.display().to_string(),
            stderr: self.io.stderr.display().to_string(),
            ..Default::default()
        }
    }

    /// The Create request with stdin wired to the bundle's stdin FIFO.
    pub fn create_request_with_stdin(&self) -> CreateTaskRequest {
        CreateTaskRequest {
            stdin: self.io.stdin.display().to_string(),
            ..self.create_request()
        }
    }

    /// The Create request carrying runc `options`.
    pub fn create_request_with_options(&self, options: &Options) -> CreateTaskRequest {
        CreateTaskRequest {
            options: MessageField::some(
                typeurl::pack(typeurl::RUNC_OPTIONS, options).expect("encode options"),
            ),
            ..self.create_request()
        }
    }

    /// See [`Fifos::write_stdin`].
    pub fn write_stdin(&self, input: &[u8]) {
        self.io.write_stdin(input)
    }

    /// See [`Fifos::attach_output`].
    pub fn attach_output(&self) {
        self.io.attach_output()
    }

    /// See [`Fifos::attach_stdout`].
    pub fn attach_stdout(&self) {
        self.io.attach_stdout()
    }

    /// See [`Fifos::output`].
    pub fn output(&self) -> (String, String) {
        self.io.output()
    }

    /// What the shim daemon logged through the bundle's `log` FIFO, once it closed it.
    pub fn shim_log(&self) -> String {
        let reader = self
            .shim_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        reader
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// Reads a FIFO until its writer, once connected, closes it. Before any writer connects, a
/// read would return EOF at once; poll waits for data or for a writer that came and went.
/// How long a reader waits for the writer to leave before a test gets what came so far
/// (and fails on it) instead of hanging.
const READ_LIMIT: Duration = Duration::from_secs(120);

/// Opens an output FIFO for reading without waiting for a writer, as containerd's client does
/// before Create.
pub fn open_for_reading(fifo: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .expect("open output fifo")
}

fn collect_until_writer_leaves(fifo: File) -> String {
    let mut collected = Vec::new();
    read_until_writer_leaves(fifo, READ_LIMIT, |chunk| collected.extend_from_slice(chunk));
    String::from_utf8_lossy(&collected).into_owned()
}

/// Hands what arrives on `fifo` (opened by [`open_for_reading`]) to `sink` until the writer
/// closes it, or until `limit` passed.
pub fn read_until_writer_leaves(mut fifo: File, limit: Duration, mut sink: impl FnMut(&[u8])) {
    let mut buffer = vec![0u8; 1 << 16];
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, wait), Ok(n) if n > 0) {
            break;
        }
        match fifo.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => sink(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
}

/// A Task API client for one shim, speaking the service name containerd 1.6 uses.
#[derive(Clone)]
pub struct TaskApi {
    client: ttrpc::r#async::Client,
    namespace: String,
    /// The service name requests go to.
    pub service: &'static str,
}

impl std::fmt::Debug for TaskApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskApi")
            .field("service", &self.service)
            .finish()
    }
}

impl TaskApi {
    /// Connects to a shim at `address` (`unix:///…`).
    pub async fn connect(address: &str, namespace: &str) -> Self {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect to shim at {address}: {e}"));
        Self {
            client: ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream)),
            namespace: namespace.to_string(),
            service: SERVICE_V2,
        }
    }

    /// Calls `method` with `request`.
    pub async fn call<Q: Message, R: Message>(
        &self,
        method: &str,
        request: &Q,
    ) -> ttrpc::Result<R> {
        let mut context = ttrpc::context::with_duration(CALL_LIMIT);
        context.add(
            "containerd-namespace-ttrpc".to_string(),
            self.namespace.clone(),
        );
        let wire = ttrpc::Request {
            service: self.service.to_string(),
            method: method.to_string(),
            payload: request
                .write_to_bytes()
                .map_err(|e| ttrpc::Error::Others(e.to_string()))?,
            timeout_nano: context.timeout_nano,
            metadata: ttrpc::context::to_pb(context.metadata),
            ..Default::default()
        };
        let response = self.client.request(wire).await?;
        R::parse_from_bytes(&response.payload).map_err(|e| ttrpc::Error::Others(e.to_string()))
    }

    /// crust's `crust.shim.v1.Logs/Reopen`, through the generated client.
    pub async fn reopen_log(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let mut context = ttrpc::context::with_duration(CALL_LIMIT);
        context.add(
            "containerd-namespace-ttrpc".to_string(),
            self.namespace.clone(),
        );
        let request = crust_proto::shim::ReopenLogRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        crust_proto::shim::LogsClient::new(self.client.clone())
            .reopen(context, &request)
            .await
            .map(drop)
    }

    /// Create.
    pub async fn create(&self, request: &CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        self.call("Create", request).await
    }

    /// Start of the init process.
    pub async fn start(&self, id: &str) -> ttrpc::Result<StartResponse> {
        self.call(
            "Start",
            &StartRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// State of the init process.
    pub async fn state(&self, id: &str) -> ttrpc::Result<StateResponse> {
        self.call(
            "State",
            &StateRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Kill of the init process.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> ttrpc::Result<Empty> {
        self.call(
            "Kill",
            &KillRequest {
                id: id.into(),
                signal,
                all,
                ..Default::default()
            },
        )
        .await
    }

    /// Wait for the init process.
    pub async fn wait(&self, id: &str) -> ttrpc::Result<WaitResponse> {
        self.call(
            "Wait",
            &WaitRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Delete of the task.
    pub async fn delete(&self, id: &str) -> ttrpc::Result<DeleteResponse> {
        self.call(
            "Delete",
            &DeleteRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// CloseIO of the init's stdin.
    pub async fn close_stdin(&self, id: &str) -> ttrpc::Result<Empty> {
        self.call(
            "CloseIO",
            &CloseIORequest {
                id: id.into(),
                stdin: true,
                ..Default::default()
            },
        )
        .await
    }

    /// Exec: declares `args` as exec `exec_id` (stdio as given).
    pub async fn exec(&self, request: &ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.call("Exec", request).await
    }

    /// Start of an exec.
    pub async fn start_exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<StartResponse> {
        self.call(
            "Start",
            &StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// State of an exec.
    pub async fn state_exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        self.call(
            "State",
            &StateRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Wait for an exec.
    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitResponse> {
        self.call(
            "Wait",
            &WaitRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Delete of an exec.
    pub async fn delete_exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        self.call(
            "Delete",
            &DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Pause.
    pub async fn pause(&self, id: &str) -> ttrpc::Result<Empty> {
        self.call(
            "Pause",
            &PauseRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Resume.
    pub async fn resume(&self, id: &str) -> ttrpc::Result<Empty> {
        self.call(
            "Resume",
            &ResumeRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Stats.
    pub async fn stats(&self, id: &str) -> ttrpc::Result<StatsResponse> {
        self.call(
            "Stats",
            &StatsRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// ResizePty of a process.
    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> ttrpc::Result<Empty> {
        self.call(
            "ResizePty",
            &ResizePtyRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                width,
                height,
                ..Default::default()
            },
        )
        .await
    }

    /// Update with OCI `LinuxResources` JSON.
    pub async fn update(&self, id: &str, resources_json: &str) -> ttrpc::Result<Empty> {
        self.call(
            "Update",
            &UpdateTaskRequest {
                id: id.into(),
                resources: MessageField::some(Any {
                    type_url: typeurl::OCI_LINUX_RESOURCES.into(),
                    value: resources_json.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
    }

    /// Checkpoint to `path`, leaving the task running.
    pub async fn checkpoint(&self, id: &str, path: &Path) -> ttrpc::Result<Empty> {
        self.call(
            "Checkpoint",
            &CheckpointTaskRequest {
                id: id.into(),
                path: path.display().to_string(),
                ..Default::default()
            },
        )
        .await
    }

    /// Pids.
    pub async fn pids(&self, id: &str) -> ttrpc::Result<PidsResponse> {
        self.call(
            "Pids",
            &PidsRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// Shutdown of the shim.
    pub async fn shutdown(&self, id: &str) -> ttrpc::Result<Empty> {
        self.call(
            "Shutdown",
            &ShutdownRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
    }
}

/// runc's default process, running `args` with `PATH=/bin`.
pub fn process_spec(args: &[&str], terminal: bool) -> oci_spec::runtime::Process {
    let mut process = Spec::default()
        .process()
        .clone()
        .unwrap_or_else(|| ProcessBuilder::default().build().expect("default process"));
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_env(Some(vec!["PATH=/bin".into(), "TERM=xterm".into()]));
    process.set_terminal(Some(terminal));
    process
}

/// The code of a ttrpc error, if it carries a status.
pub fn code_of(error: &ttrpc::Error) -> Option<ttrpc::Code> {
    match error {
        ttrpc::Error::RpcStatus(status) => Some(status.code()),
        _ => None,
    }
}

/// A fake containerd: a temp dir of bundles, an Events endpoint, and the shim binary.
pub struct Direct {
    /// The shim under test.
    pub shim: Shim,
    /// The namespace, unique to the test.
    pub namespace: String,
    /// Events the shims forwarded.
    pub events: Arc<EventLog>,
    dir: TempDir,
    rootfs: PathBuf,
    /// Held so the Events endpoint lives as long as the fixture.
    _server: ttrpc::r#async::Server,
    ids: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("shim", &self.shim)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Direct {
    /// Sets up the fake containerd for test `name` against the shim chosen by the environment.
    pub async fn new(name: &str) -> Self {
        Self::with_shim(name, Shim::from_env()).await
    }

    /// Sets up the fake containerd for test `name` against `shim`.
    pub async fn with_shim(name: &str, shim: Shim) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crust-direct-")
            .tempdir()
            .expect("temp dir");
        let rootfs = dir.path().join("busybox");
        fs::create_dir_all(&rootfs).expect("rootfs dir");
        image::write_rootfs(&rootfs).expect("write busybox rootfs");
        let events = Arc::new(EventLog::default());
        let socket = dir.path().join("events.sock");
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", socket.display()))
            .expect("bind events socket")
            .register_service(create_events(Arc::new(Collector(Arc::clone(&events)))));
        server.start().await.expect("start events server");
        Self {
            shim,
            namespace: unique_namespace(name),
            events,
            dir,
            rootfs,
            _server: server,
            ids: Mutex::new(Vec::new()),
        }
    }

    /// The address given to the shim as containerd's (it only feeds the socket hash).
    pub fn containerd_address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A path in the fixture's scratch directory, removed with it.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The Events endpoint, given as `TTRPC_ADDRESS`.
    pub fn events_address(&self) -> PathBuf {
        self.dir.path().join("events.sock")
    }

    /// Makes a bundle for task `id` running `args`, with `annotations`.
    pub fn bundle(&self, id: &str, args: &[&str], annotations: &[(&str, &str)]) -> Bundle {
        self.bundle_with(id, args, annotations, |_| {})
    }

    /// Makes a bundle like [`Direct::bundle`], letting `customize` change its spec.
    pub fn bundle_with(
        &self,
        id: &str,
        args: &[&str],
        annotations: &[(&str, &str)],
        customize: impl FnOnce(&mut Spec),
    ) -> Bundle {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_string());
        let dir = self.dir.path().join("bundles").join(id);
        fs::create_dir_all(dir.join("rootfs")).expect("bundle dir");
        // containerd links `work` to a per-task directory; runc shims keep criu's work there.
        fs::create_dir_all(dir.join("work")).expect("bundle work dir");
        let mut spec = Spec::default();
        spec.set_process(Some(process_spec(args, false)));
        spec.set_hostname(Some(id.to_string()));
        let annotations: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.set_annotations(Some(annotations));
        if let Some(linux) = spec.linux_mut() {
            linux.set_cgroups_path(Some(PathBuf::from(format!("/{}/{id}", self.namespace))));
        }
        customize(&mut spec);
        spec.save(dir.join("config.json"))
            .expect("write config.json");
        // containerd creates the shim's log FIFO in the bundle and relays what it reads.
        let log = dir.join("log");
        mkfifo(&log, Mode::from_bits_truncate(0o700)).expect("mkfifo log");
        let log_reader = open_for_reading(&log);
        let shim_log = std::thread::spawn(move || collect_until_writer_leaves(log_reader));
        Bundle {
            id: id.to_string(),
            io: self.fifos(id),
            dir,
            rootfs_source: self.rootfs.clone(),
            shim_log: Mutex::new(Some(shim_log)),
        }
    }

    /// A fresh set of stdio FIFOs named `name`.
    pub fn fifos(&self, name: &str) -> Fifos {
        Fifos::new(&self.dir.path().join("fifo").join(name), self.shim)
    }

    /// The Exec request containerd sends for `args`, with stdout and stderr to `io` (and
    /// stdin too with `stdin`), a terminal with `terminal`.
    pub fn exec_request(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        io: &Fifos,
        stdin: bool,
        terminal: bool,
    ) -> ExecProcessRequest {
        let spec = serde_json::to_vec(&process_spec(args, terminal)).expect("encode process");
        ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            terminal,
            stdin: if stdin {
                io.stdin.display().to_string()
            } else {
                String::new()
            },
            stdout: io.stdout.display().to_string(),
            stderr: if terminal {
                String::new()
            } else {
                io.stderr.display().to_string()
            },
            spec: MessageField::some(Any {
                type_url: typeurl::OCI_PROCESS.into(),
                value: spec,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The shim command line containerd builds: flags, then the action; cwd is the bundle.
    fn shim_command(&self, bundle: &Bundle, extra_flags: &[&str], action: &str) -> Command {
        let mut command = Command::new(self.shim.binary());
        command
            .args(["-namespace", &self.namespace])
            .arg("-address")
            .arg(self.containerd_address())
            .args(["-publish-binary", "/usr/bin/containerd", "-id", &bundle.id])
            .args(extra_flags)
            .arg(action)
            .current_dir(&bundle.dir)
            .env("TTRPC_ADDRESS", self.events_address())
            .env("GOMAXPROCS", "2");
        command
    }

    /// Runs the shim's `start` as containerd 1.6 does, with runc `options` on stdin.
    pub fn start_shim_with_options(&self, bundle: &Bundle, options: &Options) -> Outcome {
        let stdin = typeurl::pack(typeurl::RUNC_OPTIONS, options)
            .and_then(|any| any.write_to_bytes())
            .expect("encode options");
        self.start_shim(bundle, &stdin)
    }

    /// Runs the shim's `start` as containerd 1.6 does, with `stdin`.
    pub fn start_shim(&self, bundle: &Bundle, stdin: &[u8]) -> Outcome {
        let stdin = (!stdin.is_empty()).then_some(stdin);
        command::run(
            &mut self.shim_command(bundle, &[], "start"),
            stdin,
            Duration::from_secs(30),
        )
    }

    /// Runs the shim's `start` and connects to the address it printed.
    pub async fn start_and_connect(&self, bundle: &Bundle) -> TaskApi {
        let started = self.start_shim(bundle, b"");
        assert!(started.success(), "shim start failed: {started:?}");
        assert!(
            started.stderr.is_empty(),
            "start wrote to stderr: {started:?}"
        );
        TaskApi::connect(started.stdout.trim(), &self.namespace).await
    }

    /// Runs the shim's `delete` as containerd does after losing the shim.
    pub fn delete_shim(&self, bundle: &Bundle) -> Outcome {
        let bundle_dir = bundle.dir.display().to_string();
        let mut command = self.shim_command(bundle, &["-bundle", &bundle_dir], "delete");
        command::run(&mut command, None, Duration::from_secs(10))
    }

    /// The socket a shim serving group `group` listens on.
    pub fn shim_socket(&self, group: &str) -> PathBuf {
        let joined = self.containerd_address().join(&self.namespace).join(group);
        let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Path::new(SHIM_SOCKET_DIR).join(hex)
    }

    /// Pids of the shim daemons started by this fixture.
    pub fn shim_pids(&self) -> Vec<i32> {
        cleanup::processes_with_argument(&self.containerd_address().display().to_string())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        cleanup::kill_all(&self.shim_pids());
        cleanup::remove_runc_state(&Path::new(RUNC_ROOT).join(&self.namespace));
        cleanup::unmount_below(self.dir.path());
        cleanup::remove_cgroups(&self.namespace);
        for id in self.ids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = fs::remove_file(self.shim_socket(id));
        }
    }
}
