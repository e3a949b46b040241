//! A CRI smoke run against a CRI server that is already running (the installed crustd, or a
//! containerd's CRI plugin), over its socket.
//!
//! `cri-smoke run --socket PATH --registry-port PORT` starts a registry on 127.0.0.1:PORT with
//! the busybox test image (the server must reach that host over plain HTTP), pulls it through
//! the server, runs one pod with one container that prints a line and exits, checks its exit
//! code and its CRI log, then removes the pod and the image (also when a step failed).
//!
//! `cri-smoke remove-all --socket PATH` stops and removes every pod the server lists (a
//! safety net after a failed run: the server itself undoes networks, mounts and cgroups).
//!
//! `cri-smoke release-network --root DIR` runs the CNI plugins' DEL for every attachment in
//! crustd's CNI cache under DIR (crustd's root_dir), for when crustd can no longer do it.
//!
//! `cri-smoke info --socket PATH` prints the `config` entry of the server's verbose Status
//! (what `crictl info` shows: for containerd, its CRI plugin's configuration as loaded).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::transport::{Channel, Endpoint, Uri};
use crust_proto::cri::{
    ImageSpec, PodSandboxStatusRequest, PullImageRequest, RemoveImageRequest, StatusRequest,
};
use crust_tests::cri::{self, Client};
use crust_tests::registry::{LayerForm, Registry};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

const USAGE: &str =
    "usage: cri-smoke run --socket PATH --registry-port PORT\n       cri-smoke info --socket PATH";
/// What the container prints.
const GREETING: &str = "hello from crust";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    if args.first().map(String::as_str) == Some("release-network") {
        let Some(root) = value("--root") else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        crust_tests::network::release_cached_attachments(Path::new(&root));
        return ExitCode::SUCCESS;
    }
    let Some(socket) = value("--socket").map(PathBuf::from) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cri-smoke: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match args.first().map(String::as_str) {
        Some("run") => {
            let Some(port) = value("--registry-port").and_then(|p| p.parse::<u16>().ok()) else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            runtime.block_on(run(&socket, port))
        }
        Some("info") => runtime.block_on(info(&socket)),
        Some("remove-all") => runtime.block_on(remove_all(&socket)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("cri-smoke: {why}");
            ExitCode::FAILURE
        }
    }
}

/// A gRPC channel over the CRI socket at `socket`.
async fn channel(socket: &Path) -> Result<Channel, String> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))
}

async fn remove_all(socket: &Path) -> Result<(), String> {
    let mut client = RuntimeServiceClient::new(channel(socket).await?);
    cri::remove_all_pods(&mut client)
        .await
        .map_err(|e| format!("removing every pod: {e}"))
}

async fn info(socket: &Path) -> Result<(), String> {
    let mut client = RuntimeServiceClient::new(channel(socket).await?);
    let status = client
        .status(StatusRequest { verbose: true })
        .await
        .map_err(|e| format!("Status: {e}"))?
        .into_inner();
    let config = status
        .info
        .get("config")
        .ok_or("the verbose Status has no config entry")?;
    println!("{config}");
    Ok(())
}

async fn run(socket: &Path, port: u16) -> Result<(), String> {
    let registry = Registry::start_on(port);
    registry
        .push("library/busybox", "smoke", LayerForm::DockerGzip, "")
        .await;
    let image = registry.reference("library/busybox", "smoke");
    let logs = tempfile::Builder::new()
        .prefix("cri-smoke-")
        .tempdir()
        .map_err(|e| format!("a log directory: {e}"))?;
    let channel = channel(socket).await?;
    let mut runtime: Client = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    let mut pod = None;
    let outcome = smoke(&mut runtime, &mut images, &image, logs.path(), &mut pod).await;
    // Whatever happened: the pod (and with it its container) and the image go.
    let mut cleanup = Vec::new();
    if let Some(id) = &pod {
        if let Err(e) = cri::stop_pod(&mut runtime, id).await {
            cleanup.push(format!("StopPodSandbox: {e}"));
        }
        if let Err(e) = cri::remove_pod(&mut runtime, id).await {
            cleanup.push(format!("RemovePodSandbox: {e}"));
        }
    }
    let removed = images
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await;
    if let Err(e) = removed {
        cleanup.push(format!("RemoveImage: {e}"));
    }
    outcome?;
    if !cleanup.is_empty() {
        return Err(format!("cleaning up: {}", cleanup.join("; ")));
    }
    println!("removed pod and image");
    Ok(())
}

async fn smoke(
    runtime: &mut Client,
    images: &mut ImageServiceClient<Channel>,
    image: &str,
    logs: &Path,
    pod: &mut Option<String>,
) -> Result<(), String> {
    let pulled = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("PullImage {image}: {e}"))?
        .into_inner()
        .image_ref;
    println!("pulled {image} ({pulled})");
    let pod_config = cri::pod_config("crust-smoke", "default", logs);
    let id = cri::run_pod(runtime, &pod_config)
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    *pod = Some(id.clone());
    let address = runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| format!("PodSandboxStatus: {e}"))?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    println!("pod {id} running, IP {address:?}");
    let config = cri::container_config(
        "hello",
        image,
        &["sh", "-c", &format!("echo {GREETING}")],
        "hello.log",
    );
    let container = cri::create_and_start(runtime, &id, &pod_config, config)
        .await
        .map_err(|e| format!("CreateContainer/StartContainer: {e}"))?;
    let status = cri::wait_exited(runtime, &container, Duration::from_secs(30))
        .await
        .map_err(|e| format!("ContainerStatus: {e}"))?;
    if status.state != crust_proto::cri::ContainerState::ContainerExited as i32 {
        return Err(format!("container {container} did not exit within 30 s"));
    }
    if status.exit_code != 0 {
        return Err(format!(
            "container {container} exited {} ({}: {})",
            status.exit_code, status.reason, status.message
        ));
    }
    let log_path = logs.join("hello.log");
    let log = std::fs::read_to_string(&log_path)
        .map_err(|e| format!("read {}: {e}", log_path.display()))?;
    let line = log
        .lines()
        .find(|line| line.ends_with(&format!(" stdout F {GREETING}")))
        .ok_or_else(|| format!("the container's CRI log has no {GREETING:?} line:\n{log}"))?;
    println!("container {container} exited 0; its log: {line}");
    if address.is_empty() {
        return Err("the pod got no IP from the CNI network".into());
    }
    Ok(())
}
