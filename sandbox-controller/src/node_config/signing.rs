//! `[signing]`: the node's signing key and the public keys whose checkpoints it restores. The
//! section's type lives in the archive crate, which signs and verifies with it.

pub use podcr_archive::signing_config::{SigningConfig, DEFAULT_KEY, DEFAULT_TRUSTED_DIR};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_config::NodeConfig;
    use std::path::PathBuf;

    #[test]
    fn defaults_refuse_unsigned() {
        let c = NodeConfig::parse("").unwrap().signing;
        assert_eq!(c, SigningConfig::default());
        assert!(!c.allow_unsigned);
        let c = NodeConfig::parse("[signing]\nkey = \"/k\"\nallow_unsigned = true\n").unwrap().signing;
        assert_eq!(c.key, PathBuf::from("/k"));
        assert_eq!(c.trusted_dir, PathBuf::from(DEFAULT_TRUSTED_DIR));
        assert!(c.allow_unsigned);
    }
}
