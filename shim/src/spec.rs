//! The little the shim reads from a bundle's `config.json`; the rest is runc's business.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, ShimError};

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// What the shim needs to know about a bundle's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    /// The OCI annotations.
    pub annotations: HashMap<String, String>,
    /// Whether the container gets a pid namespace of its own. Without one, its processes do
    /// not die with its init, so the shim kills them when the init exits.
    pub own_pid_namespace: bool,
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<Self> {
        let path = bundle.join("config.json");
        let text =
            fs::read(&path).map_err(|e| ShimError::io(format!("read {}", path.display()), e))?;
        Self::parse(&text)
            .map_err(|e| ShimError::InvalidArgument(format!("parse {}: {e}", path.display())))
    }

    fn parse(json: &[u8]) -> serde_json::Result<Self> {
        let spec: Spec = serde_json::from_slice(json)?;
        let own_pid_namespace = spec.linux.is_some_and(|linux| {
            linux
                .namespaces
                .iter()
                .any(|ns| ns.kind == "pid" && ns.path.is_empty())
        });
        Ok(Self {
            annotations: spec.annotations,
            own_pid_namespace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_namespace_means_a_pid_namespace_without_a_path() {
        let own = br#"{"linux":{"namespaces":[{"type":"mount"},{"type":"pid"}]}}"#;
        assert!(BundleSpec::parse(own).unwrap().own_pid_namespace);
        let joined = br#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#;
        assert!(!BundleSpec::parse(joined).unwrap().own_pid_namespace);
        let host = br#"{"linux":{"namespaces":[{"type":"mount"}]}}"#;
        assert!(!BundleSpec::parse(host).unwrap().own_pid_namespace);
        assert!(!BundleSpec::parse(b"{}").unwrap().own_pid_namespace);
    }

    #[test]
    fn annotations_are_kept_and_garbage_is_refused() {
        let spec = BundleSpec::parse(br#"{"annotations":{"a":"b"}}"#).unwrap();
        assert_eq!(spec.annotations.get("a").map(String::as_str), Some("b"));
        assert!(BundleSpec::parse(b"{nope").is_err());
    }
}
