//! Which user a container's process runs as: kubelet's run_as_user / run_as_username /
//! run_as_group, else the image's `User`, looked up in the image's own `/etc/passwd` and
//! `/etc/group` (read from its unpacked layers, topmost first, as the container will see them).
//! Supplementary groups follow kubelet's `SupplementalGroupsPolicy`.

use std::fs;
use std::path::{Path, PathBuf};

use crust_proto::cri::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};

use crate::error::{ManagerError, Result};
use crate::images::unpack::OPAQUE_XATTR;

/// uid, gid and supplementary groups of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// A file as the container sees it through overlayfs, read from the unpacked layers: from
/// the topmost layer that has it, unless a layer above deleted it (a 0/0 character device, the
/// whiteout the unpacker makes) or made a directory on its path opaque.
fn image_file(layers_top_first: &[PathBuf], relative: &str) -> Option<String> {
    let path = Path::new(relative);
    for layer in layers_top_first {
        // Never follow a link out of the layer: these files are read on the host.
        let candidate = layer.join(path);
        if let Ok(meta) = fs::symlink_metadata(&candidate) {
            if !meta.is_file() {
                // A whiteout, a directory or a link: the container sees no such file here.
                return None;
            }
            return fs::read_to_string(candidate).ok();
        }
        let hides_lower = path
            .ancestors()
            .skip(1)
            .filter(|dir| !dir.as_os_str().is_empty())
            .any(|dir| is_opaque(&layer.join(dir)));
        if hides_lower {
            return None;
        }
    }
    None
}

fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, OPAQUE_XATTR)
        .ok()
        .flatten()
        .is_some_and(|value| value == b"y")
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd(layers: &[PathBuf]) -> Vec<PasswdEntry> {
    image_file(layers, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: fields.first()?.to_string(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// (name, gid, members) of every group.
fn groups(layers: &[PathBuf]) -> Vec<(String, u32, Vec<String>)> {
    image_file(layers, "etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some((
                fields.first()?.to_string(),
                fields.get(2)?.parse().ok()?,
                members,
            ))
        })
        .collect()
}

/// Resolves the user for `security` and the image's `image_user`, with the image's layers
/// (unpacked `fs` directories) topmost first.
pub fn resolve(
    security: &LinuxContainerSecurityContext,
    image_user: &str,
    layers_top_first: &[PathBuf],
) -> Result<ResolvedUser> {
    if security.run_as_group.is_some()
        && security.run_as_user.is_none()
        && security.run_as_username.is_empty()
    {
        // The group would apply to whatever user the image names, which the pod's author
        // did not choose: containerd refuses this too.
        return Err(ManagerError::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    let users = passwd(layers_top_first);
    let (uid, mut gid, name) = if let Some(uid) = &security.run_as_user {
        let uid = u32::try_from(uid.value)
            .map_err(|_| ManagerError::InvalidArgument(format!("run_as_user {}", uid.value)))?;
        let entry = users.iter().find(|u| u.uid == uid);
        (
            uid,
            entry.map_or(0, |u| u.gid),
            entry.map(|u| u.name.clone()),
        )
    } else if !security.run_as_username.is_empty() {
        let entry = users
            .iter()
            .find(|u| u.name == security.run_as_username)
            .ok_or_else(|| {
                ManagerError::InvalidArgument(format!(
                    "user {:?} is not in the image's /etc/passwd",
                    security.run_as_username
                ))
            })?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    } else {
        image_user_ids(image_user, &users, layers_top_first)?
    };
    if let Some(group) = &security.run_as_group {
        gid = u32::try_from(group.value)
            .map_err(|_| ManagerError::InvalidArgument(format!("run_as_group {}", group.value)))?;
    }
    let strict = security.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32;
    // Merge (the default): the image's groups of the user, then kubelet's. Strict: kubelet's
    // only, whatever the image's /etc/group says.
    let mut additional_gids: Vec<u32> = match &name {
        Some(name) if !strict => groups(layers_top_first)
            .into_iter()
            .filter(|(_, _, members)| members.contains(name))
            .map(|(_, gid, _)| gid)
            .collect(),
        _ => Vec::new(),
    };
    for extra in &security.supplemental_groups {
        let extra = u32::try_from(*extra)
            .map_err(|_| ManagerError::InvalidArgument(format!("supplemental group {extra}")))?;
        if !additional_gids.contains(&extra) {
            additional_gids.push(extra);
        }
    }
    // The primary group is also a supplementary one, first, as containerd has it since
    // CVE-2023-25173: otherwise a file whose group is denied access (negative group
    // permissions) could be reached by dropping to the primary group alone.
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The image's `User`: `""`, `uid`, `name`, `uid:gid`, `name:group` and mixtures.
fn image_user_ids(
    image_user: &str,
    users: &[PasswdEntry],
    layers: &[PathBuf],
) -> Result<(u32, u32, Option<String>)> {
    if image_user.is_empty() {
        return Ok((0, 0, Some("root".into())));
    }
    let (user, group) = match image_user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (image_user, None),
    };
    let (uid, mut gid, name) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = users.iter().find(|u| u.uid == uid);
            (
                uid,
                entry.map_or(0, |u| u.gid),
                entry.map(|u| u.name.clone()),
            )
        }
        Err(_) => {
            let entry = users.iter().find(|u| u.name == user).ok_or_else(|| {
                ManagerError::InvalidArgument(format!(
                    "image user {user:?} is not in the image's /etc/passwd"
                ))
            })?;
            (entry.uid, entry.gid, Some(entry.name.clone()))
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups(layers)
                .into_iter()
                .find(|(g, _, _)| g == group)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    ManagerError::InvalidArgument(format!(
                        "image group {group:?} is not in the image's /etc/group"
                    ))
                })?,
        };
    }
    Ok((uid, gid, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_proto::cri::Int64Value;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(
            upper.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/home/web:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            lower.join("etc/group"),
            "root:x:0:\nweb:x:1001:\nextra:x:2000:web\n",
        )
        .unwrap();
        (dir, vec![upper, lower])
    }

    #[test]
    fn image_user_by_name_and_group_from_the_topmost_layer() {
        let (_dir, layers) = layers();
        let security = LinuxContainerSecurityContext::default();
        let user = resolve(&security, "web", &layers).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1001));
        assert_eq!(
            user.additional_gids,
            vec![1001, 2000],
            "the primary group first"
        );
        let user = resolve(&security, "web:root", &layers).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 0));
        let user = resolve(&security, "", &layers).unwrap();
        assert_eq!((user.uid, user.gid), (0, 0));
        // A numeric user takes its group and supplementary groups from its passwd entry.
        let user = resolve(&security, "1000", &layers).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.additional_gids),
            (1000, 1001, vec![1001, 2000])
        );
        // A uid with no entry has group 0 and no other supplementary groups.
        let user = resolve(&security, "4242", &layers).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.additional_gids),
            (4242, 0, vec![0])
        );
        assert!(matches!(
            resolve(&security, "nobody", &layers),
            Err(ManagerError::InvalidArgument(why)) if why.contains("nobody")
        ));
    }

    #[test]
    fn kubelets_settings_override_the_image() {
        let (_dir, layers) = layers();
        let security = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            run_as_group: Some(Int64Value { value: 7 }),
            supplemental_groups: vec![9],
            ..Default::default()
        };
        let user = resolve(&security, "root", &layers).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 7));
        assert_eq!(user.additional_gids, vec![7, 2000, 9]);
        let by_name = LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            ..Default::default()
        };
        assert_eq!(resolve(&by_name, "", &layers).unwrap().uid, 1000);
    }

    #[test]
    fn a_group_without_a_user_is_refused() {
        let (_dir, layers) = layers();
        let security = LinuxContainerSecurityContext {
            run_as_group: Some(Int64Value { value: 7 }),
            ..Default::default()
        };
        let refused = resolve(&security, "web", &layers);
        assert!(
            matches!(&refused, Err(ManagerError::InvalidArgument(why)) if why.contains("run_as_group")),
            "{refused:?}"
        );
        let with_name = LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            ..security
        };
        assert_eq!(resolve(&with_name, "", &layers).unwrap().gid, 7);
    }

    #[test]
    fn strict_supplemental_groups_leave_out_the_images_groups() {
        let (_dir, layers) = layers();
        let merge = LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            supplemental_groups: vec![9, 2000],
            ..Default::default()
        };
        assert_eq!(
            resolve(&merge, "", &layers).unwrap().additional_gids,
            vec![1001, 2000, 9],
            "a group kubelet gives that is also the image's is listed once"
        );
        let strict = LinuxContainerSecurityContext {
            supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
            supplemental_groups: vec![9],
            ..merge
        };
        let user = resolve(&strict, "", &layers).unwrap();
        assert_eq!((user.gid, user.additional_gids), (1001, vec![1001, 9]));
    }

    /// A layer as the unpacker leaves it: `entries` (path, content; a path ending in `/` is
    /// a directory) made into a tar and unpacked.
    fn unpacked(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
            } else {
                header.set_mode(0o644);
            }
            header.set_size(content.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        let layer = dir.join(name);
        fs::create_dir_all(&layer).unwrap();
        crate::images::unpack::unpack(&builder.into_inner().unwrap()[..], &layer).unwrap();
        layer
    }

    #[test]
    fn a_passwd_deleted_in_an_upper_layer_is_not_read_from_a_lower_one() {
        let (dir, mut layers) = layers();
        let top = unpacked(dir.path(), "top", &[("etc/", ""), ("etc/.wh.passwd", "")]);
        layers.insert(0, top);
        let security = LinuxContainerSecurityContext::default();
        let refused = resolve(&security, "web", &layers);
        assert!(
            matches!(&refused, Err(ManagerError::InvalidArgument(why)) if why.contains("passwd")),
            "{refused:?}"
        );
        // The group file, not deleted, still comes from below.
        let user = resolve(&security, "0:web", &layers).unwrap();
        assert_eq!((user.uid, user.gid), (0, 1001));
    }

    #[test]
    fn an_opaque_etc_hides_every_lower_file_and_shows_its_own() {
        let (dir, mut layers) = layers();
        let top = unpacked(
            dir.path(),
            "top",
            &[
                ("etc/", ""),
                ("etc/.wh..wh..opq", ""),
                ("etc/passwd", "app:x:500:500::/:/bin/sh\n"),
            ],
        );
        layers.insert(0, top);
        let security = LinuxContainerSecurityContext::default();
        let user = resolve(&security, "app", &layers).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.additional_gids.len()),
            (500, 500, 1)
        );
        // /etc/group of the lower layers is hidden: a group by name is unknown.
        let refused = resolve(&security, "app:web", &layers);
        assert!(
            matches!(&refused, Err(ManagerError::InvalidArgument(why)) if why.contains("group")),
            "{refused:?}"
        );
    }
}
