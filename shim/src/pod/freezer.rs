//! Freezing a set of containers at one instant through the cgroup freezer.
//!
//! `runc pause` per container would cost a process spawn each and freeze them one after another.
//! Here every container's freezer is written first, in a tight loop, and only then is each one
//! waited on, so the pod stops within microseconds. runc and CRIU accept a container frozen this
//! way (runc reports it "paused"), and CRIU leaves a cgroup it found frozen frozen, whether its
//! dump succeeds or fails, so the pod stays frozen until we thaw it.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    cgroups::{self, ControllerCgroup},
    runc_error::{Error, Result},
};

pub use crate::cgroups::CGROUP_ROOT;

/// How long a freeze may take before it is given up (and undone): a task stuck in
/// uninterruptible sleep keeps a v1 freezer FREEZING forever.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// One container's freezer, v1 (`freezer.state`) or v2 (`cgroup.freeze`). Serialized into the
/// checkpoint recovery marker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl Freezer {
    /// The freezer of the cgroup `pid` lives in.
    pub fn of_pid(pid: u32) -> Result<Freezer> {
        Ok(match cgroups::of_pid(pid, "freezer", "cgroup.freeze")? {
            ControllerCgroup::V1(dir) => Freezer::V1(dir),
            ControllerCgroup::V2(dir) => Freezer::V2(dir),
        })
    }

    /// The cgroup directory.
    pub fn dir(&self) -> &Path {
        match self {
            Freezer::V1(dir) | Freezer::V2(dir) => dir,
        }
    }

    /// Processes in the cgroup and its children; empty if it is gone.
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        collect_pids(self.dir(), &mut out);
        out
    }

    fn request(&self, freeze: bool) -> Result<()> {
        let (file, value) = match self {
            Freezer::V1(dir) => (dir.join("freezer.state"), if freeze { "FROZEN" } else { "THAWED" }),
            Freezer::V2(dir) => (dir.join("cgroup.freeze"), if freeze { "1" } else { "0" }),
        };
        fs::write(&file, value).map_err(Error::io(format!("write {value} to {}", file.display())))
    }

    pub fn is_frozen(&self) -> Result<bool> {
        match self {
            Freezer::V1(dir) => {
                let file = dir.join("freezer.state");
                let state = fs::read_to_string(&file).map_err(Error::io(format!("read {}", file.display())))?;
                Ok(state.trim() == "FROZEN")
            }
            Freezer::V2(dir) => {
                let file = dir.join("cgroup.events");
                let events = fs::read_to_string(&file).map_err(Error::io(format!("read {}", file.display())))?;
                Ok(events.lines().any(|l| l.trim() == "frozen 1"))
            }
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Freezes every freezer, then waits until all report frozen. On any failure everything is
/// thawed again before the error is returned, so a failed freeze leaves nothing frozen.
pub fn freeze_all(freezers: &[Freezer]) -> Result<()> {
    let result = freezers.iter().try_for_each(|f| f.request(true)).and_then(|()| wait_frozen(freezers));
    if result.is_err() {
        // Best effort: the original error says what went wrong.
        let _ = thaw_all(freezers);
    }
    result
}

fn wait_frozen(freezers: &[Freezer]) -> Result<()> {
    let started = Instant::now();
    for f in freezers {
        let mut backoff = Duration::from_micros(50);
        while !f.is_frozen()? {
            if started.elapsed() > FREEZE_TIMEOUT {
                return Err(Error::failed_precondition(format!("freezing {f:?} did not finish in {FREEZE_TIMEOUT:?}")));
            }
            // A v1 freeze re-tries FREEZING tasks when the state is written again.
            if let Freezer::V1(_) = f {
                f.request(true)?;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Thaws every freezer; tries all of them even when one fails, and reports the first failure.
pub fn thaw_all(freezers: &[Freezer]) -> Result<()> {
    let mut first_err = None;
    for f in freezers {
        if let Err(e) = f.request(false) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_freeze_waits_for_the_kernel_and_thaws() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pod/c1")).unwrap();
        std::fs::write(dir.path().join("pod/c1/cgroup.freeze"), "0").unwrap();
        std::fs::write(dir.path().join("pod/c1/cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let f = Freezer::V2(dir.path().join("pod/c1"));
        // A fake cgroup never reports frozen: the freeze must give up and thaw, not hang.
        f.request(true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("pod/c1/cgroup.freeze")).unwrap(), "1");
        std::fs::write(dir.path().join("pod/c1/cgroup.events"), "frozen 1\n").unwrap();
        freeze_all(std::slice::from_ref(&f)).unwrap();
        thaw_all(&[f]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("pod/c1/cgroup.freeze")).unwrap(), "0");
    }
}
