//! A pod's network namespace, pinned by a bind mount so that it exists before the infra
//! process (which joins it by path) and outlives it until the plugins have detached from it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::invoke::is_network_namespace;

/// Makes a new network namespace pinned at `path` (a file created for it). Blocking.
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let target = path.to_path_buf();
    // unshare moves the calling thread: a thread of its own, which ends right after, so no
    // worker of crustd's runtime ever changes namespace.
    let pinned = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?;
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Connects to `port` on the loopback of the namespace pinned at `path` (the host's own
/// with `None`), IPv4 first, then IPv6, as `localhost` resolves. The socket is made by a
/// thread of its own that joins the namespace and ends right after: a socket stays in the
/// namespace it was made in, and no worker of crustd's runtime ever changes namespace.
/// Blocking.
pub fn connect_loopback(path: Option<&Path>, port: u16, limit: Duration) -> io::Result<TcpStream> {
    let namespace = path.map(std::fs::File::open).transpose()?;
    std::thread::Builder::new()
        .name("netns-connect".into())
        .spawn(move || -> io::Result<TcpStream> {
            if let Some(namespace) = &namespace {
                setns(namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            }
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v4, limit).or_else(|first| {
                let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                TcpStream::connect_timeout(&v6, limit).map_err(|_| first)
            })
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}

/// Whether a pinned namespace is at `path` (plugins are told "" when not, so DEL still
/// releases addresses).
pub fn exists(path: &Path) -> bool {
    is_network_namespace(path)
}

/// Unpins and removes it; idempotent.
pub fn remove(path: &Path) -> io::Result<()> {
    // More than one mount can stack there if a create was cut short and retried.
    while exists(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_pinned_and_removed() {
        // Runs as root, as every test of crustd that touches the host does.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns").join("pod");
        create(&path).unwrap();
        assert!(exists(&path));
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let pinned = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(own.ino(), pinned.ino(), "a new namespace, not crustd's");
        remove(&path).unwrap();
        assert!(!exists(&path));
        assert!(!path.exists());
        remove(&path).unwrap();
        // A file left by a cut-short create (no mount on it) is removed too.
        std::fs::write(&path, b"").unwrap();
        assert!(!exists(&path));
        remove(&path).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_connection_is_made_inside_the_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let limit = Duration::from_secs(2);
        let on_host = connect_loopback(None, port, limit).unwrap();
        assert_eq!(on_host.peer_addr().unwrap(), listener.local_addr().unwrap());
        // The host's listener is not in a fresh namespace (whose loopback is not even up).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod");
        create(&path).unwrap();
        let inside = connect_loopback(Some(&path), port, limit);
        remove(&path).unwrap();
        assert!(inside.is_err(), "{inside:?}");
        assert!(connect_loopback(Some(&dir.path().join("none")), port, limit).is_err());
    }
}
