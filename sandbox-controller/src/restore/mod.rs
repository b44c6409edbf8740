//! Pod restore, the runtime's half (containerd PR 13822 `Checkpoint.Restore`).
//!
//! By the time this runs the caller (containerd's CRI, or `podcr restore` today) has created the
//! new pod and its containers, so their ids are known. Restore validates the checkpoint without
//! modifying it, extracts each chosen container's archive into a private staging directory of
//! the new pod, and stages it with the backend: when containerd then creates the container's task,
//! the backend restores it with CRIU instead of starting it fresh. Nothing travels through
//! containerd's content store. Any failure unstages and removes everything staged so far.
//!
//! Before anything is staged each container is held to [`policy`]: the caller's configs (CRI
//! configs on the RPCs, the OCI spec containerd generated on Task.Create) must agree with what the
//! checkpoint is authoritative for and grant every privilege it needs. [`from_annotation`]
//! resolves the `podcr.io/restore-from` annotation of a pod the kubelet creates.

pub mod from_annotation;
pub mod policy;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::{
    archive::{self, Cancel, Limits, PodCheckpoint, TrustPolicy},
    backend::{BackendIdentity, PodBackend, RestoreStage},
    checkpoint::options::{parse_bool, CheckpointOptions},
    controller::SandboxController,
    error::{Error, Result},
};

/// Staging directory for extracted checkpoints below the pod's bundle work dir (on disk, not the
/// tmpfs bundle: CRIU images can be as large as the pod's memory).
pub const RESTORE_DIR: &str = "podcr-restore";

/// Annotation keys in `pod.options` recording the CRIU options of the dump; restore must use the
/// same ones (a dump with established TCP connections needs a restore with them).
pub const ANNOTATION_TCP: &str = "io.podcr.checkpoint.tcp-established";
pub const ANNOTATION_FILE_LOCKS: &str = "io.podcr.checkpoint.file-locks";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreSelection {
    /// The new container's id (already created by the caller).
    pub id: String,
    /// Its CRI name, which selects the container in the checkpoint.
    pub name: String,
    /// The caller's CRI `ContainerConfig` (snake_case JSON), when the wire carries it.
    pub config: Option<serde_json::Value>,
    /// The OCI spec the runtime will apply, when known (Task.Create of an annotation restore).
    pub spec: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
pub struct PodRestoreRequest {
    pub sandbox_id: String,
    pub checkpoint_path: PathBuf,
    pub deadline: Option<tokio::time::Instant>,
    pub options: BTreeMap<String, String>,
    pub containers: Vec<RestoreSelection>,
    /// The caller's CRI `PodSandboxConfig` (snake_case JSON), when the wire carries it.
    pub pod_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredContainer {
    pub id: String,
    pub name: String,
    /// The container's id when it was checkpointed.
    pub original_id: String,
}

/// The CRIU flags a checkpoint was dumped with, read back from `pod.options`.
pub fn dump_flags(ckpt: &PodCheckpoint) -> (bool, bool) {
    let flag = |key: &str| ckpt.options.annotations.get(key).is_some_and(|v| parse_bool(key, v).unwrap_or(false));
    (flag(ANNOTATION_TCP), flag(ANNOTATION_FILE_LOCKS))
}

/// Records the dump's CRIU flags where [`dump_flags`] finds them.
pub fn record_dump_flags(annotations: &mut BTreeMap<String, String>, options: &CheckpointOptions) {
    annotations.insert(ANNOTATION_TCP.into(), options.tcp_established.to_string());
    annotations.insert(ANNOTATION_FILE_LOCKS.into(), options.file_locks.to_string());
}

struct Staged {
    selection: RestoreSelection,
    original_id: String,
    stage: RestoreStage,
}

impl<B: PodBackend> SandboxController<B> {
    pub async fn restore(&self, req: PodRestoreRequest) -> Result<Vec<RestoredContainer>> {
        let deadline =
            req.deadline.ok_or_else(|| Error::InvalidArgument("a deadline is required for a pod restore".into()))?;
        if let Some(key) = req.options.keys().next() {
            return Err(Error::InvalidArgument(format!("unknown restore option {key:?} (none are supported)")));
        }
        if req.containers.is_empty() {
            return Err(Error::InvalidArgument("restore needs the containers created for it".into()));
        }
        let Ok(_exclusive) = self.exclusive.try_lock() else {
            return Err(Error::FailedPrecondition(format!(
                "pod {}: another checkpoint or restore is in progress",
                req.sandbox_id
            )));
        };
        let (spec, _state) = self.snapshot(&req.sandbox_id).await?;
        let staging_root = staging_root(&spec.bundle);
        let checkpoint = req.checkpoint_path.clone();
        let selections = req.containers.clone();
        let pod_config = req.pod_config.clone();
        let root = staging_root.clone();
        let cancel = Cancel::new();
        let trust = TrustPolicy::from_config(&self.signing_config()?)?;
        let backend = self.backend.identity().await;
        let extraction = tokio::task::spawn_blocking({
            let cancel = cancel.clone();
            move || extract_all(&checkpoint, &trust, &selections, pod_config.as_ref(), &backend, &root, &cancel)
        });
        tokio::pin!(extraction);
        let extracted = tokio::select! {
            joined = &mut extraction => joined,
            _ = tokio::time::sleep_until(deadline) => {
                // The extraction threads stop at their next chunk. Join them before removing the
                // staging and before the pod's lock is released (on return), so nothing is
                // written after this call answered and a second restore starts from nothing.
                cancel.cancel();
                let _ = extraction.await;
                discard_selected(staging_root.clone(), req.containers.clone()).await;
                let e = Error::DeadlineExceeded(
                    "validating and extracting the checkpoint: nothing was restored or left behind".into(),
                );
                // The caller's own deadline may fire first and hide this answer: log it.
                warn!(pod = %req.sandbox_id, error = %e, "pod restore failed");
                return Err(e);
            }
        };
        let staged = match extracted {
            Ok(Ok(staged)) => staged,
            Ok(Err(e)) => return Err(e),
            Err(join) => {
                return Err(Error::Io {
                    context: "restore extraction task".into(),
                    source: std::io::Error::other(join),
                })
            }
        };

        let mut done: Vec<String> = Vec::new();
        for s in &staged {
            if let Err(e) = self.backend.stage_restore(&s.selection.id, s.stage.clone()).await {
                for id in &done {
                    if let Err(u) = self.backend.unstage_restore(id).await {
                        warn!(container = %id, error = %u, "unstage after a failed restore");
                    }
                }
                discard_selected(staging_root.clone(), req.containers.clone()).await;
                return Err(e);
            }
            done.push(s.selection.id.clone());
        }
        info!(pod = %req.sandbox_id, containers = staged.len(), "pod restore staged");
        Ok(staged
            .into_iter()
            .map(|s| RestoredContainer { id: s.selection.id, name: s.selection.name, original_id: s.original_id })
            .collect())
    }
}

fn staging_root(bundle: &Path) -> PathBuf {
    let work = bundle.join("work");
    let base = if work.is_dir() { work } else { bundle.to_path_buf() };
    base.join(RESTORE_DIR)
}

/// Removes the staging of the selected containers only: a pod the kubelet restores container by
/// container has others staged (or running from their staging) next to them.
fn remove_selected(root: &Path, selections: &[RestoreSelection]) {
    for s in selections {
        remove_staging(&root.join(&s.name));
    }
    // Gone once empty; another container's staging keeps it.
    let _ = std::fs::remove_dir(root);
}

/// [`remove_selected`] on the blocking pool: the staging holds extracted CRIU images, as large
/// as the pod's memory, and the runtime has only a couple of async workers.
async fn discard_selected(root: PathBuf, selections: Vec<RestoreSelection>) {
    let _ = tokio::task::spawn_blocking(move || remove_selected(&root, &selections)).await;
}

fn remove_staging(root: &Path) {
    if let Err(e) = std::fs::remove_dir_all(root) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %root.display(), error = %e, "remove restore staging");
        }
    }
}

/// Validates the checkpoint (its signature against `trust` first) and extracts every selected
/// container, at most [`Limits::max_parallel`] at a time, each bounded by the sizes the signed
/// manifest gives it; on error (or once `cancel` is cancelled) removes all of it, after every
/// extraction thread has stopped.
fn extract_all(
    checkpoint: &Path,
    trust: &TrustPolicy,
    selections: &[RestoreSelection],
    pod_config: Option<&serde_json::Value>,
    backend: &BackendIdentity,
    root: &Path,
    cancel: &Cancel,
) -> Result<Vec<Staged>> {
    let result = (|| {
        let limits = Limits::default();
        let ckpt = archive::open_pod_dir(checkpoint, &limits, trust)?;
        if let Some(key) = &ckpt.signer {
            info!(checkpoint = %checkpoint.display(), key, "checkpoint signature verified");
        }
        check_compatible(&ckpt)?;
        check_runtime(&ckpt, backend)?;
        let (tcp_established, file_locks) = dump_flags(&ckpt);
        crate::checkpoint::orchestrate::create_private_dir(root)?;
        // Resolve every container first, so a missing one fails before any extraction starts.
        let jobs = selections
            .iter()
            .map(|selection| {
                let entry = ckpt.manifest.containers.iter().find(|c| c.name == selection.name).ok_or_else(|| {
                    let known: Vec<&str> = ckpt.manifest.containers.iter().map(|c| c.name.as_str()).collect();
                    Error::NotFound(format!(
                        "container {:?} is not in the checkpoint (it has {known:?})",
                        selection.name
                    ))
                })?;
                let digest = ckpt
                    .manifest
                    .files
                    .get(&entry.archive)
                    .ok_or_else(|| Error::Archive(format!("manifest lists no digest for {}", entry.archive)))?;
                // The signed manifest says what each archive unpacks to: nothing beyond it is
                // decompressed or written.
                let bounded = limits.within(entry.unpacked);
                Ok((selection, entry, digest, bounded))
            })
            .collect::<Result<Vec<_>>>()?;
        // Older checkpoints say only the compressed size, a lower bound of what is written.
        let needed = jobs.iter().fold(0u64, |a, (_, e, d, _)| a.saturating_add(e.unpacked.map_or(d.size, |u| u.bytes)));
        archive::check_free_space(root, needed, limits.min_free_bytes)?;
        // Each entry of an archive is a file or directory: the signed manifest's entry counts
        // (or the reader's cap) must fit in the free inodes too.
        let inodes =
            jobs.iter().fold(0u64, |a, (_, e, _, l)| a.saturating_add(e.unpacked.map_or(l.max_entries, |u| u.entries)));
        archive::check_free_inodes(root, inodes)?;
        // A bounded pool: extraction is hashing, decompressing and copying, and each worker
        // holds a decompressor's window and buffers, so a 64-container pod does not make 64.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = limits.max_parallel.clamp(1, jobs.len().max(1));
        let mut results: Vec<(usize, Result<Staged>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (ckpt, jobs, next) = (&ckpt, &jobs, &next);
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let Some((selection, entry, digest, bounded)) = jobs.get(i) else { return done };
                            let dest = root.join(&selection.name);
                            // An earlier attempt for this name (a container the kubelet retries
                            // after a failed restore) left its staging; start from nothing.
                            remove_staging(&dest);
                            let archive = ckpt.dir.join(&entry.archive);
                            let staged = archive::extract_container_archive_verified_until(
                                &archive, digest, &dest, bounded, cancel,
                            )
                            // One failed container fails the restore: stop the others early.
                            .inspect_err(|_| cancel.cancel())
                            .map_err(|e| match Error::from(e) {
                                // Say which container archive is damaged, not only which entry.
                                Error::Archive(m) => Error::Archive(format!("{}: {m}", entry.archive)),
                                other => other,
                            })
                            .and_then(|extracted| {
                                // Held to the policy on verified metadata, before anything is staged.
                                if let Err(e) = check_selection(selection, pod_config, ckpt, &extracted) {
                                    cancel.cancel();
                                    remove_staging(&dest);
                                    return Err(e);
                                }
                                Ok(extracted)
                            })
                            .map(|extracted| Staged {
                                selection: (*selection).clone(),
                                original_id: entry.id.clone(),
                                stage: RestoreStage {
                                    image_dir: extracted.dir.join(archive::CHECKPOINT_DIR),
                                    work_dir: extracted.dir.clone(),
                                    rootfs_diff: extracted.rootfs_diff.clone(),
                                    deleted: extracted.deleted_files.clone(),
                                    tcp_established,
                                    file_locks,
                                },
                            });
                            done.push((i, staged));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![(usize::MAX, Err(Error::Archive("an extraction thread panicked".into())))]
                    })
                })
                .collect()
        });
        results.sort_by_key(|(i, _)| *i);
        // Report the container that failed, not one it cancelled.
        let (ok, errs): (Vec<_>, Vec<_>) = results.into_iter().map(|(_, r)| r).partition(|r| r.is_ok());
        if let Some(e) =
            errs.into_iter().filter_map(Result::err).min_by_key(|e| e.to_string().contains(archive::CANCELLED))
        {
            return Err(e);
        }
        ok.into_iter().collect::<Result<Vec<_>>>()
    })();
    if result.is_err() {
        remove_selected(root, selections);
    }
    result
}

/// Checks one container's request against the checkpoint (see [`policy`]): the request's CRI
/// config and OCI spec, where given, against the checkpoint's CRI config (with its pod config)
/// and against the spec it ran with.
pub fn check_selection(
    selection: &RestoreSelection,
    pod_config: Option<&serde_json::Value>,
    ckpt: &PodCheckpoint,
    extracted: &archive::ExtractedContainer,
) -> Result<()> {
    let ckpt_pod = (!ckpt.pod_config.is_null()).then_some(&ckpt.pod_config);
    check_request(
        &selection.name,
        selection.config.as_ref(),
        pod_config,
        selection.spec.as_ref(),
        ckpt_pod,
        extracted.cri_config.as_ref(),
        &extracted.spec,
    )
}

/// [`check_selection`] over the parts: `config`/`pod_config`/`spec` are the request, `ckpt_pod`
/// the checkpoint's `pod.dump`, `ckpt_config`/`ckpt_spec` the container's
/// `container-config.dump` and `spec.dump`.
pub fn check_request(
    name: &str,
    config: Option<&serde_json::Value>,
    pod_config: Option<&serde_json::Value>,
    spec: Option<&serde_json::Value>,
    ckpt_pod: Option<&serde_json::Value>,
    ckpt_config: Option<&serde_json::Value>,
    ckpt_spec: &serde_json::Value,
) -> Result<()> {
    use policy::{check_container, ContainerView};
    let mut requests = Vec::new();
    if let Some(config) = config {
        requests.push(ContainerView::from_cri(config, pod_config));
    }
    if let Some(spec) = spec {
        requests.push(ContainerView::from_oci(spec));
    }
    // The checkpoint's CRI config first: it says "privileged" where the spec only shows its caps.
    let mut checkpoints: Vec<ContainerView> =
        ckpt_config.map(|c| ContainerView::from_cri(c, ckpt_pod)).into_iter().collect();
    checkpoints.push(ContainerView::from_oci(ckpt_spec));
    for r in &requests {
        for c in &checkpoints {
            check_container(name, r, c)?;
        }
    }
    Ok(())
}

/// A checkpoint is only as portable as CRIU images are: same CPU architecture. Callers that
/// create a pod for a restore check this first, so an incompatible checkpoint is refused before
/// anything exists; the runtime is checked by the backend that restores (see [`check_runtime`]).
pub fn check_compatible(ckpt: &PodCheckpoint) -> Result<()> {
    let arch = std::env::consts::ARCH;
    if ckpt.manifest.arch != arch {
        return Err(Error::FailedPrecondition(format!(
            "checkpoint was made on {} and cannot be restored on {arch}",
            ckpt.manifest.arch
        )));
    }
    Ok(())
}

/// The images were written for one runtime (a runc checkpoint holds CRIU images of runc
/// containers): only a backend of that name can restore them. Checkpoints made before the
/// backend identity existed say `runc`, which is what the runc backend is called.
pub fn check_runtime(ckpt: &PodCheckpoint, backend: &BackendIdentity) -> Result<()> {
    if ckpt.manifest.runtime != backend.runtime {
        return Err(Error::FailedPrecondition(format!(
            "checkpoint was made for runtime {:?}; this pod runs on {:?}",
            ckpt.manifest.runtime, backend.runtime
        )));
    }
    Ok(())
}
