//! The runc + CRIU implementation of the controller's [`PodBackend`].
//!
//! Pod resources (files, holder) are this module's own; containers are the Task service's
//! ([`Containers`]), driven through its store handle so that a checkpointed or restored container
//! is the same object containerd manages, with the same events.

use std::{
    collections::HashMap,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use podcr_sandbox_controller::{
    archive,
    backend::{
        BackendIdentity, ContainerInfo, DumpOptions, DumpOutcome, PodAnchor, PodBackend, PodCheckpoint, PodRestore,
        PodSpec, PreparedDumps, RestoreStage, RootfsCapture,
    },
    Error as CtlError, Result as CtlResult,
};
use tracing::{info, warn};

use super::{
    anchor::Holder,
    cgroup::PodCgroup,
    criu_hook::{self, Barrier},
    dump_estimate,
    files::PodFiles,
    freezer::{self, Freezer},
    holder::HolderConfig,
    recovery::{self, Marker},
};
use crate::{
    runc_error::Error,
    task::{CheckpointArgs, Containers, RestoreArgs, Status},
};

const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
const SIGKILL: u32 = 9;
/// This backend's name in checkpoints; the only runtime whose checkpoints it restores. Older
/// podcr wrote this same name as a constant.
const RUNTIME: &str = "runc";
const DUMPER: &str = "criu";
/// What the CRI's pause path sets in every pod with its own network namespace.
const DEFAULT_POD_SYSCTLS: [(&str, &str); 2] =
    [("net.ipv4.ip_unprivileged_port_start", "0"), ("net.ipv4.ping_group_range", "0 2147483647")];

#[derive(Default)]
struct PodResources {
    files: Option<PodFiles>,
    cgroup: Option<PodCgroup>,
    holder: Option<Holder>,
    /// Freezers of the containers frozen by the running checkpoint, so thaw reaches exactly
    /// those even if a container died meanwhile.
    frozen: HashMap<String, Freezer>,
    /// The sandbox bundle, where the checkpoint recovery marker goes.
    bundle: Option<std::path::PathBuf>,
    /// The marker of the running checkpoint, as last written.
    recovery: Option<Marker>,
}

pub struct RuncPodBackend {
    store: Containers,
    pod: Mutex<PodResources>,
}

impl RuncPodBackend {
    pub fn new(store: Containers) -> Self {
        RuncPodBackend { store, pod: Mutex::new(PodResources::default()) }
    }

    fn pod(&self) -> std::sync::MutexGuard<'_, PodResources> {
        // Poisoning means a panic mid-update of plain data; keep going with what is there.
        self.pod.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The version `binary --version` prints after `prefix`, or empty when it cannot tell.
async fn version_line(binary: &Path, prefix: &str) -> String {
    // Through the reaper-aware runner: a plain Command::output() races the shim's
    // waitpid(-1) loop for the exit status.
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--version");
    match crate::reaper::run(cmd, crate::reaper::Io::Capture(None)).await {
        Ok(out) if out.status == 0 => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_string()))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::runc_error::Result<T> + Send + 'static,
) -> CtlResult<T> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(Error::join("pod backend task"))??)
}

fn holder_config(spec: &PodSpec) -> HolderConfig {
    let own_netns = spec.netns_path.is_some();
    let mut sysctls: Vec<(String, String)> = Vec::new();
    if own_netns {
        sysctls.extend(DEFAULT_POD_SYSCTLS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }
    // Only namespaced keys of namespaces the pod owns: anything else would change the host.
    for (k, v) in &spec.sysctls {
        let owned = (own_netns && k.starts_with("net."))
            || (!spec.host_ipc
                && (k.starts_with("kernel.shm")
                    || k.starts_with("kernel.msg")
                    || k == "kernel.sem"
                    || k.starts_with("fs.mqueue.")));
        if owned {
            sysctls.retain(|(key, _)| key != k);
            sysctls.push((k.clone(), v.clone()));
        } else {
            warn!(sysctl = %k, "not a namespaced sysctl of this pod; ignored");
        }
    }
    HolderConfig {
        netns: spec.netns_path.clone(),
        // hostNetwork pods share the host's UTS namespace, as with the CRI's pause container.
        hostname: own_netns.then(|| {
            if spec.hostname.is_empty() {
                spec.id.chars().take(12).collect()
            } else {
                spec.hostname.clone()
            }
        }),
        new_ipc: !spec.host_ipc,
        new_pid: spec.share_pid && !spec.host_pid,
        sysctls,
    }
}

#[async_trait]
impl PodBackend for RuncPodBackend {
    async fn create_pod(&self, spec: &PodSpec) -> CtlResult<()> {
        // From now on Task.Shutdown for a container must not end the shim: the pod owns it.
        self.store.set_sandboxed(true);
        let files = PodFiles::for_bundle(&spec.bundle, &spec.id).map_err(CtlError::from)?;
        {
            let mut pod = self.pod();
            pod.files = Some(files.clone());
            pod.bundle = Some(spec.bundle.clone());
        }
        let spec = spec.clone();
        blocking(move || files.create(&spec)).await
    }

    async fn start_pod(&self, spec: &PodSpec) -> CtlResult<PodAnchor> {
        let (holder, exit) = Holder::spawn(&holder_config(spec)).await.map_err(CtlError::from)?;
        info!(pod = %spec.id, pid = holder.pid, "pod holder ready");
        let cgroup = match &spec.cgroup_parent {
            Some(parent) => match PodCgroup::join(parent, holder.holder_pid) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    holder.kill();
                    return Err(e.into());
                }
            },
            None => None,
        };
        let mut pod = self.pod();
        pod.holder = Some(holder);
        pod.cgroup = cgroup;
        Ok(PodAnchor { pid: holder.pid, exit })
    }

    async fn stop_pod(&self, spec: &PodSpec, timeout: Duration) -> CtlResult<()> {
        let live: Vec<String> =
            self.store.list().into_iter().filter(|c| c.pid != 0 && c.status != Status::Stopped).map(|c| c.id).collect();
        for id in &live {
            if let Err(e) = self.store.kill(id, SIGKILL, true).await {
                warn!(pod = %spec.id, container = %id, error = %e, "kill on pod stop");
            }
        }
        // Containers die quickly after SIGKILL; bound the wait so a stuck one cannot hang stop.
        let until = Instant::now() + timeout.max(Duration::from_secs(5));
        while Instant::now() < until
            && self.store.list().iter().any(|c| live.contains(&c.id) && c.status != Status::Stopped)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(holder) = self.pod().holder.take() {
            holder.kill();
        }
        Ok(())
    }

    async fn destroy_pod(&self, _spec: &PodSpec) -> CtlResult<()> {
        let (files, holder, cgroup) = {
            let mut pod = self.pod();
            (pod.files.take(), pod.holder.take(), pod.cgroup.take())
        };
        if let Some(holder) = holder {
            holder.kill();
        }
        if let Some(cgroup) = cgroup {
            // The holder is SIGKILLed above; its cgroup empties once the kernel reaps it, so give
            // it a moment before the directories go.
            for _ in 0..50 {
                if cgroup.dirs().iter().all(|d| fs_empty_procs(d)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cgroup.remove();
        }
        match files {
            Some(files) => blocking(move || files.remove()).await,
            None => Ok(()),
        }
    }

    async fn containers(&self) -> CtlResult<Vec<ContainerInfo>> {
        Ok(self
            .store
            .list()
            .into_iter()
            .map(|c| ContainerInfo {
                name: c.annotations.get(CRI_CONTAINER_NAME).cloned().unwrap_or_else(|| c.id.clone()),
                image: c.annotations.get(CRI_IMAGE_NAME).cloned(),
                running: matches!(c.status, Status::Running | Status::Paused),
                created_at: DateTime::<Utc>::from(c.created_at),
                id: c.id,
                pid: c.pid,
                bundle: c.bundle,
            })
            .collect())
    }

    async fn identity(&self) -> BackendIdentity {
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        BackendIdentity {
            runtime: RUNTIME.into(),
            // `runc version 1.3.6` then commit and spec lines.
            runtime_version: version_line(self.store.runc_binary(), "runc version").await,
            dumper: DUMPER.into(),
            // `Version: 4.2` (and `GitID:` for builds from git).
            dumper_version: version_line(Path::new(DUMPER), "Version:").await,
            cgroup_version: if cgroup_v2 { "2" } else { "1" }.into(),
        }
    }
}

#[async_trait]
impl PodCheckpoint for RuncPodBackend {
    async fn checkpoint_begin(&self, output: &Path) -> CtlResult<()> {
        let marker = Marker::new(output);
        let bundle = self.pod().bundle.clone();
        // Outside a pod (no bundle recorded) there is no `delete` that would read a marker.
        if let Some(bundle) = bundle {
            let m = marker.clone();
            blocking(move || recovery::write(&bundle, &m)).await?;
        }
        self.pod().recovery = Some(marker);
        Ok(())
    }

    async fn checkpoint_end(&self) {
        let bundle = {
            let mut pod = self.pod();
            pod.recovery = None;
            pod.bundle.clone()
        };
        if let Some(bundle) = bundle {
            recovery::remove(&bundle);
        }
    }

    async fn freeze(&self, ids: &[String]) -> CtlResult<()> {
        let mut freezers = Vec::with_capacity(ids.len());
        for id in ids {
            let c = self.store.snapshot(id).map_err(CtlError::from)?;
            freezers.push((id.clone(), Freezer::of_pid(c.pid).map_err(CtlError::from)?));
        }
        let all: Vec<Freezer> = freezers.iter().map(|(_, f)| f.clone()).collect();
        // Recorded before the first write to a freezer: a crash in between must still thaw.
        let marked = {
            let mut pod = self.pod();
            let bundle = pod.bundle.clone();
            pod.recovery.as_mut().zip(bundle).map(|(m, b)| {
                m.freezers.extend(all.iter().cloned());
                (b, m.clone())
            })
        };
        if let Some((bundle, marker)) = marked {
            blocking(move || recovery::write(&bundle, &marker)).await?;
        }
        blocking(move || freezer::freeze_all(&all)).await?;
        self.pod().frozen.extend(freezers);
        Ok(())
    }

    async fn thaw(&self, ids: &[String]) -> CtlResult<()> {
        let freezers: Vec<Freezer> = {
            let mut pod = self.pod();
            ids.iter().filter_map(|id| pod.frozen.remove(id)).collect()
        };
        blocking(move || freezer::thaw_all(&freezers)).await
    }

    async fn dump_estimate(&self, ids: &[String]) -> Duration {
        let pids: Vec<u32> = ids.iter().filter_map(|id| self.store.snapshot(id).ok()).map(|c| c.pid).collect();
        let estimate = tokio::task::spawn_blocking(move || dump_estimate::for_pids(&pids)).await.unwrap_or_default();
        info!(containers = ids.len(), estimate_ms = estimate.as_millis() as u64, "dump time estimate");
        estimate
    }

    async fn dump(&self, id: &str, opts: &DumpOptions) -> CtlResult<DumpOutcome> {
        let mut started = Instant::now();
        let args = CheckpointArgs {
            image_path: opts.image_dir.clone(),
            work_path: opts.work_dir.clone(),
            // Always: the controller stops the pod only once every container dumped.
            leave_running: true,
            tcp_established: opts.tcp_established,
            file_locks: opts.file_locks,
        };
        let Some(barrier) = &opts.barrier else {
            self.store.checkpoint(id, &args).await.map_err(CtlError::from)?;
            return Ok(DumpOutcome { wall: started.elapsed() });
        };
        // Listen before runc starts: CRIU's hook connects once CRIU is set up (see criu_hook).
        let bundle = self.store.snapshot(id).map_err(CtlError::from)?.bundle;
        let hook = Barrier::listen(&bundle).map_err(CtlError::from)?;
        let checkpoint = self.store.checkpoint(id, &args);
        tokio::pin!(checkpoint);
        let stream = tokio::select! {
            ready = hook.ready() => ready.map_err(CtlError::from)?,
            done = &mut checkpoint => {
                return Err(match done {
                    Err(e) => e.into(),
                    Ok(()) => CtlError::runtime("dump", id, "CRIU finished without reaching the pod's freeze barrier"),
                });
            }
        };
        let _ = barrier.ready.send(id.to_string());
        let go = barrier.wait_go().await;
        if let Err(e) = Barrier::answer(stream, go).await {
            warn!(container = %id, error = %e, "answer the CRIU hook");
        }
        started = Instant::now();
        checkpoint.await.map_err(CtlError::from)?;
        Ok(DumpOutcome { wall: started.elapsed() })
    }

    async fn capture_rootfs(&self, id: &str, dest_dir: &Path) -> CtlResult<RootfsCapture> {
        let c = self.store.snapshot(id).map_err(CtlError::from)?;
        let diff_tar = dest_dir.join(archive::ROOTFS_DIFF_TAR);
        let Some(upperdir) = c.upperdir else {
            // No overlay (e.g. a bind-mounted rootfs): there is no writable layer to capture.
            warn!(container = %id, "rootfs is not an overlay; its changes are not captured");
            return Ok(RootfsCapture { diff_tar, deleted: Vec::new(), bytes: 0 });
        };
        let tar = diff_tar.clone();
        let stats = tokio::task::spawn_blocking(move || archive::capture_overlay_upperdir(&upperdir, &tar))
            .await
            .map_err(|e| CtlError::runtime("capture rootfs", id, e.to_string()))??;
        Ok(RootfsCapture { diff_tar, deleted: stats.deleted, bytes: stats.bytes })
    }

    async fn kill(&self, id: &str) -> CtlResult<()> {
        self.store.kill(id, SIGKILL, true).await.map_err(CtlError::from)
    }
}

#[async_trait]
impl PreparedDumps for RuncPodBackend {
    async fn prepared_dumps(&self, ids: &[String]) -> bool {
        // Containers created by an older shim have no CRIU hook; then the pod is frozen first.
        ids.iter().all(|id| self.store.snapshot(id).is_ok_and(|c| criu_hook::installed(&c.bundle)))
    }
}

#[async_trait]
impl PodRestore for RuncPodBackend {
    async fn stage_restore(&self, id: &str, stage: RestoreStage) -> CtlResult<()> {
        self.store.stage_restore(
            id,
            RestoreArgs {
                image_path: stage.image_dir,
                work_path: Some(stage.work_dir),
                tcp_established: stage.tcp_established,
                file_locks: stage.file_locks,
                rootfs_diff: stage.rootfs_diff,
                deleted: stage.deleted,
            },
        );
        Ok(())
    }

    async fn unstage_restore(&self, id: &str) -> CtlResult<()> {
        self.store.unstage_restore(id);
        Ok(())
    }
}

fn fs_empty_procs(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).map(|s| s.trim().is_empty()).unwrap_or(true)
}
