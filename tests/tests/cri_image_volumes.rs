//! Volumes an image's config declares: a writable directory per volume, filled from the image,
//! gone with the container; none at all with `ignore_image_defined_volumes`.

use crust_proto::cri::*;
use crust_tests::cri::{self, Client, exec};
use crust_tests::crustd::Crustd;
use crust_tests::image::image_parts_with_volume;
use crust_tests::registry::{LayerForm, Registry};

async fn crustd_with_volume_image(extra: &str) -> (Registry, Crustd, String) {
    let registry = Registry::start();
    let parts = image_parts_with_volume("", Some(("/data", "seed.txt", "from the image")))
        .expect("image parts");
    registry
        .push_parts("library/withvolume", "1", LayerForm::OciTar, parts)
        .await;
    let image = registry.reference("library/withvolume", "1");
    let crustd = Crustd::start(&format!(
        "{extra}\n[registry]\nplain_http = [\"{}\"]\n",
        registry.host
    ));
    crustd
        .images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    (registry, crustd, image)
}

fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        ..Default::default()
    }
}

/// A pod running one container of `image` with a read-only root; (pod, container).
async fn run_read_only(client: &mut Client, image: &str) -> (String, String) {
    let pod_config = pod_config("volumes");
    let pod = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let mut config = cri::container_config("app", image, &["sleep", "1000"], "");
    config.log_path.clear();
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    cri::start(client, &id).await.expect("start");
    (pod, id)
}

async fn sh(client: &mut Client, id: &str, script: &str) -> (i32, String) {
    let out = exec(client, id, &["sh", "-c", script], 10)
        .await
        .expect("exec");
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn tear_down(client: &mut Client, pod: &str) {
    cri::stop_pod(client, pod).await.expect("stop pod");
    cri::remove_pod(client, pod).await.expect("remove pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_volume_has_the_images_files_is_writable_and_goes_with_the_container() {
    let (_registry, crustd, image) = crustd_with_volume_image("").await;
    let mut client = crustd.runtime().await;
    let (pod, id) = run_read_only(&mut client, &image).await;
    assert_eq!(
        sh(&mut client, &id, "cat /data/seed.txt").await,
        (0, "from the image".into()),
        "{}",
        crustd.log()
    );
    let (code, _) = sh(
        &mut client,
        &id,
        "echo new > /data/written && cat /data/written",
    )
    .await;
    assert_eq!(code, 0, "the volume is writable on a read-only root");
    let (code, _) = sh(&mut client, &id, "touch /elsewhere").await;
    assert_ne!(code, 0, "the root stays read-only");
    let found = walk_for(crustd.dir(), &id);
    assert!(
        found
            .iter()
            .any(|dir| dir.join("0/written").exists() && dir.join("0/seed.txt").exists()),
        "the volume lives under the container's data dir: {found:?}"
    );
    cri::remove(&mut client, &id).await.expect("remove");
    assert!(
        walk_for(crustd.dir(), &id).is_empty(),
        "removed with the container"
    );
    tear_down(&mut client, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_image_defined_volumes_makes_none() {
    let (_registry, crustd, image) =
        crustd_with_volume_image("ignore_image_defined_volumes = true").await;
    let mut client = crustd.runtime().await;
    let (pod, id) = run_read_only(&mut client, &image).await;
    assert_eq!(
        sh(&mut client, &id, "cat /data/seed.txt").await,
        (0, "from the image".into()),
        "the image's own file, read-only"
    );
    let (code, _) = sh(&mut client, &id, "touch /data/written").await;
    assert_ne!(code, 0, "no volume: /data is part of the read-only root");
    assert!(walk_for(crustd.dir(), &id).is_empty());
    cri::remove(&mut client, &id).await.expect("remove");
    tear_down(&mut client, &pod).await;
}

/// The `volumes` directories of container `id` below `dir` (wherever the layout puts its
/// data directory).
fn walk_for(dir: &std::path::Path, id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == id) && path.join("volumes").is_dir() {
            found.push(path.join("volumes"));
        } else if !path.ends_with("layers") && !path.ends_with("rootfs") {
            found.extend(walk_for(&path, id));
        }
    }
    found
}
