//! Pods: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.
//!
//! A pod's record is written before anything of it exists on the host, and removed only after
//! everything else is gone, in this order: its containers, its tasks and its shim (the shim's
//! exit waited for), its network attachments (CNI DEL), its files and mounts, its network
//! namespace, its bundle, its cgroup, then the record. Every step is idempotent, so a step
//! that fails (or a crash) leaves a pod that the next Stop or Remove finishes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crust_proto::cri::{NamespaceMode, PodSandboxConfig, PodSandboxFilter};
use crust_proto::runc_options::Options;

use super::layout::create_dir;
use super::records::{
    PodNamespaces, PodNetwork, PodRecord, PodState, ShimState, Task, pod_name_key,
};
use super::spec::{self, PodContext};
use super::store::blocking;
use super::{Core, cgroups, container, new_id, now, shown, validate};
use crate::crash_point;
use crate::error::{ManagerError, Result};
use crate::network::{self, netns};

/// The namespaces `config` asks for, as its infra process makes them.
pub(super) fn namespaces_of(config: &PodSandboxConfig) -> PodNamespaces {
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let node = NamespaceMode::Node as i32;
    PodNamespaces {
        host_network: options.network == node,
        host_ipc: options.ipc == node,
        host_pid: options.pid == node,
        shared_pid: options.pid == NamespaceMode::Pod as i32,
    }
}

/// Runs a pod: its files, namespaces and cgroup, its infra process under a new shim. On
/// failure everything made so far is removed again.
pub async fn run(
    core: &Arc<Core>,
    config: Option<PodSandboxConfig>,
    handler: &str,
) -> Result<String> {
    let config =
        config.ok_or_else(|| ManagerError::InvalidArgument("no pod config given".into()))?;
    validate::pod_config(&config)?;
    let (handler, runtime_handler) = core.handler(handler)?;
    let options = core.runc_options(&handler)?;
    let key = pod_name_key(&config);
    core.names.reserve(&key, "pod")?;
    let id = match new_id() {
        Ok(id) => id,
        Err(e) => {
            core.names.release(&key);
            return Err(e);
        }
    };
    let _operation = core.operations.lock(&id).await;
    let parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let owns_cgroup = parent.is_empty() && !runtime_handler.systemd_cgroup;
    let cgroup_parent = match (parent.is_empty(), runtime_handler.systemd_cgroup) {
        (false, _) => parent,
        (true, true) => "system.slice".to_string(),
        (true, false) => format!("{}/{id}", core.config.cgroup_root.trim_end_matches('/')),
    };
    let namespaces = namespaces_of(&config);
    let network = PodNetwork {
        netns: (!namespaces.host_network).then(|| core.layout.netns(&id)),
        ..Default::default()
    };
    let record = PodRecord {
        id: id.clone(),
        namespaces,
        network,
        config,
        runtime_handler: handler,
        created_at: now(),
        state: PodState::NotReady,
        infra_pid: 0,
        infra_task: Task::Absent,
        shim_address: String::new(),
        shim_pid: 0,
        shim: ShimState::NotStarted,
        cgroup_parent,
        owns_cgroup,
    };
    if let Err(e) = core.pods.insert(record.clone()).await {
        core.names.release(&key);
        return Err(e);
    }
    crash_point!("pod-after-record");
    // Its supervisor has nothing to reconcile yet.
    drop(core.supervise(&id));
    match set_up(core, &record, options).await {
        Ok(pid) => {
            log::info!("pod {id} ({key}) runs, infra pid {pid}");
            Ok(id)
        }
        Err(error) => {
            log::warn!("pod {id} ({key}) failed to start: {error}");
            if let Err(e) = remove_locked(core, &id).await {
                log::warn!("cleaning up after pod {id}: {e}; a RemovePodSandbox will finish");
            }
            Err(error)
        }
    }
}

/// The pod's network attached, its files and infra bundle written, then its shim and infra
/// process started.
async fn set_up(core: &Arc<Core>, pod: &PodRecord, options: Options) -> Result<u32> {
    if let Some(netns) = &pod.network.netns {
        attach_network(core, pod, netns).await?;
    }
    let linux = pod.config.linux.as_ref();
    if let Some(limits) = cgroups::PodLimits::of(
        linux.and_then(|l| l.resources.as_ref()),
        linux.and_then(|l| l.overhead.as_ref()),
    ) {
        if pod.owns_cgroup {
            let parent = pod.cgroup_parent.clone();
            blocking(move || cgroups::apply_pod_limits(&parent, &limits)).await?;
        } else {
            // kubelet limits the pod cgroup it names itself; a systemd slice is systemd's.
            log::debug!(
                "pod {}: pod-level limits left to the cgroup's owner",
                pod.id
            );
        }
    }
    let files = core.layout.pod_files(&pod.id);
    let bundle = core.layout.bundle(&pod.id);
    let context = PodContext::of(pod, &files, options.systemd_cgroup, &core.host);
    let spec = spec::infra_spec(&context, core.layout.pause_rootfs())?;
    let config = pod.config.clone();
    let namespaces = pod.namespaces;
    let at = bundle.clone();
    blocking(move || {
        files.create(&config, namespaces.host_network, namespaces.host_ipc)?;
        create_dir(&at)?;
        // The shim daemon logs to `<bundle>/log`; a plain file keeps its log readable without
        // crustd reading a FIFO (the shim must never depend on crustd being up).
        std::fs::write(at.join("log"), b"")
            .map_err(|e| ManagerError::io(format!("create {}/log", at.display()), e))?;
        spec::write(&spec, &at)
    })
    .await?;
    crash_point!("pod-after-files");
    core.supervisor(&pod.id)?.start_infra(bundle, options).await
}

/// Pod `pod` as the plugins see it: None on the node's network (no namespace of its own).
fn network_pod(pod: &PodRecord) -> Option<network::Pod<'_>> {
    pod.network.netns.as_deref().map(|netns| network::Pod {
        id: &pod.id,
        netns,
        config: &pod.config,
    })
}

/// The pod's network namespace pinned, then attached by the plugins (the record says a DEL
/// is owed before ADD runs, so a crash in between is cleaned up).
async fn attach_network(core: &Arc<Core>, pod: &PodRecord, netns: &Path) -> Result<()> {
    let at = netns.to_path_buf();
    blocking(move || {
        netns::create(&at).map_err(|e| {
            ManagerError::io(format!("pin a network namespace at {}", at.display()), e)
        })
    })
    .await?;
    core.pods
        .update(&pod.id, PodRecord::begin_network)
        .await??;
    let ips = core
        .network
        .attach(network::Pod {
            id: &pod.id,
            netns,
            config: &pod.config,
        })
        .await?;
    crash_point!("pod-after-network");
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    log::info!("pod {} has IPs {ips:?}", pod.id);
    core.pods
        .update(&pod.id, |p| p.mark_network_attached(ips))
        .await
}

/// Releases pod `id`'s network attachments if it may have any. Idempotent.
async fn detach_network(core: &Arc<Core>, id: &str) -> Result<()> {
    let Some(pod) = core.pods.get(id) else {
        return Ok(());
    };
    let Some(attached) = network_pod(&pod).filter(|_| pod.network.attached) else {
        return Ok(());
    };
    core.network.detach(attached).await?;
    core.pods.update(id, PodRecord::mark_network_detached).await
}

/// After a restart, before serving: attachments of pods crustd no longer knows released (and
/// GC for 1.1 networks). It must finish before a new pod can be attached, or that pod's
/// attachment would count as unknown.
pub async fn collect_network_garbage(core: &Arc<Core>) {
    let known: HashSet<String> = core.pods.ids().into_iter().collect();
    let layout = core.layout.clone();
    core.network
        .collect_garbage(&known, |id| layout.netns(id))
        .await;
}

/// CHECK on the attachments of running pods (after a restart; in the background, as it only
/// reports).
pub async fn check_networks(core: Arc<Core>) {
    for pod in core
        .pods
        .select(|p| p.state == PodState::Ready && p.network.attached)
    {
        let Some(attached) = network_pod(&pod) else {
            continue;
        };
        let outcome = core.network.check(attached).await;
        // Stopped or removed meanwhile: nothing to report.
        if !core.pods.get(&pod.id).is_some_and(|p| p.network.attached) {
            continue;
        }
        let said = match outcome {
            Ok(()) => "ok".to_string(),
            Err(why) => {
                log::warn!("pod {}: CHECK of its network failed: {why}", pod.id);
                why
            }
        };
        super::lock(&core.network_checks).insert(pod.id.clone(), said);
    }
}

/// Stops a pod: its containers killed, its infra process ended, its shim gone. Idempotent;
/// an unknown pod is already stopped.
pub async fn stop(core: &Arc<Core>, id: &str) -> Result<()> {
    let Some(id) = core.pods.resolve(id)? else {
        return Ok(());
    };
    let _operation = core.operations.lock(&id).await;
    stop_locked(core, &id).await
}

async fn stop_locked(core: &Arc<Core>, id: &str) -> Result<()> {
    if core.pods.get(id).is_none() {
        return Ok(());
    }
    core.supervisor(id)?.stop_pod().await?;
    detach_network(core, id).await?;
    let files = core.layout.pod_files(id);
    blocking(move || files.unmount()).await?;
    log::info!("pod {id} stopped");
    Ok(())
}

/// Removes a pod, stopping it and removing its containers first. Idempotent.
pub async fn remove(core: &Arc<Core>, id: &str) -> Result<()> {
    let Some(id) = core.pods.resolve(id)? else {
        return Ok(());
    };
    let _operation = core.operations.lock(&id).await;
    remove_locked(core, &id).await
}

async fn remove_locked(core: &Arc<Core>, id: &str) -> Result<()> {
    let Some(pod) = core.pods.get(id) else {
        return Ok(());
    };
    stop_locked(core, id).await?;
    for member in core.containers.select(|c| c.pod_id == id) {
        container::remove(core, &member.id).await?;
    }
    crash_point!("pod-before-teardown");
    let layout = core.layout.clone();
    let pod_id = id.to_string();
    let pinned = pod.network.netns.clone();
    blocking(move || {
        layout.remove_pod(&pod_id)?;
        match pinned {
            Some(path) => netns::remove(&path)
                .map_err(|e| ManagerError::io(format!("remove {}", path.display()), e)),
            None => Ok(()),
        }
    })
    .await?;
    if pod.owns_cgroup {
        cgroups::remove_tree(&pod.cgroup_parent).await?;
    }
    core.pods.remove(id).await?;
    core.names.release(&pod.name_key());
    super::lock(&core.supervisors).remove(id);
    core.set_shim_trouble(id, None);
    super::lock(&core.network_checks).remove(id);
    core.operations.forget(id);
    core.stats.forget(id);
    log::info!("pod {id} removed");
    Ok(())
}

/// Pod `id`, as found.
pub fn status(core: &Core, id: &str) -> Result<PodRecord> {
    core.pods
        .resolve(id)?
        .and_then(|id| core.pods.get(&id))
        .ok_or_else(|| ManagerError::NotFound(format!("pod {} not found", shown(id))))
}

/// The pods `filter` selects, oldest first.
pub fn list(core: &Core, filter: Option<&PodSandboxFilter>) -> Vec<PodRecord> {
    let mut pods = core.pods.select(|pod| {
        let Some(filter) = filter else {
            return true;
        };
        (filter.id.is_empty() || pod.id.starts_with(&filter.id))
            && filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == pod.state.cri())
            && filter
                .label_selector
                .iter()
                .all(|(k, v)| pod.config.labels.get(k) == Some(v))
    });
    pods.sort_by_key(|p| p.created_at);
    pods
}
