//! `[signing]` of the node configuration (`podcr.toml`): the node's signing key and the public
//! keys whose checkpoints it restores. Defined here, beside the code that uses it, and re-exported
//! by the controller's `node_config`.
//!
//! A checkpoint is the pod's memory and CRIU restores it as root, so a checkpoint is code: this
//! node signs what it writes and restores only what a key it trusts signed. Nothing here is
//! loaded until a checkpoint or restore needs it, so rotating a key needs no shim restart.

use std::path::PathBuf;

use serde::Deserialize;

/// Where `podcr key generate` puts the node's key unless told otherwise.
pub const DEFAULT_KEY: &str = "/etc/podcr/signing.key";
/// The directory of trusted public keys (`*.pub`, PEM).
pub const DEFAULT_TRUSTED_DIR: &str = "/etc/podcr/trusted.d";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// The node's ed25519 private key (PKCS#8 PEM, mode 0600, owned by root).
    pub key: PathBuf,
    /// Public keys (SPKI PEM, `*.pub`) whose signatures a restore accepts.
    pub trusted_dir: PathBuf,
    /// Checkpoint without a key, and restore checkpoints that carry no signature. Only for nodes
    /// where every checkpoint is made and restored locally by root; never across a network.
    pub allow_unsigned: bool,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            key: PathBuf::from(DEFAULT_KEY),
            trusted_dir: PathBuf::from(DEFAULT_TRUSTED_DIR),
            allow_unsigned: false,
        }
    }
}
