//! crustd for one test: its own socket, root and state directories in a temp dir, a CRI client
//! over the socket, and SIGTERM (then SIGKILL) by PID at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::tonic::transport::{Channel, Endpoint, Uri};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::net::UnixStream;

use crate::cleanup;
use crate::command::wait_until;
use crate::shim::built_binary;

/// A running crustd.
#[derive(Debug)]
pub struct Crustd {
    /// Its CRI socket.
    pub socket: PathBuf,
    dir: TempDir,
    daemon: Option<Child>,
}

impl Crustd {
    /// Starts crustd with its paths in a temp dir and `extra` appended to its config.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crust-crustd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("crustd.sock");
        let config = format!(
            "socket = \"{}\"\nroot_dir = \"{}\"\nstate_dir = \"{}\"\n{extra}",
            socket.display(),
            dir.path().join("root").display(),
            dir.path().join("state").display(),
        );
        fs::write(dir.path().join("crustd.toml"), config).expect("write crustd config");
        let mut crustd = Crustd {
            socket,
            dir,
            daemon: None,
        };
        crustd.spawn();
        crustd
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("crustd.log"))
            .expect("crustd log");
        let binary = built_binary("crustd");
        assert!(
            binary.exists(),
            "{} is missing: build it first (cargo build -p crust-manager)",
            binary.display()
        );
        let child = Command::new(binary)
            .arg("--config")
            .arg(self.dir.path().join("crustd.toml"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start crustd");
        self.daemon = Some(child);
        let up = wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
        assert!(up, "crustd did not come up:\n{}", self.log());
    }

    /// Stops crustd with SIGTERM (SIGKILL after 10 s) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let pid = child.id() as i32;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !wait_until(Duration::from_secs(10), || cleanup::is_gone(pid)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// crustd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("crustd.log")).unwrap_or_default()
    }

    /// crustd's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A gRPC channel over the CRI socket.
    pub async fn channel(&self) -> Channel {
        let socket = self.socket.clone();
        Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }))
            .await
            .expect("connect to crustd")
    }

    /// An ImageService client.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// The mode bits of the socket.
    pub fn socket_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(&self.socket)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Crustd {
    fn drop(&mut self) {
        self.stop();
        cleanup::unmount_below(self.dir.path());
    }
}
