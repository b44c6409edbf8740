//! Container and process lifecycle over runc: create, start (or restore), exec, kill, delete,
//! pause/resume and checkpoint. Each verb takes the container's own `op` lock; the store's map
//! lock is only held to look up or insert an `Arc<Container>`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use containerd_shim::asynchronous::io::Stdio;
use containerd_shim_protos::{
    api::Mount,
    events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
        TaskStart,
    },
    topics,
};
use tracing::{info, warn};

use super::{
    container::{self, Container, RestorePlan},
    io::{self, ProcessIo},
    lock,
    process::{Exit, Process},
    runc::{CriuFlags, CriuImages, Runc},
    CheckpointArgs, Containers, Status,
};
use crate::runc_error::{Error, Result};

/// What `Task.Create` asks for, stripped of protobuf.
pub struct CreateArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub stdio: Stdio,
    /// `req.checkpoint`: restore from this CRIU image dir at Start.
    pub checkpoint: Option<PathBuf>,
    pub criu_work_path: Option<PathBuf>,
}

impl Containers {
    pub async fn create(&self, args: CreateArgs) -> Result<u32> {
        // Held until the container is in the map (or the create failed and cleaned up).
        let _claim = self.claim(&args.id)?;
        self.check_runc().await?;
        // Before runc records the spec: the CRIU hook lets a pod checkpoint freeze the pod only
        // once every dump is ready (see pod::criu_hook). Without it the container works the same.
        if let Err(e) = crate::pod::criu_hook::install(&args.bundle) {
            warn!(container = %args.id, error = %e, "cannot give the container the CRIU hook");
        }
        let spec = read_spec(&args.bundle).await?;
        let hook = lock(&self.inner.restore_hook).clone();
        if let Some(hook) = &hook {
            hook.before_create(&args.id, &spec).await?;
        }
        let rootfs = args.bundle.join("rootfs");
        for m in &args.rootfs {
            containerd_shim::util::mount_rootfs(m, &rootfs).await?;
        }
        let plan = self.restore_plan(&args, &rootfs).await?;
        let c = self.new_container(&args, rootfs, &spec, plan.clone());
        let pid = if plan.is_some() {
            // Like the Go shim: a checkpointed create only records the plan; runc restore at Start.
            0
        } else {
            match self.runc_create(&c).await {
                Ok(pid) => pid,
                Err(e) => {
                    unmount(&c).await;
                    return Err(e);
                }
            }
        };
        // The claim kept every other Create of this id out, so nothing can be there.
        lock(&self.inner.map).insert(c.id.clone(), c.clone());
        if pid > 0 {
            self.register(pid, &c.id, "");
        }
        info!(container = %c.id, pid, restore = plan.is_some(), "created");
        self.publish_created(&c, args, pid);
        Ok(pid)
    }

    /// What Start will restore instead of starting afresh, if anything: the image containerd
    /// passed in the request, else one a pod restore staged for this id. A staged rootfs diff
    /// is applied here, before runc sees the rootfs; if that fails the rootfs is unmounted again.
    async fn restore_plan(&self, args: &CreateArgs, rootfs: &Path) -> Result<Option<RestorePlan>> {
        let staged = self.unstage_restore(&args.id);
        let plan = match (&args.checkpoint, staged) {
            (Some(image), _) => Some(RestorePlan {
                image_path: image.clone(),
                work_path: args.criu_work_path.clone(),
                flags: CriuFlags::default(),
                discard: Vec::new(),
            }),
            (None, Some(s)) => {
                if s.rootfs_diff.is_some() {
                    if let Err(e) = self.apply_rootfs_hook(rootfs, &s).await {
                        unmount_path(&args.id, rootfs, !args.rootfs.is_empty()).await;
                        return Err(e);
                    }
                }
                let discard = std::iter::once(s.image_path.clone()).chain(s.rootfs_diff.clone()).collect();
                Some(RestorePlan {
                    image_path: s.image_path,
                    work_path: s.work_path,
                    flags: CriuFlags {
                        tcp_established: s.tcp_established,
                        file_locks: s.file_locks,
                        ..Default::default()
                    },
                    discard,
                })
            }
            (None, None) => None,
        };
        Ok(plan)
    }

    fn new_container(
        &self,
        args: &CreateArgs,
        rootfs: PathBuf,
        spec: &serde_json::Value,
        plan: Option<RestorePlan>,
    ) -> Arc<Container> {
        Arc::new(Container {
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            rootfs,
            mounted_rootfs: !args.rootfs.is_empty(),
            upperdir: args.rootfs.iter().find_map(|m| container::upperdir(&m.options)),
            annotations: container::annotations(spec),
            created_at: SystemTime::now(),
            runc: Runc { binary: self.inner.runc_binary.clone(), ..Runc::new(&self.inner.runc_root, &args.bundle) },
            init: Arc::new(Process::new("", args.stdio.clone(), None)),
            execs: Mutex::default(),
            restore: Mutex::new(plan),
            paused: Default::default(),
            op: Default::default(),
        })
    }

    fn publish_created(&self, c: &Container, args: CreateArgs, pid: u32) {
        self.inner.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: c.id.clone(),
                bundle: path_str(&c.bundle),
                rootfs: args.rootfs,
                io: Some(task_io(&args.stdio)).into(),
                checkpoint: args.checkpoint.as_deref().map(path_str).unwrap_or_default(),
                pid,
                ..Default::default()
            },
        );
    }

    async fn apply_rootfs_hook(&self, rootfs: &Path, args: &super::RestoreArgs) -> Result<()> {
        let hook = lock(&self.inner.rootfs_hook)
            .clone()
            .ok_or_else(|| Error::failed_precondition("a rootfs diff is staged but no rootfs hook is set"))?;
        let (rootfs, args) = (rootfs.to_path_buf(), args.clone());
        tokio::task::spawn_blocking(move || hook(&rootfs, &args)).await.map_err(Error::join("rootfs hook"))?
    }

    async fn runc_create(&self, c: &Container) -> Result<u32> {
        let (child, pending) = io::prepare(&c.init.stdio)?;
        let pid_file = c.bundle.join("init.pid");
        let console = pending.console_socket().map(Path::to_path_buf);
        if let Err(e) = c.runc.create(&c.id, &c.bundle, &pid_file, console.as_deref(), child).await {
            pending.abort().await;
            return Err(e);
        }
        let io = pending.finish().await?;
        let pid = read_pid(&pid_file).await?;
        c.init.set_created(pid, io);
        // Watch from create, not start: the cgroup exists now, and a process that overruns its
        // limit right after exec would otherwise be OOM-killed before anyone listens.
        self.watch_oom(&c.id, pid);
        Ok(pid)
    }

    fn watch_oom(&self, id: &str, pid: u32) {
        if let Err(e) = super::oom::watch(pid, id, &self.inner.events) {
            // The container runs either way; only its OOM reason would be missing.
            warn!(container = id, error = %e, "cannot watch for OOM kills");
        }
    }

    /// Starts the init process (or runs the planned restore), or an exec.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        if !exec_id.is_empty() {
            return self.start_exec(&c, exec_id).await;
        }
        if c.init.started() {
            return Err(Error::failed_precondition(format!("container {id} already started")));
        }
        let pid = match c.take_restore() {
            Some(plan) => {
                let restored = self.runc_restore(&c, &plan).await;
                discard_staged(id, plan.discard).await;
                let pid = restored?;
                // CRIU gives the processes the credentials in the images, not the spec's: a
                // process holding more than the spec grants is killed before anything sees it.
                if let Err(e) = super::restored_caps::check(&c).await {
                    warn!(container = id, error = %e, "restored container holds more than its spec grants; killed");
                    if let Err(k) = c.runc.kill(id, 9, true).await {
                        warn!(container = id, error = %k, "kill a refused restored container");
                    }
                    return Err(e);
                }
                // A restored container's cgroup first exists now.
                self.watch_oom(id, pid);
                let hook = lock(&self.inner.restore_hook).clone();
                if let Some(hook) = hook {
                    hook.restored(id).await;
                }
                pid
            }
            None => {
                c.runc.start(id).await?;
                let pid = c.init.pid();
                c.init.set_started(pid, c.init.io());
                pid
            }
        };
        info!(container = id, pid, "started");
        self.inner.events.send(
            topics::TASK_START_EVENT_TOPIC,
            TaskStart { container_id: id.to_string(), pid, ..Default::default() },
        );
        Ok(pid)
    }

    async fn runc_restore(&self, c: &Container, plan: &RestorePlan) -> Result<u32> {
        let (child, pending) = io::prepare(&c.init.stdio)?;
        let pid_file = c.bundle.join("init.pid");
        let console = pending.console_socket().map(Path::to_path_buf);
        let flags = CriuFlags { shell_job: c.init.stdio.terminal, ..plan.flags.clone() };
        let res = c
            .runc
            .restore(
                &c.id,
                &c.bundle,
                &pid_file,
                &CriuImages { image: &plan.image_path, work: plan.work_path.as_deref(), flags: &flags },
                console.as_deref(),
                child,
            )
            .await;
        if let Err(e) = res {
            pending.abort().await;
            let log = plan.work_path.clone().unwrap_or_else(|| plan.image_path.clone()).join("restore.log");
            let kept = c.bundle.join("criu-restore.log");
            let _ = tokio::fs::copy(&log, &kept).await;
            return Err(with_criu_log(e, &log, &kept).await);
        }
        let io = pending.finish().await?;
        let pid = read_pid(&pid_file).await?;
        c.init.set_started(pid, io);
        self.register(pid, &c.id, "");
        Ok(pid)
    }

    async fn start_exec(&self, c: &Container, exec_id: &str) -> Result<u32> {
        let p = c.exec(exec_id)?;
        if p.started() {
            return Err(Error::failed_precondition(format!("exec {exec_id} already started")));
        }
        if c.status() == Status::Stopped {
            return Err(Error::failed_precondition(format!("container {} is stopped", c.id)));
        }
        let spec_file = c.bundle.join(format!("exec-{exec_id}.json"));
        write_private(&spec_file, p.spec.as_deref().unwrap_or_default().to_vec()).await?;
        let pid_file = c.bundle.join(format!("exec-{exec_id}.pid"));
        let (child, pending) = io::prepare(&p.stdio)?;
        let console = pending.console_socket().map(Path::to_path_buf);
        let res = c.runc.exec(&c.id, &spec_file, &pid_file, console.as_deref(), child).await;
        let _ = tokio::fs::remove_file(&spec_file).await;
        if let Err(e) = res {
            pending.abort().await;
            return Err(e);
        }
        let io = pending.finish().await?;
        let pid = read_pid(&pid_file).await?;
        let _ = tokio::fs::remove_file(&pid_file).await;
        p.set_started(pid, io);
        self.register(pid, &c.id, exec_id);
        self.inner.events.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted { container_id: c.id.clone(), exec_id: exec_id.to_string(), pid, ..Default::default() },
        );
        Ok(pid)
    }

    /// Adds an exec process (started later by `start`).
    pub fn add_exec(&self, id: &str, exec_id: &str, stdio: Stdio, spec: Vec<u8>) -> Result<()> {
        let c = self.get(id)?;
        if c.status() == Status::Stopped {
            return Err(Error::failed_precondition(format!("container {id} is stopped")));
        }
        c.add_exec(Arc::new(Process::new(exec_id, stdio, Some(spec))))?;
        self.inner.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded { container_id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() },
        );
        Ok(())
    }

    /// Signals the container's init process through runc (every process with `all`).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.kill_process(id, "", signal, all).await
    }

    /// Signals the init process through runc (all processes with `all`), or an exec directly.
    pub async fn kill_process(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        if !exec_id.is_empty() {
            if p.exit().is_some() || p.pid() == 0 {
                return Err(Error::not_found(format!("exec {exec_id} is not running")));
            }
            let sig = nix::sys::signal::Signal::try_from(signal as i32)
                .map_err(|_| Error::invalid_argument(format!("signal {signal}")))?;
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), sig)
                .map_err(Error::nix("kill exec"));
        }
        if p.exit().is_some() && !all {
            return Err(Error::not_found(format!("container {id} is not running")));
        }
        if p.pid() == 0 {
            // A pending restore has nothing to signal yet.
            return Err(Error::not_found(format!("container {id} has no process")));
        }
        match c.runc.kill(id, signal, all).await {
            // `--all` after the init died still finds stragglers; nothing left is fine.
            Err(Error::Runtime { msg, .. })
                if all && (msg.contains("not running") || msg.contains("does not exist")) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Deletes an exec record, or the container (runc delete, unmount, forget).
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit)> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        if p.started() && p.exit().is_none() {
            return Err(Error::failed_precondition(format!("process {id}/{exec_id} is running")));
        }
        let exit = p.exit().unwrap_or(Exit { status: 0, at: SystemTime::now() });
        if !exec_id.is_empty() {
            c.remove_exec(exec_id);
        } else {
            let _op = c.op.lock().await;
            if let Err(e) = c.runc.delete(id, true).await {
                // A container runc never created (pending restore) has nothing to delete.
                warn!(container = id, error = %e, "runc delete");
            }
            p.io().tasks.abort().await;
            for e in c.execs() {
                e.io().tasks.abort().await;
            }
            unmount(&c).await;
            lock(&self.inner.map).remove(id);
            self.unregister(p.pid());
        }
        self.inner.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                id: if exec_id.is_empty() { id.to_string() } else { exec_id.to_string() },
                pid: p.pid(),
                exit_status: exit.status,
                exited_at: Some(exit.at.into()).into(),
                ..Default::default()
            },
        );
        Ok((p.pid(), exit))
    }

    /// Freezes the container (runc pause) and publishes /tasks/paused.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.runc.pause(id).await?;
        c.set_paused(true);
        self.inner
            .events
            .send(topics::TASK_PAUSED_EVENT_TOPIC, TaskPaused { container_id: id.to_string(), ..Default::default() });
        Ok(())
    }

    /// Thaws the container (runc resume) and publishes /tasks/resumed.
    pub async fn resume(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.runc.resume(id).await?;
        c.set_paused(false);
        self.inner
            .events
            .send(topics::TASK_RESUMED_EVENT_TOPIC, TaskResumed { container_id: id.to_string(), ..Default::default() });
        Ok(())
    }

    /// `runc checkpoint` of one container into `args.image_path`. Works on a paused container
    /// (CRIU leaves an already-frozen cgroup frozen). On failure the error quotes CRIU's reason
    /// from dump.log, which is also kept as `<bundle>/criu-dump.log`.
    pub async fn checkpoint(&self, id: &str, args: &CheckpointArgs) -> Result<()> {
        self.checkpoint_with(
            id,
            args,
            CriuFlags { tcp_established: args.tcp_established, file_locks: args.file_locks, ..Default::default() },
        )
        .await
    }

    pub(super) async fn checkpoint_with(&self, id: &str, args: &CheckpointArgs, flags: CriuFlags) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        tokio::fs::create_dir_all(&args.work_path).await.map_err(Error::io("create criu work dir"))?;
        let res = c.runc.checkpoint(id, &args.image_path, &args.work_path, args.leave_running, &flags).await;
        if let Err(e) = res {
            let log = args.work_path.join("dump.log");
            let kept = c.bundle.join("criu-dump.log");
            let _ = tokio::fs::copy(&log, &kept).await;
            let e = with_criu_log(e, &log, &kept).await;
            return Err(with_full_disk(e, &[&args.image_path, &args.work_path]));
        }
        self.inner.events.send(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            TaskCheckpointed {
                container_id: id.to_string(),
                checkpoint: path_str(&args.image_path),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// All pids of the container, and which exec each belongs to.
    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, String)>> {
        let c = self.get(id)?;
        let pids = c.runc.ps(id).await?;
        let execs = c.execs();
        Ok(pids
            .into_iter()
            .map(|pid| {
                let exec = execs.iter().find(|e| e.pid() == pid).map(|e| e.exec_id.clone()).unwrap_or_default();
                (pid, exec)
            })
            .collect())
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.runc.update(id, resources_json).await
    }

    pub fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        self.get(id)?.process(exec_id)?.io().tasks.close_input();
        Ok(())
    }

    pub fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let p = self.get(id)?.process(exec_id)?;
        let io: ProcessIo = p.io();
        let pty = io.pty.ok_or_else(|| Error::failed_precondition(format!("{id}/{exec_id} has no terminal")))?;
        io::resize(&pty, width, height)
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        Ok((c, p))
    }

    /// Whether Task.Shutdown may end the shim: not serving a sandbox, and nothing left to run.
    pub fn may_shutdown(&self) -> bool {
        !self.is_sandboxed() && self.is_empty()
    }
}

pub(super) async fn read_spec(bundle: &Path) -> Result<serde_json::Value> {
    match tokio::fs::read(bundle.join("config.json")).await {
        Ok(data) => Ok(serde_json::from_slice(&data)?),
        Err(e) => Err(Error::io("read config.json")(e)),
    }
}

async fn unmount(c: &Container) {
    unmount_path(&c.id, &c.rootfs, c.mounted_rootfs).await
}

async fn unmount_path(id: &str, rootfs: &Path, mounted: bool) {
    if !mounted {
        return;
    }
    let rootfs = rootfs.to_string_lossy().into_owned();
    let res = tokio::task::spawn_blocking(move || containerd_shim::mount::umount_recursive(Some(&rootfs), 0)).await;
    if let Ok(Err(e)) = res {
        warn!(container = id, error = %e, "unmount rootfs");
    }
}

async fn read_pid(path: &Path) -> Result<u32> {
    let s = tokio::fs::read_to_string(path).await.map_err(Error::io(format!("read {}", path.display())))?;
    s.trim().parse().map_err(|_| Error::Process(format!("bad pid in {}: {s:?}", path.display())))
}

/// Adds CRIU's own reason to a runc error, which only says "criu failed". CRIU logs its failure
/// as `Error (file:line): ...` lines well before the log's end (the tail is the unwinding), so
/// those are quoted, with the last lines for context; `kept` is where the full log stays.
async fn with_criu_log(e: Error, log: &Path, kept: &Path) -> Error {
    let Ok(text) = tokio::fs::read_to_string(log).await else { return e };
    let quoted = criu_reason(&text);
    match e {
        Error::Runtime { op, id, msg } => {
            Error::Runtime { op, id, msg: format!("{msg}; CRIU says:\n{quoted}\n(full log: {})", kept.display()) }
        }
        other => other,
    }
}

/// A full disk truncates CRIU's own log before it can say so; name it when that is the cause.
fn with_full_disk(e: Error, dirs: &[&Path]) -> Error {
    let full = dirs.iter().find(|d| {
        nix::sys::statvfs::statvfs(**d).is_ok_and(|st| st.blocks_available() * st.fragment_size() < (1 << 20))
    });
    match (e, full) {
        (Error::Runtime { op, id, msg }, Some(dir)) => Error::Runtime {
            op,
            id,
            msg: format!("{msg}\nNo space left on device: the file system of {} is full", dir.display()),
        },
        (e, _) => e,
    }
}

/// The lines of a CRIU log that say why it failed: its `Error (...)` lines (at most 8), or the
/// last 10 lines when there are none.
pub(super) fn criu_reason(log: &str) -> String {
    // CRIU logs its RLIMIT_NOFILE probe as an error whenever it lacks CAP_SYS_RESOURCE, and
    // then carries on: it is never the reason a dump failed.
    let errors: Vec<&str> =
        log.lines().filter(|l| l.contains("Error (") && !l.contains("Can't setup RLIMIT_NOFILE")).take(8).collect();
    if errors.is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        return lines[lines.len().saturating_sub(10)..].join("\n");
    }
    errors.join("\n")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn task_io(s: &Stdio) -> TaskIO {
    TaskIO {
        stdin: s.stdin.clone(),
        stdout: s.stdout.clone(),
        stderr: s.stderr.clone(),
        terminal: s.terminal,
        ..Default::default()
    }
}

/// Removes a restore's staged copies once CRIU has read them (or failed to); CRIU's log in the
/// work directory stays for diagnosis.
async fn discard_staged(id: &str, paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let id = id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        for p in paths {
            let res = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                Ok(_) => std::fs::remove_file(&p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = res {
                warn!(container = %id, path = %p.display(), error = %e, "remove a restore's staged copy");
            }
        }
    })
    .await;
}

/// Writes an exec's process spec (its environment may hold secrets) readable by root only:
/// created new with mode 0600, never through a symlink; a stale one from a dead shim is replaced.
async fn write_private(path: &Path, data: Vec<u8>) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove a stale exec spec")(e)),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(Error::io("create exec spec"))?;
        f.write_all(&data).map_err(Error::io("write exec spec"))
    })
    .await
    .map_err(Error::join("exec spec writer"))?
}

#[cfg(test)]
mod criu_log_tests {
    use super::criu_reason;

    #[test]
    fn quotes_criu_error_lines_not_the_unwinding_tail() {
        let log = "(00.01) Dumping processes\n(00.02) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n(00.04) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option.\n(00.05) Unlock network\n(00.16) Unfreezing tasks into 1\n(00.17) Error (criu/cr-dump.c:1975): Dumping FAILED.\n";
        let reason = criu_reason(log);
        assert!(reason.contains("Connected TCP socket"));
        assert!(!reason.contains("Unfreezing"));
        assert!(!reason.contains("RLIMIT_NOFILE"), "a harmless probe is not the reason");
        assert_eq!(criu_reason("a\nb\n"), "a\nb");
    }
}

#[cfg(test)]
mod exec_spec_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn exec_specs_are_private_and_never_written_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = tmp.path().join("exec-1.json");
        write_private(&spec, b"{\"env\":[\"TOKEN=secret\"]}".to_vec()).await.unwrap();
        assert_eq!(std::fs::metadata(&spec).unwrap().permissions().mode() & 0o777, 0o600);
        // A stale file or a planted symlink in its place is replaced, its target untouched.
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::remove_file(&spec).unwrap();
        std::os::unix::fs::symlink(&target, &spec).unwrap();
        write_private(&spec, b"{}".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&spec).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&spec).unwrap(), b"{}");
    }
}
