//! `[restore]`: where checkpoints may be restored from, and who may restore what.
//!
//! ```toml
//! [restore]
//! # Directories a pod's `podcr.io/restore-from: <name>` annotation may name a checkpoint in.
//! checkpoint_roots = ["/var/lib/kubelet/pod-checkpoints", "/var/lib/podcr/checkpoints"]
//! # Whether a pod may restore a checkpoint taken in another Kubernetes namespace.
//! allow_cross_namespace = false
//! # Where `podcr restore` puts the restored containers' logs (the kubelet's layout).
//! pod_log_root = "/var/log/pods"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// The kubelet's checkpoint directory (KEP-5823), where `podcr checkpoint` writes by default.
pub const KUBELET_CHECKPOINT_ROOT: &str = "/var/lib/kubelet/pod-checkpoints";
/// podcr's own checkpoint directory, for checkpoints an admin places by hand.
pub const PODCR_CHECKPOINT_ROOT: &str = "/var/lib/podcr/checkpoints";
/// The kubelet's pod log root.
pub const POD_LOG_ROOT: &str = "/var/log/pods";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {
    /// Directories a `podcr.io/restore-from` name is looked up in, in order. Only the node admin
    /// writes here: whoever can put a directory in a root can have any pod restore it.
    pub checkpoint_roots: Vec<PathBuf>,
    /// Lets a pod restore a checkpoint recorded in another Kubernetes namespace.
    pub allow_cross_namespace: bool,
    /// Root of the per-pod log directories `podcr restore` gives restored containers.
    pub pod_log_root: PathBuf,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            checkpoint_roots: vec![PathBuf::from(KUBELET_CHECKPOINT_ROOT), PathBuf::from(PODCR_CHECKPOINT_ROOT)],
            allow_cross_namespace: false,
            pod_log_root: PathBuf::from(POD_LOG_ROOT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_config::NodeConfig;

    #[test]
    fn defaults_and_overrides() {
        let d = NodeConfig::parse("").unwrap().restore;
        assert_eq!(d.checkpoint_roots, [PathBuf::from(KUBELET_CHECKPOINT_ROOT), PathBuf::from(PODCR_CHECKPOINT_ROOT)]);
        assert!(!d.allow_cross_namespace);
        assert_eq!(d.pod_log_root, PathBuf::from(POD_LOG_ROOT));
        let c = NodeConfig::parse("[restore]\ncheckpoint_roots = [\"/srv/ck\"]\nallow_cross_namespace = true\n")
            .unwrap()
            .restore;
        assert_eq!(c.checkpoint_roots, [PathBuf::from("/srv/ck")]);
        assert!(c.allow_cross_namespace);
        assert_eq!(c.pod_log_root, PathBuf::from(POD_LOG_ROOT), "keys not given keep their defaults");
    }
}
