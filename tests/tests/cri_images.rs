//! crustd's ImageService against a real registry (docker-registry on 127.0.0.1), driven by a
//! CRI gRPC client over crustd's unix socket.

use std::fs;
use std::path::Path;

use crust_proto::cri::image_service_client::ImageServiceClient;
use crust_proto::cri::tonic::transport::Channel;
use crust_proto::cri::tonic::{Code, Status};
use crust_proto::cri::{
    AuthConfig, Image, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use crust_tests::crustd::Crustd;
use crust_tests::image::{ImageParts, image_parts};
use crust_tests::registry::{LayerForm, PASSWORD, Registry, USER};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, Status> {
    client
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(client: &mut ImageServiceClient<Channel>, image: &str) -> Option<Image> {
    client
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("image status")
        .into_inner()
        .image
}

async fn list(client: &mut ImageServiceClient<Channel>) -> Vec<Image> {
    client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("list images")
        .into_inner()
        .images
}

/// Every unpacked layer's root directory.
fn unpacked_layers(root: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(root.join("layers"))
        .map(|entries| entries.flatten().map(|e| e.path().join("fs")).collect())
        .unwrap_or_default()
}

fn crustd_for(registry: &Registry) -> Crustd {
    Crustd::start(&format!(
        "[registry]\nplain_http = [\"{}\"]\n",
        registry.host
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_in_every_layer_form_and_found_by_tag_digest_and_id() {
    let registry = Registry::start();
    let gzip = registry
        .push("library/busybox", "gz", LayerForm::DockerGzip, "")
        .await;
    registry
        .push("tools/box", "zstd", LayerForm::OciZstd, "1000:1000")
        .await;
    registry
        .push("tools/box", "plain", LayerForm::OciTar, "www")
        .await;
    // A list's entries must be in its repository: the image first, then the list over it.
    let amd64 = registry
        .push("multi/arch", "amd64", LayerForm::DockerGzip, "")
        .await;
    assert_eq!(amd64, gzip, "the same image has the same digest");
    let arm64 = registry
        .push("multi/arch", "arm64", LayerForm::OciTar, "arm")
        .await;
    let list_digest = registry
        .push_list(
            "multi/arch",
            "latest",
            &[(&arm64, "arm64"), (&amd64, "amd64")],
        )
        .await;

    let crustd = crustd_for(&registry);
    assert_eq!(crustd.socket_mode(), 0o660);
    let mut client = crustd.images().await;

    let by_tag = registry.reference("library/busybox", "gz");
    let id = pull(&mut client, &by_tag, None)
        .await
        .expect("pull gzip image");
    assert!(id.starts_with("sha256:"), "{id}");
    let image = status(&mut client, &by_tag).await.expect("status by tag");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, [by_tag.as_str()]);
    let by_digest = format!("{}/library/busybox@{gzip}", registry.host);
    assert_eq!(image.repo_digests, [by_digest.as_str()]);
    assert!(image.size > 0);
    assert_eq!(
        status(&mut client, &by_digest).await.map(|i| i.id),
        Some(id.clone())
    );
    assert_eq!(
        status(&mut client, &id).await.map(|i| i.id),
        Some(id.clone())
    );

    let zstd = pull(&mut client, &registry.reference("tools/box", "zstd"), None)
        .await
        .expect("pull zstd image");
    let numeric = status(&mut client, &zstd).await.expect("zstd image");
    assert_eq!(numeric.uid.map(|u| u.value), Some(1000));
    let plain = pull(&mut client, &registry.reference("tools/box", "plain"), None)
        .await
        .expect("pull plain image");
    let named = status(&mut client, &plain).await.expect("plain image");
    assert_eq!((named.uid, named.username.as_str()), (None, "www"));

    // A manifest list resolves to this machine's entry; the repo digest is the list's.
    let multi = registry.reference("multi/arch", "latest");
    assert_eq!(
        pull(&mut client, &multi, None).await.expect("pull list"),
        id
    );
    let listed = status(&mut client, &multi).await.expect("list image");
    assert!(
        listed
            .repo_digests
            .contains(&format!("{}/multi/arch@{list_digest}", registry.host)),
        "{listed:?}"
    );

    assert_eq!(list(&mut client).await.len(), 3);
    let filtered = client
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&registry.reference("tools/box", "zstd")),
            }),
        })
        .await
        .expect("filtered list")
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    for layer in unpacked_layers(&crustd.root()) {
        assert!(layer.join("bin/busybox").is_file(), "{}", layer.display());
        assert!(fs::symlink_metadata(layer.join("bin/sh")).is_ok_and(|m| m.is_symlink()));
    }
    let usage = client
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("fs info")
        .into_inner()
        .image_filesystems;
    let used = usage[0].used_bytes.map(|u| u.value).unwrap_or(0);
    let busybox = fs::metadata(crust_tests::image::BUSYBOX)
        .expect("busybox")
        .len();
    assert!(used >= busybox, "{used} < {busybox}");
    assert!(usage[0].inodes_used.map(|u| u.value).unwrap_or(0) > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_download_it_once() {
    let registry = Registry::start();
    registry
        .push("library/busybox", "latest", LayerForm::DockerGzip, "")
        .await;
    let crustd = crustd_for(&registry);
    let reference = registry.reference("library/busybox", "latest");
    let mut first = crustd.images().await;
    let mut second = crustd.images().await;
    let (a, b) = tokio::join!(
        pull(&mut first, &reference, None),
        pull(&mut second, &reference, None)
    );
    assert_eq!(a.expect("first pull"), b.expect("second pull"));
    let layers = unpacked_layers(&crustd.root());
    assert_eq!(layers.len(), 1);
    let digest = layers[0]
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .expect("layer dir name")
        .replacen('-', ":", 1);
    assert_eq!(registry.blob_downloads(&digest), 1, "{}", registry.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_a_refusal_is_unauthenticated() {
    let registry = Registry::start_with_auth();
    registry
        .push("private/app", "v1", LayerForm::OciTar, "")
        .await;
    let crustd = crustd_for(&registry);
    let mut client = crustd.images().await;
    let reference = registry.reference("private/app", "v1");

    let refused = pull(&mut client, &reference, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let wrong = AuthConfig {
        username: USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let refused = pull(&mut client, &reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let basic = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    pull(&mut client, &reference, Some(basic))
        .await
        .expect("pull with user and password");
    client
        .remove_image(RemoveImageRequest {
            image: spec(&reference),
        })
        .await
        .expect("remove");
    use base64::Engine;
    let encoded = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")),
        ..Default::default()
    };
    pull(&mut client, &reference, Some(encoded))
        .await
        .expect("pull with docker auth field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let registry = Registry::start();
    registry
        .push("library/busybox", "latest", LayerForm::OciTar, "")
        .await;
    // A layer that tries to write outside its directory.
    let mut hostile = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.as_old_mut().name[..17].copy_from_slice(b"../../../escaped!");
    header.set_cksum();
    hostile
        .append(&header, &b"owned"[..])
        .expect("hostile entry");
    let parts = ImageParts {
        layer: hostile.into_inner().expect("hostile tar"),
        config: image_parts("nobody").expect("parts").config,
    };
    registry
        .push_parts("evil/layer", "latest", LayerForm::OciTar, parts)
        .await;

    // A layer that is not the one its image config names.
    let mut other = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    other
        .append_data(&mut header, "hello", &b"hi"[..])
        .expect("entry");
    let parts = ImageParts {
        layer: other.into_inner().expect("tar"),
        config: image_parts("").expect("parts").config,
    };
    registry
        .push_parts("swapped/layer", "latest", LayerForm::DockerGzip, parts)
        .await;

    let crustd = crustd_for(&registry);
    let mut client = crustd.images().await;
    let swapped = pull(
        &mut client,
        &registry.reference("swapped/layer", "latest"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        swapped.message().contains("image config says"),
        "{swapped:?}"
    );
    for (image, code) in [
        ("a b", Code::InvalidArgument),
        ("x:tag:more", Code::InvalidArgument),
        (
            &registry.reference("library/busybox", "missing") as &str,
            Code::NotFound,
        ),
        (&registry.reference("no/such", "latest"), Code::NotFound),
    ] {
        let refused = pull(&mut client, image, None).await.unwrap_err();
        assert_eq!(refused.code(), code, "{image}: {refused:?}");
    }
    let no_spec = client
        .pull_image(PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_spec.code(), Code::InvalidArgument);

    let hostile = pull(
        &mut client,
        &registry.reference("evil/layer", "latest"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(hostile.code(), Code::InvalidArgument, "{hostile:?}");
    assert!(
        hostile.message().contains("leaves the layer"),
        "{hostile:?}"
    );
    assert!(!crustd.dir().join("escaped!").exists());
    assert!(!crustd.root().join("escaped!").exists());

    // The registry hands out a blob that does not match its digest.
    let (manifest, _) = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
    .pull_image_manifest(
        &registry
            .reference("library/busybox", "latest")
            .parse()
            .expect("reference"),
        &oci_client::secrets::RegistryAuth::Anonymous,
    )
    .await
    .expect("manifest");
    let blob = registry.blob_path(&manifest.layers[0].digest);
    let mut bytes = fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).expect("tamper");
    let tampered = pull(
        &mut client,
        &registry.reference("library/busybox", "latest"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        tampered.message().to_lowercase().contains("digest"),
        "{tampered:?}"
    );
    assert!(list(&mut client).await.is_empty());
    assert!(unpacked_layers(&crustd.root()).is_empty());

    // Unknown images: no status, and removing one is not an error.
    assert!(
        status(&mut client, &format!("{}/no/such:1", registry.host))
            .await
            .is_none()
    );
    client
        .remove_image(RemoveImageRequest {
            image: spec("busybox:never"),
        })
        .await
        .expect("removing an absent image succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart_and_removal_frees_their_layers() {
    let registry = Registry::start();
    registry
        .push("library/busybox", "latest", LayerForm::DockerGzip, "")
        .await;
    let crustd = crustd_for(&registry);
    let reference = registry.reference("library/busybox", "latest");
    let id = pull(&mut crustd.images().await, &reference, None)
        .await
        .expect("pull");
    crustd.restart();
    let mut client = crustd.images().await;
    assert_eq!(
        status(&mut client, &reference).await.map(|i| i.id),
        Some(id.clone())
    );
    client
        .remove_image(RemoveImageRequest { image: spec(&id) })
        .await
        .expect("remove by id");
    assert!(status(&mut client, &reference).await.is_none());
    assert!(list(&mut client).await.is_empty());
    assert!(unpacked_layers(&crustd.root()).is_empty());
}

/// kubelet and crictl up to 1.26 (grpc-go dialing a path) send the socket's path as the HTTP/2
/// `:authority`; the request must be served, not reset. Spoken here frame by frame, as they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_naming_the_socket_path_as_authority_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut bytes = vec![
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            flags,
        ];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    let crustd = Crustd::start("");
    let socket = crustd.socket.display().to_string();
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/runtime.v1.ImageService/ListImages"),
        (b":authority", socket.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]);
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(frame(0x4, 0, 0, &[]));
    request.extend(frame(0x1, 0x4, 1, &block));
    // An empty ListImagesRequest: uncompressed, zero bytes long.
    request.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    let mut connection = tokio::net::UnixStream::connect(&crustd.socket)
        .await
        .expect("connect");
    connection.write_all(&request).await.expect("send request");

    let mut decoder = loona_hpack::Decoder::new();
    let mut headers = Vec::new();
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = connection.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed; headers so far {headers:?}");
            received.extend_from_slice(&chunk[..n]);
            while received.len() >= 9 {
                let length = usize::from(received[0]) << 16
                    | usize::from(received[1]) << 8
                    | usize::from(received[2]);
                if received.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (received[3], received[4]);
                let payload = received[9..9 + length].to_vec();
                received.drain(..9 + length);
                match kind {
                    0x3 => panic!("stream reset: {payload:?}"),
                    0x1 => {
                        headers.extend(decoder.decode(&payload).expect("response headers"));
                        if flags & 0x1 != 0 {
                            return headers;
                        }
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("a response in time");
    let find = |name: &[u8]| {
        outcome
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(find(b":status").as_deref(), Some("200"), "{outcome:?}");
    assert_eq!(find(b"grpc-status").as_deref(), Some("0"), "{outcome:?}");
}
