//! The runc settings of one container, from containerd's runtime options.
//!
//! The daemon saves them in the bundle at create so that `delete`, which runs after the daemon
//! is gone, runs the same binary against the same state root.

use std::fs;
use std::path::{Path, PathBuf};

use crust_proto::runc_options::Options;
use crust_proto::typeurl;
use crust_proto::wellknown::Any;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

/// State root of runc when the options name none, as containerd's shim uses.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";
/// The OCI runtime binary when the options name none.
pub const DEFAULT_BINARY: &str = "runc";
/// File in the bundle holding the settings for `delete`.
const SAVED_FILE: &str = "crust-runtime.json";

/// What runc is run with for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncConfig {
    /// Binary name or path (`BinaryName`).
    pub binary: String,
    /// runc `--root`: the options' root (or the default) plus the namespace.
    pub root: PathBuf,
    /// runc `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    /// runc create `--no-pivot`.
    pub no_pivot_root: bool,
    /// runc create `--no-new-keyring`.
    pub no_new_keyring: bool,
    /// Owner of the stdio pipes handed to the container.
    pub io_uid: u32,
    /// Group of the stdio pipes handed to the container.
    pub io_gid: u32,
    /// Default checkpoint image directory.
    pub criu_image_path: String,
    /// Default criu work directory.
    pub criu_work_path: String,
}

impl RuncConfig {
    /// Settings from runc options (absent options mean all defaults) for `namespace`.
    pub fn new(options: Option<&Options>, namespace: &str) -> Self {
        let default = Options::default();
        let options = options.unwrap_or(&default);
        let root = if options.root.is_empty() {
            DEFAULT_RUNC_ROOT
        } else {
            options.root.as_str()
        };
        Self {
            binary: if options.binary_name.is_empty() {
                DEFAULT_BINARY.to_string()
            } else {
                options.binary_name.clone()
            },
            root: Path::new(root).join(namespace),
            systemd_cgroup: options.systemd_cgroup,
            no_pivot_root: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
            io_uid: options.io_uid,
            io_gid: options.io_gid,
            criu_image_path: options.criu_image_path.clone(),
            criu_work_path: options.criu_work_path.clone(),
        }
    }

    /// Settings from the `Any` containerd passes with Create (or on `start`'s stdin).
    pub fn from_any(any: Option<&Any>, namespace: &str) -> Result<Self> {
        let Some(any) = any.filter(|any| !any.type_url.is_empty()) else {
            return Ok(Self::new(None, namespace));
        };
        if !typeurl::is(any, typeurl::RUNC_OPTIONS) {
            return Err(ShimError::InvalidArgument(format!(
                "runtime options of type {:?} are not supported: configure the runtime with \
                 runtime_type \"io.containerd.runc.v2\" and runtime_path set to this shim, so \
                 containerd sends {}",
                any.type_url,
                typeurl::RUNC_OPTIONS
            )));
        }
        let options: Options = typeurl::unpack(any)
            .map_err(|e| ShimError::InvalidArgument(format!("decode runtime options: {e}")))?;
        if !options.root.is_empty() && !Path::new(&options.root).is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "runtime option Root {:?} must be an absolute path",
                options.root
            )));
        }
        Ok(Self::new(Some(&options), namespace))
    }

    /// Saves the settings in `bundle` for a later `delete`.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(SAVED_FILE);
        let json = serde_json::to_vec(self)
            .map_err(|e| ShimError::InvalidArgument(format!("encode runtime settings: {e}")))?;
        fs::write(&path, json).map_err(|e| ShimError::io(format!("write {}", path.display()), e))
    }

    /// The settings saved in `bundle`, or the defaults when create never got that far.
    pub fn load_or_default(bundle: &Path, namespace: &str) -> Self {
        fs::read(bundle.join(SAVED_FILE))
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_else(|| Self::new(None, namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_containerds_runc_shim() {
        let config = RuncConfig::new(None, "k8s.io");
        assert_eq!(config.binary, "runc");
        assert_eq!(config.root, Path::new("/run/containerd/runc/k8s.io"));
        assert!(!config.systemd_cgroup);
    }

    #[test]
    fn options_are_honoured() {
        let options = Options {
            binary_name: "crun".into(),
            root: "/run/other".into(),
            systemd_cgroup: true,
            no_pivot_root: true,
            io_uid: 1000,
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::RUNC_OPTIONS, &options).unwrap();
        let config = RuncConfig::from_any(Some(&any), "default").unwrap();
        assert_eq!(config.binary, "crun");
        assert_eq!(config.root, Path::new("/run/other/default"));
        assert!(config.systemd_cgroup && config.no_pivot_root);
        assert_eq!(config.io_uid, 1000);
    }

    #[test]
    fn foreign_option_types_and_relative_roots_are_refused() {
        let foreign = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            ..Default::default()
        };
        assert!(matches!(
            RuncConfig::from_any(Some(&foreign), "n"),
            Err(ShimError::InvalidArgument(_))
        ));
        let relative = Options {
            root: "run/x".into(),
            ..Default::default()
        };
        let any = typeurl::pack(typeurl::RUNC_OPTIONS, &relative).unwrap();
        assert!(matches!(
            RuncConfig::from_any(Some(&any), "n"),
            Err(ShimError::InvalidArgument(why)) if why.contains("absolute")
        ));
        assert_eq!(
            RuncConfig::from_any(None, "n").unwrap(),
            RuncConfig::new(None, "n")
        );
    }

    #[test]
    fn saved_settings_survive_for_delete() {
        let bundle = tempfile::tempdir().unwrap();
        let mut config = RuncConfig::new(None, "n");
        config.binary = "crun".into();
        config.save(bundle.path()).unwrap();
        assert_eq!(RuncConfig::load_or_default(bundle.path(), "n"), config);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            RuncConfig::load_or_default(empty.path(), "n"),
            RuncConfig::new(None, "n")
        );
    }
}
