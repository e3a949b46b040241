//! Whether a volume's host mount can propagate the way the container asks: mounts made on
//! the host reach a `HostToContainer` volume only if the host mount holding its source is
//! shared or a slave, and reach back from a `Bidirectional` one only if it is shared. runc
//! cannot change that from inside; crustd refuses what would silently not propagate, as
//! containerd does.

use std::path::{Path, PathBuf};

use crust_proto::cri::{Mount as CriMount, MountPropagation};

use crate::error::{ManagerError, Result};

/// One line of `/proc/self/mountinfo`: where it is mounted and its propagation tags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountInfo {
    mount_point: PathBuf,
    shared: bool,
    slave: bool,
}

/// The mounts of `mountinfo` (the kernel's format: optional fields between the fifth
/// field and `-`; mount points with `\040`-style escapes).
fn parse(mountinfo: &str) -> Vec<MountInfo> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let optional = fields.get(6..)?.iter().take_while(|f| **f != "-");
            let (mut shared, mut slave) = (false, false);
            for tag in optional {
                shared |= tag.starts_with("shared:");
                slave |= tag.starts_with("master:");
            }
            Some(MountInfo {
                mount_point: PathBuf::from(mount_point),
                shared,
                slave,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path`: the last mounted on the longest prefix of it (later lines
/// stack over earlier ones).
fn holding<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .and_then(|deepest| {
            mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == deepest.mount_point)
        })
}

fn check(mounts: &[MountInfo], volume: &CriMount, source: &Path) -> Result<()> {
    let propagation = MountPropagation::try_from(volume.propagation)
        .unwrap_or(MountPropagation::PropagationPrivate);
    let need = match propagation {
        MountPropagation::PropagationPrivate => return Ok(()),
        MountPropagation::PropagationHostToContainer => "shared or a slave",
        MountPropagation::PropagationBidirectional => "shared",
    };
    let Some(mount) = holding(mounts, source) else {
        return Err(ManagerError::FailedPrecondition(format!(
            "volume {}: no host mount holds {}",
            volume.container_path,
            source.display()
        )));
    };
    let ok = match propagation {
        MountPropagation::PropagationBidirectional => mount.shared,
        _ => mount.shared || mount.slave,
    };
    if !ok {
        return Err(ManagerError::FailedPrecondition(format!(
            "volume {} asks for {} propagation, but {} is on host mount {}, which is not {need} \
             (`mount --make-rshared {}` on the host would allow it)",
            volume.container_path,
            propagation.as_str_name(),
            source.display(),
            mount.mount_point.display(),
            mount.mount_point.display(),
        )));
    }
    Ok(())
}

/// Refuses a volume whose host mount cannot propagate as it asks. Sources are resolved
/// (links followed) as the kernel will when runc binds them; missing ones are checked at
/// the directory crustd will make them in.
pub fn check_propagation(volumes: &[CriMount]) -> Result<()> {
    let wanted: Vec<&CriMount> = volumes
        .iter()
        .filter(|v| v.propagation != MountPropagation::PropagationPrivate as i32)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ManagerError::io("read /proc/self/mountinfo", e))?;
    let mounts = parse(&info);
    for volume in wanted {
        let given = Path::new(&volume.host_path);
        let existing = given
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        let source = existing
            .canonicalize()
            .map_err(|e| ManagerError::io(format!("resolve {}", existing.display()), e))?;
        check(&mounts, volume, &source)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /srv rw shared:7 master:3 - tmpfs tmpfs rw
31 22 0:26 / /private rw - tmpfs tmpfs rw
32 31 0:27 / /private/slave rw master:9 - tmpfs tmpfs rw
33 22 0:28 / /with\\040space rw - tmpfs tmpfs rw
34 22 0:29 / /srv rw - tmpfs tmpfs rw
";

    fn volume(path: &str, propagation: MountPropagation) -> CriMount {
        CriMount {
            container_path: "/data".into(),
            host_path: path.into(),
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn mountinfo_lines_give_mount_points_and_propagation() {
        let mounts = parse(MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            mounts[1],
            MountInfo {
                mount_point: "/srv".into(),
                shared: true,
                slave: true
            }
        );
        assert_eq!(mounts[4].mount_point, Path::new("/with space"));
        assert!(!mounts[2].shared && !mounts[2].slave);
    }

    #[test]
    fn the_deepest_and_latest_mount_holds_a_path() {
        let mounts = parse(MOUNTINFO);
        let at = |p: &str| holding(&mounts, Path::new(p)).map(|m| m.mount_point.clone());
        assert_eq!(at("/private/slave/x"), Some("/private/slave".into()));
        assert_eq!(
            at("/privateer"),
            Some("/".into()),
            "a prefix is by component"
        );
        // /srv is mounted twice: the later, private one is what paths under it see.
        let srv = holding(&mounts, Path::new("/srv/a")).unwrap();
        assert!(!srv.shared && !srv.slave);
    }

    #[test]
    fn each_propagation_needs_its_host_mount() {
        use MountPropagation::*;
        let mounts = parse(MOUNTINFO);
        let verdict = |path: &str, p: MountPropagation| {
            check(&mounts, &volume(path, p), Path::new(path)).map_err(|e| e.to_string())
        };
        assert!(
            verdict("/home/x", PropagationBidirectional).is_ok(),
            "/ is shared"
        );
        assert!(verdict("/home/x", PropagationHostToContainer).is_ok());
        assert!(verdict("/private/slave/x", PropagationHostToContainer).is_ok());
        let refused = verdict("/private/slave/x", PropagationBidirectional).unwrap_err();
        assert!(
            refused.contains("not shared") && refused.contains("/private/slave"),
            "{refused}"
        );
        let refused = verdict("/private/x", PropagationHostToContainer).unwrap_err();
        assert!(refused.contains("shared or a slave"), "{refused}");
        assert!(verdict("/private/x", PropagationPrivate).is_ok());
    }
}
