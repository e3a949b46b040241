//! A real OCI registry (Debian's docker-registry) on 127.0.0.1 for one test, with the busybox
//! image pushed to it in the forms the tests pull: plain, gzip and zstd layers, Docker and OCI
//! media types, behind a manifest list, and (optionally) behind basic auth.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciImageIndex, OciImageManifest, OciManifest, Platform,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tempfile::TempDir;

use crate::command::wait_until;
use crate::image::{ImageParts, image_parts};

/// Basic-auth user of a registry started with [`Registry::start_with_auth`].
pub const USER: &str = "crust";
/// Its password.
pub const PASSWORD: &str = "s3cret";

/// How a pushed image's layer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerForm {
    /// Uncompressed, OCI media type.
    OciTar,
    /// gzip, Docker media types throughout.
    DockerGzip,
    /// zstd, OCI media type.
    OciZstd,
}

/// What [`Registry::push_layers`] pushed.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The manifest's digest.
    pub manifest: String,
    /// The layers' digests as stored (compressed), lowest first.
    pub layers: Vec<String>,
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    dir: TempDir,
    daemon: Child,
    auth: bool,
}

impl Registry {
    /// Starts an open registry.
    pub fn start() -> Self {
        Self::launch(false, None)
    }

    /// Starts an open registry on 127.0.0.1:`port` (for a crustd configured beforehand to
    /// reach that host over plain HTTP).
    pub fn start_on(port: u16) -> Self {
        Self::launch(false, Some(port))
    }

    /// Starts a registry that wants [`USER`] and [`PASSWORD`].
    pub fn start_with_auth() -> Self {
        Self::launch(true, None)
    }

    fn launch(auth: bool, port: Option<u16>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("crust-registry-")
            .tempdir()
            .expect("temp dir");
        let port = port.unwrap_or_else(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        });
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if auth {
            let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
            fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n"))
                .expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: crust-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).expect("write registry config");
        let log = fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let daemon = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt install docker-registry)");
        let registry = Registry {
            host,
            dir,
            daemon,
            auth,
        };
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(&registry.host).is_ok()
        });
        assert!(up, "registry did not come up:\n{}", registry.log());
        registry
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A full reference to `repository:tag` here.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.host)
    }

    fn client() -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    fn auth(&self) -> RegistryAuth {
        if self.auth {
            RegistryAuth::Basic(USER.into(), PASSWORD.into())
        } else {
            RegistryAuth::Anonymous
        }
    }

    /// Pushes the busybox image as `repository:tag` with its layer in `form` and `User` set to
    /// `user`; returns the manifest digest.
    pub async fn push(&self, repository: &str, tag: &str, form: LayerForm, user: &str) -> String {
        let parts = image_parts(user).expect("image parts");
        self.push_parts(repository, tag, form, parts).await
    }

    /// Pushes an image made of `parts` (a layer, any tar, and a config).
    pub async fn push_parts(
        &self,
        repository: &str,
        tag: &str,
        form: LayerForm,
        parts: ImageParts,
    ) -> String {
        let ImageParts { layer, config } = parts;
        self.push_layers(repository, tag, form, vec![layer], config)
            .await
            .manifest
    }

    /// Pushes an image of `layers` (uncompressed tars, lowest first, each stored in `form`)
    /// and `config` (whose `rootfs.diff_ids` must name the tars).
    pub async fn push_layers(
        &self,
        repository: &str,
        tag: &str,
        form: LayerForm,
        layers: Vec<Vec<u8>>,
        config: Vec<u8>,
    ) -> PushedImage {
        let (layer_type, config_type, manifest_type) = match form {
            LayerForm::OciTar => (
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
            ),
            LayerForm::DockerGzip => (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
            LayerForm::OciZstd => (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
            ),
        };
        let layers: Vec<ImageLayer> = layers
            .into_iter()
            .map(|layer| {
                let stored = match form {
                    LayerForm::OciTar => layer,
                    LayerForm::DockerGzip => {
                        let mut gzip =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        gzip.write_all(&layer).expect("gzip");
                        gzip.finish().expect("gzip")
                    }
                    LayerForm::OciZstd => zstd::encode_all(&layer[..], 3).expect("zstd"),
                };
                ImageLayer::new(stored, layer_type.to_string(), None)
            })
            .collect();
        let config = Config::new(config, config_type.to_string(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(manifest_type.to_string());
        let layer_digests = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        let reference: Reference = self.reference(repository, tag).parse().expect("reference");
        let client = Self::client();
        client
            .push(&reference, &layers, config, &self.auth(), Some(manifest))
            .await
            .expect("push image");
        let (_, digest) = client
            .pull_manifest(&reference, &self.auth())
            .await
            .expect("read back manifest");
        PushedImage {
            manifest: digest,
            layers: layer_digests,
        }
    }

    /// Pushes a manifest list as `repository:tag` over `entries` (manifest digest and the
    /// architecture it is for, all linux, all in `repository`); returns the list's digest.
    pub async fn push_list(&self, repository: &str, tag: &str, entries: &[(&str, &str)]) -> String {
        let client = Self::client();
        let mut manifests = Vec::new();
        for (digest, architecture) in entries {
            let image: Reference = format!("{}/{repository}@{digest}", self.host)
                .parse()
                .expect("reference");
            let (manifest, _) = client
                .pull_manifest_raw(
                    &image,
                    &self.auth(),
                    &[
                        "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                    ],
                )
                .await
                .expect("read manifest");
            let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
                .ok()
                .and_then(|m| m["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
            manifests.push(ImageIndexEntry {
                media_type,
                digest: digest.to_string(),
                size: manifest.len() as i64,
                platform: Some(Platform {
                    architecture: (*architecture).into(),
                    os: "linux".into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            });
        }
        let list = OciImageIndex {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        let reference: Reference = self.reference(repository, tag).parse().expect("reference");
        client
            .push_manifest(&reference, &OciManifest::ImageIndex(list))
            .await
            .expect("push manifest list");
        client
            .fetch_manifest_digest(&reference, &self.auth())
            .await
            .expect("manifest list digest")
    }

    /// How many times the registry served blob `digest` (from its access log).
    pub fn blob_downloads(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("\"GET ") && line.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// Where the registry keeps its blobs, for tests that tamper with one.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.daemon.id() as i32), Signal::SIGKILL);
        let _ = self.daemon.wait();
    }
}
