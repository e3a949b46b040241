//! containerd's rule for naming a shim daemon's socket.
//!
//! containerd's runc shim listens on `<dir>/<hex sha256(address/namespace/group)>`, where
//! `address` is containerd's own socket (the shim's `-address`), and `group` the pod (or task)
//! the daemon serves. The shim binds it; whoever starts shims (containerd, crustd) can compute it
//! too, and so find a daemon whose `start` answer was lost.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Default directory of shim sockets, shared with containerd's own shims.
pub const DEFAULT_DIR: &str = "/run/containerd/s";

/// The file name of a group's socket: Go's `filepath.Join(address, namespace, group)` hashed.
pub fn name(address: &str, namespace: &str, group: &str) -> String {
    let joined = Path::new(address).join(namespace).join(group);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The socket path of a group's daemon in `dir`.
pub fn path(dir: &Path, address: &str, namespace: &str, group: &str) -> PathBuf {
    dir.join(name(address, namespace, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_sha256_of_the_joined_parts() {
        // sha256("/run/containerd/containerd.sock/k8s.io/pod1"), as containerd computes it.
        let expected = Sha256::digest(b"/run/containerd/containerd.sock/k8s.io/pod1");
        let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            name("/run/containerd/containerd.sock", "k8s.io", "pod1"),
            hex
        );
        assert_eq!(hex.len(), 64);
        assert_ne!(name("/a", "n", "g1"), name("/a", "n", "g2"));
        assert_eq!(
            path(Path::new("/run/x"), "/a", "n", "g"),
            Path::new("/run/x").join(name("/a", "n", "g"))
        );
    }
}
