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
