//! A container's volumes: where on the host they come from and where in the container they
//! go. The one place their paths are checked: validation calls it before anything exists, and
//! the spec builder before it binds a volume.

use std::path::{Component, Path};

use crust_proto::cri::Mount;

use super::invalid;
use crate::error::Result;
use crate::runtime::spec::check_path;

/// Refuses a volume whose paths are relative or climb with `..`, or that would cover the
/// container's root (`/`, also spelled `//` or `/.`), which is the image's and which runc
/// mounts itself.
pub fn volume(mount: &Mount) -> Result<()> {
    check_path("mount container path", &mount.container_path)?;
    check_path("mount host path", &mount.host_path)?;
    // Path::components reads `//` and `/.` as `/`.
    if Path::new(&mount.container_path)
        .components()
        .all(|c| c == Component::RootDir)
    {
        return Err(invalid(format!(
            "mount container path {:?} is the container's root",
            mount.container_path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    fn mount(host: &str, container: &str) -> Mount {
        Mount {
            host_path: host.into(),
            container_path: container.into(),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_below_the_root_pass() {
        for (host, target) in [
            (
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/data",
                "/data",
            ),
            ("/var/lib/kubelet/pods/u1/etc-hosts", "/etc/hosts"),
            ("/", "/host"),
            ("/tmp", "/data/"),
            ("/tmp", "//data"),
        ] {
            volume(&mount(host, target)).unwrap();
        }
    }

    #[test]
    fn the_root_relative_or_climbing_paths_are_refused() {
        for target in ["/", "//", "/.", "/./", "///./."] {
            refused_for(volume(&mount("/tmp", target)), "mount container path");
        }
        for target in ["", "data", "/a/../../b", "/data\0"] {
            refused_for(volume(&mount("/tmp", target)), "mount container path");
        }
        for host in ["", "tmp", "/tmp/../etc", "/tmp\0"] {
            refused_for(volume(&mount(host, "/data")), "mount host path");
        }
    }
}
