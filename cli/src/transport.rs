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
    open_pod_checkpoint(path).map_err(|e| match container_checkpoint(path) {
        // Said instead of the reader's complaint about a missing pod manifest, which would
        // leave the user guessing.
        Some(kind) => anyhow::anyhow!(
            "{} is a single container's checkpoint ({kind}), not a podcr pod checkpoint: restore it with the \
             tool that made it (the kubelet's CRI, `crictl`, `podman container restore`); podcr restores \
             checkpoints that `podcr checkpoint` or CRI CheckpointPod wrote",
            path.display()
        ),
        None => e,
    })
}

/// Names the kind of a *container* checkpoint (the kubelet's, CRI-O's, containerd's CRI or
/// Podman's: `config.dump`, `spec.dump` and `checkpoint/` at the top, no pod manifest), for a
/// better error than "not a pod checkpoint". Only looks at names, never trusts the content.
fn container_checkpoint(path: &Path) -> Option<&'static str> {
    let names: Vec<String> = if path.is_dir() {
        std::fs::read_dir(path).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    } else {
        tar_head_names(path, 64).ok()?
    };
    let has = |n: &str| names.iter().any(|x| x.trim_start_matches("./").trim_end_matches('/') == n);
    let container = has("spec.dump") && (has("config.dump") || has("checkpoint"));
    (container && !has(archive::POD_MANIFEST_FILE)).then_some("config.dump and spec.dump at its top")
}

/// The names of the first `max` entries of an uncompressed tar, read from the raw 512-byte
/// headers (name and ustar prefix fields only) and skipping each entry's data by seeking: a
/// hostile size or long-name entry costs a seek, never an allocation.
fn tar_head_names(path: &Path, max: usize) -> std::io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut names = Vec::new();
    let mut header = [0u8; 512];
    let mut pos = 0u64;
    while names.len() < max && pos + 512 <= len {
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut header)?;
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let b = &header[r];
            String::from_utf8_lossy(&b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())]).into_owned()
        };
        let size_field = field(124..136);
        let size = u64::from_str_radix(size_field.trim(), 8).map_err(|_| std::io::ErrorKind::InvalidData)?;
        let (prefix, name) = (field(345..500), field(0..100));
        if &header[257..262] == b"ustar" && !prefix.is_empty() {
            names.push(format!("{prefix}/{name}"));
        } else {
            names.push(name);
        }
        pos = pos.saturating_add(512).saturating_add(size.div_ceil(512).saturating_mul(512));
    }
    Ok(names)
}

fn open_pod_checkpoint(path: &Path) -> Result<Source> {
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

    /// A directory and a tar laid out as the kubelet's container checkpoints are named as such.
    #[test]
    fn a_container_checkpoint_is_recognised_as_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ctr");
        std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
        std::fs::write(dir.join("config.dump"), "{}").unwrap();
        std::fs::write(dir.join("spec.dump"), "{}").unwrap();
        std::fs::write(dir.join("checkpoint/pages-1.img"), "x").unwrap();
        assert!(container_checkpoint(&dir).is_some());
        let err = open(&dir).err().unwrap().to_string();
        assert!(err.contains("single container's checkpoint"), "{err}");

        let tar = tmp.path().join("ctr.tar");
        let st = std::process::Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .args(["config.dump", "spec.dump", "checkpoint"])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(container_checkpoint(&tar).is_some());

        // A pod checkpoint's manifest beside them, or an unrelated directory: not a container one.
        std::fs::write(dir.join(archive::POD_MANIFEST_FILE), "{}").unwrap();
        assert!(container_checkpoint(&dir).is_none());
        assert!(container_checkpoint(tmp.path()).is_none());
    }

    #[test]
    fn missing_source_is_an_error() {
        assert!(open(Path::new("/nonexistent/podcr-checkpoint")).is_err());
    }
}
