//! Where a process's cgroups are, read from `/proc/<pid>/cgroup`: the one place the shim parses
//! that file (the freezer, OOM watching and anything else per-controller go through here); and
//! moving a process into a cgroup by path ([`join`], for the shim cgroup containerd asks for).

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

/// Moves `pid` into the cgroup `path` (relative to each hierarchy's root, as runc.v2's
/// `ShimCgroup` option is): on cgroup v2 the unified hierarchy; on v1 every mounted hierarchy in
/// which that cgroup exists, and an error when it exists in none. That is containerd's
/// `cgroup1.Load(StaticPath(..)).AddProc`, which runc.v2 uses; cgroups-rs instead fails on the
/// first controller lacking the directory, which would refuse a cgroup an admin made only in
/// the controllers they care about.
pub fn join(pid: u32, path: &str) -> Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let hierarchies = if root.join("cgroup.controllers").exists() {
        vec![root.to_path_buf()]
    } else {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::io("read /proc/self/mountinfo"))?;
        v1_hierarchies(&mounts)
    };
    join_in(&hierarchies, pid, path)
}

pub(crate) fn join_in(hierarchies: &[PathBuf], pid: u32, path: &str) -> Result<()> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::invalid_argument(format!("cgroup path {path:?} must be a plain path below the root")));
    }
    let mut joined = 0;
    for h in hierarchies {
        let dir = h.join(rel);
        if !dir.is_dir() {
            continue;
        }
        // Without create: cgroup.procs always exists in a cgroup, so a missing one is no cgroup.
        let procs = dir.join("cgroup.procs");
        let write = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut f| std::io::Write::write_all(&mut f, pid.to_string().as_bytes()));
        write.map_err(Error::io(format!("move pid {pid} into {}", procs.display())))?;
        joined += 1;
    }
    if joined == 0 {
        return Err(Error::not_found(format!("cgroup {path} exists in no cgroup hierarchy")));
    }
    Ok(())
}

/// The mount points of the cgroup v1 hierarchies in `/proc/self/mountinfo` text.
fn v1_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (rest.split_whitespace().next()? == "cgroup").then(|| unescape(mount_point))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_hierarchies_come_from_cgroup_mounts_only() {
        let text = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
                    31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    33 25 0:29 / /mnt/my\\040cg rw - cgroup cgroup rw,name=x\n\
                    40 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            v1_hierarchies(text),
            [
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/mnt/my cg")
            ]
        );
    }

    #[test]
    fn join_writes_every_hierarchy_that_has_the_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("memory"), dir.path().join("cpu"));
        std::fs::create_dir_all(a.join("shims")).unwrap();
        std::fs::write(a.join("shims/cgroup.procs"), "").unwrap();
        std::fs::create_dir_all(&b).unwrap();
        join_in(&[a.clone(), b.clone()], 42, "/shims").unwrap();
        assert_eq!(std::fs::read_to_string(a.join("shims/cgroup.procs")).unwrap(), "42");
        assert!(!b.join("shims").exists(), "a hierarchy without the cgroup is skipped, not created");
        let err = join_in(std::slice::from_ref(&b), 42, "/shims").unwrap_err().to_string();
        assert!(err.contains("exists in no cgroup hierarchy"), "{err}");
        assert!(join_in(&[a], 42, "/shims/../..").is_err(), "no escaping the hierarchy");
    }

    #[test]
    fn v1_controller_wins_on_hybrid_hosts() {
        let text = "12:freezer:/podcr/abc\n11:memory,foo:/podcr/abc\n0::/user.slice\n";
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            parse(text, root, "freezer", "cgroup.freeze"),
            Some(ControllerCgroup::V1(root.join("freezer/podcr/abc")))
        );
        assert_eq!(
            parse(text, root, "memory", "memory.events"),
            Some(ControllerCgroup::V1(root.join("memory/podcr/abc")))
        );
        assert_eq!(parse(text, root, "pids", "pids.max"), None, "a missing probe file means not enabled");
    }

    #[test]
    fn unified_needs_the_probe_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pod/c1")).unwrap();
        assert_eq!(parse("0::/pod/c1\n", dir.path(), "freezer", "cgroup.freeze"), None);
        std::fs::write(dir.path().join("pod/c1/cgroup.freeze"), "0").unwrap();
        assert_eq!(
            parse("0::/pod/c1\n", dir.path(), "freezer", "cgroup.freeze"),
            Some(ControllerCgroup::V2(dir.path().join("pod/c1")))
        );
    }
}
