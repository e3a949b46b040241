//! CRI RuntimeService: thin adapters from the gRPC messages to [`Runtime`] (and, for Exec,
//! Attach and PortForward, to the streaming server). Every request is logged at debug with
//! its ids.

use std::sync::Arc;

use crust_proto::cri::runtime_service_server::RuntimeService;
use crust_proto::cri::tonic::{Request, Response, Status};
use crust_proto::cri::*;

use crate::runtime::container_events::{ContainerEvent, ContainerEventKind};
use crate::runtime::interactive::Wanted;
use crate::runtime::{ContainerRecord, FellBehind, PodRecord, Runtime, Subscription};
use crate::streaming::Streaming;

/// CRI API version crustd speaks.
const RUNTIME_API_VERSION: &str = "v1";

/// The gRPC face of [`Runtime`].
#[derive(Clone)]
pub struct RuntimeApi {
    runtime: Arc<Runtime>,
    streaming: Arc<Streaming>,
}

impl RuntimeApi {
    /// Serves `runtime`, its streaming requests through `streaming`.
    pub fn new(runtime: Arc<Runtime>, streaming: Arc<Streaming>) -> Self {
        Self { runtime, streaming }
    }
}

fn pod_message(pod: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: pod.state.cri(),
        created_at: pod.created_at,
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

fn pod_status_message(pod: &PodRecord) -> PodSandboxStatus {
    let mode = |host: bool, shared: bool| {
        if host {
            NamespaceMode::Node as i32
        } else if shared {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Container as i32
        }
    };
    let ns = pod.namespaces;
    PodSandboxStatus {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: pod.state.cri(),
        created_at: pod.created_at,
        network: Some(PodSandboxNetworkStatus {
            ip: pod.network.ips.first().cloned().unwrap_or_default(),
            additional_ips: pod
                .network
                .ips
                .iter()
                .skip(1)
                .map(|ip| PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(NamespaceOption {
                    network: mode(ns.host_network, true),
                    pid: mode(ns.host_pid, ns.shared_pid),
                    ipc: mode(ns.host_ipc, true),
                    ..Default::default()
                }),
            }),
        }),
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

fn container_message(c: &ContainerRecord) -> Container {
    Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        state: c.state.cri(),
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

fn container_status_message(c: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.state.cri(),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        image_id: c.image_id.clone(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|linux| ContainerResources {
                linux: Some(linux),
                windows: None,
            }),
        user: c.user.as_ref().map(|user| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: user.uid.into(),
                gid: user.gid.into(),
                supplemental_groups: user.additional_gids.iter().map(|&g| g.into()).collect(),
            }),
        }),
    }
}

/// One subscriber's GetContainerEvents stream.
pub type ContainerEventStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<ContainerEventResponse, Status>> + Send>,
>;

fn container_event_message(event: &ContainerEvent) -> ContainerEventResponse {
    let kind = match event.kind {
        ContainerEventKind::Created => ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: kind as i32,
        created_at: event.at,
        pod_sandbox_status: event.pod.as_ref().map(pod_status_message),
        containers_statuses: event
            .containers
            .iter()
            .map(container_status_message)
            .collect(),
    }
}

/// The events of `subscription` as gRPC messages. A subscriber that fell behind gets
/// ResourceExhausted and its stream ends: it lost events, and an error (unlike a plain end,
/// which a shutdown also gives) tells it to list afresh before it subscribes again. The
/// subscription goes when the client does (tonic drops the stream).
fn container_event_stream(subscription: Subscription) -> ContainerEventStream {
    Box::pin(futures_util::stream::unfold(
        Some(subscription),
        |subscription| async move {
            let mut subscription = subscription?;
            match subscription.next().await? {
                Ok(event) => Some((Ok(container_event_message(&event)), Some(subscription))),
                Err(FellBehind { missed }) => {
                    log::warn!(
                        "a container events subscriber fell {missed} events behind: dropped"
                    );
                    let status = Status::resource_exhausted(format!(
                        "this subscriber fell behind and lost {missed} container events; \
                         list containers and subscribe again"
                    ));
                    Some((Err(status), None))
                }
            }
        },
    ))
}

#[crust_proto::cri::tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        log::debug!("Version {}", request.get_ref().version);
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "crust".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let name = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        log::debug!("RunPodSandbox {name} handler {:?}", request.runtime_handler);
        let id = self
            .runtime
            .run_pod(request.config, &request.runtime_handler)
            .await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        log::debug!("StopPodSandbox {id}");
        self.runtime.stop_pod(&id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        log::debug!("RemovePodSandbox {id}");
        self.runtime.remove_pod(&id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let id = request.pod_sandbox_id;
        log::debug!("PodSandboxStatus {id}");
        let pod = self.runtime.pod_status(&id)?;
        // Verbose: what crustd knows of the pod's network beyond the IPs.
        let info = if request.verbose {
            let mut info = std::collections::HashMap::new();
            if let Some(netns) = &pod.network.netns {
                info.insert("netns".to_string(), netns.display().to_string());
            }
            if let Some(check) = self.runtime.network_check(&pod.id) {
                info.insert("networkCheck".to_string(), check);
            }
            info
        } else {
            Default::default()
        };
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(pod_status_message(&pod)),
            info,
            timestamp: crate::runtime::now(),
            ..Default::default()
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        log::debug!("ListPodSandbox {filter:?}");
        let items = self
            .runtime
            .list_pods(filter.as_ref())
            .iter()
            .map(pod_message)
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let name = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default();
        log::debug!("CreateContainer {name} in pod {}", request.pod_sandbox_id);
        let id = self
            .runtime
            .create_container(&request.pod_sandbox_id, request.config)
            .await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        log::debug!("StartContainer {id}");
        self.runtime.start_container(&id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let request = request.into_inner();
        log::debug!(
            "StopContainer {} timeout {}",
            request.container_id,
            request.timeout
        );
        self.runtime
            .stop_container(&request.container_id, request.timeout)
            .await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        log::debug!("RemoveContainer {id}");
        self.runtime.remove_container(&id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        log::debug!("ListContainers {filter:?}");
        let containers = self
            .runtime
            .list_containers(filter.as_ref())
            .iter()
            .map(container_message)
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = request.into_inner().container_id;
        log::debug!("ContainerStatus {id}");
        let record = self.runtime.container_status(&id)?;
        Ok(Response::new(ContainerStatusResponse {
            status: Some(container_status_message(&record)),
            ..Default::default()
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        log::debug!("UpdateContainerResources {}", request.container_id);
        // Windows resources mean nothing here; no Linux ones is nothing to change.
        if let Some(linux) = request.linux {
            self.runtime
                .update_container_resources(&request.container_id, linux)
                .await?;
        }
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        log::debug!("ReopenContainerLog {id}");
        self.runtime.reopen_log(&id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        log::debug!(
            "ExecSync {} {:?} timeout {}",
            request.container_id,
            request.cmd,
            request.timeout
        );
        let output = self
            .runtime
            .exec_sync(&request.container_id, request.cmd, request.timeout)
            .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        }))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let request = request.into_inner();
        log::debug!(
            "Exec {} {:?} tty {} stdin {} stdout {} stderr {}",
            request.container_id,
            request.cmd,
            request.tty,
            request.stdin,
            request.stdout,
            request.stderr
        );
        let streams = Wanted {
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        };
        let url = self
            .streaming
            .exec(&request.container_id, request.cmd, request.tty, streams)?;
        Ok(Response::new(ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let request = request.into_inner();
        log::debug!(
            "Attach {} stdin {} stdout {} stderr {}",
            request.container_id,
            request.stdin,
            request.stdout,
            request.stderr
        );
        let streams = Wanted {
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        };
        let url = self.streaming.attach(&request.container_id, streams)?;
        Ok(Response::new(AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let request = request.into_inner();
        log::debug!("PortForward {} {:?}", request.pod_sandbox_id, request.port);
        let url = self.streaming.port_forward(&request.pod_sandbox_id)?;
        Ok(Response::new(PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        log::debug!("ContainerStats {id}");
        let stats = self.runtime.container_stats(&id).await?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        log::debug!("ListContainerStats {filter:?}");
        let stats = self.runtime.list_container_stats(filter.as_ref()).await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        log::debug!("PodSandboxStats {id}");
        let stats = self.runtime.pod_stats(&id).await?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        log::debug!("ListPodSandboxStats {filter:?}");
        let stats = self.runtime.list_pod_stats(filter.as_ref()).await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        log::debug!("UpdateRuntimeConfig pod CIDR {cidr:?}");
        self.runtime.set_pod_cidr(cidr).await?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        log::debug!("Status verbose {verbose}");
        let network = match self.runtime.network_status().await {
            Ok(()) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                ..Default::default()
            },
            Err(why) => RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {why}"),
            },
        };
        let conditions = vec![
            RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            network,
        ];
        let runtime_handlers = self
            .runtime
            .handler_features()
            .into_iter()
            .map(|(name, support)| crust_proto::cri::RuntimeHandler {
                name,
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: support.recursive_read_only,
                    // Pods always share the node's user namespace here.
                    user_namespaces: false,
                }),
            })
            .collect();
        // Verbose: what crustd holds from kubelet, as containerd reports its own state there.
        let info = if verbose {
            [("podCIDR".to_string(), self.runtime.pod_cidr())].into()
        } else {
            Default::default()
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            runtime_handlers,
            info,
            // Both policies are applied, and ContainerStatus reports the user.
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let request = request.into_inner();
        log::debug!("CheckpointContainer {}", request.container_id);
        self.runtime
            .checkpoint_container(&request.container_id, &request.location, request.timeout)
            .await?;
        Ok(Response::new(CheckpointContainerResponse {}))
    }

    type GetContainerEventsStream = ContainerEventStream;

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        log::debug!("GetContainerEvents");
        let subscription = self.runtime.subscribe_container_events();
        Ok(Response::new(container_event_stream(subscription)))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        log::debug!("ListMetricDescriptors");
        Ok(Response::new(ListMetricDescriptorsResponse {
            descriptors: self.runtime.metric_descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        log::debug!("ListPodSandboxMetrics");
        let pod_metrics = self.runtime.pod_metrics().await?;
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        log::debug!("RuntimeConfig");
        let systemd = self
            .runtime
            .config()
            .runtimes
            .get(&self.runtime.config().default_runtime)
            .is_some_and(|h| h.systemd_cgroup);
        let cgroup_driver = if systemd {
            CgroupDriver::Systemd
        } else {
            CgroupDriver::Cgroupfs
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        }))
    }
}
