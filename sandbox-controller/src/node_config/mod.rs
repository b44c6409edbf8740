//! The node admin's configuration of podcr: one TOML file, `/etc/podcr/podcr.toml` (or the file
//! `$PODCR_CONFIG` names), read by the shim when it starts and by the `podcr` CLI.
//!
//! Each section belongs to one concern and lives in its own module. A missing file means every
//! default; a file that does not parse, or names a key podcr does not know, is an error rather
//! than a silent default: a typo in a trust setting must not quietly widen it.

pub mod metrics;
pub mod restore;
pub mod rootfs;
pub mod signing;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use metrics::MetricsConfig;
pub use restore::RestoreConfig;
pub use rootfs::RootfsConfig;
pub use signing::SigningConfig;

use crate::error::{Error, Result};

/// Where the node's configuration lives unless `$PODCR_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/podcr/podcr.toml";
/// Names another configuration file (tests, a second containerd on one node).
pub const ENV_PATH: &str = "PODCR_CONFIG";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub restore: RestoreConfig,
    pub signing: SigningConfig,
    pub rootfs: RootfsConfig,
    pub metrics: MetricsConfig,
}

impl NodeConfig {
    /// The file this process reads: `$PODCR_CONFIG` when set, else [`DEFAULT_PATH`].
    pub fn path() -> PathBuf {
        std::env::var_os(ENV_PATH)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads [`NodeConfig::path`]; a missing file gives the defaults.
    pub fn load() -> Result<NodeConfig> {
        NodeConfig::load_from(&NodeConfig::path())
    }

    pub fn load_from(path: &Path) -> Result<NodeConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeConfig::default()),
            Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
        };
        NodeConfig::parse(&text).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<NodeConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeConfig::load_from(&dir.path().join("none.toml")).unwrap(), NodeConfig::default());
    }

    #[test]
    fn an_unknown_key_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("podcr.toml");
        std::fs::write(&p, "[restore]\nno_such_key = true\n").unwrap();
        let err = NodeConfig::load_from(&p).unwrap_err().to_string();
        assert!(err.contains("no_such_key"), "{err}");
        std::fs::write(&p, "[nosuchsection]\n").unwrap();
        assert!(NodeConfig::load_from(&p).is_err());
    }
}
