//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use crust_proto::cri::{NamespaceMode, PodSandboxConfig, PodSandboxFilter};

use super::pod_files::{self, PodFiles};
use super::records::{self, PodNamespaces, PodRecord, PodState};
use super::shim::{self, ShimClient};
use super::spec::{self, PodContext};
use super::{ContainerState, Runtime, create_dir, lock, new_id, now, remove_tree};
use crate::error::{ManagerError, Result};

/// How long the infra process gets to leave after SIGKILL.
const INFRA_EXIT_LIMIT: Duration = Duration::from_secs(10);

fn namespaces_of(config: &PodSandboxConfig) -> PodNamespaces {
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

/// Refuses a pod config kubelet would never send.
fn check_pod_config(config: &PodSandboxConfig) -> Result<()> {
    let metadata = config
        .metadata
        .as_ref()
        .ok_or_else(|| ManagerError::InvalidArgument("pod config has no metadata".into()))?;
    if metadata.name.is_empty() {
        return Err(ManagerError::InvalidArgument(
            "pod metadata has no name".into(),
        ));
    }
    if !config.log_directory.is_empty() {
        spec::check_path("pod log directory", &config.log_directory)?;
    }
    Ok(())
}

impl Runtime {
    /// Runs a pod: its files, namespaces and cgroup, its infra process under a new shim.
    pub async fn run_pod(
        self: &Arc<Self>,
        config: Option<PodSandboxConfig>,
        handler: &str,
    ) -> Result<String> {
        let config =
            config.ok_or_else(|| ManagerError::InvalidArgument("no pod config given".into()))?;
        check_pod_config(&config)?;
        let (handler, runtime_handler) = self.handler(handler)?;
        let key = records::pod_name_key(&config);
        self.reserve_name(&key, "pod")?;
        let id = match new_id() {
            Ok(id) => id,
            Err(e) => {
                self.release_name(&key);
                return Err(e);
            }
        };
        let parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        let owns_cgroup = parent.is_empty();
        let cgroup_parent = if owns_cgroup {
            if runtime_handler.systemd_cgroup {
                "system.slice".to_string()
            } else {
                format!("{}/{id}", self.config.cgroup_root.trim_end_matches('/'))
            }
        } else {
            parent
        };
        let record = PodRecord {
            id: id.clone(),
            namespaces: namespaces_of(&config),
            config,
            runtime_handler: handler,
            created_at: now(),
            state: PodState::NotReady,
            infra_pid: 0,
            shim_address: String::new(),
            cgroup_parent,
            owns_cgroup: owns_cgroup && !runtime_handler.systemd_cgroup,
        };
        let operation = self.operation(&id);
        let _serialized = operation.lock().await;
        self.pod_records.save(&id, &record)?;
        lock(&self.pods).insert(id.clone(), record.clone());
        match self.start_infra(&record).await {
            Ok((pid, address)) => {
                self.update_pod(&id, |p| p.mark_ready(pid, address))?;
                self.watch(&id, &id);
                log::info!("pod {id} ({key}) runs, infra pid {pid}");
                Ok(id)
            }
            Err(error) => {
                log::warn!("pod {id} ({key}) failed to start: {error}");
                if let Err(e) = self.tear_down_pod(&id).await {
                    log::warn!("cleaning up after pod {id}: {e}");
                }
                Err(error)
            }
        }
    }

    pub(super) fn pod_files(&self, id: &str) -> PodFiles {
        PodFiles::at(self.dirs.pods.join(id))
    }

    /// The pod's files, bundle and shim, and its infra process started.
    async fn start_infra(self: &Arc<Self>, pod: &PodRecord) -> Result<(u32, String)> {
        let files = self.pod_files(&pod.id);
        files.create(
            &pod.config,
            pod.namespaces.host_network,
            pod.namespaces.host_ipc,
        )?;
        let bundle = self.bundle(&pod.id);
        create_dir(&bundle)?;
        // The shim daemon logs to `<bundle>/log`; a plain file keeps its log readable without
        // crustd reading a FIFO (the shim must never depend on crustd being up).
        fs::write(bundle.join("log"), b"")
            .map_err(|e| ManagerError::io(format!("create {}/log", bundle.display()), e))?;
        let options = self.runc_options(&pod.runtime_handler)?;
        let context = PodContext::of(pod, &files, options.systemd_cgroup);
        spec::infra_spec(&context, &self.dirs.pause_rootfs)?
            .save(bundle.join("config.json"))
            .map_err(|e| ManagerError::io("write infra config.json", std::io::Error::other(e)))?;
        let address = self.launcher.start(&pod.id, &bundle, &options).await?;
        let client = ShimClient::connect(&address).await?;
        lock(&self.shims).insert(pod.id.clone(), client.clone());
        self.update_pod(&pod.id, |p| p.shim_address = address.clone())?;
        client
            .create(
                shim::create_request(&pod.id, &bundle, Vec::new(), None, false),
                &options,
            )
            .await?;
        let pid = client.start(&pod.id, "").await?;
        Ok((pid, address))
    }

    /// Stops a pod: its containers killed, its infra process ended, its shim asked to leave.
    /// Idempotent; an unknown pod is already stopped.
    pub async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.find_pod(id)? else {
            return Ok(());
        };
        let operation = self.operation(&id);
        let _serialized = operation.lock().await;
        self.stop_pod_locked(&id).await
    }

    async fn stop_pod_locked(self: &Arc<Self>, id: &str) -> Result<()> {
        let members: Vec<String> = lock(&self.containers)
            .values()
            .filter(|c| c.pod_id == id && c.state == ContainerState::Running)
            .map(|c| c.id.clone())
            .collect();
        for container in members {
            self.stop_container(&container, 0).await?;
        }
        let Some(pod) = self.pod(id) else {
            return Ok(());
        };
        if !pod.shim_address.is_empty() {
            match self.shim(id).await {
                Ok(shim) => {
                    // Exited containers whose task is still in the shim (crustd stopped before
                    // deleting it) would keep the shim alive.
                    let exited: Vec<String> = lock(&self.containers)
                        .values()
                        .filter(|c| c.pod_id == id && c.state == ContainerState::Exited)
                        .map(|c| c.id.clone())
                        .collect();
                    for container in exited {
                        match shim.delete(&container, "").await {
                            Ok(()) | Err(ManagerError::NotFound(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    stop_infra(&shim, id).await?;
                    // The shim stays while any task remains; with none it exits now.
                    if let Err(e) = shim.shutdown(id).await {
                        log::debug!("shutdown of pod {id}'s shim: {e}");
                    }
                }
                Err(e) => log::info!("pod {id}: shim already gone ({e})"),
            }
            self.forget_shim(id);
        }
        self.update_pod(id, |p| p.mark_not_ready())?;
        self.pod_files(id).unmount()?;
        log::info!("pod {id} stopped");
        Ok(())
    }

    /// Removes a pod, stopping it and removing its containers first. Idempotent.
    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(id) = self.find_pod(id)? else {
            return Ok(());
        };
        let operation = self.operation(&id);
        let _serialized = operation.lock().await;
        self.stop_pod_locked(&id).await?;
        let members: Vec<String> = lock(&self.containers)
            .values()
            .filter(|c| c.pod_id == id)
            .map(|c| c.id.clone())
            .collect();
        for container in members {
            self.remove_container(&container).await?;
        }
        self.tear_down_pod(&id).await?;
        self.forget_operation(&id);
        log::info!("pod {id} removed");
        Ok(())
    }

    /// Removes every trace of pod `id`: infra task, files, bundle, cgroup, name, record.
    async fn tear_down_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(pod) = self.pod(id) else {
            return Ok(());
        };
        if !pod.shim_address.is_empty()
            && let Ok(shim) = self.shim(id).await
        {
            stop_infra(&shim, id).await?;
            let _ = shim.shutdown(id).await;
        }
        self.forget_shim(id);
        self.pod_files(id).remove()?;
        remove_tree(&self.bundle(id))?;
        if pod.owns_cgroup {
            pod_files::remove_cgroup(&pod.cgroup_parent);
        }
        self.pod_records.remove(id)?;
        lock(&self.pods).remove(id);
        self.release_name(&pod.name_key());
        Ok(())
    }

    /// Pod `id`, as found.
    pub fn pod_status(&self, id: &str) -> Result<PodRecord> {
        self.find_pod(id)?
            .and_then(|id| self.pod(&id))
            .ok_or_else(|| ManagerError::NotFound(format!("pod {id} not found")))
    }

    /// The pods `filter` selects, oldest first.
    pub fn list_pods(&self, filter: Option<&PodSandboxFilter>) -> Vec<PodRecord> {
        let mut pods: Vec<PodRecord> = lock(&self.pods)
            .values()
            .filter(|pod| {
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
            })
            .cloned()
            .collect();
        pods.sort_by_key(|p| p.created_at);
        pods
    }
}

/// Ends pod `id`'s infra process and deletes its task; a task already gone is fine.
async fn stop_infra(shim: &ShimClient, id: &str) -> Result<()> {
    match shim.kill(id, "", libc::SIGKILL as u32, true).await {
        Ok(()) | Err(ManagerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match tokio::time::timeout(INFRA_EXIT_LIMIT, shim.wait(id, "")).await {
        Ok(Ok(_)) | Ok(Err(ManagerError::NotFound(_))) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(ManagerError::DeadlineExceeded(format!(
                "infra process of pod {id} did not exit after SIGKILL"
            )));
        }
    }
    match shim.delete(id, "").await {
        Ok(()) | Err(ManagerError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
