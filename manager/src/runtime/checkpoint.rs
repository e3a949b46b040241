//! CheckpointContainer: criu's images of a running container, taken through its shim (which
//! leaves it running), packed with its spec, its record and its writable layer into one tar
//! archive at the path kubelet names — the layout checkpoint tools read (`checkpoint/`,
//! `spec.dump`, `config.dump`, `rootfs-diff.tar`). Where criu cannot run, its own message is
//! the error and the container runs on untouched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Core;
use super::container::not_found;
use super::records::{ContainerRecord, ContainerState};
use super::spec::check_path;
use super::store::blocking;
use crate::error::{ManagerError, Result};

/// How long criu gets when kubelet gives no timeout.
const DEFAULT_LIMIT: Duration = Duration::from_secs(120);

/// Checkpoints container `id` into the archive `location` (absolute; its directory must
/// exist), giving criu `timeout` seconds (0: the default).
pub async fn checkpoint_container(
    core: &Arc<Core>,
    id: &str,
    location: &str,
    timeout: i64,
) -> Result<()> {
    check_path("checkpoint location", location)?;
    let archive = PathBuf::from(location);
    if !archive.parent().is_some_and(Path::is_dir) {
        return Err(ManagerError::InvalidArgument(format!(
            "checkpoint location {location:?}: its directory does not exist"
        )));
    }
    let id = core.containers.resolve(id)?.ok_or_else(|| not_found(id))?;
    let _operation = core.operations.lock(&id).await;
    let record = core.containers.get(&id).ok_or_else(|| not_found(&id))?;
    if record.state != ContainerState::Running {
        return Err(ManagerError::FailedPrecondition(format!(
            "container {id} is {:?}: only a running container is checkpointed",
            record.state
        )));
    }
    let limit = u64::try_from(timeout)
        .ok()
        .filter(|&s| s > 0)
        .map_or(DEFAULT_LIMIT, Duration::from_secs);
    // criu's images hold all of the container's memory: on disk under root_dir, never in
    // state_dir's tmpfs. What a crash leaves there is swept when crustd starts.
    let work = blocking({
        let under = core.layout.checkpoint_work();
        move || {
            tempfile::Builder::new()
                .prefix("checkpoint-")
                .tempdir_in(&under)
                .map_err(|e| ManagerError::io("make a checkpoint directory", e))
        }
    })
    .await?;
    let images = work.path().join("checkpoint");
    let taken = match core.supervisor(&record.pod_id) {
        Ok(supervisor) => match supervisor.client().await {
            Ok(client) => client.checkpoint(&id, &images, limit).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Err(error) = taken {
        blocking(move || {
            drop(work);
            Ok(())
        })
        .await?;
        return Err(error);
    }
    let bundle = core.layout.bundle(&id);
    let upper = core.layout.container_data(&id).join("upper");
    blocking(move || {
        let packed = pack(&record, &images, &bundle, &upper, &archive);
        drop(work);
        packed
    })
    .await?;
    log::info!("container {id} checkpointed to {location}");
    Ok(())
}

/// Writes the archive through a temporary file beside it, so a failure leaves none.
fn pack(
    record: &ContainerRecord,
    images: &Path,
    bundle: &Path,
    upper: &Path,
    archive: &Path,
) -> Result<()> {
    let dir = archive.parent().unwrap_or(Path::new("/"));
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| ManagerError::io(what, e)
    };
    let rootfs_diff = tempfile::NamedTempFile::new_in(dir).map_err(io("make rootfs-diff.tar"))?;
    {
        let mut diff = tar::Builder::new(rootfs_diff.as_file());
        diff.follow_symlinks(false);
        append_tree(&mut diff, upper, Path::new(""))
            .and_then(|()| diff.finish())
            .map_err(io("pack the writable layer"))?;
    }
    let record_json = serde_json::to_vec_pretty(record)
        .map_err(|e| ManagerError::io("encode the record", std::io::Error::other(e)))?;
    let out = tempfile::NamedTempFile::new_in(dir).map_err(io("make the archive"))?;
    {
        let mut tar = tar::Builder::new(out.as_file());
        tar.follow_symlinks(false);
        tar.append_dir_all("checkpoint", images)
            .map_err(io("pack criu's images"))?;
        tar.append_path_with_name(bundle.join("config.json"), "spec.dump")
            .map_err(io("pack the spec"))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(record_json.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "config.dump", record_json.as_slice())
            .map_err(io("pack the record"))?;
        let mut diff = File::open(rootfs_diff.path()).map_err(io("read rootfs-diff.tar"))?;
        tar.append_file("rootfs-diff.tar", &mut diff)
            .and_then(|()| tar.finish())
            .map_err(io("pack the writable layer"))?;
    }
    out.as_file().sync_all().map_err(io("write the archive"))?;
    out.persist(archive)
        .map_err(|e| ManagerError::io(format!("write {}", archive.display()), e.error))?;
    Ok(())
}

/// Appends the tree at `dir` under `prefix`: directories, files (exactly the size taken when
/// their header is written, as the container may still be writing them), links as links,
/// devices (overlay's whiteouts are 0/0 character devices) and FIFOs. Sockets, which a tar
/// cannot hold and a restore recreates, are left out.
fn append_tree(tar: &mut tar::Builder<&File>, dir: &Path, prefix: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = prefix.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_socket() {
            continue;
        }
        if kind.is_file() {
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            let file = File::open(&path)?;
            tar.append_data(&mut header, &name, file.take(meta.len()))?;
        } else if kind.is_dir() {
            tar.append_path_with_name(&path, &name)?;
            append_tree(tar, &path, &name)?;
        } else {
            tar.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_images_spec_record_and_writable_layer() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let bundle = dir.path().join("bundle");
        let upper = dir.path().join("upper");
        for d in [&images, &bundle, &upper] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(images.join("inventory.img"), b"criu").unwrap();
        std::fs::write(bundle.join("config.json"), b"{}").unwrap();
        std::fs::write(upper.join("written"), b"by the container").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.join("link")).unwrap();
        std::fs::create_dir(upper.join("sub")).unwrap();
        std::fs::write(upper.join("sub/deep"), b"deeper").unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(upper.join("socket")).unwrap();
        let record = ContainerRecord {
            state: ContainerState::Running,
            ..crate::runtime::records::tests::container("c1", "p1")
        };
        let archive = dir.path().join("out.tar");
        pack(&record, &images, &bundle, &upper, &archive).unwrap();
        let mut names: Vec<String> = tar::Archive::new(File::open(&archive).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint/",
                "checkpoint/inventory.img",
                "config.dump",
                "rootfs-diff.tar",
                "spec.dump"
            ]
        );
        // Only the archive is left beside the inputs: no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
        let mut diff = tar::Archive::new(File::open(&archive).unwrap());
        let mut inner = Vec::new();
        for entry in diff.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().as_os_str() == "rootfs-diff.tar" {
                std::io::Read::read_to_end(&mut entry, &mut inner).unwrap();
            }
        }
        let mut layer: Vec<String> = tar::Archive::new(inner.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        layer.sort();
        assert_eq!(layer, ["link", "sub", "sub/deep", "written"], "no socket");
    }
}
