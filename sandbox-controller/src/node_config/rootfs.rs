//! `[rootfs]`: what a checkpoint's writable-layer diff may carry into a restored container.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RootfsConfig {
    /// Restore setuid/setgid bits and `security.capability` xattrs from rootfs diffs. Off by
    /// default: a diff that adds them is a privilege escalation inside the container. What is
    /// dropped is logged by the shim.
    pub keep_privileged: bool,
}

impl RootfsConfig {
    pub fn privileged(&self) -> crate::archive::Privileged {
        if self.keep_privileged {
            crate::archive::Privileged::Keep
        } else {
            crate::archive::Privileged::Strip
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{archive::Privileged, node_config::NodeConfig};

    #[test]
    fn privileged_bits_are_dropped_unless_kept() {
        assert_eq!(NodeConfig::parse("").unwrap().rootfs.privileged(), Privileged::Strip);
        let kept = NodeConfig::parse("[rootfs]\nkeep_privileged = true\n").unwrap();
        assert_eq!(kept.rootfs.privileged(), Privileged::Keep);
        assert!(NodeConfig::parse("[rootfs]\nkeep_setuid = true\n").is_err(), "a typo must not pass silently");
    }
}
