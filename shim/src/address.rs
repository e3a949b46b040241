//! Where a shim daemon listens, and how containers of one pod find the same daemon.
//!
//! As containerd's runc shim does, the socket is `<dir>/<hex sha256(address/namespace/group)>`
//! with `dir` = `/run/containerd/s` unless containerd 2.3+ names another. The group is the
//! first of the bundle's `io.containerd.runc.v2.group` and `io.kubernetes.cri.sandbox-id`
//! annotations, else the task id: containers of one pod share one daemon. The socket is always a
//! path (never abstract) and only its owner may connect.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::{Result, ShimError};
use crate::spec::BundleSpec;

/// Default directory of shim sockets, shared with containerd's own shims.
pub const DEFAULT_SOCKET_DIR: &str = crust_proto::shim_socket::DEFAULT_DIR;

/// Annotations that put containers in one shim, in order of precedence.
pub const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The `unix://` address containerd is given for `path`.
pub fn to_uri(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// The socket path of a group's daemon.
pub fn socket_path(
    dir: &Path,
    containerd_address: &str,
    namespace: &str,
    group: &str,
) -> Result<PathBuf> {
    let path = crust_proto::shim_socket::path(dir, containerd_address, namespace, group);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ShimError::InvalidArgument(format!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter socket directory",
            path.display()
        )));
    }
    Ok(path)
}

/// The shim group of the bundle's container.
pub fn group_of(bundle: &Path, id: &str) -> Result<String> {
    let spec = BundleSpec::read(bundle)?;
    Ok(GROUP_ANNOTATIONS
        .iter()
        .find_map(|key| spec.annotations.get(*key).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| id.to_string()))
}

/// Outcome of trying to become a group's daemon.
#[derive(Debug)]
pub enum Claim {
    /// Nobody serves the group: this listener is ours to hand to a new daemon.
    New(UnixListener),
    /// A live daemon already serves the group at this path.
    Existing,
}

/// Binds the group's socket, or finds the live daemon that holds it.
pub fn claim(path: &Path) -> Result<Claim> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
    }
    for _ in 0..2 {
        match UnixListener::bind(path) {
            Ok(listener) => {
                // Owner-only: the daemon runs containers as root, so nobody else may drive it.
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| ShimError::io(format!("chmod {}", path.display()), e))?;
                return Ok(Claim::New(listener));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if UnixStream::connect(path).is_ok() {
                    return Ok(Claim::Existing);
                }
                // A daemon that died without cleaning up: its socket file is stale.
                log::info!("removing stale shim socket {}", path.display());
                fs::remove_file(path)
                    .map_err(|e| ShimError::io(format!("remove {}", path.display()), e))?;
            }
            Err(e) => return Err(ShimError::io(format!("bind {}", path.display()), e)),
        }
    }
    Err(ShimError::io(
        format!("bind {}", path.display()),
        io::Error::from(io::ErrorKind::AddrInUse),
    ))
}

/// Writes `<bundle>/address` atomically; containerd 1.6/1.7 read it to reconnect after a restart.
pub fn write_address_file(bundle: &Path, uri: &str) -> Result<()> {
    let temp = bundle.join(".address.tmp");
    let path = bundle.join("address");
    fs::write(&temp, uri).map_err(|e| ShimError::io(format!("write {}", temp.display()), e))?;
    fs::rename(&temp, &path).map_err(|e| ShimError::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn socket_path_is_sha256_of_the_joined_parts() {
        // Same inputs as containerd's runc shim: sha256("/run/containerd/containerd.sock/default/t1").
        let path = socket_path(
            Path::new(DEFAULT_SOCKET_DIR),
            "/run/containerd/containerd.sock",
            "default",
            "t1",
        )
        .unwrap();
        let expected = Sha256::digest(b"/run/containerd/containerd.sock/default/t1");
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(path, Path::new(DEFAULT_SOCKET_DIR).join(hex));
        assert!(to_uri(&path).starts_with("unix:///run/containerd/s/"));
    }

    #[test]
    fn overlong_socket_dirs_are_refused() {
        let dir = PathBuf::from(format!("/{}", "d".repeat(60)));
        assert!(matches!(
            socket_path(&dir, "/a", "n", "g"),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[test]
    fn group_prefers_runc_group_then_sandbox_then_id() {
        let bundle = tempfile::tempdir().unwrap();
        let write = |annotations: &str| {
            fs::write(
                bundle.path().join("config.json"),
                format!(r#"{{"ociVersion":"1.0.2","annotations":{annotations}}}"#),
            )
            .unwrap()
        };
        write(r#"{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"g"}"#);
        assert_eq!(group_of(bundle.path(), "c").unwrap(), "g");
        write(r#"{"io.kubernetes.cri.sandbox-id":"pod"}"#);
        assert_eq!(group_of(bundle.path(), "c").unwrap(), "pod");
        write("{}");
        assert_eq!(group_of(bundle.path(), "c").unwrap(), "c");
        fs::write(bundle.path().join("config.json"), "{not json").unwrap();
        assert!(matches!(
            group_of(bundle.path(), "c"),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[test]
    fn claim_binds_then_finds_the_live_listener_then_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("sock");
        let Claim::New(listener) = claim(&path).unwrap() else {
            panic!("first claim must bind");
        };
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(claim(&path).unwrap(), Claim::Existing));
        drop(listener); // the socket file stays behind, like a crashed daemon's
        assert!(matches!(claim(&path).unwrap(), Claim::New(_)));
    }
}
