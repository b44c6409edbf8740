//! `[restore]`: where checkpoints may be restored from, and who may restore what.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {}
