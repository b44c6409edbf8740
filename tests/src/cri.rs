//! CRI gRPC clients (k8s-cri over tonic) on a private containerd's unix socket, and pod/container
//! configs whose cgroups and logs stay inside the run, so teardown finds them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::Containerd;

/// A gRPC channel to `socket`. The URI is a placeholder tonic needs; the connector ignores it and dials
/// the unix socket.
pub async fn channel(socket: PathBuf) -> Result<Channel> {
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connect to the CRI socket")
}

impl Containerd {
    /// CRI RuntimeService client (RunPodSandbox, CreateContainer, ...).
    pub async fn cri_runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(channel(self.socket().to_path_buf()).await?))
    }

    /// CRI ImageService client.
    pub async fn cri_images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(channel(self.socket().to_path_buf()).await?))
    }

    /// A pod config named `name` (unique per call is the caller's job) whose cgroup parent and log dir are
    /// inside this run.
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        let logs = self.dir().join("pod-logs").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{}-{name}", self.run_id()),
                namespace: "podcr-test".to_string(),
                attempt: 0,
            }),
            hostname: name.chars().take(63).collect(),
            log_directory: logs.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                // cgroupfs: the pod's cgroups become /sys/fs/cgroup/<ctrl>/<prefix>-pods/<name>/..., removed
                // by the run's teardown.
                cgroup_parent: format!("/{}-pods/{name}", self.prefix()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// A container config running `command` from `image` (a reference imported into the CRI namespace,
/// see `Containerd::import(CRI_NAMESPACE, ..)`), logging to `<pod log dir>/<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}
