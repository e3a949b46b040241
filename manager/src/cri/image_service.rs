//! CRI ImageService: thin adapters from the gRPC messages to [`Images`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crust_proto::cri::image_service_server::ImageService;
use crust_proto::cri::tonic::{Request, Response, Status};
use crust_proto::cri::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};

use crate::error::ManagerError;
use crate::images::store::ImageRecord;
use crate::images::{Credentials, Images, lookup_of};

/// The gRPC face of [`Images`].
#[derive(Debug, Clone)]
pub struct ImageApi {
    images: Arc<Images>,
}

impl ImageApi {
    /// Serves `images`.
    pub fn new(images: Arc<Images>) -> Self {
        Self { images }
    }
}

fn image_message(record: ImageRecord) -> Image {
    let (uid, username) = record.config.uid_or_name();
    Image {
        spec: Some(ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        id: record.id,
        repo_tags: record.repo_tags,
        repo_digests: record.repo_digests,
        size: record.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        pinned: false,
    }
}

fn image_of(spec: Option<ImageSpec>) -> Result<String, ManagerError> {
    spec.map(|s| s.image)
        .filter(|image| !image.is_empty())
        .ok_or_else(|| ManagerError::InvalidArgument("image spec is missing".into()))
}

#[crust_proto::cri::tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request.into_inner().filter.and_then(|f| f.image);
        log::debug!(
            "ListImages filter={:?}",
            filter.as_ref().map(|spec| spec.image.as_str())
        );
        let wanted = match filter {
            Some(spec) if !spec.image.is_empty() => Some(lookup_of(&spec.image)?),
            _ => None,
        };
        let images = self
            .images
            .list()
            .into_iter()
            .filter(|record| match &wanted {
                None => true,
                Some(lookup) => record.matches(lookup),
            })
            .map(image_message)
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        log::debug!("ImageStatus {image}");
        let image = self.images.status(&image)?.map(image_message);
        Ok(Response::new(ImageStatusResponse {
            image,
            ..Default::default()
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_of(request.image)?;
        log::debug!("PullImage {image}");
        let credentials = request
            .auth
            .map(|auth| Credentials {
                username: auth.username,
                password: auth.password,
                auth: auth.auth,
                registry_token: auth.registry_token,
                identity_token: auth.identity_token,
            })
            .unwrap_or_default();
        let image_ref = self.images.pull(&image, &credentials).await?;
        log::info!("pulled {image} as {image_ref}");
        Ok(Response::new(PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        log::debug!("RemoveImage {image}");
        // Removing unpacked layers is a tree walk on disk: not on the async workers.
        let images = Arc::clone(&self.images);
        tokio::task::spawn_blocking(move || images.remove(&image))
            .await
            .map_err(|e| Status::internal(format!("image removal task: {e}")))??;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        log::debug!("ImageFsInfo");
        let images = Arc::clone(&self.images);
        let (bytes, inodes, mountpoint) = tokio::task::spawn_blocking(move || images.usage())
            .await
            .map_err(|e| Status::internal(format!("image usage task: {e}")))??;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let usage = FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage],
            ..Default::default()
        }))
    }
}
