//! Images: pulled from registries (registry v2 API through `oci-client`: token and basic auth,
//! manifest lists resolved to this platform, every digest verified), each layer downloaded and
//! unpacked once, and recorded on disk.

mod clients;
pub mod store;
pub mod unpack;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::io::Read;

use crate::config::{Config, split_endpoint};
use crate::error::{ManagerError, Result};
use store::{ImageRecord, ImageStore, Lookup, RunConfig};
use unpack::Compression;

/// Marks a layer directory whose unpacking finished.
const UNPACKED_MARKER: &str = "unpacked";

/// Credentials for one pull, from CRI's `AuthConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name (with `password`), or empty.
    pub username: String,
    /// Password.
    pub password: String,
    /// `base64(username:password)`, Docker's `auth` field.
    pub auth: String,
    /// A bearer token for the registry.
    pub registry_token: String,
    /// An identity token.
    pub identity_token: String,
}

impl Credentials {
    fn registry_auth(&self) -> Result<RegistryAuth> {
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let decoded = decode_base64(&self.auth).ok_or_else(|| {
                ManagerError::InvalidArgument("auth is not base64 of user:password".into())
            })?;
            let (user, password) = decoded.split_once(':').ok_or_else(|| {
                ManagerError::InvalidArgument("auth does not hold user:password".into())
            })?;
            return Ok(RegistryAuth::Basic(user.into(), password.into()));
        }
        for token in [&self.registry_token, &self.identity_token] {
            if !token.is_empty() {
                return Ok(RegistryAuth::Bearer(token.clone()));
            }
        }
        Ok(RegistryAuth::Anonymous)
    }
}

fn decode_base64(text: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The image side of crustd.
pub struct Images {
    store: ImageStore,
    mirrors: HashMap<String, Vec<String>>,
    scratch: PathBuf,
    progress_timeout: Option<Duration>,
    max_concurrent_downloads: usize,
    /// One lock per layer digest: concurrent pulls sharing a layer download it once.
    layer_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    clients: clients::Clients,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("store", &self.store)
            .finish()
    }
}

/// Parses an image reference as CRI clients send it (`busybox`, `host:5000/x/y:tag`,
/// `…@sha256:…`), normalized to a full one.
pub fn parse_reference(image: &str) -> Result<Reference> {
    Reference::from_str(image)
        .map_err(|e| ManagerError::InvalidArgument(format!("image reference {image:?}: {e}")))
}

/// How a request's image string is looked up: an id, or a reference.
pub fn lookup_of(image: &str) -> Result<Lookup> {
    if image.is_empty() {
        return Err(ManagerError::InvalidArgument("no image given".into()));
    }
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(hex) = image.strip_prefix("sha256:")
        && is_hex(hex)
    {
        return Ok(Lookup::Id(image.to_string()));
    }
    if is_hex(image) {
        return Ok(Lookup::Id(format!("sha256:{image}")));
    }
    Ok(Lookup::Reference(full_name(&parse_reference(image)?)))
}

/// The reference as recorded: registry as written (`docker.io`), repository, tag or digest.
fn full_name(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (_, Some(digest)) => format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        ),
        (Some(tag), None) => format!("{}/{}:{tag}", reference.registry(), reference.repository()),
        (None, None) => format!("{}/{}:latest", reference.registry(), reference.repository()),
    }
}

impl Images {
    /// Opens the store under the configured root and prepares the registry client.
    /// `held` are the layers existing containers run on.
    pub fn new(config: &Config, held: &[String]) -> Result<Self> {
        let store = ImageStore::open(&config.root_dir, held)?;
        let scratch = config.root_dir.join("tmp");
        // Leftovers of downloads cut short by a crash.
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)
            .map_err(|e| ManagerError::io(format!("create {}", scratch.display()), e))?;
        let mut plain_http = config.registry.plain_http.clone();
        for endpoints in config.registry.mirrors.values() {
            for endpoint in endpoints {
                if let Some((true, host)) = split_endpoint(endpoint) {
                    plain_http.push(host.to_string());
                }
            }
        }
        let mirrors = config
            .registry
            .mirrors
            .iter()
            .map(|(host, endpoints)| {
                let hosts = endpoints
                    .iter()
                    .filter_map(|e| split_endpoint(e).map(|(_, host)| host.to_string()))
                    .collect();
                (host.clone(), hosts)
            })
            .collect();
        Ok(Self {
            store,
            mirrors,
            scratch,
            progress_timeout: config.pull_progress_timeout(),
            max_concurrent_downloads: config.max_concurrent_downloads,
            layer_locks: std::sync::Mutex::new(HashMap::new()),
            clients: clients::Clients::new(plain_http, config.max_concurrent_downloads),
        })
    }

    /// The image `image` names, if crustd has it.
    pub fn status(&self, image: &str) -> Result<Option<ImageRecord>> {
        Ok(self.store.find(&lookup_of(image)?))
    }

    /// The unpacked directories of `record`'s layers, topmost first (overlay's lowerdir order).
    pub fn layer_dirs_top_first(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .rev()
            .map(|layer| self.layer_fs(layer))
            .collect()
    }

    /// The unpacked directory of layer `digest`.
    pub fn layer_fs(&self, digest: &str) -> PathBuf {
        self.store.layer_dir(digest).join("fs")
    }

    /// Keeps `layers` on disk while a container uses them.
    pub fn hold(&self, layers: &[String]) {
        self.store.hold(layers);
    }

    /// A container no longer uses `layers`.
    pub fn release(&self, layers: &[String]) {
        self.store.release(layers);
    }

    /// Every image.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.store.list()
    }

    /// Removes the image `image` names; removing one that is not there succeeds, as CRI asks.
    pub fn remove(&self, image: &str) -> Result<()> {
        match self.store.find(&lookup_of(image)?) {
            Some(record) => self.store.remove(&record.id),
            None => Ok(()),
        }
    }

    /// Bytes and inodes used by unpacked layers, and the directory they are in.
    pub fn usage(&self) -> Result<(u64, u64, PathBuf)> {
        let root = self.store.layers_root().to_path_buf();
        let (bytes, inodes) = disk_usage(&root)?;
        Ok((bytes, inodes, root))
    }

    /// Pulls `image` with `credentials`; returns the image id.
    pub async fn pull(&self, image: &str, credentials: &Credentials) -> Result<String> {
        let reference = parse_reference(image)?;
        let auth = credentials.registry_auth()?;
        let client = self.clients.for_auth(&auth).await;
        let mut failures = Vec::new();
        for source in self.sources(&reference) {
            match self.pull_from(&client, &reference, &source, &auth).await {
                Ok(id) => return Ok(id),
                Err(error) => {
                    log::warn!("pull {image} from {}: {error}", source.registry());
                    failures.push(error);
                }
            }
        }
        // The last source is the registry itself: its answer is the one the caller needs.
        Err(failures
            .pop()
            .unwrap_or_else(|| ManagerError::Registry(format!("no registry to pull {image} from"))))
    }

    /// The mirrors configured for the reference's registry, then the registry itself.
    fn sources(&self, reference: &Reference) -> Vec<Reference> {
        let mut sources: Vec<Reference> = self
            .mirrors
            .get(reference.registry())
            .into_iter()
            .flatten()
            .map(|mirror| with_registry(reference, mirror))
            .collect();
        sources.push(reference.clone());
        sources
    }

    async fn pull_from(
        &self,
        client: &Client,
        reference: &Reference,
        source: &Reference,
        auth: &RegistryAuth,
    ) -> Result<String> {
        let (manifest, manifest_digest, list_digest) = client
            .pull_image_manifest_and_list_digest(source, auth)
            .await
            .map_err(|e| registry_error(source, e))?;
        let id = manifest.config.digest.clone();
        for layer in &manifest.layers {
            if Compression::from_media_type(&layer.media_type).is_none() {
                return Err(ManagerError::Registry(format!(
                    "layer {} has media type {:?}, which is not an image layer",
                    layer.digest, layer.media_type
                )));
            }
        }
        let layer_digests: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        // Held until the record names the layers, so no removal takes them meanwhile.
        let _pins = self.store.pin(&layer_digests);
        let config = match self.already_here(&id, &layer_digests) {
            Some(config) => config,
            None => {
                let config_json = fetch_config(client, source, &manifest.config).await?;
                let config = RunConfig::from_image_config(&config_json)?;
                let diff_ids = diff_ids(&config_json)?;
                if diff_ids.len() != manifest.layers.len() {
                    return Err(ManagerError::Registry(format!(
                        "image config lists {} layers, its manifest {}",
                        diff_ids.len(),
                        manifest.layers.len()
                    )));
                }
                self.fetch_layers(client, source, &manifest.layers, &diff_ids)
                    .await?;
                config
            }
        };
        crate::crash_point!("pull-before-record");
        let mut repo_tags = Vec::new();
        if reference.digest().is_none() {
            repo_tags.push(full_name(reference));
        }
        let pinned = list_digest.unwrap_or(manifest_digest);
        let repo_digests = vec![format!(
            "{}/{}@{pinned}",
            reference.registry(),
            reference.repository()
        )];
        let size = manifest.config.size.max(0) as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        self.store.insert(ImageRecord {
            id: id.clone(),
            repo_tags,
            repo_digests,
            size,
            layers: layer_digests.clone(),
            config,
        })?;
        Ok(id)
    }

    /// The run config of image `id` when it is recorded with exactly `layers`, all unpacked: a
    /// pull of an image already here needs neither its config nor its layers again. The id is
    /// the config's digest, so the recorded config is the one the registry would send.
    fn already_here(&self, id: &str, layers: &[String]) -> Option<RunConfig> {
        let record = self.store.find(&Lookup::Id(id.to_string()))?;
        let complete = record.layers == layers
            && layers
                .iter()
                .all(|layer| self.store.layer_dir(layer).join(UNPACKED_MARKER).exists());
        complete.then_some(record.config)
    }

    /// Downloads and unpacks the layers not yet here, at most `max_concurrent_downloads` at a
    /// time.
    async fn fetch_layers(
        &self,
        client: &Client,
        source: &Reference,
        layers: &[OciDescriptor],
        diff_ids: &[String],
    ) -> Result<()> {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.max_concurrent_downloads));
        let fetches = layers.iter().zip(diff_ids).map(|(layer, diff_id)| {
            let limit = Arc::clone(&limit);
            async move {
                let _permit = limit
                    .acquire()
                    .await
                    .map_err(|_| ManagerError::Registry("download limiter closed".into()))?;
                self.fetch_layer(client, source, layer, diff_id).await
            }
        });
        for result in futures_util::future::join_all(fetches).await {
            result?;
        }
        Ok(())
    }

    /// Downloads layer `layer` and unpacks it as its bytes arrive: the compressed blob is never
    /// stored. The layer is committed (moved into the store) only when the registry's bytes
    /// match the layer digest and the unpacked tar matches `diff_id`.
    async fn fetch_layer(
        &self,
        client: &Client,
        source: &Reference,
        layer: &OciDescriptor,
        diff_id: &str,
    ) -> Result<()> {
        let lock = {
            let mut locks = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(layer.digest.clone()).or_default())
        };
        let _held = lock.lock().await;
        let dir = self.store.layer_dir(&layer.digest);
        if dir.join(UNPACKED_MARKER).exists() {
            return Ok(());
        }
        let compression =
            Compression::from_media_type(&layer.media_type).unwrap_or(Compression::None);
        let staging = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&self.scratch)
            .map_err(|e| ManagerError::io("create an unpack directory", e))?;
        let staged = staging.path().to_path_buf();
        let (chunks, received) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let diff_id = diff_id.to_string();
        let unpacking = tokio::task::spawn_blocking(move || {
            unpack_into(ChunkReader::new(received), compression, &staged, &diff_id)
        });
        let downloaded = self.download(client, source, layer, chunks).await;
        let unpacked = unpacking
            .await
            .map_err(|e| ManagerError::io("unpack task", std::io::Error::other(e)))?;
        // The download's own failure explains an unpack that saw its stream cut.
        match downloaded? {
            Download::Complete => unpacked?,
            Download::UnpackerStopped => {
                unpacked?;
                return Err(ManagerError::Registry(format!(
                    "layer {} stopped unpacking before its end",
                    layer.digest
                )));
            }
        }
        crate::crash_point!("pull-after-download");
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &dir) {
            let _ = fs::remove_dir_all(&staged);
            return Err(ManagerError::io(
                format!("move layer to {}", dir.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Streams one blob to `chunks`, digest-checked by the client: a stream whose bytes do
    /// not match ends with an error, which reaches the unpacker too. A download that receives
    /// nothing for the progress timeout is abandoned.
    async fn download(
        &self,
        client: &Client,
        source: &Reference,
        layer: &OciDescriptor,
        chunks: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    ) -> Result<Download> {
        use futures_util::StreamExt;
        let mut blob = client
            .pull_blob_stream(source, layer)
            .await
            .map_err(|e| registry_error(source, e))?;
        loop {
            let next = match self.progress_timeout {
                Some(limit) => tokio::time::timeout(limit, blob.next()).await.map_err(|_| {
                    ManagerError::DeadlineExceeded(format!(
                        "layer {} made no progress for {limit:?}",
                        layer.digest
                    ))
                }),
                None => Ok(blob.next().await),
            };
            let next = match next {
                Ok(next) => next,
                Err(error) => {
                    let _ = chunks
                        .send(Err(std::io::Error::other("download abandoned")))
                        .await;
                    return Err(error);
                }
            };
            match next {
                None => return Ok(Download::Complete),
                Some(Ok(bytes)) => {
                    if chunks.send(Ok(bytes)).await.is_err() {
                        return Ok(Download::UnpackerStopped);
                    }
                }
                Some(Err(error)) => {
                    let message = format!("{}: layer {}: {error}", source.whole(), layer.digest);
                    let _ = chunks.send(Err(error)).await;
                    return Err(ManagerError::Registry(message));
                }
            }
        }
    }
}

/// Chunks of a layer download queued for its unpacker: a bound on the memory a download holds
/// when the disk is slower than the network. hyper hands over up to ~400 KiB at a time, so
/// this keeps a download under ~2 MiB (with 16, cri-bench's pulls left crustd 16 MiB bigger).
const CHUNKS_IN_FLIGHT: usize = 4;

/// How a layer's download ended, when the registry did not fail it.
enum Download {
    /// Every byte went to the unpacker and matched the digest.
    Complete,
    /// The unpacker quit before the end (its own error says why).
    UnpackerStopped,
}

/// Unpacks a layer stream into `staged/fs`, checks it against `diff_id`, marks it unpacked and
/// syncs it to disk once, as a whole (no sync per file), before it can be committed.
fn unpack_into(
    blob: impl Read,
    compression: Compression,
    staged: &Path,
    diff_id: &str,
) -> Result<()> {
    let tar = compression
        .decoder(blob)
        .map_err(|e| ManagerError::io("start decompressing the layer", e))?;
    let mut tar = HashingReader::new(tar);
    let fs_dir = staged.join("fs");
    fs::create_dir(&fs_dir).map_err(|e| ManagerError::io("create layer fs", e))?;
    unpack::unpack(&mut tar, &fs_dir)?;
    let unpacked = tar
        .finish()
        .map_err(|e| ManagerError::io("read the rest of the layer", e))?;
    if unpacked != diff_id {
        return Err(ManagerError::Registry(format!(
            "layer unpacks to {unpacked}, but the image config says {diff_id}"
        )));
    }
    fs::write(staged.join(UNPACKED_MARKER), b"")
        .map_err(|e| ManagerError::io("mark the layer unpacked", e))?;
    let dir = fs::File::open(staged).map_err(|e| ManagerError::io("open the layer", e))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| ManagerError::io("sync the layer to disk", std::io::Error::from(e)))
}

/// A blocking reader over the chunks a download sends; an error sent ends the stream with it.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChunkReader {
    fn new(chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> Self {
        Self {
            chunks,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The image config blob named by `descriptor`, digest-checked by the client.
async fn fetch_config(
    client: &Client,
    source: &Reference,
    descriptor: &OciDescriptor,
) -> Result<String> {
    let mut config = Vec::new();
    client
        .pull_blob(source, descriptor, &mut config)
        .await
        .map_err(|e| registry_error(source, e))?;
    String::from_utf8(config)
        .map_err(|_| ManagerError::Registry("image config is not UTF-8 text".into()))
}

fn with_registry(reference: &Reference, registry: &str) -> Reference {
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            registry.to_string(),
            reference.repository().to_string(),
            tag.to_string(),
            digest.to_string(),
        ),
        (_, Some(digest)) => Reference::with_digest(
            registry.to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        ),
        (tag, None) => Reference::with_tag(
            registry.to_string(),
            reference.repository().to_string(),
            tag.unwrap_or("latest").to_string(),
        ),
    }
}

fn registry_error(source: &Reference, error: OciDistributionError) -> ManagerError {
    use oci_client::errors::OciErrorCode;
    let context = format!("{}: {error}", source.whole());
    let codes: Vec<&OciErrorCode> = match &error {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().map(|e| &e.code).collect()
        }
        _ => Vec::new(),
    };
    let any = |wanted: &[OciErrorCode]| codes.iter().any(|code| wanted.contains(code));
    match error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ManagerError::Unauthenticated(context),
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => ManagerError::NotFound(context),
        _ if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) => {
            ManagerError::Unauthenticated(context)
        }
        _ if any(&[
            OciErrorCode::ManifestUnknown,
            OciErrorCode::NameUnknown,
            OciErrorCode::BlobUnknown,
            OciErrorCode::NotFound,
        ]) =>
        {
            ManagerError::NotFound(context)
        }
        _ => ManagerError::Registry(context),
    }
}

/// The uncompressed digests of an image's layers (`rootfs.diff_ids` of its config).
fn diff_ids(config_json: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Document {
        rootfs: RootFs,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    serde_json::from_str::<Document>(config_json)
        .map(|document| document.rootfs.diff_ids)
        .map_err(|e| ManagerError::Registry(format!("image config has no rootfs.diff_ids: {e}")))
}

/// A reader that hashes what passes through it, for checking a layer against its diff id.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what the tar reader left (end-of-archive padding) and returns `sha256:<hex>`.
    fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        let digest = self.hasher.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Bytes and inodes below `root`, hard links counted once.
fn disk_usage(root: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ManagerError::io(format!("read {}", dir.display()), e)),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if seen.insert((meta.dev(), meta.ino())) {
                bytes += meta.blocks() * 512;
                inodes += 1;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_like_dockers() {
        assert_eq!(
            lookup_of("busybox").unwrap(),
            Lookup::Reference("docker.io/library/busybox:latest".into())
        );
        assert_eq!(
            lookup_of("127.0.0.1:5000/team/app:v1").unwrap(),
            Lookup::Reference("127.0.0.1:5000/team/app:v1".into())
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(lookup_of(&digest).unwrap(), Lookup::Id(digest.clone()));
        assert_eq!(
            lookup_of(&"a".repeat(64)).unwrap(),
            Lookup::Id(digest.clone())
        );
        assert_eq!(
            lookup_of(&format!("quay.io/x/y@{digest}")).unwrap(),
            Lookup::Reference(format!("quay.io/x/y@{digest}"))
        );
        for bad in ["", "a b", "x:tag:more", "//", "x@sha256:short"] {
            assert!(
                matches!(lookup_of(bad), Err(ManagerError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    /// A one-file tar and its `sha256:` digest.
    fn one_file_tar() -> (Vec<u8>, String) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_uid(nix::unistd::getuid().as_raw().into());
        header.set_gid(nix::unistd::getgid().as_raw().into());
        builder
            .append_data(&mut header, "greeting", &b"hello"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (bytes, format!("sha256:{hex}"))
    }

    /// A reader fed `parts` in small chunks, as a download sends them.
    fn chunks_of(parts: Vec<std::io::Result<Vec<u8>>>) -> ChunkReader {
        let chunks: usize = parts
            .iter()
            .map(|part| part.as_ref().map_or(1, |bytes| bytes.len().div_ceil(7)))
            .sum();
        let (sender, receiver) = tokio::sync::mpsc::channel(chunks.max(1));
        for part in parts {
            match part {
                Ok(bytes) => {
                    for piece in bytes.chunks(7) {
                        sender
                            .try_send(Ok(bytes::Bytes::copy_from_slice(piece)))
                            .unwrap();
                    }
                }
                Err(error) => sender.try_send(Err(error)).unwrap(),
            }
        }
        ChunkReader::new(receiver)
    }

    #[test]
    fn a_layer_streamed_in_chunks_unpacks_and_is_marked() {
        let (tar, diff_id) = one_file_tar();
        let staged = tempfile::tempdir().unwrap();
        unpack_into(
            chunks_of(vec![Ok(tar)]),
            Compression::None,
            staged.path(),
            &diff_id,
        )
        .unwrap();
        assert_eq!(
            fs::read(staged.path().join("fs/greeting")).unwrap(),
            b"hello"
        );
        assert!(staged.path().join(UNPACKED_MARKER).exists());
    }

    #[test]
    fn a_stream_that_ends_in_an_error_never_counts_as_unpacked() {
        let (tar, diff_id) = one_file_tar();
        // The whole tar arrives, then the download reports its digest did not match.
        let staged = tempfile::tempdir().unwrap();
        let failed = unpack_into(
            chunks_of(vec![
                Ok(tar.clone()),
                Err(std::io::Error::other("digest mismatch")),
            ]),
            Compression::None,
            staged.path(),
            &diff_id,
        );
        assert!(failed.is_err());
        assert!(!staged.path().join(UNPACKED_MARKER).exists());
        // A stream cut short is not the layer its diff id names.
        let staged = tempfile::tempdir().unwrap();
        let failed = unpack_into(
            chunks_of(vec![Ok(tar[..tar.len() - 512].to_vec())]),
            Compression::None,
            staged.path(),
            &diff_id,
        );
        assert!(failed.is_err());
        assert!(!staged.path().join(UNPACKED_MARKER).exists());
    }

    #[test]
    fn mirrors_keep_repository_and_tag() {
        let reference = parse_reference("docker.io/library/busybox:1.36").unwrap();
        let mirrored = with_registry(&reference, "127.0.0.1:5000");
        assert_eq!(mirrored.whole(), "127.0.0.1:5000/library/busybox:1.36");
    }

    #[test]
    fn credentials_pick_the_right_scheme() {
        let basic = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(
            matches!(basic.registry_auth(), Ok(RegistryAuth::Basic(u, p)) if u == "u" && p == "p")
        );
        let encoded = Credentials {
            auth: "dXNlcjpzZWNyZXQ=".into(), // user:secret
            ..Default::default()
        };
        assert!(
            matches!(encoded.registry_auth(), Ok(RegistryAuth::Basic(u, p)) if u == "user" && p == "secret")
        );
        let token = Credentials {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert!(matches!(token.registry_auth(), Ok(RegistryAuth::Bearer(t)) if t == "t"));
        assert!(matches!(
            Credentials::default().registry_auth(),
            Ok(RegistryAuth::Anonymous)
        ));
        let garbage = Credentials {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(matches!(
            garbage.registry_auth(),
            Err(ManagerError::InvalidArgument(_))
        ));
    }
}
