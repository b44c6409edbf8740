//! The checkpoint recovery marker: what a shim killed mid-checkpoint leaves for its `delete`.
//!
//! Between freeze and thaw the only thing that can thaw the pod is the shim's own process. If it
//! dies there (OOM kill, SIGKILL), the containers keep running as orphans, frozen forever, and
//! the output directory holds a partial checkpoint. containerd runs `shim delete` in the sandbox
//! bundle after a shim dies (`cleanupAfterDeadShim`), so the shim writes a marker into that
//! bundle when a checkpoint starts (like containerd PR 13822's recovery marker), adds every
//! freezer before it freezes it, and removes the marker once the checkpoint ended and cleaned up.
//! `delete` finding a marker stops a CRIU still attached to the pod, thaws the listed freezers
//! and empties the output directory.

use std::{
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::freezer::{self, Freezer};
use crate::runc_error::{Error, Result};

/// In the sandbox bundle, next to containerd's files.
pub const MARKER: &str = "podcr-checkpoint-recovery.json";
const VERSION: u32 = 1;
/// How long `delete` waits for a killed CRIU to go before thawing anyway.
const TRACER_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub version: u32,
    /// The checkpoint's output directory, emptied on recovery (the CRI contract: a failed
    /// checkpoint leaves nothing).
    pub output_path: PathBuf,
    /// Every freezer the checkpoint froze or was about to freeze.
    pub freezers: Vec<Freezer>,
}

impl Marker {
    pub fn new(output_path: &Path) -> Marker {
        Marker { version: VERSION, output_path: output_path.to_path_buf(), freezers: Vec::new() }
    }
}

/// Writes the marker atomically (a torn marker after a crash would thaw nothing).
pub fn write(bundle: &Path, marker: &Marker) -> Result<()> {
    let path = bundle.join(MARKER);
    let tmp = bundle.join(format!("{MARKER}.tmp"));
    let data = serde_json::to_vec(marker)?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(Error::io(format!("create {}", tmp.display())))?;
        f.write_all(&data).and_then(|()| f.sync_all()).map_err(Error::io(format!("write {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("rename {}", path.display())))
}

pub fn remove(bundle: &Path) {
    if let Err(e) = std::fs::remove_file(bundle.join(MARKER)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, "remove the checkpoint recovery marker");
        }
    }
}

/// `delete`'s half: if a checkpoint was cut short in `bundle`, undo it. Never fails the delete
/// (containerd's clean-up must go on); problems are logged.
pub fn recover(bundle: &Path) {
    let path = bundle.join(MARKER);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return warn!(error = %e, "read {}", path.display()),
    };
    let marker: Marker = match serde_json::from_slice(&data) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "unreadable checkpoint recovery marker; removed");
            remove(bundle);
            return;
        }
    };
    warn!(output = %marker.output_path.display(), freezers = marker.freezers.len(), "the shim died during a checkpoint; recovering");
    let freezers: Vec<Freezer> = marker.freezers.into_iter().filter(plausible).collect();
    stop_tracers(&freezers);
    // CRIU, when it ends, puts a freezer back into the state it found: thaw until it stays thawed.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        if let Err(e) = freezer::thaw_all(&freezers) {
            warn!(error = %e, "thaw after a dead shim's checkpoint");
        }
        std::thread::sleep(Duration::from_millis(100));
        if freezers.iter().all(|f| !f.is_frozen().unwrap_or(false)) || Instant::now() >= until {
            break;
        }
    }
    if marker.output_path.is_absolute() {
        // Reopened as the checkpoint opened it (no symlink followed, root's and private,
        // locked), and cleaned through that descriptor: the marker's path is only a name.
        let cleaned =
            podcr_sandbox_controller::archive::OutputDir::open_locked(&marker.output_path).and_then(|dir| dir.clean());
        match cleaned {
            Ok(()) => info!(output = %marker.output_path.display(), "removed a partial checkpoint"),
            Err(e) => warn!(error = %e, "remove a partial checkpoint"),
        }
    }
    remove(bundle);
}

/// Only cgroup directories, by absolute path without `..`: a damaged marker must not make
/// `delete` write elsewhere.
fn plausible(f: &Freezer) -> bool {
    let dir = f.dir();
    dir.starts_with(freezer::CGROUP_ROOT) && dir.components().all(|c| !matches!(c, Component::ParentDir))
}

/// SIGKILLs every CRIU process still ptrace-attached to a task of these cgroups (the shim's
/// `runc checkpoint` outlives it) and waits for them to go: a CRIU finishing its dump later
/// would re-freeze the pod.
fn stop_tracers(freezers: &[Freezer]) {
    let mut tracers = Vec::new();
    for f in freezers {
        for pid in f.pids() {
            let Some(tracer) = tracer_of(pid) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
            if comm.trim() == "criu" && !tracers.contains(&tracer) {
                tracers.push(tracer);
            }
        }
    }
    for pid in &tracers {
        warn!(pid, "killing a CRIU left attached to the pod");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    let until = Instant::now() + TRACER_EXIT_TIMEOUT;
    while Instant::now() < until && tracers.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tracer_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer: u32 = status.lines().find_map(|l| l.strip_prefix("TracerPid:"))?.trim().parse().ok()?;
    (tracer != 0).then_some(tracer)
}

/// Not gone and not a zombie (an orphaned CRIU's zombie waits for init to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_recover_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("partial.tar"), b"x").unwrap();
        let mut m = Marker::new(&out);
        // Not under /sys/fs/cgroup: ignored by recover, never written to.
        let fake = tmp.path().join("cg");
        std::fs::create_dir(&fake).unwrap();
        std::fs::write(fake.join("freezer.state"), "FROZEN").unwrap();
        m.freezers.push(Freezer::V1(fake.clone()));
        write(tmp.path(), &m).unwrap();
        let back: Marker = serde_json::from_slice(&std::fs::read(tmp.path().join(MARKER)).unwrap()).unwrap();
        assert_eq!(back, m);
        recover(tmp.path());
        assert!(!tmp.path().join(MARKER).exists());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "partial output left");
        assert_eq!(std::fs::read_to_string(fake.join("freezer.state")).unwrap(), "FROZEN");
        // Idempotent: a second delete finds nothing to do.
        recover(tmp.path());
    }

    #[test]
    fn only_cgroup_paths_are_plausible() {
        assert!(plausible(&Freezer::V1(PathBuf::from("/sys/fs/cgroup/freezer/pods/c1"))));
        assert!(!plausible(&Freezer::V1(PathBuf::from("/sys/fs/cgroup/freezer/../../../etc"))));
        assert!(!plausible(&Freezer::V2(PathBuf::from("/etc"))));
    }
}
