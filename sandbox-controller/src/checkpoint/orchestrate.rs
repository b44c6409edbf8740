//! One pod checkpoint, end to end.
//!
//! The order is the point of this module. The peers (CRI-O's and containerd's pod checkpoint PRs)
//! dump containers one after another and package archives while the pod is frozen. Here the pod
//! is frozen once, every container is dumped in parallel and its writable layer captured as a
//! plain tar, the pod is thawed, and only then is anything compressed, hashed or fsynced. So the
//! freeze window is close to the slowest single dump.
//!
//! Every path out of the frozen section thaws the pod, including errors and the deadline, and
//! any failure removes what was written below `output_path`.
//!
//! The deadline. Once the pod is frozen and CRIU has started, its parasite code may be running
//! inside the pod's processes; killing CRIU then can take a process down with it, and a dump
//! that is merely abandoned goes on and, because CRIU restores the freezer state it found,
//! re-freezes the pod after our thaw. So the deadline is enforced where giving up is free: at
//! the barrier, before anything is frozen, the pod is frozen only if the time left covers the
//! backend's estimate of the dump. After that the dumps always run to their end (or until CRIU
//! itself gives up), the pod is thawed, and a dump that ended past the deadline is discarded and
//! answered with DeadlineExceeded, late. Packaging runs with the pod thawed: at the deadline
//! its threads are cancelled at their next chunk and joined before anything is cleaned up.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{future::join_all, stream::FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{criu_stats::CriuDumpStats, options::CheckpointOptions, package};
use crate::{
    archive::Cancel,
    backend::{ContainerInfo, DumpOptions, FreezeBarrier, PodBackend, RootfsCapture},
    controller::SandboxController,
    error::{Error, Result},
};

/// Working directory below `output_path` for CRIU images before they are packed; the CRI says
/// nothing may be written outside `output_path`, so staging lives inside it and goes at the end.
pub const STAGING_DIR: &str = ".podcr-staging";

/// One container the caller wants in the checkpoint, with what the CRI knows of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSelection {
    pub id: String,
    /// CRI container name; falls back to the backend's name for the container.
    pub name: Option<String>,
    /// CRI `ContainerConfig` as snake_case JSON.
    pub config: Option<serde_json::Value>,
    /// CRI `ContainerStatus` as snake_case JSON (becomes `status.dump`).
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct PodCheckpointRequest {
    pub sandbox_id: String,
    pub output_path: PathBuf,
    /// The CRI requires callers to bound the call; a checkpoint without one is refused.
    pub deadline: Option<tokio::time::Instant>,
    pub options: BTreeMap<String, String>,
    /// Exactly the containers to capture (the CRI's `container_ids`); each must be running. An
    /// empty list is refused rather than read as "all": the caller names what it restores.
    pub containers: Vec<ContainerSelection>,
    /// CRI `PodSandboxConfig` as snake_case JSON (becomes `pod.dump`); defaults to the one the pod
    /// was created with.
    pub pod_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCheckpointStats {
    pub id: String,
    pub name: String,
    pub criu: CriuDumpStats,
    pub dump_wall: Duration,
    pub rootfs_diff_bytes: u64,
    pub archive_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCheckpointStats {
    /// From the first container frozen to the last one thawed.
    pub freeze_window: Duration,
    /// Packaging after the thaw: metadata, tar, compression, hashing, fsync.
    pub write: Duration,
    pub total: Duration,
    pub total_bytes: u64,
    pub containers: Vec<ContainerCheckpointStats>,
}

/// A container chosen for the checkpoint, with where its files go.
pub(super) struct Target {
    pub info: ContainerInfo,
    pub selection: ContainerSelection,
    pub name: String,
    pub staging: PathBuf,
}

pub(super) struct Dumped {
    pub dump_wall: Duration,
    pub rootfs: RootfsCapture,
}

impl<B: PodBackend> SandboxController<B> {
    /// Checkpoints the pod: see the module docs for the order of events.
    pub async fn checkpoint(&self, req: PodCheckpointRequest) -> Result<PodCheckpointStats> {
        let started = Instant::now();
        let deadline =
            req.deadline.ok_or_else(|| Error::InvalidArgument("a deadline is required for a pod checkpoint".into()))?;
        let options = CheckpointOptions::parse(&req.options)?;
        // Opened and locked once; everything below goes through the descriptor (its
        // /proc/self/fd path), never through the caller's path again.
        let out_dir = crate::archive::OutputDir::open(&req.output_path)?;
        let output = out_dir.path().to_path_buf();
        let Ok(_exclusive) = self.exclusive.try_lock() else {
            return Err(Error::FailedPrecondition(format!(
                "pod {}: another checkpoint or restore is in progress",
                req.sandbox_id
            )));
        };
        let (spec, state) = self.snapshot(&req.sandbox_id).await?;
        state.check_checkpointable()?;
        // Before anything is frozen: a node without its key refuses rather than writing a
        // checkpoint no trusting node would restore.
        let signer = crate::archive::Signer::from_config(&self.signing_config()?)?.map(std::sync::Arc::new);
        let targets = self.select(&req, &output).await?;
        self.backend.checkpoint_begin(out_dir.given()).await?;

        let result = async {
            let (freeze_window, dumped) = self.freeze_and_dump(&targets, &options, deadline).await?;
            let write_started = Instant::now();
            let pod_config = req.pod_config.clone().or_else(|| spec.raw_config.clone());
            let backend = self.backend.identity().await;
            let cancel = Cancel::new();
            let pod = package::PodRecord { spec: &spec, pod_config, backend, signer: signer.clone() };
            let packaging = package::package_pod(&output, pod, &targets, &dumped, &options, &cancel);
            tokio::pin!(packaging);
            let packaged = tokio::select! {
                packaged = &mut packaging => packaged?,
                _ = tokio::time::sleep_until(deadline) => {
                    // The writer threads stop at their next chunk; wait for them, or a thread
                    // could still be writing while the cleanup below empties the output.
                    cancel.cancel();
                    let _ = packaging.await;
                    return Err(Error::DeadlineExceeded(
                        "writing the checkpoint: the pod is running, the partial output was removed".into(),
                    ));
                }
            };
            Ok::<_, Error>(PodCheckpointStats {
                freeze_window,
                write: write_started.elapsed(),
                total: Duration::ZERO,
                total_bytes: packaged.iter().map(|c| c.archive_bytes).sum(),
                containers: packaged,
            })
        }
        .await;

        let result = match result {
            Ok(mut stats) => {
                stats.total = started.elapsed();
                info!(pod = %req.sandbox_id, freeze_ms = stats.freeze_window.as_millis() as u64,
                      total_ms = stats.total.as_millis() as u64, bytes = stats.total_bytes, "pod checkpointed");
                Ok(stats)
            }
            Err(e) => {
                let e = e.reworded(&output.display().to_string(), &out_dir.given().display().to_string());
                warn!(pod = %req.sandbox_id, error = %e, "pod checkpoint failed");
                // The CRI contract: on error nothing the call wrote remains.
                if let Err(clean) = out_dir.clean() {
                    warn!(pod = %req.sandbox_id, error = %clean, "removing a failed checkpoint's files");
                }
                Err(e)
            }
        };
        // Only now: until the output is whole or cleaned, a crash must still be recoverable.
        self.backend.checkpoint_end().await;
        result
    }

    async fn select(&self, req: &PodCheckpointRequest, output: &Path) -> Result<Vec<Target>> {
        if req.containers.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "pod {}: a checkpoint needs the ids of the containers to capture",
                req.sandbox_id
            )));
        }
        let live = self.backend.containers().await?;
        let mut ids = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        let mut targets = Vec::with_capacity(req.containers.len());
        for selection in req.containers.iter().cloned() {
            if !ids.insert(selection.id.clone()) {
                return Err(Error::InvalidArgument(format!("container {} is listed twice", selection.id)));
            }
            let info = live
                .iter()
                .find(|c| c.id == selection.id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("container {} in pod {}", selection.id, req.sandbox_id)))?;
            if !info.running {
                return Err(Error::FailedPrecondition(format!("container {} ({}) is not running", info.name, info.id)));
            }
            let name = selection.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| info.name.clone());
            crate::archive::validate_container_name(&name)?;
            if !names.insert(name.clone()) {
                return Err(Error::InvalidArgument(format!("two containers are named {name:?}")));
            }
            let staging = output.join(STAGING_DIR).join(&name);
            targets.push(Target { info, selection, name, staging });
        }
        Ok(targets)
    }

    /// The frozen window: freeze all, dump all in parallel, stop or thaw all.
    async fn freeze_and_dump(
        &self,
        targets: &[Target],
        options: &CheckpointOptions,
        deadline: tokio::time::Instant,
    ) -> Result<(Duration, Vec<Dumped>)> {
        // One component at a time, each new (an existing one, e.g. planted, is refused), so no
        // mkdir ever follows a symlink inside the output directory.
        if let Some(root) = targets.first().and_then(|t| t.staging.parent()) {
            mkdir_new(root)?;
        }
        for t in targets {
            mkdir_new(&t.staging)?;
            mkdir_new(&t.staging.join(crate::archive::CHECKPOINT_DIR))?;
        }
        let ids: Vec<String> = targets.iter().map(|t| t.info.id.clone()).collect();
        if self.backend.prepared_dumps(&ids).await {
            return self.dump_behind_barrier(targets, &ids, options, deadline).await;
        }
        self.check_time_for_dump(&ids, deadline).await?;
        let frozen_at = Instant::now();
        if let Err(e) = self.backend.freeze(&ids).await {
            self.thaw_logged(&ids).await;
            return Err(e);
        }
        let dumps = join_all(targets.iter().map(|t| self.dump_one(t, options, None)));
        let outcome = run_to_end(dumps, deadline).await.into_iter().collect::<Result<Vec<_>>>();
        self.end_frozen_window(&ids, options, frozen_at, late(outcome, deadline, frozen_at)).await
    }

    /// The same, with the dumps started before the freeze: each waits at the barrier once only
    /// freezing and dumping is left, the pod is frozen when all are there, and they go on. So
    /// the dumps' start-up is outside the freeze window. If any dump fails or the deadline comes
    /// before all are ready, the others are told to give up and nothing was frozen.
    async fn dump_behind_barrier(
        &self,
        targets: &[Target],
        ids: &[String],
        options: &CheckpointOptions,
        deadline: tokio::time::Instant,
    ) -> Result<(Duration, Vec<Dumped>)> {
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let (go_tx, go_rx) = watch::channel(None);
        let barrier = FreezeBarrier { ready: ready_tx, go: go_rx };
        // Unordered, so a dump that fails before it is ready is seen at once, not at the deadline.
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let b = barrier.clone();
                async move { (i, self.dump_one(t, options, Some(b)).await) }
            })
            .collect();
        drop(barrier);
        let mut results: Vec<Option<Result<Dumped>>> = targets.iter().map(|_| None).collect();
        let mut ready = 0;
        let mut root_cause = None;
        let all_ready = loop {
            tokio::select! {
                r = ready_rx.recv() => match r {
                    Some(_) => {
                        ready += 1;
                        if ready == targets.len() {
                            break true;
                        }
                    }
                    None => break false,
                },
                Some((i, result)) = pending.next() => {
                    // Before everyone is ready, a finished dump either failed or went on without
                    // waiting to be frozen with the pod; either way the pod checkpoint is off.
                    root_cause = Some(result.err().unwrap_or_else(|| {
                        Error::runtime("dump", &targets[i].info.id, "went on without waiting to be frozen with the pod")
                    }));
                    break false;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    root_cause = Some(Error::DeadlineExceeded(
                        "preparing the pod's dumps: nothing was frozen, the pod is running".into(),
                    ));
                    break false;
                }
            }
        };
        if !all_ready {
            let _ = go_tx.send(Some(false));
            // Told to give up, the waiting dumps fail at once (their errors only echo that).
            while let Some((_, result)) = pending.next().await {
                if root_cause.is_none() {
                    root_cause = result.err();
                }
            }
            return Err(root_cause.unwrap_or_else(|| {
                Error::DeadlineExceeded("preparing the pod's dumps: nothing was frozen, the pod is running".into())
            }));
        }
        // The last point where giving up costs nothing: every CRIU waits before its freeze.
        if let Err(e) = self.check_time_for_dump(ids, deadline).await {
            let _ = go_tx.send(Some(false));
            while pending.next().await.is_some() {}
            return Err(e);
        }
        let frozen_at = Instant::now();
        if let Err(e) = self.backend.freeze(ids).await {
            let _ = go_tx.send(Some(false));
            while pending.next().await.is_some() {}
            self.thaw_logged(ids).await;
            return Err(e);
        }
        let _ = go_tx.send(Some(true));
        run_to_end(
            async {
                while let Some((i, result)) = pending.next().await {
                    results[i] = Some(result);
                }
            },
            deadline,
        )
        .await;
        let outcome = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::runtime("dump", "", "a dump never finished"))))
            .collect::<Result<Vec<_>>>();
        self.end_frozen_window(ids, options, frozen_at, late(outcome, deadline, frozen_at)).await
    }

    /// Stops the containers if the checkpoint succeeded and the pod is not to keep running, then
    /// thaws the pod; returns the freeze window and the dumps.
    async fn end_frozen_window(
        &self,
        ids: &[String],
        options: &CheckpointOptions,
        frozen_at: Instant,
        outcome: Result<Vec<Dumped>>,
    ) -> Result<(Duration, Vec<Dumped>)> {
        if outcome.is_ok() && !options.leave_running {
            // Kill while still frozen: the signal is delivered on thaw, so nothing runs (or
            // writes) between the dump and the stop.
            for id in ids {
                if let Err(e) = self.backend.kill(id).await {
                    warn!(container = %id, error = %e, "stopping a checkpointed container");
                }
            }
        }
        self.thaw_logged(ids).await;
        Ok((frozen_at.elapsed(), outcome?))
    }

    async fn dump_one(
        &self,
        t: &Target,
        options: &CheckpointOptions,
        barrier: Option<FreezeBarrier>,
    ) -> Result<Dumped> {
        let go = barrier.clone();
        let dump_opts = DumpOptions {
            image_dir: t.staging.join(crate::archive::CHECKPOINT_DIR),
            work_dir: t.staging.clone(),
            tcp_established: options.tcp_established,
            file_locks: options.file_locks,
            barrier,
        };
        // The writable layer is captured while the pod is frozen: behind a barrier, only once
        // the controller says go, and not at all when this container's dump already failed
        // (a capture is never abandoned half-way: it writes files the cleanup must see).
        let dump_failed = tokio::sync::Notify::new();
        let dump = async {
            let result = self.backend.dump(&t.info.id, &dump_opts).await;
            if result.is_err() {
                dump_failed.notify_one();
            }
            result
        };
        let capture = async {
            if let Some(go) = go {
                let proceed = tokio::select! {
                    word = go.wait_go() => word,
                    _ = dump_failed.notified() => false,
                };
                if !proceed {
                    return Err(Error::runtime("capture rootfs", &t.info.id, "the pod checkpoint was given up"));
                }
            }
            self.backend.capture_rootfs(&t.info.id, &t.staging).await
        };
        let (dump, rootfs) = tokio::join!(dump, capture);
        let dump = dump.map_err(|e| name_container(e, &t.name))?;
        let rootfs = rootfs.map_err(|e| name_container(e, &t.name))?;
        Ok(Dumped { dump_wall: dump.wall, rootfs })
    }

    /// Refuses to freeze the pod when the deadline leaves less time than the dump is expected
    /// to take (see the module docs): better a clean DeadlineExceeded now than a pod held frozen
    /// past the caller's deadline.
    async fn check_time_for_dump(&self, ids: &[String], deadline: tokio::time::Instant) -> Result<()> {
        let estimate = self.backend.dump_estimate(ids).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || left < estimate {
            return Err(Error::DeadlineExceeded(format!(
                "{:.1}s left before the deadline, the dump is estimated at {:.1}s: nothing was frozen, the pod is running",
                left.as_secs_f64(),
                estimate.as_secs_f64()
            )));
        }
        Ok(())
    }

    async fn thaw_logged(&self, ids: &[String]) {
        if let Err(e) = self.backend.thaw(ids).await {
            // Nothing else can be done from here; say it loudly, the pod may be stuck frozen.
            warn!(error = %e, "THAW FAILED: the pod may remain frozen");
        }
    }
}

/// Drives the running dumps to their end whatever the deadline (see the module docs); only says
/// so in the log when they outlive it.
async fn run_to_end<F: std::future::Future>(dumps: F, deadline: tokio::time::Instant) -> F::Output {
    tokio::pin!(dumps);
    tokio::select! {
        out = &mut dumps => return out,
        _ = tokio::time::sleep_until(deadline) => {}
    }
    warn!("deadline passed while the frozen pod is dumped; letting the dumps finish before the thaw (stopping them could kill the pod's processes)");
    dumps.await
}

/// A dump that ended after the deadline is not kept: the caller has stopped waiting for it.
/// The message says when, counted from the freeze, so an operator can compare it with the dump.
fn late<T>(outcome: Result<T>, deadline: tokio::time::Instant, frozen_at: Instant) -> Result<T> {
    let now = tokio::time::Instant::now();
    if outcome.is_err() || now < deadline {
        return outcome;
    }
    let dumped = frozen_at.elapsed();
    let passed_at = dumped.saturating_sub(now - deadline);
    Err(Error::DeadlineExceeded(format!(
        "the deadline passed {} ms after the pod was frozen, while it was dumped ({} ms): the dump was let \
         finish, the pod thawed and the output removed",
        passed_at.as_millis(),
        dumped.as_millis()
    )))
}

/// Errors from one container's dump say which container failed.
fn name_container(e: Error, name: &str) -> Error {
    match e {
        Error::Runtime { op, id, msg } => Error::Runtime { op, id: format!("{id} ({name})"), msg },
        other => other,
    }
}

/// Creates one new directory, mode 0700; refuses one that exists (or a symlink in its place).
fn mkdir_new(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::AlreadyExists(format!("{} exists in the output directory; refusing to use it", path.display()))
        }
        _ => Error::io(format!("create {}", path.display()))(e),
    })
}

pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(Error::io(format!("create {}", path.display())))
}
