//! The node configuration (`podcr.toml`) each test run gives its shims and the `podcr` CLI, as a
//! node admin would write it. One function per section, so each concern provisions its own.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// File name of the run's configuration inside the run dir.
pub const FILE: &str = "podcr.toml";

/// Writes the run's `podcr.toml` into `dir` and returns its path.
pub fn provision(dir: &Path) -> Result<PathBuf> {
    let text = [restore_section(dir)?, signing_section(dir)?, metrics_section(dir)?].join("\n");
    let path = dir.join(FILE);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `[restore]` for a run rooted at `dir`.
fn restore_section(_dir: &Path) -> Result<String> {
    Ok(String::new())
}

/// `[signing]` for a run rooted at `dir`.
fn signing_section(_dir: &Path) -> Result<String> {
    Ok(String::new())
}

/// Where the run's shims leave their metrics files, inside the run so teardown removes them.
pub const METRICS_DIR: &str = "metrics";

/// `[metrics]`: the textfile collector directory is the run's own.
fn metrics_section(dir: &Path) -> Result<String> {
    let metrics = dir.join(METRICS_DIR);
    std::fs::create_dir_all(&metrics).with_context(|| format!("create {}", metrics.display()))?;
    Ok(format!("[metrics]\ntextfile_dir = {:?}\n", metrics.display().to_string()))
}
