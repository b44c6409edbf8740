//! `containerd.runtime.sandbox.v1.Checkpoint` (containerd PR 13822) over the pod controller.
//!
//! The controller's work runs in its own task, not in the RPC's future: ttrpc drops a handler's
//! future when the caller's deadline passes, and a checkpoint dropped between freeze and thaw
//! would leave the pod frozen. The task carries a deadline a little earlier than the caller's,
//! so a checkpoint refused before the freeze, or cut short while packaging, answers
//! DeadlineExceeded itself in time. A dump already running when the deadline passes is let
//! finish (see the controller's `checkpoint::orchestrate`); its answer then comes after the
//! caller stopped waiting, and the task still thaws the pod and removes the output.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_cri::v1::{ContainerConfig, ContainerStatus, PodSandboxConfig};
use podcr_protos::{
    checkpoint::{
        CheckpointRequest, CheckpointResponse, CheckpointStats, ContainerCheckpointStats, RestoreRequest,
        RestoreResponse, RestoredContainer,
    },
    checkpoint_ttrpc::Checkpoint,
};
use podcr_sandbox_controller::{
    backend::PodBackend,
    checkpoint::orchestrate::{ContainerSelection, PodCheckpointRequest, PodCheckpointStats},
    restore::{PodRestoreRequest, RestoreSelection},
    SandboxController,
};
use tracing::info;
use ttrpc::r#async::TtrpcContext;

use super::convert::{self, CONTAINER_CONFIG_TYPE, CONTAINER_STATUS_TYPE, POD_SANDBOX_CONFIG_TYPE};
use super::observe::{Observer, Outcome};
use crate::error::Error;

/// Time kept back from the caller's deadline to thaw, clean up and reply.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

pub struct CheckpointService<B: PodBackend> {
    controller: Arc<SandboxController<B>>,
    observer: Arc<Observer>,
}

impl<B: PodBackend> CheckpointService<B> {
    pub fn new(controller: Arc<SandboxController<B>>, observer: Arc<Observer>) -> Self {
        CheckpointService { controller, observer }
    }
}

pub(super) fn deadline(ctx: &TtrpcContext) -> Option<tokio::time::Instant> {
    (ctx.timeout_nano > 0).then(|| {
        let budget = Duration::from_nanos(ctx.timeout_nano as u64);
        tokio::time::Instant::now() + budget.saturating_sub(DEADLINE_MARGIN.min(budget / 10))
    })
}

pub(super) fn options(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Runs `work` detached from the RPC future (see the module docs) and waits for it.
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = podcr_sandbox_controller::Result<T>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work).await.map_err(Error::join("checkpoint task"))?.map_err(Error::from)
}

/// Checkpoints the pod detached from the RPC (see [`detached`]) and reports the outcome, success
/// or failure, to `observer`: how both wire adaptors (PR 13822's and PR 13971's) run one.
pub(super) async fn observed_checkpoint<B: PodBackend>(
    controller: &Arc<SandboxController<B>>,
    observer: &Observer,
    request: PodCheckpointRequest,
    containers: usize,
) -> Result<PodCheckpointStats, Error> {
    let (sandbox_id, path) = (request.sandbox_id.clone(), request.output_path.clone());
    let controller = controller.clone();
    let started = std::time::Instant::now();
    let result = detached(async move { controller.checkpoint(request).await }).await;
    let outcome = Outcome {
        sandbox_id: &sandbox_id,
        path: &path,
        elapsed: started.elapsed(),
        containers,
        error: result.as_ref().err().map(ToString::to_string),
    };
    observer.checkpointed(&outcome, result.as_ref().ok());
    result
}

fn stats_to_wire(stats: &PodCheckpointStats) -> CheckpointStats {
    let mut out = CheckpointStats::new();
    out.freeze_window_us = stats.freeze_window.as_micros() as u64;
    out.write_us = stats.write.as_micros() as u64;
    out.total_us = stats.total.as_micros() as u64;
    out.total_bytes = stats.total_bytes;
    out.containers = stats
        .containers
        .iter()
        .map(|c| {
            let mut w = ContainerCheckpointStats::new();
            w.id = c.id.clone();
            w.name = c.name.clone();
            w.criu_freezing_time_us = c.criu.freezing_time_us;
            w.criu_frozen_time_us = c.criu.frozen_time_us;
            w.criu_memdump_time_us = c.criu.memdump_time_us;
            w.criu_memwrite_time_us = c.criu.memwrite_time_us;
            w.pages_written = c.criu.pages_written;
            w.dump_wall_us = c.dump_wall.as_micros() as u64;
            w.rootfs_diff_bytes = c.rootfs_diff_bytes;
            w.archive_bytes = c.archive_bytes;
            w
        })
        .collect();
    out
}

#[async_trait]
impl<B: PodBackend> Checkpoint for CheckpointService<B> {
    async fn checkpoint(&self, ctx: &TtrpcContext, req: CheckpointRequest) -> ttrpc::Result<CheckpointResponse> {
        info!(sandbox = %req.sandbox_id, output = %req.output_path, "checkpoint pod");
        let containers = req
            .containers
            .iter()
            .map(|c| {
                Ok(ContainerSelection {
                    id: c.id.clone(),
                    name: (!c.name.is_empty()).then(|| c.name.clone()),
                    config: convert::cri_any_json::<ContainerConfig>(c.config.as_ref(), CONTAINER_CONFIG_TYPE)?,
                    status: convert::cri_any_json::<ContainerStatus>(c.status.as_ref(), CONTAINER_STATUS_TYPE)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let request = PodCheckpointRequest {
            sandbox_id: req.sandbox_id.clone(),
            output_path: PathBuf::from(&req.output_path),
            deadline: deadline(ctx),
            options: options(&req.options),
            containers,
            pod_config: convert::cri_any_json::<PodSandboxConfig>(
                req.sandbox_config.as_ref(),
                POD_SANDBOX_CONFIG_TYPE,
            )?,
        };
        let stats = observed_checkpoint(&self.controller, &self.observer, request, req.containers.len()).await?;
        let mut resp = CheckpointResponse::new();
        resp.podcr_stats = Some(stats_to_wire(&stats)).into();
        Ok(resp)
    }

    async fn restore(&self, ctx: &TtrpcContext, req: RestoreRequest) -> ttrpc::Result<RestoreResponse> {
        info!(sandbox = %req.sandbox_id, checkpoint = %req.checkpoint_path, "restore pod");
        let request = PodRestoreRequest {
            sandbox_id: req.sandbox_id.clone(),
            checkpoint_path: PathBuf::from(&req.checkpoint_path),
            deadline: deadline(ctx),
            options: options(&req.options),
            // RestorePod: the configs are the caller's, and the controller holds the checkpoint
            // to them (restore::policy) before anything is staged.
            containers: req
                .containers
                .iter()
                .map(|c| {
                    Ok(RestoreSelection {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        config: convert::cri_any_json::<ContainerConfig>(c.config.as_ref(), CONTAINER_CONFIG_TYPE)?,
                        spec: None,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?,
            pod_config: convert::cri_any_json::<PodSandboxConfig>(
                req.sandbox_config.as_ref(),
                POD_SANDBOX_CONFIG_TYPE,
            )?,
        };
        let controller = self.controller.clone();
        let (started, count) = (std::time::Instant::now(), req.containers.len());
        let result = detached(async move { controller.restore(request).await }).await;
        self.observer.restored(&Outcome {
            sandbox_id: &req.sandbox_id,
            path: std::path::Path::new(&req.checkpoint_path),
            elapsed: started.elapsed(),
            containers: count,
            error: result.as_ref().err().map(ToString::to_string),
        });
        let restored = result?;
        let mut resp = RestoreResponse::new();
        resp.containers = restored
            .into_iter()
            .map(|r| {
                let mut w = RestoredContainer::new();
                w.name = r.name;
                w.podcr_original_id = r.original_id;
                w
            })
            .collect();
        Ok(resp)
    }
}
