//! The containers this shim runs, and the handle the pod side uses to drive them.
//!
//! [`Containers`] is the store: a map of `Arc<Container>` (each with its own operation lock),
//! the pid table that routes reaped exits to processes, staged restores, and the shim's exit
//! switch. The Task service ([`service::TaskService`]) is a thin ttrpc adaptor over it, and the
//! pod services get a clone of the same handle (see `pod::services`).

mod container;
mod io;
pub mod lifecycle;
mod oom;
mod process;
mod restored_caps;
pub mod runc;
pub mod service;
mod stats;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim_protos::{events::task::TaskExit, topics};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use container::Container;
pub use container::{RestorePlan, Status};
pub use runc::CriuFlags;

use crate::{
    events::EventSink,
    runc_error::{Error, Result},
};

/// A container as the pod side sees it.
#[derive(Clone, Debug)]
pub struct ContainerSnapshot {
    pub id: String,
    pub bundle: PathBuf,
    /// Init pid; 0 before `runc create` (e.g. a pending restore).
    pub pid: u32,
    pub status: Status,
    pub annotations: HashMap<String, String>,
    pub rootfs: PathBuf,
    /// The overlay `upperdir` of the rootfs mount, when containerd gave an overlay.
    pub upperdir: Option<PathBuf>,
    pub created_at: SystemTime,
}

/// What [`Containers::checkpoint`] dumps and how.
#[derive(Clone, Debug, Default)]
pub struct CheckpointArgs {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub file_locks: bool,
}

/// A restore the next `Task.Create` of an id performs instead of a fresh create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreArgs {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub tcp_established: bool,
    pub file_locks: bool,
    /// A tar of the container's rootfs changes, applied onto the freshly mounted rootfs by the
    /// [`RootfsHook`] before `runc restore` (CRIU needs the files the process had open).
    pub rootfs_diff: Option<PathBuf>,
    /// Paths (relative to the rootfs) the container had deleted; removed by the hook too.
    pub deleted: Vec<String>,
}

/// Prepares a restored container's rootfs: called by `Task.Create` with the mounted rootfs
/// path and the staged [`RestoreArgs`] when `rootfs_diff` is set. Runs on a blocking thread.
pub type RootfsHook = Arc<dyn Fn(&std::path::Path, &RestoreArgs) -> Result<()> + Send + Sync>;

/// The pod side's say in a container's restore, called by the Task lifecycle.
#[async_trait::async_trait]
pub trait RestoreHook: Send + Sync {
    /// Called by `Task.Create` before anything of the container exists, with the OCI spec
    /// containerd generated: may stage a restore for `id` (a pod the kubelet creates with
    /// `podcr.io/restore-from`), and holds any restore staged for it to the spec. An error fails
    /// the create and leaves nothing staged. The refusals are the pod logic's, so is the error.
    async fn before_create(&self, id: &str, spec: &serde_json::Value) -> podcr_sandbox_controller::Result<()>;
    /// Called once a restored container's processes run and passed the capability check.
    async fn restored(&self, id: &str);
}

/// Routes reaped pids to processes. An exit can be reaped before its pid is known (a process
/// dying right after `runc create`/`exec` returns), so unknown exits wait here briefly.
#[derive(Default)]
struct PidTable {
    owners: HashMap<u32, (String, String)>,
    early: HashMap<u32, (i32, Instant)>,
}

/// How long an unclaimed exit is kept; runc's own exits land here too and must not pile up.
const EARLY_EXIT_TTL: Duration = Duration::from_secs(30);

struct Inner {
    namespace: String,
    runc_root: PathBuf,
    runc_binary: PathBuf,
    /// Whether runc's version is checked before the first container (not for unit tests' fakes),
    /// and the outcome, once known.
    check_runc: bool,
    runc_checked: tokio::sync::OnceCell<std::result::Result<(), String>>,
    events: EventSink,
    map: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose Create is under way (see [`CreateClaim`]).
    creating: Mutex<std::collections::HashSet<String>>,
    staged: Mutex<HashMap<String, RestoreArgs>>,
    pids: Mutex<PidTable>,
    sandboxed: AtomicBool,
    exit: CancellationToken,
    rootfs_hook: Mutex<Option<RootfsHook>>,
    restore_hook: Mutex<Option<Arc<dyn RestoreHook>>>,
}

/// An id's Create under way; dropping it (on success or failure) frees the id.
struct CreateClaim {
    store: Containers,
    id: String,
}

impl Drop for CreateClaim {
    fn drop(&mut self) {
        lock(&self.store.inner.creating).remove(&self.id);
    }
}

/// Cheap-to-clone handle to the shim's containers (see the module docs).
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means another task panicked mid-update of plain maps; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Containers {
    /// A store for `namespace` whose runc state lives in `runc_root`. Starts the exit router,
    /// which must be subscribed before the first container process exists.
    pub async fn new(namespace: &str, runc_root: PathBuf, events: EventSink) -> Result<Self> {
        Self::build(namespace, runc_root, "runc".into(), events, true).await
    }

    /// Refuses to run containers with a runc older than [`runc::MIN_VERSION`] (asked once).
    pub(crate) async fn check_runc(&self) -> Result<()> {
        if !self.inner.check_runc {
            return Ok(());
        }
        let binary = self.inner.runc_binary.clone();
        let checked = self.inner.runc_checked.get_or_init(|| async move { runc::check_version(&binary).await }).await;
        checked.clone().map_err(Error::failed_precondition)
    }

    /// Like [`Containers::new`] with another runc binary (unit tests use a fake).
    pub async fn with_runc(
        namespace: &str,
        runc_root: PathBuf,
        runc_binary: PathBuf,
        events: EventSink,
    ) -> Result<Self> {
        Self::build(namespace, runc_root, runc_binary, events, false).await
    }

    async fn build(
        namespace: &str,
        runc_root: PathBuf,
        runc_binary: PathBuf,
        events: EventSink,
        check_runc: bool,
    ) -> Result<Self> {
        let store = Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                runc_root,
                runc_binary,
                check_runc,
                runc_checked: tokio::sync::OnceCell::new(),
                events,
                map: Mutex::default(),
                creating: Mutex::default(),
                staged: Mutex::default(),
                pids: Mutex::default(),
                sandboxed: AtomicBool::new(false),
                exit: CancellationToken::new(),
                rootfs_hook: Mutex::default(),
                restore_hook: Mutex::default(),
            }),
        };
        let mut sub = monitor_subscribe(Topic::Pid).await?;
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            while let Some(ev) = sub.rx.recv().await {
                let Subject::Pid(pid) = ev.subject else { continue };
                let Some(inner) = weak.upgrade() else { break };
                Containers { inner }.on_exit(pid as u32, ev.exit_code);
            }
        });
        Ok(store)
    }

    /// The runc binary the containers run with.
    pub fn runc_binary(&self) -> &std::path::Path {
        &self.inner.runc_binary
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The event queue, for pod-side events.
    pub fn events(&self) -> &EventSink {
        &self.inner.events
    }

    // ---- pod-side API ----

    /// Every container, in no particular order.
    pub fn list(&self) -> Vec<ContainerSnapshot> {
        let all: Vec<_> = lock(&self.inner.map).values().cloned().collect();
        all.iter().map(|c| snapshot(c)).collect()
    }

    /// One container, or `NotFound`.
    pub fn snapshot(&self, id: &str) -> Result<ContainerSnapshot> {
        Ok(snapshot(&*self.get(id)?))
    }

    /// Marks that this shim serves a sandbox: `Task.Shutdown` then never ends the shim; only
    /// [`Containers::request_exit`] does.
    pub fn set_sandboxed(&self, sandboxed: bool) {
        self.inner.sandboxed.store(sandboxed, Ordering::SeqCst);
    }

    pub fn is_sandboxed(&self) -> bool {
        self.inner.sandboxed.load(Ordering::SeqCst)
    }

    /// Makes the shim server stop (after in-flight replies) and the process exit.
    pub fn request_exit(&self) {
        self.inner.exit.cancel();
    }

    /// Fires when the shim is asked to exit.
    pub fn exit_token(&self) -> CancellationToken {
        self.inner.exit.clone()
    }

    /// Makes the next `Task.Create` of `id` a restore from `args` (run at `Task.Start`).
    pub fn stage_restore(&self, id: &str, args: RestoreArgs) {
        lock(&self.inner.staged).insert(id.to_string(), args);
    }

    /// Installs the hook that applies a staged restore's rootfs diff (see [`RootfsHook`]).
    pub fn set_rootfs_hook(&self, hook: RootfsHook) {
        *lock(&self.inner.rootfs_hook) = Some(hook);
    }

    /// Installs the pod side's [`RestoreHook`].
    pub fn set_restore_hook(&self, hook: Arc<dyn RestoreHook>) {
        *lock(&self.inner.restore_hook) = Some(hook);
    }

    /// The restore staged for `id`, if any, left staged.
    pub fn staged_restore(&self, id: &str) -> Option<RestoreArgs> {
        lock(&self.inner.staged).get(id).cloned()
    }

    /// Drops a staged restore; returns it if there was one.
    pub fn unstage_restore(&self, id: &str) -> Option<RestoreArgs> {
        lock(&self.inner.staged).remove(id)
    }

    // ---- internals shared by the lifecycle ----

    /// Claims `id` for one Create until the claim drops. Two Creates of one id share a bundle
    /// and so a rootfs mount point: without the claim both mounted it and ran `runc create`, and
    /// the one that lost the final insert unmounted the winner's rootfs.
    fn claim(&self, id: &str) -> Result<CreateClaim> {
        let taken = lock(&self.inner.map).contains_key(id) || !lock(&self.inner.creating).insert(id.to_string());
        if taken {
            return Err(Error::already_exists(format!("container {id}")));
        }
        Ok(CreateClaim { store: self.clone(), id: id.to_string() })
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.inner.map).get(id).cloned().ok_or_else(|| Error::not_found(format!("container {id}")))
    }

    fn is_empty(&self) -> bool {
        lock(&self.inner.map).is_empty()
    }

    /// Ties `pid` to a process; an exit reaped before this call is applied now.
    fn register(&self, pid: u32, container: &str, exec_id: &str) {
        let early = {
            let mut t = lock(&self.inner.pids);
            match t.early.remove(&pid) {
                Some((code, _)) => Some(code),
                None => {
                    t.owners.insert(pid, (container.to_string(), exec_id.to_string()));
                    None
                }
            }
        };
        if let Some(code) = early {
            self.process_exited(container, exec_id, pid, code);
        }
    }

    fn on_exit(&self, pid: u32, code: i32) {
        let owner = {
            let mut t = lock(&self.inner.pids);
            let owner = t.owners.remove(&pid);
            if owner.is_none() {
                t.early.retain(|_, (_, at)| at.elapsed() < EARLY_EXIT_TTL);
                t.early.insert(pid, (code, Instant::now()));
            }
            owner
        };
        if let Some((cid, eid)) = owner {
            self.process_exited(&cid, &eid, pid, code);
        }
    }

    /// Drains the process's output, then records and publishes the exit (output first, so a
    /// client that stops reading at the exit event has everything).
    fn process_exited(&self, cid: &str, eid: &str, pid: u32, code: i32) {
        let Ok(c) = self.get(cid) else { return };
        let Ok(p) = c.process(eid) else { return };
        info!(container = cid, exec = eid, pid, code, "process exited");
        let store = self.clone();
        let (cid, eid) = (cid.to_string(), eid.to_string());
        tokio::spawn(async move {
            if p.exec_id.is_empty() {
                // An init exit ends the container; execs sharing its pid namespace are already
                // dead, but ones in the host pid namespace are not.
                for e in c.execs() {
                    if e.exit().is_none() && e.pid() > 0 {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(e.pid() as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                c.set_paused(false);
            }
            p.io().tasks.shutdown().await;
            let exit = p.set_exited(code as u32);
            let id = if eid.is_empty() { cid } else { eid };
            store.inner.events.send(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: c.id.clone(),
                    id,
                    pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.at.into()).into(),
                    ..Default::default()
                },
            );
            debug!(container = %c.id, "exit published");
        });
    }

    fn unregister(&self, pid: u32) {
        if pid > 0 {
            lock(&self.inner.pids).owners.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests;

fn snapshot(c: &Container) -> ContainerSnapshot {
    ContainerSnapshot {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        pid: c.init.pid(),
        status: c.status(),
        annotations: c.annotations.clone(),
        rootfs: c.rootfs.clone(),
        upperdir: c.upperdir.clone(),
        created_at: c.created_at,
    }
}
