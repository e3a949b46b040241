//! The little the shim reads from the OCI documents it is handed (a bundle's `config.json`, an
//! exec's process, an update's resources); the rest is runc's business, and the documents go to
//! runc as containerd sent them. Only these fields are typed: the shim never needs the whole
//! OCI model, and deserializing it would cost a per-pod process a large share of its memory.

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

/// An exec's OCI process as containerd sent it (JSON), checked for the fields the shim and runc
/// cannot do without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecProcess {
    json: Vec<u8>,
    /// Whether the process asks for a terminal.
    pub terminal: bool,
}

#[derive(Deserialize)]
struct ProcessFields {
    #[serde(default)]
    terminal: Option<bool>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    cwd: String,
}

impl ExecProcess {
    /// Checks `json`: an object with at least one argument and an absolute working directory.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let invalid = |why: String| ShimError::InvalidArgument(format!("exec process spec: {why}"));
        let fields: ProcessFields =
            serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        if fields.args.is_empty() {
            return Err(invalid("args is empty".into()));
        }
        if !fields.cwd.starts_with('/') {
            return Err(invalid(format!(
                "cwd {:?} is not an absolute path",
                fields.cwd
            )));
        }
        Ok(Self {
            json: json.to_vec(),
            terminal: fields.terminal.unwrap_or(false),
        })
    }

    /// The JSON, for `runc exec --process`.
    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

/// Checks that an update's resources (`LinuxResources` as JSON) are a JSON object; runc judges
/// the values, and its own error is what the caller gets back.
pub fn check_resources(json: &[u8]) -> Result<()> {
    serde_json::from_slice::<HashMap<String, serde::de::IgnoredAny>>(json)
        .map(drop)
        .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))
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
        assert!(
            BundleSpec::parse(b"{nope").is_err_and(|e| e.is_syntax()),
            "garbage is a JSON syntax error"
        );
    }

    #[test]
    fn an_exec_process_needs_args_and_an_absolute_cwd() {
        let good = br#"{"args":["sh"],"cwd":"/","terminal":true,"env":["A=b"]}"#;
        let process = ExecProcess::parse(good).unwrap();
        assert!(process.terminal);
        assert_eq!(process.json(), good);
        let plain = ExecProcess::parse(br#"{"args":["true"],"cwd":"/tmp","terminal":null}"#);
        assert!(!plain.unwrap().terminal);
        for bad in [
            &br#"{"args":[],"cwd":"/"}"#[..],
            br#"{"args":["sh"],"cwd":"relative"}"#,
            br#"{"args":"sh","cwd":"/"}"#,
            b"[]",
            b"not json",
        ] {
            let refused = ExecProcess::parse(bad).unwrap_err();
            assert!(
                matches!(refused, ShimError::InvalidArgument(_)),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn resources_must_be_an_object() {
        check_resources(br#"{"memory":{"limit":33554432}}"#).unwrap();
        check_resources(b"{}").unwrap();
        for bad in [&b"[]"[..], b"42", b"not json"] {
            assert!(matches!(
                check_resources(bad),
                Err(ShimError::InvalidArgument(_))
            ));
        }
    }
}
