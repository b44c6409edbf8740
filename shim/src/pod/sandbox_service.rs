//! `containerd.runtime.sandbox.v1.Sandbox` over the pod controller. Each method converts the
//! request, calls the controller and converts the reply; the logic lives in the controller.
//!
//! Served from podcr's own `protos/proto/sandbox.proto`, not `containerd-shim-protos`, because it
//! carries RPCs that crate lacks: `UpdateSandbox` (containerd 2.4) and containerd PR 13971's
//! `CheckpointSandbox`/`RestoreSandbox` (their adaptor is [`super::sandbox_restore`]).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use podcr_protos::{
    platform::Platform,
    sandbox::{
        CheckpointSandboxRequest, CheckpointSandboxResponse, CreateSandboxRequest, CreateSandboxResponse, PingRequest,
        PingResponse, PlatformRequest, PlatformResponse, RestoreSandboxRequest, RestoreSandboxResponse,
        SandboxMetricsRequest, SandboxMetricsResponse, SandboxStatusRequest, SandboxStatusResponse,
        ShutdownSandboxRequest, ShutdownSandboxResponse, StartSandboxRequest, StartSandboxResponse, StopSandboxRequest,
        StopSandboxResponse, UpdateSandboxRequest, UpdateSandboxResponse, WaitSandboxRequest, WaitSandboxResponse,
    },
    sandbox_ttrpc::Sandbox,
};
use podcr_sandbox_controller::{backend::PodBackend, SandboxController};
use tracing::info;
use ttrpc::r#async::TtrpcContext;

use super::{convert, restore_from::AnnotationRestore, sandbox_restore::SandboxRestore};
use crate::error::Error;

/// Called once the pod is shut down and the reply is on its way: ends the shim process.
pub type OnShutdown = Arc<dyn Fn() + Send + Sync>;

pub struct SandboxService<B: PodBackend> {
    controller: Arc<SandboxController<B>>,
    on_shutdown: OnShutdown,
    restore: SandboxRestore<B>,
    annotation: Arc<AnnotationRestore<B>>,
}

impl<B: PodBackend> SandboxService<B> {
    pub fn new(
        controller: Arc<SandboxController<B>>,
        on_shutdown: OnShutdown,
        restore: SandboxRestore<B>,
        annotation: Arc<AnnotationRestore<B>>,
    ) -> Self {
        SandboxService { controller, on_shutdown, restore, annotation }
    }
}

type RpcResult<T> = ttrpc::Result<T>;

fn wire(e: podcr_sandbox_controller::Error) -> ttrpc::Error {
    Error::from(e).into()
}

/// Go's GOARCH names, which containerd compares image platforms against.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[async_trait]
impl<B: PodBackend> Sandbox for SandboxService<B> {
    async fn create_sandbox(&self, _ctx: &TtrpcContext, req: CreateSandboxRequest) -> RpcResult<CreateSandboxResponse> {
        info!(sandbox = %req.sandbox_id, netns = %req.netns_path, "create sandbox");
        let config = convert::pod_config(req.options.as_ref())?;
        let spec = convert::pod_spec(&req.sandbox_id, &req.bundle_path, &req.netns_path, config.as_ref())?;
        // A `podcr.io/restore-from` pod is checked before any of it exists (see restore_from).
        self.annotation.plan(&spec).await?;
        self.controller.create(spec).await.map_err(wire)?;
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(&self, _ctx: &TtrpcContext, req: StartSandboxRequest) -> RpcResult<StartSandboxResponse> {
        let instance = self.controller.start(&req.sandbox_id).await.map_err(wire)?;
        let mut resp = StartSandboxResponse::new();
        resp.pid = instance.pid;
        resp.created_at = Some(convert::timestamp(instance.created_at)).into();
        Ok(resp)
    }

    async fn platform(&self, _ctx: &TtrpcContext, _req: PlatformRequest) -> RpcResult<PlatformResponse> {
        let mut platform = Platform::new();
        platform.os = "linux".into();
        platform.architecture = go_arch().into();
        let mut resp = PlatformResponse::new();
        resp.platform = Some(platform).into();
        Ok(resp)
    }

    async fn stop_sandbox(&self, _ctx: &TtrpcContext, req: StopSandboxRequest) -> RpcResult<StopSandboxResponse> {
        let timeout = Duration::from_secs(u64::from(req.timeout_secs));
        self.controller.stop(&req.sandbox_id, timeout).await.map_err(wire)?;
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(&self, _ctx: &TtrpcContext, req: WaitSandboxRequest) -> RpcResult<WaitSandboxResponse> {
        let exit = self.controller.wait(&req.sandbox_id).await.map_err(wire)?;
        let mut resp = WaitSandboxResponse::new();
        resp.exit_status = exit.code;
        resp.exited_at = Some(convert::timestamp(exit.at)).into();
        Ok(resp)
    }

    async fn sandbox_status(&self, _ctx: &TtrpcContext, req: SandboxStatusRequest) -> RpcResult<SandboxStatusResponse> {
        let status = self.controller.status(&req.sandbox_id).await.map_err(wire)?;
        let mut resp = SandboxStatusResponse::new();
        resp.sandbox_id = status.id;
        resp.pid = status.pid;
        resp.state = status.state.cri_name().into();
        resp.created_at = status.created_at.map(convert::timestamp).into();
        resp.exited_at = status.exited_at.map(convert::timestamp).into();
        Ok(resp)
    }

    async fn ping_sandbox(&self, _ctx: &TtrpcContext, req: PingRequest) -> RpcResult<PingResponse> {
        self.controller.status(&req.sandbox_id).await.map_err(wire)?;
        Ok(PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: ShutdownSandboxRequest,
    ) -> RpcResult<ShutdownSandboxResponse> {
        self.controller.shutdown(&req.sandbox_id).await.map_err(wire)?;
        // The server lets this reply leave before it stops (see `serve`): containerd treats a
        // connection closed before the reply as a failed shutdown.
        (self.on_shutdown)();
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: SandboxMetricsRequest,
    ) -> RpcResult<SandboxMetricsResponse> {
        // containerd 2.1's CRI reads the pod cgroup itself and never calls this (it first does
        // in 2.4); say so rather than return an empty metric the CRI would reject.
        Err(Error::unimplemented(format!("sandbox metrics for {}: read the pod cgroup", req.sandbox_id)).into())
    }

    async fn update_sandbox(&self, _ctx: &TtrpcContext, req: UpdateSandboxRequest) -> RpcResult<UpdateSandboxResponse> {
        // containerd 2.4's CRI sends the pod's new resources here after it has resized every
        // container's cgroup itself (UpdateContainerResources), and the pod cgroup parent is the
        // kubelet's: nothing is left for the shim to apply. It must still answer OK for its pod
        // (containerd treats an error as a failed pod resize) and NotFound for another one.
        self.controller.status(&req.sandbox_id).await.map_err(wire)?;
        let resources = req.resources.as_ref().map(|a| a.type_url.as_str()).unwrap_or("");
        info!(sandbox = %req.sandbox_id, resources, annotations = req.annotations.len(), "update sandbox");
        Ok(UpdateSandboxResponse::new())
    }

    async fn checkpoint_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: CheckpointSandboxRequest,
    ) -> RpcResult<CheckpointSandboxResponse> {
        Ok(self.restore.checkpoint(super::checkpoint_service::deadline(ctx), req).await?)
    }

    async fn restore_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: RestoreSandboxRequest,
    ) -> RpcResult<RestoreSandboxResponse> {
        Ok(self.restore.restore(super::checkpoint_service::deadline(ctx), req).await?)
    }
}
