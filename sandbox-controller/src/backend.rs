//! The seam between the runtime-agnostic pod logic and one way of running containers.
//!
//! The controller decides *what* happens to a pod and in which order (freeze everything, dump in
//! parallel, thaw, then package); a backend knows *how* for its runtime. podcr's shim provides the
//! runc + CRIU backend; a gVisor- or VM-style runtime would implement the same trait with its own
//! notion of freezing and dumping.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};

/// DNS settings for the pod's resolv.conf (CRI `DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What a pod is made of, reduced from the CRI `PodSandboxConfig` (or an OCI spec from ctr) to
/// what a backend needs to build it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub id: String,
    /// containerd's bundle for the sandbox; the backend may keep its own files here.
    pub bundle: PathBuf,
    /// Network namespace the CRI created; `None` means the host's network.
    pub netns_path: Option<PathBuf>,
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub host_ipc: bool,
    /// Containers of the pod share one PID namespace (`shareProcessNamespace`).
    pub share_pid: bool,
    pub host_pid: bool,
    pub cgroup_parent: Option<String>,
    pub sysctls: BTreeMap<String, String>,
    pub dns: Option<DnsConfig>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The pod config as the caller sent it, as JSON with snake_case names, kept for `pod.dump`.
    pub raw_config: Option<serde_json::Value>,
}

/// What runs a pod's containers and writes its checkpoint images. Recorded in every checkpoint
/// (the manifest's `runtime`, the `org.criu.checkpoint.*` annotations, each container's
/// `config.dump`), and checked on restore: images are only as portable as their dumper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendIdentity {
    /// The OCI runtime's name, e.g. `runc`; a checkpoint restores only on a backend of this name.
    pub runtime: String,
    /// Empty when unknown, like every version here.
    pub runtime_version: String,
    /// The tool that writes the images, e.g. `criu`; empty for a backend that cannot checkpoint.
    pub dumper: String,
    pub dumper_version: String,
    /// The host's cgroup version, `1` or `2`.
    pub cgroup_version: String,
}

/// How a pod's anchor process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    pub at: DateTime<Utc>,
}

/// The process that holds the pod's namespaces; its pid is what containers join through
/// `/proc/<pid>/ns/*` (containerd 2.1's CRI needs a live pid, see the research notes §13.3).
#[derive(Debug)]
pub struct PodAnchor {
    pub pid: u32,
    /// Becomes `Some` when the anchor process has exited.
    pub exit: watch::Receiver<Option<ExitStatus>>,
}

/// A container of the pod as the backend sees it at this moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// CRI container name (`io.kubernetes.cri.container-name`), or the id outside the CRI.
    pub name: String,
    pub pid: u32,
    pub running: bool,
    /// containerd's bundle for the container; `config.json` there is its OCI spec.
    pub bundle: PathBuf,
    /// Image the container was created from (`io.kubernetes.cri.image-name`), if known.
    pub image: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Lets a backend get each dump ready before the pod is frozen (see
/// [`PodBackend::prepared_dumps`]): the dump sends its container id on `ready` once only the
/// freeze-and-dump itself is left, then waits for `go`: `Some(true)` means the pod is frozen now,
/// proceed; `Some(false)` means give up and fail.
#[derive(Debug, Clone)]
pub struct FreezeBarrier {
    pub ready: mpsc::UnboundedSender<String>,
    pub go: watch::Receiver<Option<bool>>,
}

impl FreezeBarrier {
    /// Waits for the controller's word: true to proceed, false to give up.
    pub async fn wait_go(&self) -> bool {
        let mut go = self.go.clone();
        loop {
            if let Some(word) = *go.borrow_and_update() {
                return word;
            }
            if go.changed().await.is_err() {
                return false;
            }
        }
    }
}

/// How one container is dumped. The container always keeps running (frozen) after its dump: the
/// controller decides afterwards whether the pod stops, so a failure in one container never
/// leaves another one killed.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Where CRIU writes its images (the archive's `checkpoint/` directory).
    pub image_dir: PathBuf,
    /// Where CRIU writes dump.log and stats-dump.
    pub work_dir: PathBuf,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// Set when the controller freezes the pod only once every dump is ready.
    pub barrier: Option<FreezeBarrier>,
}

/// What one dump cost, for the statistics the caller gets back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpOutcome {
    pub wall: Duration,
}

/// The writable layer of a container captured while it was frozen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsCapture {
    /// Uncompressed tar of new and changed files (checkpointctl's `rootfs-diff.tar`).
    pub diff_tar: PathBuf,
    /// Paths (relative to the rootfs, leading `/`) deleted from the image layers.
    pub deleted: Vec<String>,
    pub bytes: u64,
}

/// Everything a backend needs to bring one container back from a checkpoint instead of starting
/// it fresh, when containerd creates the task `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStage {
    /// Directory holding CRIU's images for this container.
    pub image_dir: PathBuf,
    /// Where CRIU may write restore.log.
    pub work_dir: PathBuf,
    pub rootfs_diff: Option<PathBuf>,
    pub deleted: Vec<String>,
    pub tcp_established: bool,
    pub file_locks: bool,
}

/// What every backend does: build, run, stop and tear down a pod, and say what is in it.
/// Checkpoint and restore are optional capabilities in their own traits ([`PodCheckpoint`],
/// [`PreparedDumps`], [`PodRestore`]) whose defaults refuse with `Unimplemented`, so a backend
/// that only runs pods writes three empty `impl` blocks and nothing else for them.
#[async_trait]
pub trait PodBackend: PodCheckpoint + PreparedDumps + PodRestore + Send + Sync + 'static {
    /// Builds the pod's shared resources (files, pinned namespaces). No process runs yet.
    async fn create_pod(&self, spec: &PodSpec) -> Result<()>;

    /// Starts the anchor process that holds the pod's namespaces.
    async fn start_pod(&self, spec: &PodSpec) -> Result<PodAnchor>;

    /// Kills every container of the pod and the anchor. Idempotent.
    async fn stop_pod(&self, spec: &PodSpec, timeout: Duration) -> Result<()>;

    /// Releases everything `create_pod` made. Idempotent; must succeed when nothing is left.
    async fn destroy_pod(&self, spec: &PodSpec) -> Result<()>;

    /// The containers currently in the pod.
    async fn containers(&self) -> Result<Vec<ContainerInfo>>;

    /// Who this backend is (see [`BackendIdentity`]); asked once per checkpoint and restore.
    async fn identity(&self) -> BackendIdentity;
}

fn unsupported(what: &str) -> Error {
    Error::Unimplemented(format!("this pod's runtime cannot {what}"))
}

/// Checkpointing a pod: freeze, dump each container, capture its writable layer. The defaults
/// refuse (and have nothing to thaw), for backends that cannot checkpoint.
#[async_trait]
pub trait PodCheckpoint: Send + Sync {
    /// A checkpoint writing into `output` starts. A backend may record this durably, so that if
    /// the runtime dies mid-checkpoint its clean-up (a shim's `delete`) can thaw what was frozen
    /// and remove the partial output: nothing in this process survives to do it. An error
    /// refuses the checkpoint before anything is frozen.
    async fn checkpoint_begin(&self, _output: &std::path::Path) -> Result<()> {
        Ok(())
    }

    /// The checkpoint ended (either way) and cleaned up after itself: forget the record.
    async fn checkpoint_end(&self) {}

    /// Freezes the given containers as close to one instant as the runtime allows.
    async fn freeze(&self, _ids: &[String]) -> Result<()> {
        Err(unsupported("freeze containers"))
    }

    /// Thaws the given containers. Must succeed for containers that are not frozen.
    async fn thaw(&self, _ids: &[String]) -> Result<()> {
        Ok(())
    }

    /// Dumps one frozen container; it stays frozen and alive. With `opts.barrier` the dump is
    /// started before the freeze and waits at the barrier (see [`FreezeBarrier`]). Once the
    /// barrier says go (or without a barrier), the future must be driven to its end: the
    /// controller never drops it, and a backend must not rely on a drop to stop its dumper.
    async fn dump(&self, _id: &str, _opts: &DumpOptions) -> Result<DumpOutcome> {
        Err(unsupported("dump containers"))
    }

    /// How long dumping these containers (in parallel) is expected to take once the pod is
    /// frozen, e.g. from their memory usage. The controller freezes the pod only if the deadline
    /// leaves at least this much time: once a dump runs it is never abandoned (stopping CRIU
    /// while its code is inside a process can kill that process), so a late dump holds the pod
    /// frozen past the deadline. The default, zero, only checks that the deadline has not passed.
    async fn dump_estimate(&self, _ids: &[String]) -> Duration {
        Duration::ZERO
    }

    /// Captures the writable layer of one frozen container into `dest_dir`.
    async fn capture_rootfs(&self, _id: &str, _dest_dir: &std::path::Path) -> Result<RootfsCapture> {
        Err(unsupported("capture a container's writable layer"))
    }

    /// Kills one container (after a checkpoint that does not leave the pod running).
    async fn kill(&self, _id: &str) -> Result<()> {
        Err(unsupported("kill a checkpointed container"))
    }
}

/// The freeze barrier: dumps made ready before the pod is frozen (see [`FreezeBarrier`]).
#[async_trait]
pub trait PreparedDumps: Send + Sync {
    /// Whether dumps of these containers can be made ready before the pod is frozen, so their
    /// start-up (for runc and CRIU: process start, kernel probing) stays out of the freeze
    /// window. The default freezes first.
    async fn prepared_dumps(&self, _ids: &[String]) -> bool {
        false
    }
}

/// Restoring containers of a pod from a checkpoint when containerd creates their tasks.
#[async_trait]
pub trait PodRestore: Send + Sync {
    /// Arranges for the task `id`, when containerd creates it, to be restored from `stage`.
    async fn stage_restore(&self, _id: &str, _stage: RestoreStage) -> Result<()> {
        Err(unsupported("restore containers"))
    }

    /// Forgets a staged restore (the caller rolled the restore back). Nothing staged is no error.
    async fn unstage_restore(&self, _id: &str) -> Result<()> {
        Ok(())
    }
}
