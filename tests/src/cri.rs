//! CRI RuntimeService calls as the tests and cri-chaos make them: one function per call,
//! answering the call's result.

use std::time::{Duration, Instant};

use crust_proto::cri::runtime_service_client::RuntimeServiceClient;
use crust_proto::cri::tonic::Status;
use crust_proto::cri::tonic::transport::Channel;
use crust_proto::cri::*;

/// A RuntimeService client over crustd's socket.
pub type Client = RuntimeServiceClient<Channel>;
/// What a call answers.
pub type Answer<T> = Result<T, Status>;

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
