//! `[metrics]`: where the shims leave Prometheus metrics for node_exporter's textfile collector.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// node_exporter's `--collector.textfile.directory`. Each pod's shim writes
    /// `podcr-<sandbox id>.prom` there after every pod checkpoint or restore and removes it when
    /// the pod goes. Unset: no metrics files.
    pub textfile_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use crate::node_config::NodeConfig;

    #[test]
    fn textfile_dir_is_optional() {
        assert_eq!(NodeConfig::parse("").unwrap().metrics.textfile_dir, None);
        let c = NodeConfig::parse("[metrics]\ntextfile_dir = \"/var/lib/node_exporter\"\n").unwrap();
        assert_eq!(c.metrics.textfile_dir.unwrap().to_str(), Some("/var/lib/node_exporter"));
        assert!(NodeConfig::parse("[metrics]\nport = 1\n").is_err());
    }
}
