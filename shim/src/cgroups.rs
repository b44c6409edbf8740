//! Where a process's cgroups are, read from `/proc/<pid>/cgroup`: the one place the shim parses
//! that file (the freezer, OOM watching and anything else per-controller go through here).

use std::path::{Path, PathBuf};

use crate::runc_error::{Error, Result};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A process's cgroup for one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerCgroup {
    /// cgroup v1: the directory in that controller's own hierarchy.
    V1(PathBuf),
    /// cgroup v2: the directory in the unified hierarchy.
    V2(PathBuf),
}

/// The cgroup of `pid` for `controller` (e.g. "freezer", "memory"). The v1 hierarchy wins on
/// hybrid hosts, since that is where runc puts containers; the unified one is used only when it
/// has `probe` (a file proving the controller is enabled there).
pub fn of_pid(pid: u32, controller: &str, probe: &str) -> Result<ControllerCgroup> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("read {path}")))?;
    parse(&text, Path::new(CGROUP_ROOT), controller, probe)
        .ok_or_else(|| Error::failed_precondition(format!("process {pid} has no {controller} cgroup")))
}

pub(crate) fn parse(proc_cgroup: &str, root: &Path, controller: &str, probe: &str) -> Option<ControllerCgroup> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            return Some(ControllerCgroup::V1(root.join(controller).join(rel)));
        }
        if controllers.is_empty() {
            unified = Some(root.join(rel));
        }
    }
    unified.filter(|p| p.join(probe).exists()).map(ControllerCgroup::V2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_controller_wins_on_hybrid_hosts() {
        let text = "12:freezer:/podcr/abc\n11:memory,foo:/podcr/abc\n0::/user.slice\n";
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(parse(text, root, "freezer", "cgroup.freeze"), Some(ControllerCgroup::V1(root.join("freezer/podcr/abc"))));
        assert_eq!(parse(text, root, "memory", "memory.events"), Some(ControllerCgroup::V1(root.join("memory/podcr/abc"))));
        assert_eq!(parse(text, root, "pids", "pids.max"), None, "a missing probe file means not enabled");
    }

    #[test]
    fn unified_needs_the_probe_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pod/c1")).unwrap();
        assert_eq!(parse("0::/pod/c1\n", dir.path(), "freezer", "cgroup.freeze"), None);
        std::fs::write(dir.path().join("pod/c1/cgroup.freeze"), "0").unwrap();
        assert_eq!(parse("0::/pod/c1\n", dir.path(), "freezer", "cgroup.freeze"), Some(ControllerCgroup::V2(dir.path().join("pod/c1"))));
    }
}
