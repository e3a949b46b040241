//! Attachments kept on disk as libcni keeps them (`<dir>/<network>-<container>-<ifname>`, a
//! `cniCacheV1` JSON object): the list that ADD ran and its result, so that DEL and CHECK run
//! the same plugins with the right `prevResult` after a restart or a config change, and so
//! that attachments of pods crustd no longer knows can be found and released.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    /// Always `cniCacheV1`.
    pub kind: String,
    /// The pod id.
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network list ADD ran, base64 as libcni writes it.
    #[serde(with = "base64_bytes")]
    pub config: Vec<u8>,
    /// The interface.
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// The network's name.
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// The `CNI_ARGS` pairs.
    #[serde(rename = "cniArgs", default)]
    pub cni_args: Vec<(String, String)>,
    /// The capability args given.
    #[serde(rename = "capabilityArgs", default)]
    pub capability_args: BTreeMap<String, Value>,
    /// The ADD result (absent while an ADD was cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (made when first written).
    pub fn at(dir: PathBuf) -> Self {
        Cache { dir }
    }

    fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes `entry` (atomically: a torn entry would lose the prevResult DEL needs).
    pub fn save(&self, entry: &CachedAttachment) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.ifname);
        let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, &path)
    }

    /// Removes the entry, if there is one.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(network, container_id, ifname)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable entry; unreadable files are reported and skipped.
    pub fn entries(&self) -> Vec<CachedAttachment> {
        let Ok(files) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries: Vec<CachedAttachment> = files
            .filter_map(|f| f.ok())
            .map(|f| f.path())
            .filter(|path| path.extension().is_none_or(|e| e != "tmp"))
            .filter_map(|path| match read(&path) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    log::warn!("CNI cache entry {}: {e}", path.display());
                    None
                }
            })
            .collect();
        entries.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        entries
    }

    /// The entries of pod `container_id`.
    pub fn entries_of(&self, container_id: &str) -> Vec<CachedAttachment> {
        let mut entries = self.entries();
        entries.retain(|e| e.container_id == container_id);
        entries
    }
}

fn read(path: &Path) -> io::Result<CachedAttachment> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(container: &str, ifname: &str) -> CachedAttachment {
        CachedAttachment {
            kind: "cniCacheV1".into(),
            container_id: container.into(),
            config: br#"{"name":"n"}"#.to_vec(),
            ifname: ifname.into(),
            network_name: "n".into(),
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: BTreeMap::new(),
            result: Some(serde_json::json!({"cniVersion": "1.0.0"})),
        }
    }

    #[test]
    fn entries_round_trip_in_libcnis_shape() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("results"));
        assert!(cache.entries().is_empty());
        cache.save(&entry("b", "eth0")).unwrap();
        cache.save(&entry("a", "eth0")).unwrap();
        cache.save(&entry("a", "eth1")).unwrap();
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results/n-a-eth0")).unwrap())
                .unwrap();
        assert_eq!(on_disk["kind"], "cniCacheV1");
        assert_eq!(on_disk["containerId"], "a");
        assert_eq!(on_disk["config"], "eyJuYW1lIjoibiJ9");
        assert_eq!(on_disk["cniArgs"][0][1], "p");
        assert_eq!(cache.entries().len(), 3);
        assert_eq!(cache.entries_of("a").len(), 2);
        assert_eq!(cache.entries_of("a")[0], entry("a", "eth0"));
        cache.remove("n", "a", "eth0").unwrap();
        cache.remove("n", "a", "eth0").unwrap();
        assert_eq!(cache.entries_of("a").len(), 1);
        std::fs::write(dir.path().join("results/garbage"), "{").unwrap();
        assert_eq!(cache.entries().len(), 2);
        // A write cut short leaves a .tmp file, which is no entry.
        std::fs::write(
            dir.path().join("results/n-c-eth0.tmp"),
            serde_json::to_vec(&entry("c", "eth0")).unwrap(),
        )
        .unwrap();
        assert_eq!(cache.entries().len(), 2);
        // An entry that cannot be removed is an error, not a silent success.
        std::fs::create_dir_all(dir.path().join("results/n-d-eth0/x")).unwrap();
        assert!(cache.remove("n", "d", "eth0").is_err());
    }
}
