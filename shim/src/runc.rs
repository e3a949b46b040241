//! Running the OCI runtime (runc, crun, …) for one container.
//!
//! Argument building comes from the `runc` crate; this module supplies what the shim needs on
//! top: every runc is spawned through the shim's reaper (subscribed before the spawn, never
//! `wait`ed directly), every call has a deadline, and a failure carries the runtime's own last
//! error from its JSON log (`--log <bundle>/log.json --log-format json`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runc::options::{CreateOpts, DeleteOpts, GlobalOpts, KillOpts};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::error::{Result, ShimError};
use crate::options::RuncConfig;
use crate::reaper::Reaper;
use crate::sys;

/// Longest any runtime call may take. Generous because create and delete run OCI hooks.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Most output kept from one runtime call (`ps` of a large container fits comfortably).
const MAX_OUTPUT: u64 = 4 << 20;

/// Name of the runtime's JSON log in the bundle.
pub const LOG_FILE: &str = "log.json";

/// The OCI runtime as configured for one container.
#[derive(Debug, Clone)]
pub struct Runtime {
    runc: runc::Runc,
    log: PathBuf,
    no_pivot_root: bool,
    no_new_keyring: bool,
    /// For the calls the `runc` crate does not cover (checkpoint, restore).
    binary: PathBuf,
    global_args: Vec<String>,
    spawner: Arc<ReapedSpawner>,
}

/// What `runc checkpoint` is asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointArgs {
    /// Where the image goes.
    pub image_path: PathBuf,
    /// criu's work directory.
    pub work_path: PathBuf,
    /// Keep the container running afterwards (not `exit`).
    pub leave_running: bool,
    /// Checkpoint established TCP connections.
    pub tcp_established: bool,
    /// Allow external unix sockets.
    pub external_unix_sockets: bool,
    /// The container has a terminal.
    pub shell_job: bool,
    /// Checkpoint file locks.
    pub file_locks: bool,
    /// Namespaces to leave empty.
    pub empty_namespaces: Vec<String>,
    /// criu's cgroups mode.
    pub cgroups_mode: String,
}

/// What `runc restore` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct RestoreArgs<'a> {
    /// The container's bundle.
    pub bundle: &'a Path,
    /// The checkpoint image.
    pub image_path: &'a Path,
    /// criu's work directory.
    pub work_path: &'a Path,
    /// Where runc writes the restored init's pid.
    pub pid_file: &'a Path,
    /// For a terminal: where runc sends the new console.
    pub console_socket: Option<&'a Path>,
}

impl RestoreArgs<'_> {
    fn args(&self, id: &str, no_pivot: bool) -> Vec<String> {
        let mut args = vec![
            "restore".to_string(),
            "--detach".to_string(),
            "--bundle".to_string(),
            self.bundle.display().to_string(),
            "--image-path".to_string(),
            self.image_path.display().to_string(),
            "--work-path".to_string(),
            self.work_path.display().to_string(),
            "--pid-file".to_string(),
            self.pid_file.display().to_string(),
            // The shim is the subreaper already.
            "--no-subreaper".to_string(),
        ];
        if let Some(socket) = self.console_socket {
            args.push("--console-socket".to_string());
            args.push(socket.display().to_string());
        }
        if no_pivot {
            args.push("--no-pivot".to_string());
        }
        args.push(id.to_string());
        args
    }
}

impl CheckpointArgs {
    fn args(&self, id: &str) -> Vec<String> {
        let mut args = vec![
            "checkpoint".to_string(),
            "--image-path".to_string(),
            self.image_path.display().to_string(),
            "--work-path".to_string(),
            self.work_path.display().to_string(),
        ];
        for (flag, on) in [
            ("--leave-running", self.leave_running),
            ("--tcp-established", self.tcp_established),
            ("--ext-unix-sk", self.external_unix_sockets),
            ("--shell-job", self.shell_job),
            ("--file-locks", self.file_locks),
        ] {
            if on {
                args.push(flag.to_string());
            }
        }
        for namespace in &self.empty_namespaces {
            args.push("--empty-ns".to_string());
            args.push(namespace.clone());
        }
        if !self.cgroups_mode.is_empty() {
            args.push("--manage-cgroups-mode".to_string());
            args.push(self.cgroups_mode.clone());
        }
        args.push(id.to_string());
        args
    }
}

impl Runtime {
    /// Prepares calls to `config.binary` for the container in `bundle`.
    pub fn new(config: &RuncConfig, bundle: &Path, reaper: Arc<Reaper>) -> Result<Self> {
        let log = bundle.join(LOG_FILE);
        let mut opts = GlobalOpts::new()
            .command(&config.binary)
            .root(&config.root)
            .log(&log)
            .log_json()
            .systemd_cgroup(config.systemd_cgroup);
        let spawner = Arc::new(ReapedSpawner {
            reaper,
            deadline: CALL_DEADLINE,
        });
        opts.custom_spawner(spawner.clone());
        let binary = runc::utils::binary_path(&config.binary);
        let runc = opts.build().map_err(|e| match e {
            runc::error::Error::NotFound => ShimError::FailedPrecondition(format!(
                "OCI runtime binary {:?} not found in PATH",
                config.binary
            )),
            other => ShimError::InvalidArgument(format!("runtime settings: {other}")),
        })?;
        let mut global_args = vec![
            "--root".to_string(),
            config.root.display().to_string(),
            "--log".to_string(),
            log.display().to_string(),
            "--log-format".to_string(),
            "json".to_string(),
        ];
        if config.systemd_cgroup {
            global_args.push("--systemd-cgroup".to_string());
        }
        Ok(Self {
            runc,
            log,
            no_pivot_root: config.no_pivot_root,
            no_new_keyring: config.no_new_keyring,
            binary: binary.unwrap_or_else(|| PathBuf::from(&config.binary)),
            global_args,
            spawner,
        })
    }

    /// `runc exec --detach`: starts `process` (OCI process JSON) in the container. The JSON goes
    /// to runc through a file beside `pid_file`, removed once runc is done with it.
    pub async fn exec(
        &self,
        id: &str,
        process: &[u8],
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: Arc<dyn runc::Io>,
    ) -> Result<()> {
        let process_file = document_beside(pid_file, ".process-", process)?;
        let mut args = vec!["exec".to_string(), "--detach".to_string()];
        args.extend(["--pid-file".to_string(), pid_file.display().to_string()]);
        if let Some(socket) = console_socket {
            args.extend(["--console-socket".to_string(), socket.display().to_string()]);
        }
        args.extend([
            "--process".to_string(),
            process_file.path().display().to_string(),
            id.to_string(),
        ]);
        self.run_args("exec", args, Some(io)).await.map(drop)
    }

    /// `runc pause`.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let mark = self.log_mark();
        self.runc
            .pause(id)
            .await
            .map_err(|e| self.failure("pause", e, mark))
    }

    /// `runc resume`.
    pub async fn resume(&self, id: &str) -> Result<()> {
        let mark = self.log_mark();
        self.runc
            .resume(id)
            .await
            .map_err(|e| self.failure("resume", e, mark))
    }

    /// `runc update`: new resources (OCI `LinuxResources` JSON), passed through a file in
    /// `dir` (the bundle).
    pub async fn update(&self, id: &str, resources: &[u8], dir: &Path) -> Result<()> {
        let file = document_beside(&dir.join(LOG_FILE), ".resources-", resources)?;
        let args = vec![
            "update".to_string(),
            "--resources".to_string(),
            file.path().display().to_string(),
            id.to_string(),
        ];
        self.run_args("update", args, None).await.map(drop)
    }

    /// `runc checkpoint`.
    pub async fn checkpoint(&self, id: &str, checkpoint: &CheckpointArgs) -> Result<()> {
        self.run_args("checkpoint", checkpoint.args(id), None)
            .await
            .map(drop)
    }

    /// `runc restore --detach`: the container's init comes back from a checkpoint.
    pub async fn restore(
        &self,
        id: &str,
        restore: &RestoreArgs<'_>,
        io: Arc<dyn runc::Io>,
    ) -> Result<()> {
        self.run_args("restore", restore.args(id, self.no_pivot_root), Some(io))
            .await
            .map(drop)
    }

    /// Runs a runtime subcommand the `runc` crate has no method for.
    async fn run_args(
        &self,
        operation: &'static str,
        args: Vec<String>,
        io: Option<Arc<dyn runc::Io>>,
    ) -> Result<String> {
        let mut command = runc::Command::new(&self.binary);
        command
            .args(&self.global_args)
            .args(&args)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(io) = &io {
            io.set(&mut command)
                .await
                .map_err(|e| ShimError::io(format!("set up stdio for {operation}"), e))?;
        }
        let mark = self.log_mark();
        let (status, _, stdout, stderr) = runc::Spawner::execute(self.spawner.as_ref(), command)
            .await
            .map_err(|e| self.failure(operation, e, mark))?;
        if !status.success() {
            let failed = runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            };
            return Err(self.failure(operation, failed, mark));
        }
        Ok(stdout)
    }

    /// `runc create`: the container's init is left waiting for `start`.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: Arc<dyn runc::Io>,
    ) -> Result<()> {
        let mut opts = CreateOpts::new()
            .pid_file(pid_file)
            .no_pivot(self.no_pivot_root)
            .no_new_keyring(self.no_new_keyring)
            .io(io);
        if let Some(socket) = console_socket {
            opts = opts.console_socket(socket);
        }
        let mark = self.log_mark();
        self.runc
            .create(id, bundle, Some(&opts))
            .await
            .map(drop)
            .map_err(|e| self.failure("create", e, mark))
    }

    /// `runc start`.
    pub async fn start(&self, id: &str) -> Result<()> {
        let mark = self.log_mark();
        self.runc
            .start(id)
            .await
            .map(drop)
            .map_err(|e| self.failure("start", e, mark))
    }

    /// `runc kill [--all] id signal`. A process that is already gone is NotFound.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mark = self.log_mark();
        let opts = KillOpts::new().all(all);
        self.runc
            .kill(id, signal, Some(&opts))
            .await
            .map_err(|e| classify_kill(self.failure("kill", e, mark)))
    }

    /// `runc delete [--force]`. A container runc no longer knows is NotFound.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mark = self.log_mark();
        let opts = DeleteOpts::new().force(force);
        self.runc
            .delete(id, Some(&opts))
            .await
            .map_err(|e| classify_missing(self.failure("delete", e, mark)))
    }

    /// `runc ps`: the pids in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<usize>> {
        let mark = self.log_mark();
        self.runc
            .ps(id)
            .await
            .map_err(|e| classify_missing(self.failure("ps", e, mark)))
    }

    fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Turns a failed call into the runtime's own explanation.
    fn failure(&self, operation: &'static str, error: runc::error::Error, mark: u64) -> ShimError {
        let message = match error {
            runc::error::Error::CommandTimeout(_) => {
                return ShimError::DeadlineExceeded(format!(
                    "OCI runtime {operation} did not finish within {}s",
                    CALL_DEADLINE.as_secs()
                ));
            }
            runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            } => with_criu_reason(
                last_error_since(&self.log, mark)
                    .or_else(|| non_empty(stderr))
                    .or_else(|| non_empty(stdout))
                    .unwrap_or_else(|| format!("exited with {status}")),
            ),
            runc::error::Error::ProcessSpawnFailed(e) => {
                format!("cannot run the runtime binary: {e}")
            }
            other => other.to_string(),
        };
        ShimError::Runtime { operation, message }
    }
}

/// runc reports a criu failure as `criu failed: type DUMP errno 0\nlog file: <path>`, which
/// says nothing of why; criu's log does. The first error criu logged (the cause; later ones
/// are its consequences) is added to the message.
fn with_criu_reason(message: String) -> String {
    match criu_reason(&message) {
        Some(reason) => format!("{message}: criu: {reason}"),
        None => message,
    }
}

fn criu_reason(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("log file: ")?;
    let path = rest.lines().next()?.trim();
    let log = File::open(path).ok()?;
    BufReader::new(Read::take(log, MAX_OUTPUT))
        .lines()
        .map_while(io::Result::ok)
        .find_map(|line| {
            let (_, after) = line.split_once("Error (")?;
            let (_, reason) = after.split_once("): ")?;
            non_empty(reason.to_string())
        })
}

fn non_empty(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// One line of runc's JSON log.
#[derive(Debug, Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The last `level=error` message runc appended to its log after byte `mark`.
pub fn last_error_since(log: &Path, mark: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    if file.seek(SeekFrom::Start(mark)).is_err() {
        return None;
    }
    BufReader::new(Read::take(file, MAX_OUTPUT))
        .lines()
        .map_while(io::Result::ok)
        .filter_map(|line| serde_json::from_str::<LogLine>(&line).ok())
        .filter(|line| line.level == "error" && !line.msg.is_empty())
        .last()
        .map(|line| line.msg)
}

/// Kill of something that already exited is NotFound, as containerd expects.
fn classify_kill(error: ShimError) -> ShimError {
    match &error {
        ShimError::Runtime { message, .. } => {
            let lower = message.to_lowercase();
            if lower.contains("container not running")
                || lower.contains("process already finished")
                || lower.contains("no such process")
            {
                ShimError::NotFound(format!("process already finished: {message}"))
            } else {
                classify_missing(error)
            }
        }
        _ => error,
    }
}

/// runc's "does not exist" is NotFound.
fn classify_missing(error: ShimError) -> ShimError {
    match &error {
        ShimError::Runtime { message, .. } if message.contains("does not exist") => {
            ShimError::NotFound(format!("no such container: {message}"))
        }
        _ => error,
    }
}

/// Spawns runtime commands through the shim's reaper.
#[derive(Debug)]
struct ReapedSpawner {
    reaper: Arc<Reaper>,
    deadline: Duration,
}

#[async_trait]
impl runc::Spawner for ReapedSpawner {
    async fn execute(
        &self,
        mut command: runc::Command,
    ) -> runc::Result<(ExitStatus, u32, String, String)> {
        let command = command.as_std_mut();
        sys::kill_with_parent(command);
        // Subscribe before the spawn: the reaper may collect runc before this task runs again.
        let watch = self.reaper.watch();
        let mut child = command
            .spawn()
            .map_err(runc::error::Error::ProcessSpawnFailed)?;
        let pid = child.id();
        let exit = watch.subscribe(pid as i32);
        drop(watch);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Dropping a std Child neither waits nor kills: the reaper owns the exit.
        drop(child);
        let outcome = tokio::time::timeout(self.deadline, async {
            tokio::join!(read_all(stdout), read_all(stderr), exit.wait())
        })
        .await;
        match outcome {
            Ok((stdout, stderr, Some(exit))) => Ok((
                ExitStatus::from_raw(exit.raw_wait_status()),
                pid,
                stdout,
                stderr,
            )),
            Ok((_, _, None)) => Err(runc::error::Error::InvalidCommand(io::Error::other(
                "the shim's reaper stopped",
            ))),
            Err(elapsed) => {
                log::error!("runtime pid {pid} ran past its deadline, killing it");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                Err(runc::error::Error::CommandTimeout(elapsed))
            }
        }
    }
}

/// Reads a child's output pipe to its end, keeping at most [`MAX_OUTPUT`] bytes.
async fn read_all(pipe: Option<OwnedFd>) -> String {
    let Some(fd) = pipe else {
        return String::new();
    };
    let Ok(receiver) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return String::new();
    };
    let mut bytes = Vec::new();
    let mut limited = receiver.take(MAX_OUTPUT);
    if let Err(e) = limited.read_to_end(&mut bytes).await {
        log::warn!("reading runtime output: {e}");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes `content` to a new file named `<prefix>…` in the directory of `sibling`; the file
/// is removed when the returned handle is dropped.
fn document_beside(
    sibling: &Path,
    prefix: &str,
    content: &[u8],
) -> Result<tempfile::NamedTempFile> {
    let dir = sibling.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".json")
        .tempfile_in(dir)
        .map_err(|e| ShimError::io(format!("create a file in {}", dir.display()), e))?;
    io::Write::write_all(&mut file, content)
        .map_err(|e| ShimError::io(format!("write {}", file.path().display()), e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn last_error_is_taken_from_lines_after_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let mut file = File::create(&log).unwrap();
        writeln!(
            file,
            r#"{{"level":"error","msg":"old failure","time":"t"}}"#
        )
        .unwrap();
        let mark = std::fs::metadata(&log).unwrap().len();
        writeln!(
            file,
            r#"{{"level":"warning","msg":"a warning","time":"t"}}"#
        )
        .unwrap();
        writeln!(
            file,
            r#"{{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH","time":"t"}}"#
        )
        .unwrap();
        writeln!(file, "not json").unwrap();
        assert_eq!(
            last_error_since(&log, mark).as_deref(),
            Some(
                "runc create failed: unable to start container process: exec: \"nosuch\": executable file not found in $PATH"
            )
        );
        let end = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_error_since(&log, end), None);
        assert_eq!(last_error_since(&dir.path().join("missing"), 0), None);
    }

    /// Whether `flag` is followed by `value` in `args`.
    fn passes(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2)
            .any(|pair| pair[0] == flag && pair[1] == value)
    }

    /// Runs the real runc (the parser these arguments are for) on them, for a container that
    /// does not exist: it must get past its flags and fail on the container. Returns what it
    /// said.
    fn runc_takes(args: &[String]) -> String {
        let root = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("runc")
            .arg("--root")
            .arg(root.path())
            .args(args)
            .output()
            .expect("runc must be installed (packaging/test.sh installs it)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        for refusal in [
            "flag provided but not defined",
            "Incorrect Usage",
            "requires exactly",
        ] {
            assert!(!said.contains(refusal), "runc refused {args:?}: {said}");
        }
        said
    }

    #[test]
    fn checkpoint_arguments_carry_every_option_and_runc_takes_them() {
        let args = CheckpointArgs {
            image_path: "/img".into(),
            work_path: "/work".into(),
            leave_running: true,
            tcp_established: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "soft".into(),
            ..Default::default()
        }
        .args("c1");
        assert_eq!(args.first().map(String::as_str), Some("checkpoint"));
        assert_eq!(
            args.last().map(String::as_str),
            Some("c1"),
            "the id comes last"
        );
        assert!(passes(&args, "--image-path", "/img"));
        assert!(passes(&args, "--work-path", "/work"));
        assert!(passes(&args, "--empty-ns", "network"));
        assert!(passes(&args, "--manage-cgroups-mode", "soft"));
        for flag in ["--leave-running", "--tcp-established"] {
            assert!(args.iter().any(|a| a == flag), "{flag}: {args:?}");
        }
        let said = runc_takes(&args);
        assert!(said.contains("does not exist"), "{said}");
        let plain = CheckpointArgs {
            image_path: "/img".into(),
            ..Default::default()
        }
        .args("c1");
        for flag in ["--leave-running", "--tcp-established", "--empty-ns"] {
            assert!(
                !plain.iter().any(|a| a == flag),
                "{flag} not asked for: {plain:?}"
            );
        }
    }

    #[test]
    fn restore_arguments_detach_and_leave_reaping_to_the_shim() {
        let args = RestoreArgs {
            bundle: Path::new("/b"),
            image_path: Path::new("/img"),
            work_path: Path::new("/w"),
            pid_file: Path::new("/b/init.pid"),
            console_socket: Some(Path::new("/tmp/pty.sock")),
        }
        .args("c1", true);
        assert_eq!(args.first().map(String::as_str), Some("restore"));
        assert_eq!(
            args.last().map(String::as_str),
            Some("c1"),
            "the id comes last"
        );
        assert!(passes(&args, "--bundle", "/b"));
        assert!(passes(&args, "--image-path", "/img"));
        assert!(passes(&args, "--work-path", "/w"));
        assert!(passes(&args, "--pid-file", "/b/init.pid"));
        assert!(passes(&args, "--console-socket", "/tmp/pty.sock"));
        // Detached, and the shim (a subreaper) reaps the restored process, not runc.
        for flag in ["--detach", "--no-subreaper", "--no-pivot"] {
            assert!(args.iter().any(|a| a == flag), "{flag}: {args:?}");
        }
        let said = runc_takes(&args);
        assert!(
            said.contains("no such file or directory") || said.contains("does not exist"),
            "runc got as far as the bundle: {said}"
        );
        let pivoting = RestoreArgs {
            bundle: Path::new("/b"),
            image_path: Path::new("/img"),
            work_path: Path::new("/w"),
            pid_file: Path::new("/b/init.pid"),
            console_socket: None,
        }
        .args("c1", false);
        assert!(
            !pivoting
                .iter()
                .any(|a| a == "--no-pivot" || a == "--console-socket")
        );
    }

    #[test]
    fn a_criu_failure_names_criu_s_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.000030) Version: 3.17.1\n\
             (00.004871) Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n\
             (00.004875) Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed\n",
        )
        .unwrap();
        let runc_says = format!(
            "criu failed: type DUMP errno 0\nlog file: {}",
            log.display()
        );
        assert_eq!(
            with_criu_reason(runc_says.clone()),
            format!("{runc_says}: criu: vdso: Failed to fill self vdso symtable")
        );
        // No log named, or none readable: the message stays as runc wrote it.
        let gone = "criu failed: type DUMP errno 0\nlog file: /nonexistent/dump.log";
        assert_eq!(with_criu_reason(gone.into()), gone);
        assert_eq!(with_criu_reason("exec failed".into()), "exec failed");
    }

    #[test]
    fn kill_of_a_finished_process_is_not_found() {
        for message in [
            "container not running",
            "cannot kill: No such process",
            "container \"x\" does not exist",
        ] {
            let error = classify_kill(ShimError::Runtime {
                operation: "kill",
                message: message.into(),
            });
            assert!(
                matches!(error, ShimError::NotFound(_)),
                "{message}: {error:?}"
            );
        }
        let other = classify_kill(ShimError::Runtime {
            operation: "kill",
            message: "permission denied".into(),
        });
        assert!(matches!(other, ShimError::Runtime { .. }));
    }
}
