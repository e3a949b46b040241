//! Volumes an image's config declares (`Volumes`): as containerd does, each path that no CRI
//! mount covers gets a writable directory of the container's own, filled with what the image
//! has at that path, bind-mounted there (so it is writable even on a read-only root).
//!
//! The paths come from the image, so they are untrusted: a relative path or one with `..` is
//! refused, each volume's directory is named by its index (never by the path), and the image's
//! files are read without following any link, so nothing outside the image is read and
//! nothing outside the container's data directory is written.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use crust_proto::cri::ContainerConfig;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, mknod};

use super::layout::{create_dir, remove_tree, unmount};
use super::spec::check_path;
use crate::error::{ManagerError, Result};

/// One volume of the image: where the container sees it and the directory that backs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    /// The path in the container (absolute, no trailing `/`).
    pub container_path: String,
    /// Its directory under the container's data directory.
    pub host_path: PathBuf,
}

/// The directory under a container's data directory that holds its image volumes.
pub fn volumes_dir(data: &Path) -> PathBuf {
    data.join("volumes")
}

/// The volumes to make for `image_volumes` in a container of `config` whose data directory is
/// `data`: each checked, those a CRI mount covers at the same path left out.
pub fn plan(
    image_volumes: &[String],
    config: &ContainerConfig,
    data: &Path,
) -> Result<Vec<ImageVolume>> {
    let covered = |path: &str| {
        config
            .mounts
            .iter()
            .any(|m| Path::new(&m.container_path) == Path::new(path))
    };
    let mut volumes = Vec::new();
    for (index, path) in image_volumes.iter().enumerate() {
        check_path("image volume", path)?;
        // Rebuilt from its named components: `/.`, `//a/./b/` and the like are `/` and `/a/b`.
        let names: Vec<&str> = Path::new(path)
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => name.to_str(),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Err(ManagerError::InvalidArgument(format!(
                "image volume {path:?} would hide the whole root file system"
            )));
        }
        let normal = format!("/{}", names.join("/"));
        let normal = normal.as_str();
        if covered(normal)
            || volumes
                .iter()
                .any(|v: &ImageVolume| v.container_path == normal)
        {
            continue;
        }
        volumes.push(ImageVolume {
            container_path: normal.to_string(),
            host_path: volumes_dir(data).join(index.to_string()),
        });
    }
    Ok(volumes)
}

/// Makes each volume's directory and copies into it what the image has at its path, as the
/// container would see it through the overlay of `layers_top_first`. The layers are stacked
/// by a read-only overlay mounted at `<data>/image` for the copy and unmounted after it.
pub fn populate(volumes: &[ImageVolume], layers_top_first: &[PathBuf], data: &Path) -> Result<()> {
    if volumes.is_empty() {
        return Ok(());
    }
    let view = data.join("image");
    let empty = data.join("image-bottom");
    create_dir(&view)?;
    create_dir(&empty)?;
    // A read-only overlay needs two lower layers: an empty one at the bottom changes nothing.
    let mut lower: Vec<String> = layers_top_first
        .iter()
        .map(|l| l.display().to_string())
        .collect();
    lower.push(empty.display().to_string());
    let options = format!("lowerdir={}", lower.join(":"));
    mount(
        Some("overlay"),
        &view,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(options.as_str()),
    )
    .map_err(|e| ManagerError::io(format!("mount the image at {}", view.display()), e.into()))?;
    let copied = volumes.iter().try_for_each(|volume| fill(volume, &view));
    let unmounted = unmount(&view)
        .and_then(|()| remove_tree(&view))
        .and_then(|()| remove_tree(&empty));
    copied.and(unmounted)
}

/// Makes `volume`'s directory and copies the image's content at its path (from `view`).
fn fill(volume: &ImageVolume, view: &Path) -> Result<()> {
    create_dir(&volume.host_path)?;
    let Some(source) = in_image(view, &volume.container_path) else {
        // Not in the image (or reached through a link): the volume starts empty, as the
        // container will see a fresh directory there.
        return Ok(());
    };
    let meta = fs::symlink_metadata(&source)
        .map_err(|e| ManagerError::io(format!("inspect {}", source.display()), e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    copy_attributes(&source, &volume.host_path, &meta)?;
    copy_tree(&source, &volume.host_path)
}

/// `path` inside `view` if every component of it is a real directory or file there; None if
/// it is missing or goes through a symbolic link (never followed: it could point anywhere on
/// the host).
fn in_image(view: &Path, path: &str) -> Option<PathBuf> {
    let mut at = view.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => at.push(name),
            _ => return None,
        }
        let meta = fs::symlink_metadata(&at).ok()?;
        if meta.file_type().is_symlink() {
            log::warn!("image volume {path}: a link on its path; it starts empty");
            return None;
        }
    }
    Some(at)
}

/// Copies the content of directory `from` into existing directory `to`: files, directories,
/// links (as links), devices and FIFOs, with their modes and owners.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let entries =
        fs::read_dir(from).map_err(|e| ManagerError::io(format!("read {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ManagerError::io(format!("read {}", from.display()), e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source)
            .map_err(|e| ManagerError::io(format!("inspect {}", source.display()), e))?;
        let file_type = meta.file_type();
        let made = if file_type.is_dir() {
            fs::create_dir(&target)
                .and_then(|()| copy_tree(&source, &target).map_err(std::io::Error::other))
        } else if file_type.is_symlink() {
            fs::read_link(&source).and_then(|link| symlink(link, &target))
        } else if file_type.is_file() {
            fs::copy(&source, &target).map(drop)
        } else {
            make_node(&target, &meta)
        };
        made.map_err(|e| {
            ManagerError::io(
                format!("copy {} to {}", source.display(), target.display()),
                e,
            )
        })?;
        copy_attributes(&source, &target, &meta)?;
    }
    Ok(())
}

/// A device or FIFO like the one `meta` describes (sockets are skipped: they mean nothing
/// without their process).
fn make_node(target: &Path, meta: &fs::Metadata) -> std::io::Result<()> {
    let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFSOCK {
        return Ok(());
    }
    let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
    mknod(target, kind, mode, meta.rdev()).map_err(Into::into)
}

/// Owner and mode of `source` onto `target` (the link itself for a link, which has no mode).
fn copy_attributes(source: &Path, target: &Path, meta: &fs::Metadata) -> Result<()> {
    if !target.exists() && fs::symlink_metadata(target).is_err() {
        // A skipped socket.
        return Ok(());
    }
    lchown(target, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| ManagerError::io(format!("chown {}", target.display()), e))?;
    if !meta.file_type().is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(
            |e| {
                ManagerError::io(
                    format!("chmod {} (as {})", target.display(), source.display()),
                    e,
                )
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::Mount as CriMount;

    fn volume_paths(volumes: &[ImageVolume]) -> Vec<(&str, PathBuf)> {
        volumes
            .iter()
            .map(|v| (v.container_path.as_str(), v.host_path.clone()))
            .collect()
    }

    #[test]
    fn each_volume_gets_a_numbered_directory_unless_a_cri_mount_covers_it() {
        let config = ContainerConfig {
            mounts: vec![CriMount {
                container_path: "/cache/".into(),
                host_path: "/host/cache".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let data = Path::new("/data/c1");
        let volumes = plan(
            &[
                "/cache".into(),
                "/var/lib/db/".into(),
                "/var/lib/db".into(),
                "//var/./lib/db".into(),
                "/./cache/.".into(),
            ],
            &config,
            data,
        )
        .unwrap();
        assert_eq!(
            volume_paths(&volumes),
            [("/var/lib/db", PathBuf::from("/data/c1/volumes/1"))]
        );
    }

    #[test]
    fn untrusted_paths_are_refused() {
        for bad in ["relative", "/a/../../etc", "", "/", "/.", "//./", "/x\0y"] {
            assert!(
                matches!(
                    plan(&[bad.into()], &ContainerConfig::default(), Path::new("/d")),
                    Err(ManagerError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_image_path_is_found_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let view = dir.path();
        fs::create_dir_all(view.join("var/lib/db")).unwrap();
        symlink("/etc", view.join("escape")).unwrap();
        assert_eq!(in_image(view, "/var/lib/db"), Some(view.join("var/lib/db")));
        assert_eq!(in_image(view, "/escape/ssl"), None, "through a link");
        assert_eq!(in_image(view, "/escape"), None);
        assert_eq!(in_image(view, "/missing/x"), None);
    }

    #[test]
    fn a_copy_keeps_files_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let to = dir.path().join("to");
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::write(from.join("sub/file"), "content").unwrap();
        fs::set_permissions(from.join("sub/file"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(from.join("sub"), fs::Permissions::from_mode(0o711)).unwrap();
        symlink("sub/file", from.join("link")).unwrap();
        fs::create_dir(&to).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("sub/file")).unwrap(), "content");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&to.join("sub/file")), 0o640);
        assert_eq!(mode(&to.join("sub")), 0o711);
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("sub/file")
        );
    }
}
