//! Pods and containers: crustd's typed core behind the CRI RuntimeService.
//!
//! - [`sandbox`] and [`container`] own the lifecycles kubelet drives: validation, files and
//!   mounts on the host, teardown in order;
//! - one [`supervisor`] per pod is the only place that talks to the pod's shim about its tasks:
//!   it creates, starts, signals and deletes them, and it alone records exits and OOM kills, so
//!   nothing races it; a dead or hung shim is noticed and cleaned up there too;
//! - the [`store`] keeps every record on disk before memory, so a restarted crustd knows what
//!   may exist outside it and the supervisors reconcile that with the live shims.

mod apparmor;
mod cgroups;
mod checkpoint;
mod container;
pub mod container_events;
pub mod events;
mod exec;
pub mod host;
mod host_mounts;
mod image_volumes;
pub mod interactive;
mod layout;
mod pod_files;
mod records;
mod resize;
mod sandbox;
mod shim;
mod spec;
mod stats;
mod store;
mod supervisor;
mod user;
mod validate;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use crust_proto::cri::{
    ContainerConfig, ContainerFilter, ContainerStats, ContainerStatsFilter, MetricDescriptor,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetrics, PodSandboxStats, PodSandboxStatsFilter,
};
use crust_proto::runc_options::Options;

use crate::config::{Config, RuntimeHandler};
use crate::error::{ManagerError, Result};
use crate::images::Images;
use crate::network::Network;

use container_events::{ContainerEvent, ContainerEventKind, ContainerEvents};
pub use container_events::{FellBehind, Subscription};
pub use exec::{DRAIN_LIMIT, ExecOutput};
use host::HostSupport;
use layout::Layout;
pub use records::{ContainerRecord, PodRecord};
use shim::ShimLauncher;
use store::Store;
use supervisor::Supervisor;

/// Nanoseconds since the epoch, as CRI timestamps are.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// An id as error messages show it: whole when it is a sane length, else its start (a client
/// may send megabytes).
pub fn shown(id: &str) -> String {
    const SHOWN: usize = 80;
    if id.len() <= SHOWN {
        return format!("{id:?}");
    }
    let mut end = SHOWN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &id[..end], id.len())
}

/// A fresh 64-hex-digit id.
fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    let mut random =
        fs::File::open("/dev/urandom").map_err(|e| ManagerError::io("open /dev/urandom", e))?;
    io::Read::read_exact(&mut random, &mut bytes)
        .map_err(|e| ManagerError::io("read /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Names in use (pod and container name keys), so a name maps to one object.
#[derive(Debug, Default)]
struct Names(Mutex<HashSet<String>>);

impl Names {
    /// Reserves `key`; AlreadyExists when taken.
    fn reserve(&self, key: &str, what: &str) -> Result<()> {
        if !lock(&self.0).insert(key.to_string()) {
            return Err(ManagerError::AlreadyExists(format!(
                "{what} name {key:?} is already in use"
            )));
        }
        Ok(())
    }

    fn release(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

/// One lock per pod or container id: multi-step operations on one object (start, remove,
/// stop of a pod) run one at a time.
#[derive(Debug, Default)]
struct Operations(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Operations {
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(lock(&self.0).entry(id.to_string()).or_default());
        lock.lock_owned().await
    }

    fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}

/// What every part of the runtime shares.
#[derive(Debug)]
pub struct Core {
    config: Config,
    images: Arc<Images>,
    layout: Layout,
    launcher: ShimLauncher,
    pods: Store<PodRecord>,
    containers: Store<ContainerRecord>,
    names: Names,
    operations: Operations,
    /// Pod id → its supervisor.
    supervisors: Mutex<HashMap<String, Supervisor>>,
    /// Pod id → why its shim is in trouble (not answering), while it is.
    shim_trouble: Mutex<HashMap<String, String>>,
    /// The pod CIDR kubelet last sent.
    pod_cidr: Mutex<String>,
    /// Pod networking (CNI).
    network: Arc<Network>,
    /// Pod id → the outcome of the CHECK run on its attachments after a restart.
    network_checks: Mutex<HashMap<String, String>>,
    /// What the host lets containers have.
    host: HostSupport,
    /// Every stored transition of a pod or container, for GetContainerEvents.
    container_events: ContainerEvents,
    /// Held while an event's snapshot is taken and sent, so that snapshots go out in the
    /// order they were taken (a later one never overtaken by an older one).
    publishing: Mutex<()>,
    /// CPU samples and layer walks kept between stats calls.
    stats: stats::StatsState,
}

impl Core {
    /// The runtime handler `name` (the default for an empty name).
    fn handler(&self, name: &str) -> Result<(String, RuntimeHandler)> {
        let name = if name.is_empty() {
            self.config.default_runtime.as_str()
        } else {
            name
        };
        self.config
            .runtimes
            .get(name)
            .map(|handler| (name.to_string(), handler.clone()))
            .ok_or_else(|| {
                ManagerError::InvalidArgument(format!(
                    "no runtime handler {} is configured",
                    shown(name)
                ))
            })
    }

    /// runc options for `handler`: its binary, its state root (crustd's own by default, so
    /// crustd's containers never mix with containerd's), its cgroup driver.
    fn runc_options(&self, handler: &str) -> Result<Options> {
        let (_, handler) = self.handler(handler)?;
        Ok(Options {
            binary_name: handler.binary_name.clone(),
            root: handler
                .root
                .clone()
                .unwrap_or_else(|| self.config.state_dir.join("runc"))
                .display()
                .to_string(),
            systemd_cgroup: handler.systemd_cgroup,
            ..Default::default()
        })
    }

    /// The supervisor of pod `pod_id`.
    fn supervisor(&self, pod_id: &str) -> Result<Supervisor> {
        lock(&self.supervisors)
            .get(pod_id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(format!("pod {} not found", shown(pod_id))))
    }

    /// Starts the supervisor of pod `pod_id`; returns it and a receiver that resolves once it
    /// has reconciled the pod with its shim.
    fn supervise(self: &Arc<Self>, pod_id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (supervisor, ready) = Supervisor::spawn(Arc::clone(self), pod_id.to_string());
        lock(&self.supervisors).insert(pod_id.to_string(), supervisor);
        ready
    }

    /// The pod a task belongs to: the pod itself for its infra task.
    fn pod_of_task(&self, task: &str) -> Option<String> {
        if self.pods.get(task).is_some() {
            return Some(task.to_string());
        }
        self.containers.get(task).map(|c| c.pod_id)
    }

    /// Publishes the event (if any) of a stored change of a container record, with its pod
    /// as it is now.
    fn container_changed(&self, before: Option<&ContainerRecord>, after: Option<&ContainerRecord>) {
        let Some(kind) = container_events::container_transition(before, after) else {
            return;
        };
        let Some(record) = after.or(before) else {
            return;
        };
        self.publish_event(&record.id, &record.pod_id, kind, None);
    }

    /// Publishes the event (if any) of a stored change of a pod record.
    fn pod_changed(&self, before: Option<&PodRecord>, after: Option<&PodRecord>) {
        let Some(kind) = container_events::pod_transition(before, after) else {
            return;
        };
        let Some(record) = after.or(before) else {
            return;
        };
        // A deleted pod is reported as it was: kubelet skips an event without a pod status.
        self.publish_event(
            &record.id,
            &record.id,
            kind,
            after.is_none().then_some(record),
        );
    }

    /// Publishes `kind` for `container_id` with its pod (`gone_pod` for one just removed).
    fn publish_event(
        &self,
        container_id: &str,
        pod_id: &str,
        kind: ContainerEventKind,
        gone_pod: Option<&PodRecord>,
    ) {
        // Without a subscriber the snapshot would be made for nobody (kubelet without
        // evented PLEG never subscribes).
        if self.container_events.subscribers() == 0 {
            return;
        }
        // Never held across an await: the snapshot and the send are both immediate.
        let _publishing = lock(&self.publishing);
        let mut containers = self.containers.select(|c| c.pod_id == pod_id);
        containers.sort_by_key(|c| c.created_at);
        self.container_events.publish(ContainerEvent {
            container_id: container_id.to_string(),
            kind,
            at: now(),
            pod: gone_pod.cloned().or_else(|| self.pods.get(pod_id)),
            containers,
        });
    }

    fn shim_trouble(&self, pod_id: &str) -> Option<String> {
        lock(&self.shim_trouble).get(pod_id).cloned()
    }

    fn set_shim_trouble(&self, pod_id: &str, why: Option<String>) {
        let mut trouble = lock(&self.shim_trouble);
        match why {
            Some(why) => trouble.insert(pod_id.to_string(), why),
            None => trouble.remove(pod_id),
        };
    }
}

/// crustd's pods and containers.
#[derive(Debug)]
pub struct Runtime {
    core: Arc<Core>,
}

impl Runtime {
    /// Opens crustd's state: records from disk, images (keeping the layers containers use),
    /// the directories and the infra binary. [`Runtime::recover`] then reconciles with the
    /// live shims.
    pub fn open(config: &Config) -> Result<Self> {
        let records_dir = config.root_dir.join("records");
        let pods = Store::<PodRecord>::open(records_dir.join("pods"))?;
        let containers = Store::<ContainerRecord>::open(records_dir.join("containers"))?;
        let held: Vec<String> = containers
            .select(|_| true)
            .into_iter()
            .flat_map(|c| c.layers)
            .collect();
        let images = Arc::new(Images::new(config, &held)?);
        let layout = Layout::prepare(config)?;
        let known_pods: HashSet<String> = pods.ids().into_iter().collect();
        let known_containers: HashSet<String> = containers.ids().into_iter().collect();
        for leftover in layout.sweep(&known_pods, &known_containers) {
            log::warn!("removed {}: no record accounts for it", leftover.display());
        }
        let names = Names::default();
        for pod in pods.select(|_| true) {
            lock(&names.0).insert(pod.name_key());
        }
        for container in containers.select(|_| true) {
            if let Some(pod) = pods.get(&container.pod_id) {
                lock(&names.0).insert(container.name_key(&pod.config));
            }
        }
        let launcher = ShimLauncher {
            binary: config.shim_binary.clone(),
            address: config.socket.display().to_string(),
            events_address: events::address(config).display().to_string(),
        };
        let core = Arc::new_cyclic(|core: &Weak<Core>| {
            // The stores tell the core of each change; a weak reference, as the core owns
            // them.
            let observer = Weak::clone(core);
            pods.observe(Box::new(move |before, after| {
                if let Some(core) = observer.upgrade() {
                    core.pod_changed(before, after);
                }
            }));
            let observer = Weak::clone(core);
            containers.observe(Box::new(move |before, after| {
                if let Some(core) = observer.upgrade() {
                    core.container_changed(before, after);
                }
            }));
            Core {
                config: config.clone(),
                images,
                layout,
                launcher,
                pods,
                containers,
                names,
                operations: Operations::default(),
                supervisors: Mutex::new(HashMap::new()),
                shim_trouble: Mutex::new(HashMap::new()),
                pod_cidr: Mutex::new(String::new()),
                network: Arc::new(Network::new(
                    &config.cni,
                    config.root_dir.join("cni").join("results"),
                )),
                network_checks: Mutex::new(HashMap::new()),
                host: HostSupport::probe(config),
                container_events: ContainerEvents::new(config.container_events_buffer),
                publishing: Mutex::new(()),
                stats: stats::StatsState::default(),
            }
        });
        Ok(Self { core })
    }

    /// Starts a supervisor for every pod on record and waits until each has reconciled its
    /// pod with the shim: exits that happened while crustd was down recorded, running tasks
    /// watched again, what was cut short cleaned up.
    pub async fn recover(&self) {
        let ready: Vec<_> = self
            .core
            .pods
            .ids()
            .iter()
            .map(|id| self.core.supervise(id))
            .collect();
        for done in ready {
            let _ = done.await;
        }
        sandbox::collect_network_garbage(&self.core).await;
        tokio::spawn(sandbox::check_networks(Arc::clone(&self.core)));
        log::info!(
            "recovered {} pods and {} containers",
            self.core.pods.ids().len(),
            self.core.containers.ids().len()
        );
    }

    /// What the Events endpoint needs.
    pub fn core(&self) -> Arc<Core> {
        Arc::clone(&self.core)
    }

    /// GetContainerEvents: a subscription to every pod and container transition from now on.
    pub fn subscribe_container_events(&self) -> Subscription {
        self.core.container_events.subscribe()
    }

    /// Ends every container events stream: crustd is stopping.
    pub fn close_container_events(&self) {
        self.core.container_events.close();
    }

    /// The image side, shared with the ImageService.
    pub fn images(&self) -> Arc<Images> {
        Arc::clone(&self.core.images)
    }

    /// crustd's configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// ContainerStats.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        stats::container_stats(&self.core, id).await
    }

    /// ListContainerStats.
    pub async fn list_container_stats(
        &self,
        filter: Option<&ContainerStatsFilter>,
    ) -> Result<Vec<ContainerStats>> {
        stats::list_container_stats(&self.core, filter).await
    }

    /// PodSandboxStats.
    pub async fn pod_stats(&self, id: &str) -> Result<PodSandboxStats> {
        stats::pod_stats(&self.core, id).await
    }

    /// ListPodSandboxStats.
    pub async fn list_pod_stats(
        &self,
        filter: Option<&PodSandboxStatsFilter>,
    ) -> Result<Vec<PodSandboxStats>> {
        stats::list_pod_stats(&self.core, filter).await
    }

    /// ListMetricDescriptors.
    pub fn metric_descriptors(&self) -> Vec<MetricDescriptor> {
        stats::descriptors()
    }

    /// ListPodSandboxMetrics.
    pub async fn pod_metrics(&self) -> Result<Vec<PodSandboxMetrics>> {
        stats::pod_metrics(&self.core).await
    }

    /// What each runtime handler supports, by name; the default handler also as "", as
    /// the CRI lists it.
    pub fn handler_features(&self) -> Vec<(String, host::HandlerSupport)> {
        let host = &self.core.host;
        std::iter::once(String::new())
            .chain(host.handlers.keys().cloned())
            .map(|name| {
                let support = host.handler(&name);
                (name, support)
            })
            .collect()
    }

    /// Pod networking, whose config directory the server watches.
    pub fn network(&self) -> Arc<Network> {
        Arc::clone(&self.core.network)
    }

    /// Whether pods can be networked; why not if they cannot.
    pub async fn network_status(&self) -> std::result::Result<(), String> {
        self.core.network.status().await
    }

    /// What CHECK said of pod `id`'s attachments after the last restart, if it ran.
    pub fn network_check(&self, id: &str) -> Option<String> {
        lock(&self.core.network_checks).get(id).cloned()
    }

    /// Records the pod CIDR kubelet pushes and renders the CNI conf template with it.
    pub async fn set_pod_cidr(&self, cidr: String) -> Result<()> {
        log::info!("pod CIDR is now {cidr:?}");
        *lock(&self.core.pod_cidr) = cidr.clone();
        self.core.network.apply_pod_cidr(&cidr).await.map(|_| ())
    }

    /// The pod CIDR kubelet last pushed (empty before it did).
    pub fn pod_cidr(&self) -> String {
        lock(&self.core.pod_cidr).clone()
    }

    /// RunPodSandbox.
    pub async fn run_pod(&self, config: Option<PodSandboxConfig>, handler: &str) -> Result<String> {
        sandbox::run(&self.core, config, handler).await
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        sandbox::stop(&self.core, id).await
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        sandbox::remove(&self.core, id).await
    }

    /// PodSandboxStatus.
    pub fn pod_status(&self, id: &str) -> Result<PodRecord> {
        sandbox::status(&self.core, id)
    }

    /// ListPodSandbox.
    pub fn list_pods(&self, filter: Option<&PodSandboxFilter>) -> Vec<PodRecord> {
        sandbox::list(&self.core, filter)
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: Option<ContainerConfig>,
    ) -> Result<String> {
        container::create(&self.core, pod_id, config).await
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        container::start(&self.core, id).await
    }

    /// StopContainer.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        container::stop(&self.core, id, timeout).await
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        container::remove(&self.core, id).await
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerRecord> {
        container::status(&self.core, id)
    }

    /// ListContainers.
    pub fn list_containers(&self, filter: Option<&ContainerFilter>) -> Vec<ContainerRecord> {
        container::list(&self.core, filter)
    }

    /// UpdateContainerResources.
    pub async fn update_container_resources(
        &self,
        id: &str,
        limits: crust_proto::cri::LinuxContainerResources,
    ) -> Result<()> {
        resize::update_container(&self.core, id, limits).await
    }

    /// CheckpointContainer.
    pub async fn checkpoint_container(&self, id: &str, location: &str, timeout: i64) -> Result<()> {
        checkpoint::checkpoint_container(&self.core, id, location, timeout).await
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        container::reopen_log(&self.core, id).await
    }

    /// The checks of Exec and Attach made when the URL is handed out: container `id` exists
    /// and runs. Returns its full id and whether it has a terminal.
    pub fn running_container(&self, id: &str) -> Result<(String, bool)> {
        exec::running(&self.core, id).map(|record| (record.id, record.config.tty))
    }

    /// Exec (streaming): starts `command` in container `id` for a client.
    pub async fn exec_session(
        &self,
        id: &str,
        command: Vec<String>,
        tty: bool,
        wanted: interactive::Wanted,
    ) -> Result<interactive::Session> {
        interactive::exec(&self.core, id, command, tty, wanted).await
    }

    /// Attach: joins a client to container `id`'s own stdio.
    pub async fn attach_session(
        &self,
        id: &str,
        wanted: interactive::Wanted,
    ) -> Result<interactive::Session> {
        interactive::attach(&self.core, id, wanted).await
    }

    /// PortForward: where to connect for ready pod `pod_id` — its pinned network namespace,
    /// or `None` for a pod on the host's network. Returns the pod's full id too.
    pub fn pod_network_namespace(&self, pod_id: &str) -> Result<(String, Option<PathBuf>)> {
        let pod = sandbox::status(&self.core, pod_id)?;
        if pod.state != records::PodState::Ready {
            return Err(ManagerError::FailedPrecondition(format!(
                "pod {} is not ready",
                pod.id
            )));
        }
        if pod.namespaces.host_network {
            return Ok((pod.id, None));
        }
        let netns = pod.network.netns.clone().ok_or_else(|| {
            ManagerError::FailedPrecondition(format!("pod {} has no network namespace", pod.id))
        })?;
        Ok((pod.id, Some(netns)))
    }

    /// ExecSync.
    pub async fn exec_sync(
        &self,
        id: &str,
        command: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput> {
        exec::exec_sync(&self.core, id, command, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_64_hex_digits_and_differ() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn long_ids_are_cut_in_messages() {
        assert_eq!(shown("abc"), "\"abc\"");
        let huge = "x".repeat(1 << 20);
        let text = shown(&huge);
        assert!(text.len() < 120, "{}", text.len());
        assert!(text.ends_with("(1048576 bytes)"), "{text}");
        let multibyte = "é".repeat(100);
        assert!(shown(&multibyte).contains("(200 bytes)"));
    }
}
