//! Writing a pod checkpoint: container archives, `pod.options`/`pod.dump`, and the pod manifest.

use std::{
    collections::BTreeMap,
    io::{BufWriter, Write},
    path::Path,
};

use chrono::{DateTime, Utc};

use super::{
    cancel::{Cancel, CancelWrite},
    codec::Encoder,
    fsutil::{digest_file, write_atomic, AtomicFile, Hashing},
    layout::*,
    metadata::{ContainerArchiveMeta, ContainerManifest, FileDigest, ManifestContainer, PodManifest, PodOptions},
    tarout::TarOut,
};
use crate::error::{Error, Result};

/// What writing one archive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Size of the archive file as written (compressed).
    pub bytes: u64,
    /// SHA-256 of the archive file, lowercase hex.
    pub sha256: String,
    /// Number of tar entries.
    pub entries: u64,
    /// Sum of the regular files' sizes: what extracting the archive writes.
    pub content_bytes: u64,
}

impl ArchiveStats {
    pub fn digest(&self) -> FileDigest {
        FileDigest { sha256: self.sha256.clone(), size: self.bytes }
    }
}

/// Files the staging directory may hold besides `checkpoint/`; all optional.
const STAGED_FILES: [&str; 3] = [STATS_DUMP, DUMP_LOG, ROOTFS_DIFF_TAR];

/// Streams one container's checkpoint into `dest` in a single pass, as a tar checkpointctl reads
/// as a containerd container checkpoint (entry order: `checkpoint/`, CRIU images, `config.dump`,
/// `spec.dump`, `status.dump`, `stats-dump`, `dump.log`, `rootfs-diff.tar`, `deleted.files`,
/// `bind.mounts`, and `podcr.container.manifest.json` last, holding the SHA-256 of every other
/// file entry).
///
/// `staging_dir` must contain the `checkpoint/` directory with CRIU's images and may contain
/// `stats-dump`, `dump.log` and `rootfs-diff.tar`; anything else there is an error so nothing is
/// dropped silently. The metadata files come from `meta`. The archive is written to `<dest>.tmp`,
/// fsynced and renamed over `dest`; on error the temporary file is removed.
pub fn write_container_archive(
    staging_dir: &Path,
    meta: &ContainerArchiveMeta,
    dest: &Path,
    compression: Compression,
) -> Result<ArchiveStats> {
    write_container_archive_until(staging_dir, meta, dest, compression, &Cancel::new())
}

/// [`write_container_archive`] that stops at the next chunk written once `cancel` is cancelled
/// (failing with [`super::CANCELLED`]; the temporary file is removed before it returns).
pub fn write_container_archive_until(
    staging_dir: &Path,
    meta: &ContainerArchiveMeta,
    dest: &Path,
    compression: Compression,
    cancel: &Cancel,
) -> Result<ArchiveStats> {
    validate_container_name(&meta.name)?;
    for path in &meta.deleted_files {
        super::rootfs::check_deleted_path(path).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    let present = scan_staging(staging_dir)?;
    let mtime = meta.checkpointed.timestamp().max(0) as u64;

    let mut out = AtomicFile::create(dest)?;
    let file = out.file()?;
    let hashed = Hashing::new(BufWriter::with_capacity(super::fsutil::IO_BUF, CancelWrite::new(file, cancel.clone())));
    let mut tar = TarOut::new(Encoder::new(hashed, compression)?, mtime);

    tar.add_dir(CHECKPOINT_DIR, DIR_MODE)?;
    add_tree(&mut tar, &staging_dir.join(CHECKPOINT_DIR), CHECKPOINT_DIR)?;
    tar.add_bytes(CONFIG_DUMP, FILE_MODE, &to_json(&meta.config())?)?;
    tar.add_bytes(SPEC_DUMP, FILE_MODE, &to_json(&meta.annotated_spec())?)?;
    if let Some(status) = &meta.status {
        tar.add_bytes(STATUS_DUMP, FILE_MODE, &to_json(status)?)?;
    }
    if let Some(cri_config) = &meta.cri_config {
        tar.add_bytes(CONTAINER_CONFIG_DUMP, FILE_MODE, &to_json(cri_config)?)?;
    }
    for name in STAGED_FILES.iter().filter(|n| present.iter().any(|p| p == *n)) {
        tar.add_file(name, FILE_MODE, &staging_dir.join(name))?;
    }
    tar.add_bytes(DELETED_FILES, FILE_MODE, &to_json(&meta.deleted_files)?)?;
    tar.add_bytes(BIND_MOUNTS, FILE_MODE, &to_json(&meta.bind_mounts)?)?;
    let manifest = ContainerManifest {
        format: CONTAINER_MANIFEST_FORMAT.into(),
        version: FORMAT_VERSION,
        files: tar.files.clone(),
    };
    tar.add_bytes(CONTAINER_MANIFEST_FILE, FILE_MODE, &to_json(&manifest)?)?;

    let entries = tar.entries;
    let content_bytes = tar.files.values().map(|d| d.size).sum();
    let enc = tar.finish()?;
    let hashed = enc.finish().map_err(Error::io(format!("compress {}", dest.display())))?;
    let (mut buf, digest) = hashed.digest();
    buf.flush().map_err(Error::io(format!("write {}", dest.display())))?;
    drop(buf);
    out.commit()?;
    Ok(ArchiveStats { bytes: digest.size, sha256: digest.sha256, entries, content_bytes })
}

/// The pretty JSON checkpointctl writes too (2-space indent).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|source| Error::Json { path: "<memory>".into(), source })
}

/// Checks the staging directory's top level and returns which optional files are there.
fn scan_staging(dir: &Path) -> Result<Vec<String>> {
    let mut present = Vec::new();
    let mut has_images = false;
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read staging dir {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read staging dir {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type().map_err(Error::io(format!("stat {}", entry.path().display())))?;
        if name == CHECKPOINT_DIR && ft.is_dir() {
            has_images = true;
        } else if STAGED_FILES.contains(&name.as_str()) && ft.is_file() {
            present.push(name);
        } else {
            return Err(Error::InvalidArgument(format!(
                "unexpected {:?} in checkpoint staging dir {}",
                name,
                dir.display()
            )));
        }
    }
    if !has_images {
        return Err(Error::InvalidArgument(format!(
            "staging dir {} has no {CHECKPOINT_DIR}/ directory",
            dir.display()
        )));
    }
    Ok(present)
}

/// Adds a directory tree (CRIU's image directory) in name order; only regular files and
/// directories are allowed, since CRIU writes nothing else.
fn add_tree<W: Write>(tar: &mut TarOut<W>, dir: &Path, prefix: &str) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::io(format!("read {}", dir.display())))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(format!("read {}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("non-UTF-8 file name in {}: {:?}", dir.display(), entry.file_name()))
        })?;
        let path = format!("{prefix}/{name}");
        let ft = entry.file_type().map_err(Error::io(format!("stat {}", entry.path().display())))?;
        if ft.is_dir() {
            tar.add_dir(&path, DIR_MODE)?;
            add_tree(tar, &entry.path(), &path)?;
        } else if ft.is_file() {
            tar.add_file(&path, FILE_MODE, &entry.path())?;
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a regular file nor a directory",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// Writes `pod.options` and `pod.dump` (the `PodSandboxConfig` as snake_case JSON) atomically
/// into the pod directory.
pub fn write_pod_files(output_path: &Path, options: &PodOptions, pod_config: &serde_json::Value) -> Result<()> {
    for (name, archive) in &options.containers {
        validate_container_name(name)?;
        if !archive.starts_with(&format!("{name}.tar")) {
            return Err(Error::InvalidArgument(format!("pod.options maps {name:?} to unexpected {archive:?}")));
        }
    }
    write_atomic(&output_path.join(POD_OPTIONS_FILE), &to_json(options)?)?;
    write_atomic(&output_path.join(POD_DUMP_FILE), &to_json(pod_config)?)
}

/// What the pod manifest says besides the file digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodManifestInfo {
    pub sandbox_id: String,
    /// e.g. `podcr 0.1.0`.
    pub engine: String,
    /// e.g. `x86_64` (`std::env::consts::ARCH`).
    pub arch: String,
    pub runtime: String,
    pub criu_version: Option<String>,
    pub created: DateTime<Utc>,
    pub containers: Vec<ManifestContainer>,
}

/// Hashes every file in the pod directory and writes `podcr.manifest.json` last and atomically,
/// then fsyncs the directory: once the manifest exists the checkpoint is complete. With a
/// `signer`, `podcr.manifest.sig` (over the manifest's exact bytes) is written just before it,
/// so a complete checkpoint is always a signed one.
///
/// `known` may carry digests computed while writing (e.g. [`ArchiveStats::digest`]); a file whose
/// size on disk matches its known digest is not read again. Every listed container archive must
/// exist, and the directory may hold only regular files.
pub fn finish_pod_manifest(
    output_path: &Path,
    info: &PodManifestInfo,
    known: &BTreeMap<String, FileDigest>,
    signer: Option<&super::signing::Signer>,
) -> Result<PodManifest> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(output_path).map_err(Error::io(format!("read {}", output_path.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read {}", output_path.display())))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| Error::InvalidArgument(format!("non-UTF-8 name {n:?} in {}", output_path.display())))?;
        if name == POD_MANIFEST_FILE || name == SIGNATURE_FILE {
            return Err(Error::AlreadyExists(format!("{} already has a manifest or signature", output_path.display())));
        }
        let ft = entry.file_type().map_err(Error::io(format!("stat {}", entry.path().display())))?;
        if !ft.is_file() {
            return Err(Error::InvalidArgument(format!("{} is not a regular file", entry.path().display())));
        }
        let size = entry.metadata().map_err(Error::io(format!("stat {}", entry.path().display())))?.len();
        let digest = match known.get(&name) {
            Some(d) if d.size == size => d.clone(),
            _ => digest_file(&entry.path())?,
        };
        files.insert(name, digest);
    }
    for c in &info.containers {
        validate_container_name(&c.name)?;
        if !files.contains_key(&c.archive) || c.archive != container_archive_name(&c.name, c.compression)? {
            return Err(Error::InvalidArgument(format!(
                "container {:?}: archive {:?} missing or misnamed",
                c.name, c.archive
            )));
        }
    }
    let manifest = PodManifest {
        format: POD_MANIFEST_FORMAT.into(),
        version: FORMAT_VERSION,
        created: info.created,
        engine: info.engine.clone(),
        arch: info.arch.clone(),
        runtime: info.runtime.clone(),
        criu_version: info.criu_version.clone(),
        sandbox_id: info.sandbox_id.clone(),
        containers: info.containers.clone(),
        files,
    };
    let bytes = to_json(&manifest)?;
    if let Some(signer) = signer {
        write_atomic(&output_path.join(SIGNATURE_FILE), &signer.sign(&bytes)?)?;
    }
    write_atomic(&output_path.join(POD_MANIFEST_FILE), &bytes)?;
    Ok(manifest)
}
