//! CRI RuntimeService calls as the tests and cri-chaos make them: one function per call,
//! answering the call's result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::Status;
use crust_proto::cri::tonic::transport::{self, Channel, Endpoint, Uri};
use crust_proto::cri::*;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// A RuntimeService client over crustd's socket.
pub type Client = RuntimeServiceClient<Channel>;
/// What a call answers.
pub type Answer<T> = Result<T, Status>;

/// A gRPC channel to the CRI server listening on `socket` (crustd's or containerd's), made
/// through `endpoint` (its address is a placeholder: every connection goes to the socket).
pub async fn connect_unix(socket: &Path, endpoint: Endpoint) -> Result<Channel, transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
}

/// The endpoint [`connect_unix`] is given when nothing about the connection needs tuning.
pub fn plain_endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:50051")
}

/// A container's config as the tests make it: `name` runs `command` from `image`, logging to
/// `log_path` (relative to the pod's log directory), labelled `container=<name>`.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        labels: [("container".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// A pod's config as the tests make it: `name` in `namespace` (uid `uid-<name>`), its hostname
/// its name, logging below `log_directory`, labelled `app=<name>`.
pub fn pod_config(
    name: &str,
    namespace: &str,
    log_directory: &std::path::Path,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: namespace.into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// RunPodSandbox of `config` with the default runtime handler; the pod's id.
pub async fn run_pod(client: &mut Client, config: &PodSandboxConfig) -> Answer<String> {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// Stops and removes every pod crustd lists.
pub async fn remove_all_pods(client: &mut Client) -> Answer<()> {
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    for pod in pods {
        stop_pod(client, &pod.id).await?;
        remove_pod(client, &pod.id).await?;
    }
    Ok(())
}

/// CreateContainer of `config` in pod `pod` (whose config is `pod_config`), then
/// StartContainer; the container's id.
pub async fn create_and_start(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Answer<String> {
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    start(client, &id).await?;
    Ok(id)
}

/// `sh -c script` in container `id` by ExecSync (30 s): its exit code, and its standard
/// output with its standard error after it.
pub async fn sh(client: &mut Client, id: &str, script: &str) -> Answer<(i32, String)> {
    let answer = exec(client, id, &["sh", "-c", script], 30).await?;
    let mut output = String::from_utf8_lossy(&answer.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&answer.stderr));
    Ok((answer.exit_code, output))
}

/// StartContainer.
pub async fn start(client: &mut Client, id: &str) -> Answer<()> {
    client
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(drop)
}

/// StopContainer with `timeout` seconds of grace.
pub async fn stop(client: &mut Client, id: &str, timeout: i64) -> Answer<()> {
    client
        .stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout,
        })
        .await
        .map(drop)
}

/// RemoveContainer.
pub async fn remove(client: &mut Client, id: &str) -> Answer<()> {
    client
        .remove_container(RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(drop)
}

/// StopPodSandbox.
pub async fn stop_pod(client: &mut Client, id: &str) -> Answer<()> {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(drop)
}

/// RemovePodSandbox.
pub async fn remove_pod(client: &mut Client, id: &str) -> Answer<()> {
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map(drop)
}

/// ContainerStatus.
pub async fn status(client: &mut Client, id: &str) -> Answer<ContainerStatus> {
    client
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .ok_or_else(|| Status::internal("ContainerStatus answered no status"))
}

/// The state PodSandboxStatus reports.
pub async fn pod_state(client: &mut Client, id: &str) -> Answer<i32> {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .map(|s| s.state)
        .ok_or_else(|| Status::internal("PodSandboxStatus answered no status"))
}

/// ExecSync of `cmd` with `timeout` seconds.
pub async fn exec(
    client: &mut Client,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Answer<ExecSyncResponse> {
    client
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// The container's status once it is exited, or when `limit` has passed.
pub async fn wait_exited(
    client: &mut Client,
    id: &str,
    limit: Duration,
) -> Answer<ContainerStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let current = status(client, id).await?;
        if current.state == ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
