//! The CRI (RuntimeService, ImageService) that containerd serves on its own socket.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, Container, ContainerConfig,
    ContainerFilter, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest, ImageSpec,
    ImageStatusRequest, ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxConfig,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::{
    containerd::{unix_channel, unix_channel_with, work_timeout},
    zerofill::from_go_json,
};

#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    /// For the calls that do the pod's work (see `containerd::work_timeout`).
    work: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let channel = unix_channel(socket).await?;
        let work = RuntimeServiceClient::new(unix_channel_with(socket, work_timeout()).await?);
        Ok(Cri { runtime: RuntimeServiceClient::new(channel.clone()), work, images: ImageServiceClient::new(channel) })
    }

    /// containerd's state directory, from the CRI plugin's own state dir (`<state>/io.containerd.grpc.v1.cri`)
    /// that the verbose runtime status reports.
    pub async fn containerd_state_dir(&self) -> Option<std::path::PathBuf> {
        let resp = self.runtime.clone().status(StatusRequest { verbose: true }).await.ok()?.into_inner();
        let doc: serde_json::Value = serde_json::from_str(resp.info.get("config")?).ok()?;
        let cri_state = std::path::Path::new(doc.get("stateDir")?.as_str()?);
        cri_state.parent().map(std::path::Path::to_path_buf)
    }

    /// The runtime handlers the CRI serves, and its configuration (the verbose status's
    /// `config`, as containerd's Go code writes it), for `podcr check`.
    pub async fn handlers_and_config(&self) -> Result<(Vec<String>, Option<serde_json::Value>)> {
        let resp =
            self.runtime.clone().status(StatusRequest { verbose: true }).await.context("CRI Status")?.into_inner();
        let handlers = resp.runtime_handlers.into_iter().map(|h| h.name).collect();
        let config = resp.info.get("config").and_then(|c| serde_json::from_str(c).ok());
        Ok((handlers, config))
    }

    pub async fn list_pods(&self) -> Result<Vec<PodSandbox>> {
        let resp = self
            .runtime
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .context("CRI ListPodSandbox")?;
        Ok(resp.into_inner().items)
    }

    /// The pod's config as containerd recorded it, from the verbose status; `None` when the
    /// info is missing or in a shape this build cannot read.
    pub async fn pod_config(&self, pod_id: &str) -> Result<Option<PodSandboxConfig>> {
        let resp = self
            .runtime
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod_id.to_string(), verbose: true })
            .await
            .with_context(|| format!("CRI PodSandboxStatus {pod_id}"))?;
        Ok(config_from_info(&resp.into_inner().info))
    }

    pub async fn containers_of(&self, pod_id: &str) -> Result<Vec<Container>> {
        let filter = ContainerFilter { pod_sandbox_id: pod_id.to_string(), ..Default::default() };
        let resp = self
            .runtime
            .clone()
            .list_containers(ListContainersRequest { filter: Some(filter) })
            .await
            .context("CRI ListContainers")?;
        let mut list = resp.into_inner().containers;
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatusResponse> {
        let resp = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest { container_id: id.to_string(), verbose: true })
            .await
            .with_context(|| format!("CRI ContainerStatus {id}"))?;
        Ok(resp.into_inner())
    }

    pub async fn run_pod(&self, config: PodSandboxConfig, handler: &str) -> Result<String> {
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: handler.to_string() };
        let resp = self.work.clone().run_pod_sandbox(req).await.context("CRI RunPodSandbox")?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        self.work
            .clone()
            .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.to_string() })
            .await
            .with_context(|| format!("CRI StopPodSandbox {id}"))?;
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        self.work
            .clone()
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.to_string() })
            .await
            .with_context(|| format!("CRI RemovePodSandbox {id}"))?;
        Ok(())
    }

    pub async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        pod: PodSandboxConfig,
    ) -> Result<String> {
        let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config),
            sandbox_config: Some(pod),
        };
        let resp =
            self.runtime.clone().create_container(req).await.with_context(|| format!("CRI CreateContainer {name}"))?;
        Ok(resp.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.work
            .clone()
            .start_container(StartContainerRequest { container_id: id.to_string() })
            .await
            .with_context(|| format!("CRI StartContainer {id}"))?;
        Ok(())
    }

    /// Whether the image is present on the node (the CRI answers with no image, not an error).
    pub async fn has_image(&self, image: &str) -> Result<bool> {
        let spec = ImageSpec { image: image.to_string(), ..Default::default() };
        let resp = self
            .images
            .clone()
            .image_status(ImageStatusRequest { image: Some(spec), verbose: false })
            .await
            .with_context(|| format!("CRI ImageStatus {image}"))?;
        Ok(resp.into_inner().image.is_some())
    }
}

/// containerd's verbose status puts a JSON document under `info` whose `config` is the CRI
/// config the object was created with, written by Go's encoding/json.
pub fn config_from_info<T: serde::de::DeserializeOwned>(info: &HashMap<String, String>) -> Option<T> {
    let doc: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    let config = doc.get("config")?.clone();
    match from_go_json(config) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CRI config from the verbose status info");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_comes_from_the_info_document() {
        let info = HashMap::from([(
            "info".to_string(),
            r#"{"sandboxID":"s","pid":7,"config":{"metadata":{"name":"app","attempt":1},"image":{"image":"busybox"},"command":["sh"]}}"#.to_string(),
        )]);
        let cfg: ContainerConfig = config_from_info(&info).unwrap();
        assert_eq!(cfg.metadata.unwrap().attempt, 1);
        assert_eq!(cfg.command, ["sh"]);
        assert!(config_from_info::<ContainerConfig>(&HashMap::new()).is_none());
        let bad = HashMap::from([("info".to_string(), "{\"config\":{\"command\":5}}".to_string())]);
        assert!(config_from_info::<ContainerConfig>(&bad).is_none());
    }
}
