//! The node configuration (`podcr.toml`) each test run gives its shims and the `podcr` CLI, as a
//! node admin would write it. One function per section, so each concern provisions its own.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// File name of the run's configuration inside the run dir.
pub const FILE: &str = "podcr.toml";

/// Writes the run's `podcr.toml` into `dir` and returns its path.
pub fn provision(dir: &Path) -> Result<PathBuf> {
    let text = [restore_section(dir)?, signing_section(dir)?].join("\n");
    let path = dir.join(FILE);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The run's checkpoint roots (`[restore] checkpoint_roots`): the kubelet's, then podcr's own.
pub fn checkpoint_roots(dir: &Path) -> [PathBuf; 2] {
    [dir.join("checkpoints").join("kubelet"), dir.join("checkpoints").join("podcr")]
}

/// Where `podcr restore` puts restored pods' logs in this run (`[restore] pod_log_root`).
pub fn pod_log_root(dir: &Path) -> PathBuf {
    dir.join("pod-logs")
}

/// `[restore]` for a run rooted at `dir`: checkpoint roots and the pod log root inside it.
fn restore_section(dir: &Path) -> Result<String> {
    let roots = checkpoint_roots(dir);
    for root in &roots {
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    }
    let quoted: Vec<String> = roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
    Ok(format!(
        "[restore]\ncheckpoint_roots = [{}]\npod_log_root = {:?}\n",
        quoted.join(", "),
        pod_log_root(dir).display().to_string()
    ))
}

/// `[signing]` for a run rooted at `dir`.
fn signing_section(_dir: &Path) -> Result<String> {
    Ok(String::new())
}
