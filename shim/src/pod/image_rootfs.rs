//! A fresh rootfs for a task the shim restores under containerd PR 13971.
//!
//! In that design containerd creates the restored containers without a snapshot ("RestoreSandbox
//! is responsible for reconstructing the checkpointed rootfs") and never sends task `Create`, so
//! no rootfs mounts reach the shim. A podcr checkpoint holds only each container's writable-layer
//! diff, so the shim asks containerd itself, over its gRPC socket (the shim's `-address`), for an
//! active snapshot on top of the container's image: image → manifest for this platform → config
//! → layer diff ids → chain id → `Snapshots.Prepare`. The snapshot is taken under the pod's
//! lease (the CRI creates one named after the sandbox id), so containerd's garbage collector
//! removes it with the pod, and with a restore the CRI rolls back.

use std::path::PathBuf;

use containerd_client::{
    services::v1::{
        containers_client::ContainersClient,
        content_client::ContentClient,
        images_client::ImagesClient,
        snapshots::{snapshots_client::SnapshotsClient, PrepareSnapshotRequest},
        GetContainerRequest, GetImageRequest, ReadContentRequest,
    },
    tonic::{metadata::MetadataValue, transport::Channel, Code, Request},
};
use containerd_shim_protos::api::Mount;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{Error, Result};

/// The OCI spec annotation in which containerd's CRI names a container's image.
const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The snapshot key the shim prepares for a restored task.
pub fn snapshot_key(task_id: &str) -> String {
    format!("podcr-restore/{task_id}")
}

/// containerd's gRPC API as the shim's namespace sees it.
#[derive(Clone)]
pub struct ImageRootfs {
    socket: PathBuf,
    namespace: String,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

fn grpc(what: impl std::fmt::Display) -> impl FnOnce(containerd_client::tonic::Status) -> Error {
    move |s| match s.code() {
        Code::NotFound => Error::not_found(format!("{what}: {}", s.message())),
        _ => Error::Containerd { what: what.to_string(), message: s.message().to_string() },
    }
}

/// The OCI chain id of a layer stack (image-spec: ChainID(L0|..|Ln) = sha256(ChainID(..n-1) + " " + DiffID(n))).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for diff in ids {
        chain = format!("sha256:{}", hex::encode(Sha256::digest(format!("{chain} {diff}").as_bytes())));
    }
    Some(chain)
}

impl ImageRootfs {
    pub fn new(socket: &str, namespace: &str) -> Self {
        ImageRootfs { socket: PathBuf::from(socket.trim_start_matches("unix://")), namespace: namespace.to_string() }
    }

    async fn channel(&self) -> Result<Channel> {
        if self.socket.as_os_str().is_empty() {
            return Err(Error::failed_precondition("the shim was started without containerd's -address"));
        }
        containerd_client::connect(&self.socket).await.map_err(|e| Error::Containerd {
            what: format!("connect at {}", self.socket.display()),
            message: e.to_string(),
        })
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Result<Request<T>> {
        let mut req = Request::new(msg);
        let header = |v: &str| -> Result<MetadataValue<_>> {
            v.parse().map_err(|_| Error::invalid_argument(format!("{v:?} is not a valid gRPC header value")))
        };
        req.metadata_mut().insert("containerd-namespace", header(&self.namespace)?);
        if let Some(lease) = lease {
            req.metadata_mut().insert("containerd-lease", header(lease)?);
        }
        Ok(req)
    }

    async fn read_blob(&self, channel: &Channel, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(channel.clone())
            .read(self.req(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }, None)?)
            .await
            .map_err(grpc(format!("read content {digest}")))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(grpc(format!("read content {digest}")))? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// The diff ids of `image`'s layers for this platform.
    async fn diff_ids(&self, channel: &Channel, image: &str) -> Result<Vec<String>> {
        let record = ImagesClient::new(channel.clone())
            .get(self.req(GetImageRequest { name: image.to_string() }, None)?)
            .await
            .map_err(grpc(format!("image {image}")))?
            .into_inner()
            .image
            .ok_or_else(|| Error::not_found(format!("image {image}")))?;
        let target = record.target.ok_or_else(|| Error::not_found(format!("image {image} has no target")))?;
        let mut digest = target.digest;
        // An index (or Docker manifest list) names one manifest per platform: take ours.
        for _ in 0..4 {
            let doc: IndexOrManifest = serde_json::from_slice(&self.read_blob(channel, &digest).await?)?;
            if let Some(config) = doc.config {
                let config: ImageConfig = serde_json::from_slice(&self.read_blob(channel, &config.digest).await?)?;
                return Ok(config.rootfs.diff_ids);
            }
            let arch = super::sandbox_service::go_arch();
            let ours = doc
                .manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == arch))
                .ok_or_else(|| {
                    Error::not_found(format!("image {image} ({}) has no linux/{arch} manifest", doc.media_type))
                })?;
            digest = ours.digest;
        }
        Err(Error::invalid_argument(format!("image {image}: indexes nested too deep")))
    }

    /// Prepares an active snapshot of `task_id`'s image for the task to run on, under `lease`.
    pub async fn prepare(&self, task_id: &str, lease: &str) -> Result<Vec<Mount>> {
        let channel = self.channel().await?;
        let container = ContainersClient::new(channel.clone())
            .get(self.req(GetContainerRequest { id: task_id.to_string() }, None)?)
            .await
            .map_err(grpc(format!("container {task_id}")))?
            .into_inner()
            .container
            .ok_or_else(|| Error::not_found(format!("container {task_id}")))?;
        // PR 13971's CRI stages restored containers without an image reference on the record;
        // the OCI spec it generated still names the image in the CRI's annotation.
        let image = if container.image.is_empty() {
            container
                .spec
                .as_ref()
                .and_then(|spec| serde_json::from_slice::<serde_json::Value>(&spec.value).ok())
                .and_then(|spec| spec["annotations"][CRI_IMAGE_NAME].as_str().map(str::to_string))
                .unwrap_or_default()
        } else {
            container.image.clone()
        };
        if image.is_empty() {
            return Err(Error::failed_precondition(format!(
                "container {task_id} names no image to rebuild its rootfs from"
            )));
        }
        let snapshotter =
            if container.snapshotter.is_empty() { "overlayfs".to_string() } else { container.snapshotter.clone() };
        let diff_ids = self.diff_ids(&channel, &image).await?;
        let parent = chain_id(&diff_ids).unwrap_or_default();
        let key = snapshot_key(task_id);
        let resp = SnapshotsClient::new(channel)
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                    parent,
                    labels: Default::default(),
                },
                Some(lease),
            )?)
            .await
            .map_err(grpc(format!("prepare snapshot {key} on {snapshotter} for image {image}")))?
            .into_inner();
        info!(task = %task_id, %snapshotter, %image, "rootfs snapshot prepared for the restored task");
        Ok(resp
            .mounts
            .into_iter()
            .map(|m| Mount {
                type_: m.r#type,
                source: m.source,
                target: m.target,
                options: m.options,
                ..Default::default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_image_spec() {
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&["sha256:a".into()]).as_deref(), Some("sha256:a"));
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:a sha256:b")));
        assert_eq!(chain_id(&["sha256:a".into(), "sha256:b".into()]), Some(expected));
    }
}
