//! A CRI client for the pod RPCs cri-api master has had since Kubernetes 1.37 (k/k #140366):
//! `runtime.v1.RuntimeService/CheckpointPod` and `/RestorePod`. The k8s-cri crate predates them,
//! so the messages are written here from cri-api's `api.proto` (field numbers as there) and sent
//! on the same channel as every other CRI call.

use std::collections::HashMap;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use tonic::{client::Grpc, codegen::http::uri::PathAndQuery, transport::Channel, Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointPodRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// An existing, empty directory the caller owns.
    #[prost(string, tag = "2")]
    pub output_path: String,
    #[prost(string, repeated, tag = "3")]
    pub container_ids: Vec<String>,
    /// The alpha kubelet sends an empty map.
    #[prost(map = "string, string", tag = "4")]
    pub options: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointPodResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RestorePodRequest {
    #[prost(string, tag = "1")]
    pub checkpoint_path: String,
    #[prost(message, optional, tag = "2")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "3")]
    pub runtime_handler: String,
    #[prost(map = "string, string", tag = "4")]
    pub options: HashMap<String, String>,
    #[prost(message, repeated, tag = "5")]
    pub container_configs: Vec<ContainerConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RestoredContainer {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RestorePodResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    /// One per container, CREATED and not started.
    #[prost(message, repeated, tag = "2")]
    pub restored_containers: Vec<RestoredContainer>,
}

/// `runtime.v1.RuntimeService`'s pod checkpoint/restore RPCs.
#[derive(Clone)]
pub struct PodRuntimeClient {
    inner: Grpc<Channel>,
}

impl PodRuntimeClient {
    pub fn new(channel: Channel) -> Self {
        PodRuntimeClient { inner: Grpc::new(channel) }
    }

    async fn call<Req, Resp>(&mut self, path: &'static str, req: Request<Req>) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner.ready().await.map_err(|e| Status::unavailable(format!("CRI channel not ready: {e}")))?;
        self.inner.unary(req, PathAndQuery::from_static(path), ProstCodec::default()).await
    }

    pub async fn checkpoint_pod(
        &mut self,
        req: Request<CheckpointPodRequest>,
    ) -> Result<Response<CheckpointPodResponse>, Status> {
        self.call("/runtime.v1.RuntimeService/CheckpointPod", req).await
    }

    pub async fn restore_pod(
        &mut self,
        req: Request<RestorePodRequest>,
    ) -> Result<Response<RestorePodResponse>, Status> {
        self.call("/runtime.v1.RuntimeService/RestorePod", req).await
    }
}

impl crate::Containerd {
    /// The CRI's pod checkpoint/restore RPCs on this containerd's socket.
    pub async fn cri_pods(&self) -> anyhow::Result<PodRuntimeClient> {
        Ok(PodRuntimeClient::new(crate::cri::channel(self.socket().to_path_buf()).await?))
    }
}
