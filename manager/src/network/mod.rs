//! Pod networking through CNI plugins, as containerd's CRI plugin does it (no maintained Rust
//! crate runs CNI plugins for a runtime, so the protocol is here, one concern per module):
//!
//! - [`conf`] reads the network configurations of `conf_dir` (watched with inotify here, so
//!   a config written later makes the node ready without a restart);
//! - [`invoke`] runs one plugin; [`result`] reads what ADD returns; [`cache`] keeps each
//!   attachment on disk as libcni does; [`pod_args`] is what a pod tells its plugins;
//! - [`netns`] pins a pod's network namespace before its infra process joins it.
//!
//! Every pod gets the loopback network (`lo`) and then the first `max_conf_num` networks, as
//! `eth0`, `eth1`, …; its IPs are those of `eth0`.

pub mod cache;
pub mod conf;
pub mod invoke;
pub mod netns;
pub mod pod_args;
pub mod result;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crust_proto::cri::PodSandboxConfig;
use serde_json::{Map, Value, json};

use crate::config::CniConfig;
use crate::error::{ManagerError, Result};
use cache::{Cache, CachedAttachment};
use conf::{NetworkList, PluginConf};
use invoke::{Operation, PluginError, Target};
use result::{AddResult, IpPreference};

/// The config file `conf_template` is rendered to (containerd writes
/// `10-containerd-net.conflist`).
const TEMPLATE_FILE: &str = "10-crustd-net.conflist";

/// What configuring the networks gave: the networks, or why there are none.
type Loaded = std::result::Result<Vec<NetworkList>, String>;

/// The CNI side of crustd.
#[derive(Debug)]
pub struct Network {
    plugin_dirs: Vec<PathBuf>,
    conf_dir: PathBuf,
    max_conf_num: usize,
    template: String,
    preference: IpPreference,
    timeout: Duration,
    cache: Cache,
    loaded: Mutex<Arc<Loaded>>,
}

/// The pod a call is about.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// Its id (`CNI_CONTAINERID`).
    pub id: &'a str,
    /// Its pinned network namespace.
    pub netns: &'a Path,
    /// Its config (metadata, port mappings, DNS, bandwidth annotations).
    pub config: &'a PodSandboxConfig,
}

/// One network a pod is attached to, as one call runs it.
struct Attachment {
    list: NetworkList,
    ifname: String,
    cni_args: Vec<(String, String)>,
    capability_args: BTreeMap<String, Value>,
    /// The cached ADD result (DEL and CHECK).
    result: Option<Value>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Network {
    /// Networking as `config` says, its cache under `cache_dir`; configs are read now.
    pub fn new(config: &CniConfig, cache_dir: PathBuf) -> Self {
        let network = Network {
            plugin_dirs: config.plugin_dirs(),
            conf_dir: config.conf_dir.clone(),
            max_conf_num: config.max_conf_num,
            template: config.conf_template.clone(),
            preference: IpPreference::from_knob(&config.ip_pref),
            timeout: config.plugin_timeout(),
            cache: Cache::at(cache_dir),
            loaded: Mutex::new(Arc::new(Err("not loaded yet".into()))),
        };
        network.reload();
        network
    }

    /// Reads `conf_dir` again.
    pub fn reload(&self) {
        let loaded = conf::load_dir(&self.conf_dir, self.max_conf_num);
        match &loaded {
            Ok(networks) => {
                let names: Vec<_> = networks
                    .iter()
                    .map(|n| format!("{} ({})", n.name, n.source.display()))
                    .collect();
                log::info!("CNI networks: {}", names.join(", "));
            }
            Err(why) => log::warn!("no usable CNI network: {why}"),
        }
        *lock(&self.loaded) = Arc::new(loaded);
    }

    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&lock(&self.loaded))
    }

    /// Ok when pods can be attached; else why not (a missing or bad config, a plugin binary
    /// not found, a 1.1 plugin's STATUS error).
    pub async fn status(&self) -> std::result::Result<(), String> {
        let loaded = self.loaded();
        let networks = loaded.as_ref().as_ref().map_err(Clone::clone)?;
        for list in std::iter::once(&conf::loopback()).chain(networks) {
            for plugin in &list.plugins {
                if invoke::find(&self.plugin_dirs, &plugin.kind).is_none() {
                    return Err(format!(
                        "CNI plugin binary {:?} of network {:?} ({}) not found in {}",
                        plugin.kind,
                        list.name,
                        list.source.display(),
                        self.plugin_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ));
                }
            }
        }
        for list in networks.iter().filter(|l| l.version.has_status_and_gc()) {
            for plugin in &list.plugins {
                let stdin = plugin_config(list, plugin, None, &BTreeMap::new(), None);
                self.run(plugin, Operation::Status, &Target::default(), &stdin)
                    .await
                    .map_err(|e| format!("network {:?}: {e}", list.name))?;
            }
        }
        Ok(())
    }

    /// The networks a new pod is attached to, with their interface names.
    fn current(&self) -> std::result::Result<Vec<(NetworkList, String)>, String> {
        let networks = self.loaded().as_ref().clone()?;
        let mut all = vec![(conf::loopback(), "lo".to_string())];
        all.extend(
            networks
                .into_iter()
                .enumerate()
                .map(|(i, list)| (list, format!("eth{i}"))),
        );
        Ok(all)
    }

    /// Attaches `pod` to every network; its IPs (of `eth0`), primary first. On failure what
    /// was attached stays for [`Network::detach`], which the caller runs to roll back.
    pub async fn attach(&self, pod: Pod<'_>) -> Result<Vec<IpAddr>> {
        let networks = self.current().map_err(|why| {
            ManagerError::FailedPrecondition(format!("pod network not ready: {why}"))
        })?;
        let cni_args = pod_args::cni_args(pod.id, pod.config);
        let capability_args =
            pod_args::capability_args(pod.config).map_err(ManagerError::InvalidArgument)?;
        let mut ips = Vec::new();
        for (list, ifname) in networks {
            let attachment = Attachment {
                list,
                ifname,
                cni_args: cni_args.clone(),
                capability_args: capability_args.clone(),
                result: None,
            };
            let result = self
                .add(pod, &attachment)
                .await
                .map_err(|e| network_error(&attachment.list, e))?;
            if attachment.ifname == "eth0" {
                let typed: AddResult = serde_json::from_value(result.clone()).map_err(|e| {
                    ManagerError::Network(format!(
                        "network {:?}: the ADD result cannot be read: {e}",
                        attachment.list.name
                    ))
                })?;
                ips = result::pod_ips(&typed, "eth0", self.preference);
            }
            let entry = CachedAttachment {
                kind: "cniCacheV1".into(),
                container_id: pod.id.to_string(),
                config: attachment.list.bytes.clone(),
                ifname: attachment.ifname.clone(),
                network_name: attachment.list.name.clone(),
                cni_args: attachment.cni_args,
                capability_args: attachment.capability_args,
                result: Some(result),
            };
            self.cache.save(&entry).map_err(|e| {
                ManagerError::io(format!("cache the CNI result of pod {}", pod.id), e)
            })?;
        }
        Ok(ips)
    }

    /// ADD through the list's plugins, each given the previous one's result.
    async fn add(&self, pod: Pod<'_>, at: &Attachment) -> std::result::Result<Value, PluginError> {
        let target = self.target(pod, at);
        let mut previous: Option<Value> = None;
        for plugin in &at.list.plugins {
            let stdin = plugin_config(
                &at.list,
                plugin,
                previous.as_ref(),
                &at.capability_args,
                None,
            );
            let out = self.run(plugin, Operation::Add, &target, &stdin).await?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| PluginError {
                plugin: plugin.kind.clone(),
                operation: Operation::Add,
                code: None,
                message: format!("returned no result crustd can read: {e}"),
                details: String::new(),
            })?;
            previous = Some(result);
        }
        previous.ok_or_else(|| PluginError {
            plugin: String::new(),
            operation: Operation::Add,
            code: None,
            message: "the network has no plugins".into(),
            details: String::new(),
        })
    }

    /// Detaches `pod` from every network it may be attached to: those cached (with the
    /// config and result ADD had), and the current ones (an ADD cut short caches nothing).
    /// Idempotent; a namespace already gone is fine.
    pub async fn detach(&self, pod: Pod<'_>) -> Result<()> {
        let mut attachments: Vec<Attachment> = self
            .cache
            .entries_of(pod.id)
            .into_iter()
            .filter_map(cached_attachment)
            .collect();
        if let Ok(current) = self.current() {
            let cni_args = pod_args::cni_args(pod.id, pod.config);
            let capability_args = pod_args::capability_args(pod.config).unwrap_or_default();
            for (list, ifname) in current {
                if !attachments
                    .iter()
                    .any(|a| a.list.name == list.name && a.ifname == ifname)
                {
                    attachments.push(Attachment {
                        list,
                        ifname,
                        cni_args: cni_args.clone(),
                        capability_args: capability_args.clone(),
                        result: None,
                    });
                }
            }
        }
        // The reverse of attaching: eth1 before eth0, loopback last.
        attachments.sort_by_key(|a| (a.ifname == "lo", std::cmp::Reverse(a.ifname.clone())));
        let mut first_error = None;
        for attachment in &attachments {
            match self.delete(pod, attachment).await {
                Ok(()) => {
                    if let Err(e) =
                        self.cache
                            .remove(&attachment.list.name, pod.id, &attachment.ifname)
                    {
                        log::warn!("remove the CNI cache entry of pod {}: {e}", pod.id);
                    }
                }
                Err(e) => {
                    log::warn!("pod {}: {e}", pod.id);
                    first_error.get_or_insert(network_error(&attachment.list, e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// DEL through the list's plugins in reverse, with the cached result where the version
    /// has it.
    async fn delete(&self, pod: Pod<'_>, at: &Attachment) -> std::result::Result<(), PluginError> {
        let target = self.target(pod, at);
        let previous = at.result.as_ref().filter(|_| at.list.version.has_check());
        for plugin in at.list.plugins.iter().rev() {
            let stdin = plugin_config(&at.list, plugin, previous, &at.capability_args, None);
            self.run(plugin, Operation::Del, &target, &stdin).await?;
        }
        Ok(())
    }

    /// CHECK of every cached attachment of `pod` whose version has CHECK.
    pub async fn check(&self, pod: Pod<'_>) -> std::result::Result<(), String> {
        for entry in self.cache.entries_of(pod.id) {
            let Some(at) = cached_attachment(entry) else {
                continue;
            };
            if !at.list.version.has_check() || at.list.disable_check {
                continue;
            }
            let target = self.target(pod, &at);
            for plugin in &at.list.plugins {
                let stdin = plugin_config(
                    &at.list,
                    plugin,
                    at.result.as_ref(),
                    &at.capability_args,
                    None,
                );
                self.run(plugin, Operation::Check, &target, &stdin)
                    .await
                    .map_err(|e| format!("network {:?}: {e}", at.list.name))?;
            }
        }
        Ok(())
    }

    /// Releases attachments of pods not in `known`: DEL for each cached one (its namespace
    /// went with its pod), then GC for 1.1 networks with the attachments that are valid.
    pub async fn collect_garbage(
        &self,
        known: &HashSet<String>,
        netns_of: impl Fn(&str) -> PathBuf,
    ) {
        let mut valid = Vec::new();
        for entry in self.cache.entries() {
            if known.contains(&entry.container_id) {
                valid.push(json!({"containerID": entry.container_id, "ifname": entry.ifname}));
                continue;
            }
            let (id, network, ifname) = (
                entry.container_id.clone(),
                entry.network_name.clone(),
                entry.ifname.clone(),
            );
            let Some(at) = cached_attachment(entry) else {
                continue;
            };
            let netns = netns_of(&id);
            let config = PodSandboxConfig::default();
            let pod = Pod {
                id: &id,
                netns: &netns,
                config: &config,
            };
            match self.delete(pod, &at).await {
                Ok(()) => {
                    log::info!(
                        "released {network}/{ifname} of pod {id}, which crustd no longer knows"
                    );
                    let _ = self.cache.remove(&network, &id, &ifname);
                }
                Err(e) => log::warn!("release {network}/{ifname} of unknown pod {id}: {e}"),
            }
        }
        let loaded = self.loaded();
        let Ok(networks) = loaded.as_ref() else {
            return;
        };
        for list in networks
            .iter()
            .filter(|l| l.version.has_status_and_gc() && !l.disable_gc)
        {
            let attachments = Value::Array(valid.clone());
            for plugin in &list.plugins {
                let stdin = plugin_config(list, plugin, None, &BTreeMap::new(), Some(&attachments));
                if let Err(e) = self
                    .run(plugin, Operation::Gc, &Target::default(), &stdin)
                    .await
                {
                    log::warn!("network {:?}: {e}", list.name);
                }
            }
        }
    }

    /// Renders `conf_template` with `pod_cidr` into `conf_dir` when no usable config exists
    /// (containerd's behaviour); true if it wrote one.
    pub async fn apply_pod_cidr(&self, pod_cidr: &str) -> Result<bool> {
        let first = pod_cidr.split(',').next().unwrap_or_default().trim();
        if self.template.is_empty() || first.is_empty() || self.status().await.is_ok() {
            return Ok(false);
        }
        let text = render_template(&self.template, first);
        let path = self.conf_dir.join(TEMPLATE_FILE);
        std::fs::create_dir_all(&self.conf_dir)
            .map_err(|e| ManagerError::io(format!("create {}", self.conf_dir.display()), e))?;
        crate::images::store::write_atomically(&path, text.as_bytes())?;
        log::info!("wrote {} for pod CIDR {first}", path.display());
        self.reload();
        Ok(true)
    }

    /// Watches `conf_dir` (made if missing, as containerd does) and reloads on every change.
    pub async fn watch(self: Arc<Self>) {
        use futures_util::StreamExt;
        use inotify::{Inotify, WatchMask};
        loop {
            if let Err(e) = std::fs::create_dir_all(&self.conf_dir) {
                log::warn!("create {}: {e}", self.conf_dir.display());
            }
            let watching = Inotify::init().and_then(|inotify| {
                inotify.watches().add(
                    &self.conf_dir,
                    WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::CLOSE_WRITE
                        | WatchMask::MOVED_TO
                        | WatchMask::MOVED_FROM
                        | WatchMask::DELETE_SELF
                        | WatchMask::MOVE_SELF,
                )?;
                inotify.into_event_stream([0u8; 4096])
            });
            let mut events = match watching {
                Ok(events) => events,
                Err(e) => {
                    log::warn!("watch {}: {e}; retrying", self.conf_dir.display());
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            // Whatever changed before the watch was in place.
            self.reload();
            while let Some(event) = events.next().await {
                let gone = match event {
                    Ok(event) => event.mask.intersects(
                        inotify::EventMask::DELETE_SELF
                            | inotify::EventMask::MOVE_SELF
                            | inotify::EventMask::IGNORED,
                    ),
                    Err(e) => {
                        log::warn!("watch {}: {e}", self.conf_dir.display());
                        true
                    }
                };
                // A writer makes several events in a row: let them settle, then read once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.reload();
                if gone {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn target(&self, pod: Pod<'_>, at: &Attachment) -> Target {
        Target {
            container_id: pod.id.to_string(),
            // A namespace that is gone is "", with which plugins still release addresses.
            netns: if netns::exists(pod.netns) {
                pod.netns.display().to_string()
            } else {
                String::new()
            },
            ifname: at.ifname.clone(),
            args: pod_args::cni_args_text(&at.cni_args),
        }
    }

    async fn run(
        &self,
        plugin: &PluginConf,
        operation: Operation,
        target: &Target,
        stdin: &[u8],
    ) -> std::result::Result<Vec<u8>, PluginError> {
        log::debug!(
            "CNI {operation} {} for {:?} {}",
            plugin.kind,
            target.container_id,
            target.ifname
        );
        invoke::run(
            &self.plugin_dirs,
            &plugin.kind,
            operation,
            target,
            stdin,
            self.timeout,
        )
        .await
    }
}

/// The config one plugin gets on stdin (libcni's rules): its own object with the list's
/// `name` and `cniVersion`, the previous result, the capability args it declares as
/// `runtimeConfig`, and for GC the valid attachments.
fn plugin_config(
    list: &NetworkList,
    plugin: &PluginConf,
    previous: Option<&Value>,
    capability_args: &BTreeMap<String, Value>,
    valid_attachments: Option<&Value>,
) -> Vec<u8> {
    let mut object = plugin.raw.clone();
    object.insert("name".into(), Value::String(list.name.clone()));
    object.insert(
        "cniVersion".into(),
        Value::String(list.version.as_str().into()),
    );
    if let Some(previous) = previous {
        object.insert("prevResult".into(), previous.clone());
    }
    let runtime_config: Map<String, Value> = capability_args
        .iter()
        .filter(|(name, _)| plugin.capabilities.contains(*name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if !runtime_config.is_empty() {
        object.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(valid) = valid_attachments {
        object.insert("cni.dev/valid-attachments".into(), valid.clone());
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
}

/// A cache entry as an attachment to run again; None (and a warning) if its config no
/// longer parses.
fn cached_attachment(entry: CachedAttachment) -> Option<Attachment> {
    match conf::parse_list(&entry.config, Path::new("(cache)")) {
        Ok(list) => Some(Attachment {
            list,
            ifname: entry.ifname,
            cni_args: entry.cni_args,
            capability_args: entry.capability_args,
            result: entry.result,
        }),
        Err(why) => {
            log::warn!(
                "CNI cache entry {}-{}-{}: {why}",
                entry.network_name,
                entry.container_id,
                entry.ifname
            );
            None
        }
    }
}

fn network_error(list: &NetworkList, error: PluginError) -> ManagerError {
    ManagerError::Network(format!(
        "network {:?} ({}): {error}",
        list.name,
        list.source.display()
    ))
}

/// `{{.PodCIDR}}` (with any spacing inside the braces) replaced by `cidr`.
fn render_template(template: &str, cidr: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find("}}").map_or(after.len(), |e| e + 2);
        out.push_str(cidr);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
