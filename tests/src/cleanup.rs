//! Tearing down everything one test run created: its containerd, the shims and container processes
//! that containerd started, mounts under the run dir (rootfs overlays, netns and shm bind mounts),
//! cgroups named after the run, the CNI bridge, and `net.ipv4.ip_forward`.
//!
//! Everything is found through the run's own record (`run.json`) and naming (`pt-<run id>-...`), so
//! other containerd instances, and other runs of this suite, are never touched. The same code cleans up
//! after a run that was killed (SIGKILL, Ctrl-C) the next time the suite starts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::procs;
use crate::wait::wait_until;

/// What a run needs remembered to be cleaned up, possibly by a later process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The test process that owns the run; the run is stale once it is gone.
    pub owner_pid: u32,
    pub containerd_pid: Option<u32>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub bridge: String,
    /// `/proc/sys/net/ipv4/ip_forward` before the run: the CNI bridge plugin turns it on.
    pub ip_forward_before: Option<String>,
}

impl RunRecord {
    /// Prefix of every containerd namespace and cgroup this run creates.
    pub fn prefix(&self) -> String {
        format!("pt-{}", self.run_id)
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join("run.json")
    }

    pub fn save(&self) -> Result<()> {
        std::fs::write(Self::path(&self.dir), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Undoes a run. Best effort: every step runs even if an earlier one failed; the errors are returned
/// together at the end.
pub fn teardown(rec: &RunRecord, keep_dir: bool) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            errors.push(format!("{what}: {e:#}"));
        }
    };
    note("stop containerd", stop_containerd(rec));
    note("kill shims and their processes", kill_run_processes(rec));
    note("remove cgroups", remove_cgroups(&rec.prefix()));
    note("unmount", unmount_under(&rec.dir));
    note("runc state", remove_runc_state(&rec.prefix()));
    note("bridge", delete_link(&rec.bridge));
    unregister_live(&rec.run_id);
    note("ip_forward", restore_ip_forward(rec));
    if !keep_dir {
        note("remove run dir", std::fs::remove_dir_all(&rec.dir).or_else(ignore_missing).map_err(Into::into));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup of run {} incomplete:\n  {}", rec.run_id, errors.join("\n  "))
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// containerd gets SIGTERM and time to shut down; then SIGKILL. Only the pid recorded for this run, and
/// only if it still is a containerd using this run's directory (pids get reused).
fn stop_containerd(rec: &RunRecord) -> Result<()> {
    let Some(pid) = rec.containerd_pid else {
        return Ok(());
    };
    let ours = |pid| {
        procs::proc(pid).is_some_and(|p| {
            !p.is_zombie()
                && p.argv.first().is_some_and(|a| a.ends_with("containerd"))
                && p.argv.iter().any(|a| a.starts_with(&*rec.dir.to_string_lossy()))
        })
    };
    if !ours(pid) {
        return Ok(());
    }
    procs::signal(pid, Signal::SIGTERM)?;
    if wait_until("containerd to exit", Duration::from_secs(10), || Ok(!ours(pid))).is_err() {
        procs::signal(pid, Signal::SIGKILL)?;
        wait_until("containerd to die", Duration::from_secs(5), || Ok(!ours(pid)))?;
    }
    Ok(())
}

/// Shims outlive containerd by design, and a shim's own helpers (podcr's pod holder, which keeps the
/// pod's netns and so its veth alive) outlive a killed shim. Kills the shims started with this run's
/// socket, everything below them, and anything else naming the run dir in its argv.
fn kill_run_processes(rec: &RunRecord) -> Result<()> {
    let all = procs::all()?;
    let dir = format!("{}/", rec.dir.display());
    let mut doomed: Vec<u32> = procs::shims_of(&rec.socket)?.iter().map(|p| p.pid).collect();
    doomed.extend(all.iter().filter(|p| p.argv.iter().any(|a| a.contains(&dir))).map(|p| p.pid));
    // Descendants, to a fixed point (the list is small).
    loop {
        let before = doomed.len();
        for p in &all {
            if doomed.contains(&p.ppid) && !doomed.contains(&p.pid) {
                doomed.push(p.pid);
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    doomed.retain(|p| *p != std::process::id());
    for pid in &doomed {
        procs::signal(*pid, Signal::SIGKILL)?;
    }
    wait_until("the run's shims and their processes to die", Duration::from_secs(5), || {
        Ok(doomed.iter().all(|p| !procs::alive(*p)))
    })
}

/// Run ids this process has started and not yet torn down. A run owned by this process is live only
/// if listed here: the record of a dead process whose pid we reused is stale.
static LIVE_HERE: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn register_live(run_id: &str) {
    LIVE_HERE.lock().unwrap_or_else(|e| e.into_inner()).push(run_id.to_string());
}

fn unregister_live(run_id: &str) {
    LIVE_HERE.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| r != run_id);
}

fn is_live(rec: &RunRecord) -> bool {
    if rec.owner_pid == std::process::id() {
        LIVE_HERE.lock().unwrap_or_else(|e| e.into_inner()).contains(&rec.run_id)
    } else {
        procs::alive(rec.owner_pid)
    }
}

/// Live runs under `base` other than `except`.
fn other_live_runs(base: &Path, except: &str) -> Vec<RunRecord> {
    let Ok(rd) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(RunRecord::path(&e.path())).ok())
        .filter_map(|d| serde_json::from_slice::<RunRecord>(&d).ok())
        .filter(|r| r.run_id != except && is_live(r))
        .collect()
}

/// The host's ip_forward from before the first of any overlapping runs. Runs of this suite may
/// overlap (tests starting their own containerd, two suites at once): the first records the host's
/// value in `<base>/ip_forward.orig`, the last one out restores it.
pub fn record_ip_forward(base: &Path, run_id: &str) -> Result<()> {
    let orig = base.join("ip_forward.orig");
    if other_live_runs(base, run_id).is_empty() || !orig.exists() {
        std::fs::write(orig, std::fs::read_to_string(IP_FORWARD)?)?;
    }
    Ok(())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn restore_ip_forward(rec: &RunRecord) -> Result<()> {
    let Some(base) = rec.dir.parent() else {
        return Ok(());
    };
    if !other_live_runs(base, &rec.run_id).is_empty() {
        return Ok(());
    }
    let orig = base.join("ip_forward.orig");
    let value = std::fs::read_to_string(&orig).ok().or_else(|| rec.ip_forward_before.clone());
    if let Some(v) = value {
        std::fs::write(IP_FORWARD, v)?;
    }
    std::fs::remove_file(orig).or_else(ignore_missing)?;
    Ok(())
}

/// Roots of the cgroup hierarchies: each v1 controller mount, or the single v2 mount.
fn cgroup_roots() -> Result<Vec<PathBuf>> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return Ok(vec![base.to_path_buf()]);
    }
    let mut roots = Vec::new();
    for e in std::fs::read_dir(base)? {
        let p = e?.path();
        // Skip the cpu,cpuacct style symlinks; the real mounts are listed under their own names too.
        if p.is_dir() && !p.is_symlink() && p.join("cgroup.procs").exists() {
            roots.push(p);
        }
    }
    Ok(roots)
}

/// Removes every top-level cgroup whose name starts with `prefix`, killing what is left inside
/// (container processes this run's containerd started) first.
pub fn remove_cgroups(prefix: &str) -> Result<()> {
    let mut dirs = Vec::new();
    for root in cgroup_roots()? {
        for e in std::fs::read_dir(&root)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(prefix) && e.file_type()?.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    if dirs.is_empty() {
        return Ok(());
    }
    // A frozen (paused) task would never act on SIGKILL: thaw first.
    for d in &dirs {
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
    }
    let pids = |dirs: &[PathBuf]| -> Vec<u32> {
        let mut pids = Vec::new();
        for d in dirs {
            walk(d, &mut |sub| {
                if let Ok(s) = std::fs::read_to_string(sub.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
            });
        }
        pids
    };
    for pid in pids(&dirs) {
        procs::signal(pid, Signal::SIGKILL)?;
    }
    wait_until("processes in test cgroups to die", Duration::from_secs(10), || {
        Ok(pids(&dirs).iter().all(|p| !procs::alive(*p)))
    })?;
    let mut last = Ok(());
    for d in &dirs {
        // rmdir children before parents.
        let mut all = Vec::new();
        walk(d, &mut |sub| all.push(sub.to_path_buf()));
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for sub in all {
            // The kernel may need a moment after the last process is reaped before rmdir succeeds.
            let r = wait_until(&format!("rmdir {}", sub.display()), Duration::from_secs(5), || {
                Ok(std::fs::remove_dir(&sub).or_else(ignore_missing).is_ok())
            });
            if r.is_err() {
                last = r;
            }
        }
    }
    last
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    f(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), f);
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|m| PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// Detaches every mount below `dir` (container rootfs overlays, netns and /dev/shm bind mounts).
pub fn unmount_under(dir: &Path) -> Result<()> {
    // A mount point can be stacked several times; repeat until none is left.
    for _ in 0..8 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let left = mounts_under(dir)?;
    anyhow::ensure!(left.is_empty(), "still mounted: {left:?}");
    Ok(())
}

/// runc.v2 keeps container state in /run/containerd/runc/<namespace>, outside containerd's state dir.
fn remove_runc_state(prefix: &str) -> Result<()> {
    let root = Path::new("/run/containerd/runc");
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            std::fs::remove_dir_all(e.path()).with_context(|| format!("remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Deletes the run's CNI bridge (the bridge plugin creates it and never removes it).
fn delete_link(name: &str) -> Result<()> {
    if Path::new("/sys/class/net").join(name).exists() {
        crate::cmd::run_ok("ip", ["link", "del", name])?;
    }
    Ok(())
}

/// Tears down runs under `base` whose test process is gone (killed before it could clean up), and
/// kills processes still naming the dir of a run that no longer exists (e.g. a pod holder that
/// outlived a teardown).
pub fn cleanup_stale_runs(base: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(base) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Ok(data) = std::fs::read(RunRecord::path(&e.path())) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<RunRecord>(&data) else {
            continue;
        };
        if is_live(&rec) {
            continue;
        }
        if let Err(err) = teardown(&rec, false) {
            eprintln!("podcr-tests: stale run {}: {err:#}", rec.run_id);
        }
    }
    let prefix = format!("{}/", base.display());
    for p in procs::all()? {
        let orphan = p.argv.iter().any(|a| {
            a.find(&prefix).is_some_and(|i| {
                let rest = &a[i + prefix.len()..];
                let run = rest.split('/').next().unwrap_or_default();
                // Only run dirs (6 hex digits, see new_run_id), never e.g. someone tailing logs/.
                run.len() == 6
                    && run.chars().all(|c| c.is_ascii_hexdigit())
                    && rest.len() > run.len()
                    && !base.join(run).join("run.json").exists()
            })
        });
        if orphan && p.pid != std::process::id() {
            eprintln!("podcr-tests: killing orphan of a finished run: {} {:?}", p.pid, p.argv);
            procs::signal(p.pid, Signal::SIGKILL)?;
        }
    }
    Ok(())
}
