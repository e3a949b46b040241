//! The CRI stats of containers and pods: CPU and memory from each task's cgroup (through the
//! pod's shim), the writable layer from its upper dir, a pod's network from its namespace's
//! `net/dev`. Kubelet takes these for eviction, `kubectl top` and autoscaling.
//!
//! - A container has CPU and memory stats while its task runs; one that is not running is
//!   listed with its writable layer only, as containerd lists a container without a task.
//! - A pod's CPU, memory and process count are the sums over its infra task and containers
//!   (crustd's pod cgroup is a parent runc never reports on).
//! - CPU rates (nano cores) are computed over the window since the previous sample of the
//!   same container or pod; the first sample has none.
//! - A single ContainerStats or PodSandboxStats reports a shim that is gone or hung as
//!   Unavailable; the list calls leave out what such a shim would have said and answer the
//!   rest.

mod metrics;
mod net_dev;
mod pod_cgroup;
mod usage;
mod writable_layer;

use std::collections::HashMap;
use std::sync::Arc;

use crust_proto::cri::{
    ContainerAttributes, ContainerStats, ContainerStatsFilter, CpuUsage, FilesystemIdentifier,
    FilesystemUsage, LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxStats, PodSandboxStatsFilter, ProcessUsage, UInt64Value,
};
use futures_util::future::join_all;

use super::records::{ContainerRecord, ContainerState, PodRecord, PodState};
use super::shim::{ShimClient, TaskMetrics};
use super::{Core, container, now, sandbox, shown};
use crate::error::{ManagerError, Result};

pub use metrics::{descriptors, pod_metrics};
use net_dev::InterfaceCounters;
use usage::{CgroupUsage, CpuSamples};
use writable_layer::{LayerCache, LayerUsage};

/// What the stats keep between calls: the last CPU sample and a recent layer walk of each
/// container (and pod), dropped when it is removed.
#[derive(Debug, Default)]
pub struct StatsState {
    cpu: CpuSamples,
    layers: LayerCache,
}

impl StatsState {
    /// Forgets container or pod `id` (removed).
    pub fn forget(&self, id: &str) {
        self.cpu.forget(id);
        self.layers.forget(id);
    }
}

/// One container's figures at one moment.
#[derive(Debug, Clone)]
struct ContainerSample {
    record: ContainerRecord,
    /// When the cgroup was read, ns since the epoch.
    at: i64,
    /// None without a running task (or when its shim could not say).
    usage: Option<CgroupUsage>,
    layer: Option<LayerUsage>,
    upper: String,
}

/// One pod's figures at one moment.
#[derive(Debug, Clone)]
struct PodSample {
    pod: PodRecord,
    at: i64,
    /// The sum over the infra task and the running containers.
    usage: Option<CgroupUsage>,
    containers: Vec<ContainerSample>,
    /// None for a pod on the host's network.
    network: Option<Vec<InterfaceCounters>>,
}

/// A connection to pod `pod_id`'s shim for reading stats: Unavailable when the shim is gone
/// or known not to answer (a hung shim would hold every stats call for its deadline).
async fn shim_for_stats(core: &Core, pod_id: &str) -> Result<ShimClient> {
    if let Some(trouble) = core.shim_trouble(pod_id) {
        return Err(ManagerError::Unavailable(format!(
            "the shim of pod {} does not answer: {trouble}",
            shown(pod_id)
        )));
    }
    match core.supervisor(pod_id)?.client().await {
        Err(ManagerError::FailedPrecondition(why)) => Err(ManagerError::Unavailable(why)),
        other => other,
    }
}

/// The metrics of `tasks` of pod `pod_id`, each asked on its own (concurrently) over one
/// connection; Err when the pod's shim cannot be reached at all.
async fn read_tasks(
    core: &Core,
    pod_id: &str,
    tasks: Vec<String>,
) -> Result<Vec<(String, Result<TaskMetrics>)>> {
    let client = shim_for_stats(core, pod_id).await?;
    let answers = join_all(tasks.iter().map(|task| client.stats(task))).await;
    Ok(tasks.into_iter().zip(answers).collect())
}

/// What a pod's shim said of its tasks, as usage per task id. With `strict`, a failure is
/// the answer; else the task goes without figures. A task that is gone (NotFound: it ended
/// after its record was read) has none either way.
fn usages(
    answers: Vec<(String, Result<TaskMetrics>)>,
    strict: bool,
) -> Result<HashMap<String, CgroupUsage>> {
    let mut usages = HashMap::new();
    for (task, answer) in answers {
        match answer {
            Ok(metrics) => {
                usages.insert(task, CgroupUsage::from(&metrics));
            }
            Err(ManagerError::NotFound(why)) => log::debug!("no stats of {task}: {why}"),
            Err(e) if strict => return Err(e),
            Err(e) => log::debug!("no stats of {task}: {e}"),
        }
    }
    Ok(usages)
}

/// The running containers among `records`, by pod.
fn running_by_pod(records: &[ContainerRecord]) -> HashMap<String, Vec<String>> {
    let mut by_pod: HashMap<String, Vec<String>> = HashMap::new();
    for record in records
        .iter()
        .filter(|c| c.state == ContainerState::Running)
    {
        by_pod
            .entry(record.pod_id.clone())
            .or_default()
            .push(record.id.clone());
    }
    by_pod
}

/// The writable layers of `ids` (their upper dirs and usage), and the interfaces of the
/// network namespaces of `pids`, read in one job on the blocking pool.
async fn read_files(
    core: &Arc<Core>,
    ids: Vec<String>,
    pids: Vec<u32>,
) -> Result<(
    Vec<(String, Option<LayerUsage>)>,
    Vec<Vec<InterfaceCounters>>,
)> {
    let state = Arc::clone(core);
    super::store::blocking(move || {
        let layers = ids
            .into_iter()
            .map(|id| {
                let upper = state.layout.container_data(&id).join("upper");
                let usage = state.stats.layers.usage(&id, &upper);
                if let Err(e) = &usage {
                    log::debug!("writable layer of {id} at {}: {e}", upper.display());
                }
                (upper.display().to_string(), usage.ok())
            })
            .collect();
        let networks = pids.into_iter().map(net_dev::read).collect();
        Ok((layers, networks))
    })
    .await
}

/// Samples `records` (containers of any pods): CPU and memory of the running ones from their
/// shims, the writable layer of all. With `strict`, a shim that fails is the answer (one
/// container asked for); else its containers go without CPU and memory.
async fn sample_containers(
    core: &Arc<Core>,
    records: Vec<ContainerRecord>,
    strict: bool,
) -> Result<Vec<ContainerSample>> {
    let per_pod = join_all(running_by_pod(&records).into_iter().map(
        |(pod_id, tasks)| async move {
            let answers = read_tasks(core, &pod_id, tasks.clone()).await;
            (tasks, answers)
        },
    ))
    .await;
    let at = now();
    let mut usage = HashMap::new();
    for (tasks, answers) in per_pod {
        match answers {
            Ok(answers) => usage.extend(usages(answers, strict)?),
            Err(e) if strict => return Err(e),
            Err(e) => log::debug!("no stats of {tasks:?}: {e}"),
        }
    }
    let ids = records.iter().map(|r| r.id.clone()).collect();
    let (layers, _) = read_files(core, ids, Vec::new()).await?;
    Ok(assemble(records, at, &mut usage, layers))
}

/// Container samples from their records, usage and layers (in the records' order).
fn assemble(
    records: Vec<ContainerRecord>,
    at: i64,
    usage: &mut HashMap<String, CgroupUsage>,
    layers: Vec<(String, Option<LayerUsage>)>,
) -> Vec<ContainerSample> {
    records
        .into_iter()
        .zip(layers)
        .map(|(record, (upper, layer))| ContainerSample {
            usage: usage.remove(&record.id),
            record,
            at,
            layer,
            upper,
        })
        .collect()
}

/// Samples ready `pods` and their containers, each pod's tasks in one batch on its shim and
/// every file read in one blocking job. With `strict` (one pod asked for), a pod whose shim
/// or infra task cannot answer is the answer; else it is left out (and logged).
async fn sample_pods(
    core: &Arc<Core>,
    pods: Vec<PodRecord>,
    strict: bool,
) -> Result<Vec<PodSample>> {
    let mut reads = Vec::with_capacity(pods.len());
    for pod in pods {
        if pod.state != PodState::Ready {
            let why = format!("pod {} is not ready", shown(&pod.id));
            if strict {
                return Err(ManagerError::Unavailable(why));
            }
            log::debug!("{why}: no stats");
            continue;
        }
        let mut records = core.containers.select(|c| c.pod_id == pod.id);
        records.sort_by_key(|c| c.created_at);
        reads.push((pod, records));
    }
    let answers = join_all(reads.iter().map(|(pod, records)| {
        let mut tasks = vec![pod.id.clone()];
        tasks.extend(running_by_pod(records).remove(&pod.id).unwrap_or_default());
        read_tasks(core, &pod.id, tasks)
    }))
    .await;
    let at = now();
    let mut kept = Vec::with_capacity(reads.len());
    for ((pod, records), answers) in reads.into_iter().zip(answers) {
        let mut usage = match answers.and_then(|answers| usages(answers, strict)) {
            Ok(usage) => usage,
            Err(e) if strict => return Err(e),
            Err(e) => {
                log::debug!("pod {} left out of the stats: {e}", pod.id);
                continue;
            }
        };
        let Some(infra) = usage.remove(&pod.id) else {
            let why = format!("the infra task of pod {} is gone", shown(&pod.id));
            if strict {
                return Err(ManagerError::Unavailable(why));
            }
            log::debug!("{why}: no stats");
            continue;
        };
        let total = usage.values().fold(infra, |sum, c| sum.plus(c));
        kept.push((pod, records, usage, total));
    }
    // Where a pod has a cgroup of its own, its figures are the kernel's there: they keep the
    // CPU time of containers that have exited. Elsewhere, the sum over its running tasks.
    let pods: Vec<PodRecord> = kept.iter().map(|(pod, ..)| pod.clone()).collect();
    let own = super::store::blocking(move || Ok(pod_cgroup::read(&pods))).await?;
    for ((_, _, _, total), own) in kept.iter_mut().zip(own) {
        if let Some(own) = own {
            *total = own;
        }
    }
    let ids = kept
        .iter()
        .flat_map(|(_, records, _, _)| records.iter().map(|r| r.id.clone()))
        .collect();
    let pids = kept
        .iter()
        .filter(|(pod, ..)| !pod.namespaces.host_network)
        .map(|(pod, ..)| pod.infra_pid)
        .collect();
    let (layers, networks) = read_files(core, ids, pids).await?;
    let mut layers = layers.into_iter();
    let mut networks = networks.into_iter();
    Ok(kept
        .into_iter()
        .map(|(pod, records, mut usage, total)| {
            let pod_layers = layers.by_ref().take(records.len()).collect();
            let network = if pod.namespaces.host_network {
                None
            } else {
                networks.next()
            };
            PodSample {
                containers: assemble(records, at, &mut usage, pod_layers),
                pod,
                at,
                usage: Some(total),
                network,
            }
        })
        .collect())
}

/// Whether `record` passes the ListContainerStats `filter` (as ListContainers filters).
fn container_selected(record: &ContainerRecord, filter: Option<&ContainerStatsFilter>) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    (filter.id.is_empty() || record.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || record.pod_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| record.config.labels.get(k) == Some(v))
}

/// Whether `pod` passes the ListPodSandboxStats `filter`.
fn pod_selected(pod: &PodRecord, filter: Option<&PodSandboxStatsFilter>) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    (filter.id.is_empty() || pod.id.starts_with(&filter.id))
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| pod.config.labels.get(k) == Some(v))
}

fn value(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

/// CPU usage of `id` (container or pod) from `usage`, its rate over the last window.
fn cpu_message(core: &Core, id: &str, at: i64, usage: &CgroupUsage) -> Option<CpuUsage> {
    let total = usage.cpu_nanos?;
    Some(CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(total),
        usage_nano_cores: core.stats.cpu.nano_cores(id, at, total).and_then(value),
    })
}

fn memory_message(at: i64, usage: &CgroupUsage) -> Option<MemoryUsage> {
    let memory = usage.memory?;
    Some(MemoryUsage {
        timestamp: at,
        working_set_bytes: value(memory.working_set),
        available_bytes: memory.available().and_then(value),
        usage_bytes: value(memory.usage),
        rss_bytes: value(memory.rss),
        page_faults: value(memory.page_faults),
        major_page_faults: value(memory.major_page_faults),
    })
}

fn container_message(core: &Core, sample: &ContainerSample) -> ContainerStats {
    let record = &sample.record;
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: record.id.clone(),
            metadata: record.config.metadata.clone(),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
        }),
        cpu: sample
            .usage
            .as_ref()
            .and_then(|u| cpu_message(core, &record.id, sample.at, u)),
        memory: sample
            .usage
            .as_ref()
            .and_then(|u| memory_message(sample.at, u)),
        writable_layer: sample.layer.map(|layer| FilesystemUsage {
            timestamp: sample.at,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: sample.upper.clone(),
            }),
            used_bytes: value(layer.bytes),
            inodes_used: value(layer.inodes),
        }),
        swap: None,
    }
}

fn interface_message(counters: &InterfaceCounters) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: counters.name.clone(),
        rx_bytes: value(counters.rx_bytes),
        rx_errors: value(counters.rx_errors),
        tx_bytes: value(counters.tx_bytes),
        tx_errors: value(counters.tx_errors),
    }
}

fn pod_message(core: &Core, sample: &PodSample) -> PodSandboxStats {
    let pod = &sample.pod;
    let usage = sample.usage.as_ref();
    let network = sample.network.as_ref().map(|interfaces| NetworkUsage {
        timestamp: sample.at,
        default_interface: interfaces
            .iter()
            .find(|i| i.name == net_dev::DEFAULT_INTERFACE)
            .map(interface_message),
        interfaces: interfaces.iter().map(interface_message).collect(),
    });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: pod.config.metadata.clone(),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: usage.and_then(|u| cpu_message(core, &pod.id, sample.at, u)),
            memory: usage.and_then(|u| memory_message(sample.at, u)),
            network,
            process: usage.and_then(|u| u.processes).map(|count| ProcessUsage {
                timestamp: sample.at,
                process_count: value(count),
            }),
            containers: sample
                .containers
                .iter()
                .map(|c| container_message(core, c))
                .collect(),
        }),
        windows: None,
    }
}

/// ContainerStats: NotFound for an unknown container, Unavailable when its shim is gone.
pub async fn container_stats(core: &Arc<Core>, id: &str) -> Result<ContainerStats> {
    let record = container::status(core, id)?;
    let samples = sample_containers(core, vec![record], true).await?;
    samples
        .first()
        .map(|sample| container_message(core, sample))
        .ok_or_else(|| ManagerError::NotFound(format!("container {} not found", shown(id))))
}

/// ListContainerStats: every container `filter` selects, oldest first.
pub async fn list_container_stats(
    core: &Arc<Core>,
    filter: Option<&ContainerStatsFilter>,
) -> Result<Vec<ContainerStats>> {
    let mut records = core.containers.select(|c| container_selected(c, filter));
    records.sort_by_key(|c| c.created_at);
    let samples = sample_containers(core, records, false).await?;
    Ok(samples.iter().map(|s| container_message(core, s)).collect())
}

/// PodSandboxStats: NotFound for an unknown pod, Unavailable for one not ready or whose shim
/// is gone.
pub async fn pod_stats(core: &Arc<Core>, id: &str) -> Result<PodSandboxStats> {
    let pod = sandbox::status(core, id)?;
    let samples = sample_pods(core, vec![pod], true).await?;
    samples
        .first()
        .map(|sample| pod_message(core, sample))
        .ok_or_else(|| ManagerError::NotFound(format!("pod {} not found", shown(id))))
}

/// The ready pods `filter` selects, oldest first.
fn selected_pods(core: &Core, filter: Option<&PodSandboxStatsFilter>) -> Vec<PodRecord> {
    let mut pods = core
        .pods
        .select(|p| p.state == PodState::Ready && pod_selected(p, filter));
    pods.sort_by_key(|p| p.created_at);
    pods
}

/// ListPodSandboxStats: the ready pods `filter` selects, oldest first.
pub async fn list_pod_stats(
    core: &Arc<Core>,
    filter: Option<&PodSandboxStatsFilter>,
) -> Result<Vec<PodSandboxStats>> {
    let samples = sample_pods(core, selected_pods(core, filter), false).await?;
    Ok(samples.iter().map(|s| pod_message(core, s)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::records::tests as test_records;
    use super::*;

    fn labelled(mut record: ContainerRecord, labels: &[(&str, &str)]) -> ContainerRecord {
        record.config.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        record
    }

    #[test]
    fn container_filters_take_id_and_pod_prefixes_and_all_labels() {
        let c = labelled(
            test_records::container("abc123", "pod9"),
            &[("app", "web"), ("tier", "front")],
        );
        let filter = |id: &str, pod: &str, labels: &[(&str, &str)]| ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(container_selected(&c, None));
        assert!(container_selected(&c, Some(&filter("", "", &[]))));
        assert!(container_selected(&c, Some(&filter("abc", "", &[]))));
        assert!(!container_selected(&c, Some(&filter("abd", "", &[]))));
        assert!(container_selected(&c, Some(&filter("", "pod", &[]))));
        assert!(!container_selected(&c, Some(&filter("", "pod8", &[]))));
        assert!(container_selected(
            &c,
            Some(&filter(
                "abc123",
                "pod9",
                &[("app", "web"), ("tier", "front")]
            ))
        ));
        assert!(!container_selected(
            &c,
            Some(&filter("", "", &[("app", "web"), ("tier", "back")]))
        ));
        assert!(!container_selected(&c, Some(&filter("", "", &[("x", "")]))));
    }

    #[test]
    fn pod_filters_take_an_id_prefix_and_all_labels() {
        let mut pod = test_records::pod("pod9");
        pod.config.labels = [("app".to_string(), "web".to_string())].into();
        let filter = |id: &str, labels: &[(&str, &str)]| PodSandboxStatsFilter {
            id: id.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(pod_selected(&pod, None));
        assert!(pod_selected(&pod, Some(&filter("po", &[("app", "web")]))));
        assert!(!pod_selected(&pod, Some(&filter("pod1", &[]))));
        assert!(!pod_selected(&pod, Some(&filter("", &[("app", "db")]))));
    }
}
