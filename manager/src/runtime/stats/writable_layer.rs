//! How much a container's writable layer (its overlay upper dir) holds: bytes on disk and
//! inodes, as `du` counts them. The tree is walked without following symbolic links and
//! without leaving its file system; a walk is cached briefly per container, so kubelet's
//! ListContainerStats and ListPodSandboxStats of one round walk each tree once.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::super::lock;

/// How long a walk's result is reused.
const TTL: Duration = Duration::from_secs(5);
/// How many results are cached at most; a full cache drops what has expired, then all.
const MAX_CACHED: usize = 16_384;

/// A writable layer's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    /// Bytes allocated on disk (512-byte blocks), each inode once.
    pub bytes: u64,
    /// Inodes, the top directory included, each once.
    pub inodes: u64,
}

/// Walks the tree at `top`. Symbolic links count as themselves, never as what they point to;
/// directories on another file system (a mount below) count but are not entered; hard links
/// count once.
pub fn walk(top: &Path) -> io::Result<LayerUsage> {
    let root = fs::symlink_metadata(top)?;
    let device = root.dev();
    let mut usage = LayerUsage {
        bytes: root.blocks() * 512,
        inodes: 1,
    };
    if !root.is_dir() {
        return Ok(usage);
    }
    // Inodes with more than one link, so each is counted once; plain files need no entry.
    let mut linked = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed while walked (the container writes as we read): not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            // DirEntry::metadata is lstat: a link is not followed.
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() && metadata.nlink() > 1 && !linked.insert(metadata.ino()) {
                continue;
            }
            usage.inodes += 1;
            usage.bytes += metadata.blocks() * 512;
            if metadata.is_dir() && metadata.dev() == device {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Recent walks per container id.
#[derive(Debug, Default)]
pub struct LayerCache(Mutex<HashMap<String, (Instant, LayerUsage)>>);

impl LayerCache {
    /// Container `id`'s layer at `upper`: a recent walk's result, or a new walk (blocking).
    pub fn usage(&self, id: &str, upper: &Path) -> io::Result<LayerUsage> {
        if let Some((at, usage)) = lock(&self.0).get(id)
            && at.elapsed() < TTL
        {
            return Ok(*usage);
        }
        let usage = walk(upper)?;
        let mut cache = lock(&self.0);
        if cache.len() >= MAX_CACHED && !cache.contains_key(id) {
            cache.retain(|_, (at, _)| at.elapsed() < TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(id.to_string(), (Instant::now(), usage));
        Ok(usage)
    }

    /// Drops `id`'s result (it was removed).
    pub fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn blocks(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_tree_counts_its_own_files_and_never_what_links_point_to() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        fs::create_dir(outside.path().join("dir")).unwrap();
        fs::write(outside.path().join("dir/more"), vec![1u8; 1 << 20]).unwrap();

        let top = tempfile::tempdir().unwrap();
        let top = top.path();
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::write(top.join("a/b/file"), vec![7u8; 100_000]).unwrap();
        fs::write(top.join("small"), b"x").unwrap();
        fs::hard_link(top.join("small"), top.join("small-again")).unwrap();
        symlink(outside.path().join("big"), top.join("to-big")).unwrap();
        symlink(outside.path().join("dir"), top.join("a/to-dir")).unwrap();
        symlink("/", top.join("to-root")).unwrap();
        symlink("loop", top.join("loop")).unwrap();

        let usage = walk(top).unwrap();
        // top, a, a/b, a/b/file, small (twice linked, once counted), 4 links.
        assert_eq!(usage.inodes, 9);
        let expected: u64 = [
            top.to_path_buf(),
            top.join("a"),
            top.join("a/b"),
            top.join("a/b/file"),
            top.join("small"),
            top.join("to-big"),
            top.join("a/to-dir"),
            top.join("to-root"),
            top.join("loop"),
        ]
        .iter()
        .map(|p| blocks(p))
        .sum();
        assert_eq!(usage.bytes, expected);
        assert!(usage.bytes >= 100_000, "{usage:?}");
        assert!(usage.bytes < 1 << 20, "a link was followed: {usage:?}");
    }

    #[test]
    fn a_missing_tree_is_an_error_and_a_file_is_one_inode() {
        let top = tempfile::tempdir().unwrap();
        assert!(walk(&top.path().join("nothing")).is_err());
        fs::write(top.path().join("f"), b"x").unwrap();
        assert_eq!(walk(&top.path().join("f")).unwrap().inodes, 1);
    }

    #[test]
    fn walks_are_cached_briefly_and_forgotten() {
        let top = tempfile::tempdir().unwrap();
        let cache = LayerCache::default();
        let before = cache.usage("c", top.path()).unwrap();
        fs::write(top.path().join("new"), vec![1u8; 64 << 10]).unwrap();
        assert_eq!(cache.usage("c", top.path()).unwrap(), before, "cached");
        cache.forget("c");
        let after = cache.usage("c", top.path()).unwrap();
        assert_eq!(after.inodes, before.inodes + 1);
        assert!(after.bytes > before.bytes);
    }
}
