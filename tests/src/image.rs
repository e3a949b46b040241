//! A busybox image made from Debian's busybox-static: as an unpacked rootfs for bundles, and
//! as an OCI image-layout archive that `ctr images import` takes.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The name the image is imported under.
pub const IMAGE_REF: &str = "docker.io/library/busybox:latest";
/// The statically linked busybox from the busybox-static package.
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// Applets linked into `/bin`.
const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "sleep",
    "ls",
    "true",
    "false",
    "yes",
    "head",
    "dd",
    "kill",
    "ps",
    "wc",
    "env",
    "id",
    "hostname",
    "grep",
    "sed",
    "tr",
    "printf",
    "test",
    "trap",
    "mkdir",
    "touch",
    "seq",
    "od",
    "tail",
    "stty",
    "stat",
    "cut",
    "mount",
    "umount",
    "chmod",
    "nc",
    "netstat",
    "sha256sum",
];
const DIRECTORIES: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sys", 0o555),
    ("tmp", 0o1777),
];
/// `app` (1000:1000) is also a member of `staff` (2000): the image's own supplementary group.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n\
                      app:x:1000:1000:app:/:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nstaff:x:2000:app\n";

/// Writes an unpacked busybox rootfs into `dir`.
pub fn write_rootfs(dir: &Path) -> io::Result<()> {
    for (name, mode) in DIRECTORIES {
        let path = dir.join(name);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet))?;
    }
    fs::write(dir.join("etc/passwd"), PASSWD)?;
    fs::write(dir.join("etc/group"), GROUP)?;
    Ok(())
}

/// The busybox entries appended to `layer` (left open for more).
fn busybox_entries(layer: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
    for (name, mode) in DIRECTORIES {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        layer.append_data(&mut header, format!("{name}/"), io::empty())?;
    }
    let busybox = fs::read(BUSYBOX)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(busybox.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    layer.append_data(&mut header, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        layer.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    for (name, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(text.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        layer.append_data(&mut header, name, text.as_bytes())?;
    }
    Ok(())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The image's one layer (an uncompressed tar) and its config document.
#[derive(Debug, Clone)]
pub struct ImageParts {
    /// The layer, uncompressed.
    pub layer: Vec<u8>,
    /// The image config (JSON).
    pub config: Vec<u8>,
}

/// Builds the image's layer and config; `user` goes into the config's `User`.
pub fn image_parts(user: &str) -> io::Result<ImageParts> {
    image_parts_with_volume(user, None)
}

/// As [`image_parts`], with `volume` = (directory, file name, content): the directory declared
/// in the config's `Volumes` and the file in it in the layer.
pub fn image_parts_with_volume(
    user: &str,
    volume: Option<(&str, &str, &str)>,
) -> io::Result<ImageParts> {
    let mut layer = tar::Builder::new(Vec::new());
    busybox_entries(&mut layer)?;
    let mut volumes = serde_json::Map::new();
    if let Some((dir, name, content)) = volume {
        let dir = dir.trim_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        layer.append_data(&mut header, format!("{dir}/"), io::empty())?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        layer.append_data(&mut header, format!("{dir}/{name}"), content.as_bytes())?;
        volumes.insert(format!("/{dir}"), serde_json::json!({}));
    }
    let layer = layer.into_inner()?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "User": user, "Volumes": volumes},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string()
    .into_bytes();
    Ok(ImageParts { layer, config })
}

/// Writes the image as an OCI image-layout tar at `path`.
pub fn write_oci_archive(path: &Path) -> io::Result<()> {
    let ImageParts { layer, config } = image_parts("")?;
    let layer_digest = sha256(&layer);
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": IMAGE_REF,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    })
    .to_string()
    .into_bytes();

    let mut archive = tar::Builder::new(fs::File::create(path)?);
    let mut add = |name: String, bytes: &[u8]| -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        archive.append_data(&mut header, name, bytes)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &index)?;
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        add(format!("blobs/sha256/{hex}"), bytes)?;
    }
    archive.into_inner()?.sync_all()
}
