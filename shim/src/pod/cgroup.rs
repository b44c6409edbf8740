//! The pod cgroup: the holder joins the CRI's `cgroup_parent`, as the pause container does under
//! containerd's own pod sandboxes, so pod-level accounting and limits include it. Only cgroupfs
//! paths are handled (the systemd driver's slice names are not). Directories this module creates
//! are removed again when the pod goes; ones that existed before are left alone.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::{
    cgroups::CGROUP_ROOT,
    runc_error::{Error, Result},
};

/// The cgroup directories of a pod, one per hierarchy, and which of them we created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCgroup {
    dirs: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

/// Hierarchy roots: every v1 controller mount, or the single v2 root.
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

impl PodCgroup {
    /// Puts `pid` into `parent` in every hierarchy, creating the directories it needs.
    pub fn join(parent: &str, pid: u32) -> Result<PodCgroup> {
        Self::join_under(Path::new(CGROUP_ROOT), parent, pid)
    }

    pub(crate) fn join_under(root: &Path, parent: &str, pid: u32) -> Result<PodCgroup> {
        let rel = parent.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") || parent.ends_with(".slice") {
            return Err(Error::invalid_argument(format!("unsupported cgroup parent {parent:?} (cgroupfs paths only)")));
        }
        let mut cg = PodCgroup::default();
        for hierarchy in hierarchies(root) {
            let dir = hierarchy.join(rel);
            // Record each directory we make, deepest last, so removal can undo exactly that.
            let mut missing = Vec::new();
            let mut p = dir.as_path();
            while !p.exists() && p != hierarchy {
                missing.push(p.to_path_buf());
                p = match p.parent() {
                    Some(parent) => parent,
                    None => break,
                };
            }
            fs::create_dir_all(&dir).map_err(Error::io(format!("create cgroup {}", dir.display())))?;
            cg.created.extend(missing.into_iter().rev());
            cg.dirs.push(dir.clone());
            if let Err(e) = fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                // cpuset needs cpus/mems set before tasks can join; such a hierarchy keeps the
                // holder where it was, which only affects accounting.
                warn!(cgroup = %dir.display(), error = %e, "pod holder cannot join this cgroup");
            }
        }
        Ok(cg)
    }

    /// Removes the directories `join` created, deepest first; busy ones (still holding
    /// processes) are left and logged.
    pub fn remove(&self) {
        for dir in self.created.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(cgroup = %dir.display(), error = %e, "remove pod cgroup");
                }
            }
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_every_hierarchy_and_removes_only_what_it_created() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu"] {
            fs::create_dir_all(root.path().join(h).join("kubepods")).unwrap();
            fs::write(root.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        let cg = PodCgroup::join_under(root.path(), "/kubepods/pod-1", 4242).unwrap();
        assert_eq!(cg.dirs().len(), 2);
        for dir in cg.dirs() {
            assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "4242");
            fs::remove_file(dir.join("cgroup.procs")).unwrap();
        }
        cg.remove();
        assert!(!root.path().join("memory/kubepods/pod-1").exists());
        assert!(root.path().join("memory/kubepods").exists(), "a parent that existed before must stay");
    }

    #[test]
    fn refuses_escapes_and_systemd_slices() {
        let root = tempfile::tempdir().unwrap();
        assert!(PodCgroup::join_under(root.path(), "/../etc", 1).is_err());
        assert!(PodCgroup::join_under(root.path(), "kubepods-burstable.slice", 1).is_err());
    }
}
