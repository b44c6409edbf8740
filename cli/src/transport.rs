//! The single-file form of a pod checkpoint, for moving it between nodes: thin wrappers over the
//! archive module's packer and hardened unpacker.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use podcr_sandbox_controller::{
    archive::{self, Compression, Limits, PodCheckpoint, TrustPolicy},
    node_config::NodeConfig,
};

/// Compression chosen by the file name: `.zst`/`.tzst` zstd, `.gz`/`.tgz` gzip, else plain tar.
pub fn compression_for(file: &Path) -> Compression {
    let name = file.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".zst") || name.ends_with(".tzst") {
        Compression::Zstd
    } else if name.ends_with(".gz") || name.ends_with(".tgz") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Packs a finished checkpoint directory into `file`, atomically (the packer writes a
/// temporary file and renames it).
pub fn pack(dir: &Path, file: &Path) -> Result<()> {
    let stats = archive::pack_pod_dir(dir, file, compression_for(file))
        .with_context(|| format!("pack {} into {}", dir.display(), file.display()))?;
    tracing::info!(bytes = stats.bytes, sha256 = %stats.sha256, "packed the checkpoint");
    Ok(())
}

/// A verified checkpoint directory, and the private temporary directory holding it when it came
/// from an archive (removed when dropped).
pub struct Source {
    pub checkpoint: PodCheckpoint,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// What this node's `[signing]` trusts.
pub fn trust_policy() -> Result<TrustPolicy> {
    let cfg =
        NodeConfig::load().with_context(|| format!("read the node configuration {}", NodeConfig::path().display()))?;
    TrustPolicy::from_config(&cfg.signing).context("load the trusted checkpoint keys")
}

/// Opens `path` for restore: a directory is verified in place and never modified; a file is
/// unpacked into a fresh private directory and verified there. Either way the signature is
/// verified against the node's trusted keys before anything else of the checkpoint is read.
pub fn open(path: &Path) -> Result<Source> {
    let limits = Limits::default();
    let trust = trust_policy()?;
    let meta = std::fs::metadata(path).with_context(|| format!("checkpoint {}", path.display()))?;
    if meta.is_dir() {
        let dir = std::fs::canonicalize(path).with_context(|| format!("resolve {}", path.display()))?;
        // Every check but re-hashing the container archives: the shim hashes each one while it
        // extracts it, so hashing here too would read the pod's memory once more for nothing.
        let checkpoint = archive::open_pod_dir(&dir, &limits, &trust)
            .with_context(|| format!("open checkpoint {}", dir.display()))?;
        compatible(&checkpoint)?;
        return Ok(Source { checkpoint, dir, _tmp: None });
    }
    // tempfile creates the directory with mode 0700; the unpacker wants to create `dest` itself.
    let tmp = tempfile::Builder::new().prefix("podcr-restore-").tempdir().context("create a temporary directory")?;
    let dir = tmp.path().join("checkpoint");
    let checkpoint = archive::unpack_pod_archive(path, &dir, &limits, &trust)
        .with_context(|| format!("unpack checkpoint archive {}", path.display()))?;
    compatible(&checkpoint)?;
    Ok(Source { checkpoint, dir, _tmp: Some(tmp) })
}

/// Refuses a checkpoint made for another CPU architecture or runtime before any pod is created
/// (the shim checks again, but by then a pod exists and has to be rolled back).
fn compatible(checkpoint: &PodCheckpoint) -> Result<()> {
    podcr_sandbox_controller::restore::check_compatible(checkpoint).context("this checkpoint cannot be restored here")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_name() {
        assert_eq!(compression_for(Path::new("/x/pod.tar.zst")), Compression::Zstd);
        assert_eq!(compression_for(Path::new("pod.TAR.GZ")), Compression::Gzip);
        assert_eq!(compression_for(Path::new("pod.tar")), Compression::None);
        assert_eq!(compression_for(Path::new("pod")), Compression::None);
    }

    #[test]
    fn missing_source_is_an_error() {
        assert!(open(Path::new("/nonexistent/podcr-checkpoint")).is_err());
    }
}
