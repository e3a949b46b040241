//! Unpacking one image layer (a tar stream) into a directory that overlayfs can stack.
//!
//! Whiteouts become what overlayfs understands: `.wh.<name>` a 0/0 character device `<name>`,
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory. Entries that would
//! land outside the directory are refused, not skipped: `..` components, absolute paths, a
//! path that runs through a symlink, and hard links to anything outside the layer.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::error::{ManagerError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The attribute that makes a directory opaque to overlayfs: lower layers do not show through.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// From a layer's media type (Docker or OCI); `None` for a type that is not a layer.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// Wraps `blob` in the matching decoder.
    pub fn decoder<'a>(self, blob: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(blob)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
        })
    }
}

/// Unpacks the tar stream `layer` into `target` (an empty directory). Ownership, modes and
/// times are kept, as a container's root file system needs them.
pub fn unpack(layer: impl Read, target: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    let failed = |what: String, e: io::Error| ManagerError::io(format!("unpack layer: {what}"), e);
    let entries = archive
        .entries()
        .map_err(|e| failed("read the archive".into(), e))?;
    // Directory times are set after their contents, which would change them.
    let mut directories = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| failed("read an entry".into(), e))?;
        let raw = entry
            .path()
            .map_err(|e| failed("entry path".into(), e))?
            .into_owned();
        let Some(relative) = contained_path(&raw)? else {
            continue; // the layer's root itself
        };
        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent = relative.parent().unwrap_or(Path::new(""));
        ensure_no_symlink_on_the_way(target, parent)?;
        let destination_dir = target.join(parent);
        fs::create_dir_all(&destination_dir)
            .map_err(|e| failed(format!("create {}", destination_dir.display()), e))?;
        if name == OPAQUE_MARKER {
            xattr::set(&destination_dir, OPAQUE_XATTR, b"y")
                .map_err(|e| failed(format!("mark {} opaque", parent.display()), e))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if !is_one_name(hidden) {
                return Err(ManagerError::InvalidArgument(format!(
                    "layer has a malformed whiteout {}",
                    raw.display()
                )));
            }
            let whiteout = destination_dir.join(hidden);
            remove_existing(&whiteout)?;
            mknod(&whiteout, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                failed(
                    format!("whiteout {}", whiteout.display()),
                    io::Error::from(e),
                )
            })?;
            continue;
        }
        let destination = target.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| failed("hard link target".into(), e))?
                .ok_or_else(|| {
                    ManagerError::InvalidArgument(format!(
                        "layer hard link {} has no target",
                        raw.display()
                    ))
                })?
                .into_owned();
            let Some(source) = contained_path(&link)? else {
                return Err(ManagerError::InvalidArgument(format!(
                    "layer hard link {} points at the root",
                    raw.display()
                )));
            };
            ensure_no_symlink_on_the_way(target, &source)?;
            remove_existing(&destination)?;
            fs::hard_link(target.join(&source), &destination)
                .map_err(|e| failed(format!("link {}", destination.display()), e))?;
            continue;
        }
        if kind.is_dir() {
            if fs::symlink_metadata(&destination).is_ok_and(|m| !m.is_dir()) {
                remove_existing(&destination)?;
            }
            directories.push((relative.clone(), entry.header().mtime().unwrap_or(0)));
        } else {
            remove_existing(&destination)?;
        }
        entry
            .unpack(&destination)
            .map_err(|e| failed(format!("write {}", relative.display()), e))?;
    }
    for (directory, mtime) in directories.into_iter().rev() {
        let time = filetime_of(mtime);
        // Best effort, as tar itself: a directory's time is cosmetic.
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &target.join(directory),
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

fn filetime_of(seconds: u64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(seconds.min(i64::MAX as u64) as i64, 0)
}

/// The entry's path relative to the layer root, or `None` for the root itself. `..` and
/// absolute paths are refused.
fn contained_path(raw: &Path) -> Result<Option<PathBuf>> {
    let mut relative = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ManagerError::InvalidArgument(format!(
                    "layer entry {} leaves the layer (absolute or with ..)",
                    raw.display()
                )));
            }
        }
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

/// Whether `name` names one entry of its directory: not empty, `.` or `..`, which a whiteout
/// would turn into the removal of its own directory or its parent.
fn is_one_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// Refuses a path whose directories include a symlink: writing through it could land anywhere.
fn ensure_no_symlink_on_the_way(target: &Path, relative: &Path) -> Result<()> {
    let mut walked = target.to_path_buf();
    for part in relative.components() {
        walked.push(part);
        match fs::symlink_metadata(&walked) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ManagerError::InvalidArgument(format!(
                    "layer entry below {} goes through a symlink",
                    relative.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ManagerError::io(format!("inspect {}", walked.display()), e)),
        }
    }
    Ok(())
}

/// Removes what is at `path` (a file, link, or directory tree) so an entry can replace it.
fn remove_existing(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(|e| ManagerError::io(format!("replace {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    /// A tar built entry by entry; `link` names are link targets.
    fn layer(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_mtime(1_700_000_000);
            header.set_uid(u64::from(nix::unistd::geteuid().as_raw()));
            header.set_gid(u64::from(nix::unistd::getegid().as_raw()));
            // Written raw: the tar crate's own setters refuse the hostile paths under test.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                let linkname = &mut header.as_old_mut().linkname;
                linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;
    const DIR: tar::EntryType = tar::EntryType::Directory;
    const SYMLINK: tar::EntryType = tar::EntryType::Symlink;
    const HARDLINK: tar::EntryType = tar::EntryType::Link;

    #[test]
    fn files_directories_and_links_are_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("./", DIR, b"", ""),
            ("bin/", DIR, b"", ""),
            ("bin/tool", FILE, b"#!/bin/sh\n", ""),
            ("bin/alias", SYMLINK, b"", "tool"),
            ("bin/same", HARDLINK, b"", "bin/tool"),
        ]);
        unpack(&tar[..], dir.path()).unwrap();
        let tool = dir.path().join("bin/tool");
        assert_eq!(fs::read(&tool).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            fs::read_link(dir.path().join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        let same = fs::metadata(dir.path().join("bin/same")).unwrap();
        assert_eq!(same.ino(), fs::metadata(&tool).unwrap().ino());
        assert_eq!(
            fs::metadata(dir.path().join("bin")).unwrap().mtime(),
            1_700_000_000
        );
    }

    #[test]
    fn a_later_entry_replaces_what_an_earlier_one_made() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            // A file that becomes a directory.
            ("x", FILE, b"file", ""),
            ("x/", DIR, b"", ""),
            ("x/inner", FILE, b"inner", ""),
            // A directory tree that becomes a file.
            ("d/", DIR, b"", ""),
            ("d/deep/", DIR, b"", ""),
            ("d/deep/file", FILE, b"old", ""),
            ("d", FILE, b"now a file", ""),
            // A symlink that becomes a file: written in place, not through the link.
            ("link", SYMLINK, b"", "x/inner"),
            ("link", FILE, b"own", ""),
        ]);
        unpack(&tar[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("x/inner")).unwrap(), b"inner");
        assert_eq!(fs::read(dir.path().join("d")).unwrap(), b"now a file");
        let link = dir.path().join("link");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(fs::read(&link).unwrap(), b"own");
    }

    #[test]
    fn whiteouts_and_opaque_directories_become_overlay_markers() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/", DIR, b"", ""),
            ("etc/.wh.passwd", FILE, b"", ""),
            ("var/", DIR, b"", ""),
            ("var/.wh..wh..opq", FILE, b"", ""),
        ]);
        unpack(&tar[..], dir.path()).unwrap();
        let whiteout = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!dir.path().join("etc/.wh.passwd").exists());
        assert_eq!(
            xattr::get(dir.path().join("var"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn escaping_entries_are_refused() {
        for (name, tar) in [
            ("dot-dot", layer(&[("../escaped", FILE, b"x", "")])),
            ("absolute", layer(&[("/escaped", FILE, b"x", "")])),
            (
                "through a symlink",
                layer(&[
                    ("out", SYMLINK, b"", "../../outside"),
                    ("out/escaped", FILE, b"x", ""),
                ]),
            ),
            (
                "hard link outside",
                layer(&[("kept", HARDLINK, b"", "../../outside/kept")]),
            ),
            (
                "whiteout of the layer's parent",
                layer(&[(".wh...", FILE, b"", "")]),
            ),
            ("whiteout of the layer", layer(&[(".wh..", FILE, b"", "")])),
            ("empty whiteout", layer(&[("etc/.wh.", FILE, b"", "")])),
        ] {
            // The layer is unpacked two levels down in a sandbox that also holds a directory
            // `outside`: whatever escapes a broken check lands in the sandbox, where it is
            // seen, and never touches anything else on the machine.
            let sandbox = tempfile::tempdir().unwrap();
            let parent = sandbox.path().join("pod");
            let target = parent.join("layer");
            let outside = sandbox.path().join("outside");
            fs::create_dir_all(&target).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("kept"), b"kept").unwrap();
            let refused = unpack(&tar[..], &target).unwrap_err();
            assert!(
                matches!(refused, ManagerError::InvalidArgument(_)),
                "{name}: {refused:?}"
            );
            let names = |dir: &Path| -> Vec<String> {
                let mut names: Vec<String> = fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            };
            assert_eq!(names(sandbox.path()), ["outside", "pod"], "{name}");
            assert_eq!(names(&parent), ["layer"], "{name}");
            assert_eq!(names(&outside), ["kept"], "{name}");
            assert_eq!(
                fs::metadata(outside.join("kept")).unwrap().nlink(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn one_name_is_neither_empty_nor_a_dot_nor_a_path() {
        for name in ["a", "...", ".hidden", "a b"] {
            assert!(is_one_name(name), "{name}");
        }
        for name in ["", ".", "..", "a/b", "/a"] {
            assert!(!is_one_name(name), "{name}");
        }
    }

    #[test]
    fn compression_follows_the_media_type() {
        let tar = layer(&[("hello", FILE, b"hi", "")]);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gzip, &tar).unwrap();
        let gzip = gzip.finish().unwrap();
        let zstd = zstd::encode_all(&tar[..], 1).unwrap();
        for (media_type, blob) in [
            ("application/vnd.oci.image.layer.v1.tar", tar.clone()),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zstd),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let compression = Compression::from_media_type(media_type).unwrap();
            unpack(compression.decoder(&blob[..]).unwrap(), dir.path()).unwrap();
            assert_eq!(
                fs::read(dir.path().join("hello")).unwrap(),
                b"hi",
                "{media_type}"
            );
        }
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
    }
}
