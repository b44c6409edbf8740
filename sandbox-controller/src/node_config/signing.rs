//! `[signing]`: the node's signing key and the public keys whose checkpoints it restores.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {}
