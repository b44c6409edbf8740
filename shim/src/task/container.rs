//! A container the shim runs: its bundle, rootfs, processes and a per-container operation lock.
//! The store's map only hands out `Arc<Container>`; runc calls hold this container's `op` lock,
//! never the map's, so a slow runc (or CRIU dump) on one container does not stall the others.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use super::{
    process::Process,
    runc::{CriuFlags, Runc},
};
use crate::runc_error::{Error, Result};

/// Lifecycle state of a container (its init process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// A restore that `Start` performs instead of `runc start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub flags: CriuFlags,
    /// The shim's own staged copies (CRIU's images, the rootfs diff): removed once CRIU has read
    /// them, since they hold the pod's memory and a second restore cannot use them anyway.
    /// Empty for a checkpoint path containerd owns.
    pub discard: Vec<PathBuf>,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Whether Create mounted `rootfs` (and so Delete must unmount it).
    pub mounted_rootfs: bool,
    pub upperdir: Option<PathBuf>,
    pub annotations: HashMap<String, String>,
    pub created_at: SystemTime,
    pub runc: Runc,
    pub init: Arc<Process>,
    pub(super) execs: Mutex<HashMap<String, Arc<Process>>>,
    pub(super) restore: Mutex<Option<RestorePlan>>,
    pub(super) paused: AtomicBool,
    /// Serialises runc verbs on this container (pause vs checkpoint vs delete...).
    pub(super) op: tokio::sync::Mutex<()>,
}

impl Container {
    pub fn status(&self) -> Status {
        if self.init.exit().is_some() {
            Status::Stopped
        } else if self.paused.load(Ordering::SeqCst) {
            Status::Paused
        } else if self.init.started() {
            Status::Running
        } else {
            Status::Created
        }
    }

    pub fn exec(&self, exec_id: &str) -> Result<Arc<Process>> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("exec {exec_id} in {}", self.id)))
    }

    /// The init process for an empty exec id, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            Ok(self.init.clone())
        } else {
            self.exec(exec_id)
        }
    }

    pub fn execs(&self) -> Vec<Arc<Process>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub(super) fn add_exec(&self, p: Arc<Process>) -> Result<()> {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.contains_key(&p.exec_id) {
            return Err(Error::already_exists(format!("exec {} in {}", p.exec_id, self.id)));
        }
        execs.insert(p.exec_id.clone(), p);
        Ok(())
    }

    pub(super) fn remove_exec(&self, exec_id: &str) {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(exec_id);
    }

    pub(super) fn take_restore(&self) -> Option<RestorePlan> {
        self.restore.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

/// The overlay `upperdir=` of a rootfs mount, if any (the container's writable layer).
pub fn upperdir(options: &[String]) -> Option<PathBuf> {
    options.iter().find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
}

/// Annotations of the bundle's OCI spec; missing file or field means none.
pub fn annotations(spec: &serde_json::Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| a.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upperdir_from_overlay_options() {
        let opts = vec!["index=off".to_string(), "workdir=/w".into(), "upperdir=/u/fs".into(), "lowerdir=/l".into()];
        assert_eq!(upperdir(&opts), Some(PathBuf::from("/u/fs")));
        assert_eq!(upperdir(&["ro".to_string()]), None);
    }

    #[test]
    fn annotations_from_spec() {
        let spec = serde_json::json!({"annotations": {"a": "b", "n": 1}});
        let a = annotations(&spec);
        assert_eq!(a.get("a").map(String::as_str), Some("b"));
        assert_eq!(a.len(), 1);
        assert!(annotations(&serde_json::json!({})).is_empty());
    }
}
