//! The images crustd has: one JSON record per image under `<root>/images`, unpacked layers
//! under `<root>/layers/<digest>/fs`, the config blob beside its record.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{ManagerError, Result};

/// What crustd keeps about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the image config: the image id.
    pub id: String,
    /// Full references by tag (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Full references by digest (`docker.io/library/busybox@sha256:…`).
    pub repo_digests: Vec<String>,
    /// Compressed size of its layers plus config, as the registry reports them.
    pub size: u64,
    /// Layer digests, lowest first.
    pub layers: Vec<String>,
    /// What containers of the image start with.
    pub config: RunConfig,
}

/// The parts of an image config that a container is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `User` (name or uid, optionally `:group`).
    #[serde(default)]
    pub user: String,
    /// `Env`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: String,
    /// `StopSignal`.
    #[serde(default)]
    pub stop_signal: String,
    /// The paths of `Volumes`, sorted, as the image gives them (untrusted: checked where
    /// they are used).
    #[serde(default)]
    pub volumes: Vec<String>,
}

impl RunConfig {
    /// Reads the `config` section of an OCI/Docker image config document.
    pub fn from_image_config(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Document {
            #[serde(default)]
            config: Option<Section>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Section {
            #[serde(default)]
            user: Option<String>,
            #[serde(default)]
            env: Option<Vec<String>>,
            #[serde(default)]
            entrypoint: Option<Vec<String>>,
            #[serde(default)]
            cmd: Option<Vec<String>>,
            #[serde(default)]
            working_dir: Option<String>,
            #[serde(default)]
            stop_signal: Option<String>,
            #[serde(default)]
            volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
        }
        let document: Document = serde_json::from_str(json)
            .map_err(|e| ManagerError::Registry(format!("image config is not valid: {e}")))?;
        let section = document.config.unwrap_or(Section {
            user: None,
            env: None,
            entrypoint: None,
            cmd: None,
            working_dir: None,
            stop_signal: None,
            volumes: None,
        });
        Ok(RunConfig {
            user: section.user.unwrap_or_default(),
            env: section.env.unwrap_or_default(),
            entrypoint: section.entrypoint.unwrap_or_default(),
            cmd: section.cmd.unwrap_or_default(),
            working_dir: section.working_dir.unwrap_or_default(),
            stop_signal: section.stop_signal.unwrap_or_default(),
            volumes: section.volumes.unwrap_or_default().into_keys().collect(),
        })
    }

    /// The numeric uid or the user name of `User`, as CRI's ImageStatus reports them.
    pub fn uid_or_name(&self) -> (Option<i64>, String) {
        let user = self.user.split(':').next().unwrap_or_default();
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_string()),
        }
    }
}

impl ImageRecord {
    /// Whether `lookup` names this image.
    pub fn matches(&self, lookup: &Lookup) -> bool {
        match lookup {
            Lookup::Id(id) => &self.id == id,
            Lookup::Reference(whole) => {
                self.repo_tags.contains(whole) || self.repo_digests.contains(whole)
            }
        }
    }
}

/// All image records, in memory and on disk.
#[derive(Debug)]
pub struct ImageStore {
    records_dir: PathBuf,
    layers_dir: PathBuf,
    images: Mutex<HashMap<String, ImageRecord>>,
    /// Layers a pull in progress will reference: never removed under it.
    pins: Mutex<HashMap<String, usize>>,
}

/// Keeps layers from being removed while a pull that will reference them runs.
#[derive(Debug)]
pub struct LayerPins<'a> {
    store: &'a ImageStore,
    layers: Vec<String>,
}

impl Drop for LayerPins<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().unwrap_or_else(|p| p.into_inner());
        for layer in &self.layers {
            if let Some(count) = pins.get_mut(layer) {
                *count -= 1;
                if *count == 0 {
                    pins.remove(layer);
                }
            }
        }
    }
}

impl ImageStore {
    /// Opens (creating) the store under `root`, reading every record. `held` are the layers
    /// existing containers run on: kept even when no image names them any more.
    pub fn open(root: &Path, held: &[String]) -> Result<Self> {
        let records_dir = root.join("images");
        let layers_dir = root.join("layers");
        for dir in [&records_dir, &layers_dir] {
            create_private_dir(dir)?;
        }
        let mut images = HashMap::new();
        let entries = fs::read_dir(&records_dir)
            .map_err(|e| ManagerError::io(format!("read {}", records_dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match fs::read(&path).map(|bytes| serde_json::from_slice::<ImageRecord>(&bytes)) {
                Ok(Ok(record)) => {
                    images.insert(record.id.clone(), record);
                }
                Ok(Err(e)) => {
                    log::warn!("ignoring unreadable image record {}: {e}", path.display())
                }
                Err(e) => log::warn!("ignoring image record {}: {e}", path.display()),
            }
        }
        let store = Self {
            records_dir,
            layers_dir,
            images: Mutex::new(images),
            pins: Mutex::new(HashMap::new()),
        };
        store.hold(held);
        store.remove_unreferenced_layers();
        Ok(store)
    }

    /// Removes layer directories no record names: left by a pull that failed after another
    /// image sharing the layer was removed, or by a crash between unpacking and recording.
    fn remove_unreferenced_layers(&self) {
        let held: Vec<String> = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let referenced: std::collections::HashSet<PathBuf> = self
            .images()
            .values()
            .flat_map(|record| record.layers.iter().map(|layer| self.layer_dir(layer)))
            .chain(held.iter().map(|layer| self.layer_dir(layer)))
            .collect();
        let Ok(entries) = fs::read_dir(&self.layers_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !referenced.contains(&path) {
                log::info!("removing unreferenced layer {}", path.display());
                if let Err(e) = fs::remove_dir_all(&path) {
                    log::warn!("could not remove {}: {e}", path.display());
                }
            }
        }
    }

    /// Pins `layers` until the returned guard is dropped.
    pub fn pin(&self, layers: &[String]) -> LayerPins<'_> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for layer in layers {
            *pins.entry(layer.clone()).or_default() += 1;
        }
        LayerPins {
            store: self,
            layers: layers.to_vec(),
        }
    }

    /// Holds `layers` for a container until [`ImageStore::release`]: its root file system is
    /// made of them, so removing its image must not remove them.
    pub fn hold(&self, layers: &[String]) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for layer in layers {
            *pins.entry(layer.clone()).or_default() += 1;
        }
    }

    /// Ends a container's hold on `layers`, removing those no image or other holder uses.
    pub fn release(&self, layers: &[String]) {
        let images = self.images();
        {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            for layer in layers {
                if let Some(count) = pins.get_mut(layer) {
                    *count -= 1;
                    if *count == 0 {
                        pins.remove(layer);
                    }
                }
            }
        }
        self.release_layers(&images, layers);
    }

    fn images(&self) -> std::sync::MutexGuard<'_, HashMap<String, ImageRecord>> {
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where layer `digest` is unpacked (its `fs` directory lives below).
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.layers_dir.join(digest.replace(':', "-"))
    }

    /// The directory layers are unpacked in.
    pub fn layers_root(&self) -> &Path {
        &self.layers_dir
    }

    /// Every image.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut all: Vec<ImageRecord> = self.images().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The image `reference` names: an id (`sha256:…` or its hex), or a normalized reference
    /// by tag or digest.
    pub fn find(&self, reference: &Lookup) -> Option<ImageRecord> {
        self.images()
            .values()
            .find(|record| record.matches(reference))
            .cloned()
    }

    /// Records `record`, taking its tags away from any other image that had them.
    pub fn insert(&self, record: ImageRecord) -> Result<()> {
        let mut images = self.images();
        let mut changed = Vec::new();
        for other in images.values_mut().filter(|other| other.id != record.id) {
            let before = other.repo_tags.len();
            other
                .repo_tags
                .retain(|tag| !record.repo_tags.contains(tag));
            if other.repo_tags.len() != before {
                changed.push(other.clone());
            }
        }
        // The same image pulled with differently compressed layers: the newer layers replace
        // the older, which go once nothing else uses them.
        let (merged, replaced) = match images.get(&record.id) {
            Some(existing) => {
                let replaced: Vec<String> = existing
                    .layers
                    .iter()
                    .filter(|layer| !record.layers.contains(layer))
                    .cloned()
                    .collect();
                (merge(existing, record), replaced)
            }
            None => (record, Vec::new()),
        };
        for other in &changed {
            self.persist(other)?;
        }
        self.persist(&merged)?;
        images.insert(merged.id.clone(), merged);
        self.release_layers(&images, &replaced);
        Ok(())
    }

    /// Removes those of `layers` that no image in `images` uses.
    fn release_layers(&self, images: &HashMap<String, ImageRecord>, layers: &[String]) {
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for layer in layers {
            if images.values().any(|r| r.layers.contains(layer)) || pins.contains_key(layer) {
                continue;
            }
            let dir = self.layer_dir(layer);
            if let Err(e) = fs::remove_dir_all(&dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("could not remove layer {}: {e}", dir.display());
            }
        }
    }

    /// Forgets image `id` and removes the layers no remaining image (or pull) uses.
    pub fn remove(&self, id: &str) -> Result<()> {
        let mut images = self.images();
        let Some(removed) = images.remove(id) else {
            return Ok(());
        };
        let path = self.record_path(id);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            images.insert(removed.id.clone(), removed);
            return Err(ManagerError::io(format!("remove {}", path.display()), e));
        }
        self.release_layers(&images, &removed.layers);
        Ok(())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.records_dir
            .join(format!("{}.json", id.replace(':', "-")))
    }

    fn persist(&self, record: &ImageRecord) -> Result<()> {
        let path = self.record_path(&record.id);
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| ManagerError::io("encode image record", io::Error::other(e)))?;
        write_atomically(&path, &json)
    }
}

/// How an image is named in a request, after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By id: `sha256:<hex>`.
    Id(String),
    /// By full reference (`registry/repository:tag` or `…@sha256:…`).
    Reference(String),
}

fn merge(existing: &ImageRecord, mut newer: ImageRecord) -> ImageRecord {
    for tag in &existing.repo_tags {
        if !newer.repo_tags.contains(tag) {
            newer.repo_tags.push(tag.clone());
        }
    }
    for digest in &existing.repo_digests {
        if !newer.repo_digests.contains(digest) {
            newer.repo_digests.push(digest.clone());
        }
    }
    newer
}

/// Creates `path` (and its parents) and makes it accessible to root only: what is under it
/// (containers' files, image layers) is reached through mounts, never by other users.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|e| ManagerError::io(format!("create {}", path.display()), e))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves either
/// the old file or the new one. The file is readable by its owner only.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| ManagerError::io(format!("create a file in {}", dir.display()), e))?;
    io::Write::write_all(&mut file, bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| ManagerError::io(format!("write {}", path.display()), e))?;
    file.persist(path)
        .map_err(|e| ManagerError::io(format!("rename to {}", path.display()), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tags: &[&str], layers: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![format!("docker.io/library/x@{id}")],
            size: 10,
            layers: layers.iter().map(|l| l.to_string()).collect(),
            config: RunConfig::default(),
        }
    }

    #[test]
    fn records_survive_a_restart_and_are_found_by_tag_digest_and_id() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path(), &[]).unwrap();
        store
            .insert(record(
                "sha256:aa",
                &["docker.io/library/x:1"],
                &["sha256:l1"],
            ))
            .unwrap();
        let reopened = ImageStore::open(root.path(), &[]).unwrap();
        let by_tag = Lookup::Reference("docker.io/library/x:1".into());
        assert_eq!(reopened.find(&by_tag).unwrap().id, "sha256:aa");
        let by_digest = Lookup::Reference("docker.io/library/x@sha256:aa".into());
        assert_eq!(reopened.find(&by_digest).unwrap().id, "sha256:aa");
        assert!(reopened.find(&Lookup::Id("sha256:aa".into())).is_some());
        assert!(reopened.find(&Lookup::Id("sha256:bb".into())).is_none());
    }

    #[test]
    fn a_tag_moves_to_the_newer_image_and_shared_layers_outlive_a_removal() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path(), &[]).unwrap();
        let tag = "docker.io/library/x:latest";
        store
            .insert(record("sha256:old", &[tag], &["sha256:base", "sha256:a"]))
            .unwrap();
        store
            .insert(record("sha256:new", &[tag], &["sha256:base", "sha256:b"]))
            .unwrap();
        for layer in ["sha256:base", "sha256:a", "sha256:b"] {
            fs::create_dir_all(store.layer_dir(layer).join("fs")).unwrap();
        }
        let found = store.find(&Lookup::Reference(tag.into())).unwrap();
        assert_eq!(found.id, "sha256:new");
        let old = store.find(&Lookup::Id("sha256:old".into())).unwrap();
        assert!(old.repo_tags.is_empty());

        // Pulled again with its layer compressed differently: the old layer goes.
        store
            .insert(record("sha256:new", &[tag], &["sha256:base", "sha256:b2"]))
            .unwrap();
        assert!(!store.layer_dir("sha256:b").exists());
        assert!(store.layer_dir("sha256:base").exists());

        store.remove("sha256:old").unwrap();
        assert!(!store.layer_dir("sha256:a").exists());
        assert!(store.layer_dir("sha256:base").exists());
        assert_eq!(store.list().len(), 1);
        store.remove("sha256:old").unwrap();
    }

    #[test]
    fn a_pinned_layer_outlives_the_removal_of_its_last_image() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path(), &[]).unwrap();
        store
            .insert(record(
                "sha256:x",
                &["docker.io/library/x:1"],
                &["sha256:shared"],
            ))
            .unwrap();
        fs::create_dir_all(store.layer_dir("sha256:shared").join("fs")).unwrap();
        let pins = store.pin(&["sha256:shared".to_string()]);
        store.remove("sha256:x").unwrap();
        assert!(
            store.layer_dir("sha256:shared").exists(),
            "pinned by a pull"
        );
        drop(pins);
        // Nothing references it now: the next start clears it.
        let reopened = ImageStore::open(root.path(), &[]).unwrap();
        assert!(!reopened.layer_dir("sha256:shared").exists());
    }

    #[test]
    fn a_containers_layers_outlive_its_image_and_a_restart() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path(), &[]).unwrap();
        let layer = "sha256:ctr".to_string();
        store
            .insert(record("sha256:y", &["docker.io/library/y:1"], &[&layer]))
            .unwrap();
        fs::create_dir_all(store.layer_dir(&layer).join("fs")).unwrap();
        store.hold(std::slice::from_ref(&layer));
        store.remove("sha256:y").unwrap();
        assert!(store.layer_dir(&layer).exists(), "held by a container");
        drop(store);
        let reopened = ImageStore::open(root.path(), std::slice::from_ref(&layer)).unwrap();
        assert!(reopened.layer_dir(&layer).exists(), "held across a restart");
        reopened.release(std::slice::from_ref(&layer));
        assert!(
            !reopened.layer_dir(&layer).exists(),
            "released by the last holder"
        );
    }

    #[test]
    fn run_config_and_user() {
        let config = RunConfig::from_image_config(
            r#"{"config":{"User":"1000:1000","Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/w"}}"#,
        )
        .unwrap();
        assert_eq!(config.uid_or_name(), (Some(1000), String::new()));
        assert_eq!(config.cmd, ["sh"]);
        assert!(config.volumes.is_empty());
        let with_volumes =
            RunConfig::from_image_config(r#"{"config":{"Volumes":{"/var/lib/db":{},"/data":{}}}}"#)
                .unwrap();
        assert_eq!(with_volumes.volumes, ["/data", "/var/lib/db"]);
        // Image records written before volumes were read still load.
        let old: RunConfig = serde_json::from_str(r#"{"user":"app"}"#).unwrap();
        assert!(old.volumes.is_empty());
        let named = RunConfig {
            user: "www:web".into(),
            ..Default::default()
        };
        assert_eq!(named.uid_or_name(), (None, "www".to_string()));
        assert_eq!(RunConfig::default().uid_or_name(), (None, String::new()));
        assert!(RunConfig::from_image_config("{}").is_ok());
        assert!(matches!(
            RunConfig::from_image_config("["),
            Err(ManagerError::Registry(why)) if why.starts_with("image config is not valid")
        ));
    }
}
