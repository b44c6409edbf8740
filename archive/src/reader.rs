//! Reading a container archive: strict extraction, then the inner manifest, then the metadata.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{
    cancel::Cancel,
    fsutil::read_bounded,
    layout::*,
    limits::Limits,
    metadata::{BindMount, ContainerConfig, ContainerManifest, FileDigest},
    rootfs::check_deleted_path,
    untar::{check_against_manifest, extract_strict_until, with_fresh_dir},
};
use crate::error::{Error, Result};

/// A container archive unpacked into a private directory, with its metadata parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedContainer {
    /// The extraction directory (mode 0700); CRIU's images are in `dir/checkpoint`.
    pub dir: PathBuf,
    pub config: ContainerConfig,
    /// `spec.dump`: the container's OCI runtime spec.
    pub spec: serde_json::Value,
    /// `status.dump`, when the archive has one.
    pub status: Option<serde_json::Value>,
    /// `container-config.dump` (the CRI `ContainerConfig`), when the archive has one.
    pub cri_config: Option<serde_json::Value>,
    /// `deleted.files`, each a checked absolute path without `..`.
    pub deleted_files: Vec<String>,
    pub bind_mounts: Vec<BindMount>,
    /// `dir/rootfs-diff.tar` when the archive has one.
    pub rootfs_diff: Option<PathBuf>,
    pub compression: Compression,
    /// SHA-256 and size of the archive file as read.
    pub archive_digest: FileDigest,
}

impl ExtractedContainer {
    /// Directory of CRIU's images.
    pub fn image_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }
}

/// Top-level entries a container archive may have besides the `checkpoint/` tree.
const TOP_LEVEL: [&str; 10] = [
    CONFIG_DUMP,
    SPEC_DUMP,
    STATUS_DUMP,
    CONTAINER_CONFIG_DUMP,
    STATS_DUMP,
    DUMP_LOG,
    ROOTFS_DIFF_TAR,
    DELETED_FILES,
    BIND_MOUNTS,
    CONTAINER_MANIFEST_FILE,
];

/// Metadata documents loaded into memory, so bounded by [`Limits::max_metadata_bytes`].
const SMALL: [&str; 7] =
    [CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, CONTAINER_CONFIG_DUMP, STATS_DUMP, DELETED_FILES, BIND_MOUNTS];

pub(super) fn check_container_entry(path: &str, is_dir: bool, size: u64, limits: &Limits) -> Result<()> {
    if path == CHECKPOINT_DIR || path.starts_with("checkpoint/") {
        return Ok(());
    }
    if is_dir || !TOP_LEVEL.contains(&path) {
        return Err(Error::Archive(format!("unexpected entry {path:?} in a container archive")));
    }
    let max = if path == CONTAINER_MANIFEST_FILE { limits.max_manifest_bytes } else { limits.max_metadata_bytes };
    if (SMALL.contains(&path) || path == CONTAINER_MANIFEST_FILE) && size > max {
        return Err(Error::Archive(format!("{path} claims {size} bytes, more than the limit of {max}")));
    }
    Ok(())
}

/// Unpacks a container archive (plain, gzip or zstd, found by magic bytes) into `dest`, which
/// must not exist yet and is created with mode 0700.
///
/// Never trusts the archive: only regular files and directories with canonical relative paths
/// are accepted (no `..`, no absolute paths, no links, no devices, no duplicates), only the
/// entries of podcr's container layout, metadata within `limits`, and the archive must end with
/// `podcr.container.manifest.json` matching every file's SHA-256. Files are created with
/// `O_EXCL|O_NOFOLLOW`. Header checks run before each entry is written; on any error `dest`
/// is removed with everything in it.
pub fn extract_container_archive(archive: &Path, dest: &Path, limits: &Limits) -> Result<ExtractedContainer> {
    with_fresh_dir(dest, || extract_into(archive, dest, limits, &Cancel::new()))
}

/// [`extract_container_archive`] that also requires the archive file to match `expected` (its
/// entry in the pod manifest), hashed during the same read.
pub fn extract_container_archive_verified(
    archive: &Path,
    expected: &FileDigest,
    dest: &Path,
    limits: &Limits,
) -> Result<ExtractedContainer> {
    extract_container_archive_verified_until(archive, expected, dest, limits, &Cancel::new())
}

/// [`extract_container_archive_verified`] that stops at the next chunk read once `cancel` is
/// cancelled; `dest` is removed before it returns, as on any other error.
pub fn extract_container_archive_verified_until(
    archive: &Path,
    expected: &FileDigest,
    dest: &Path,
    limits: &Limits,
    cancel: &Cancel,
) -> Result<ExtractedContainer> {
    with_fresh_dir(dest, || {
        let c = extract_into(archive, dest, limits, cancel)?;
        if &c.archive_digest != expected {
            return Err(Error::Archive(format!(
                "{} does not match the pod manifest (sha256 {} size {}, manifest says {} size {})",
                archive.display(),
                c.archive_digest.sha256,
                c.archive_digest.size,
                expected.sha256,
                expected.size
            )));
        }
        Ok(c)
    })
}

fn extract_into(archive: &Path, dest: &Path, limits: &Limits, cancel: &Cancel) -> Result<ExtractedContainer> {
    let mut check = |p: &str, d: bool, s: u64| check_container_entry(p, d, s, limits);
    let out = extract_strict_until(archive, dest, limits, &mut check, cancel)?;
    let last = out.entries.last().map(|e| e.path.as_str());
    if last != Some(CONTAINER_MANIFEST_FILE) {
        return Err(Error::Archive(format!(
            "{} does not end with {CONTAINER_MANIFEST_FILE} (truncated or not a podcr archive)",
            archive.display()
        )));
    }
    if !out.entries.iter().any(|e| e.path == CHECKPOINT_DIR && e.digest.is_none()) {
        return Err(Error::Archive("no checkpoint/ directory entry".into()));
    }
    let manifest: ContainerManifest = parse(dest, CONTAINER_MANIFEST_FILE, limits.max_manifest_bytes)?;
    if manifest.format != CONTAINER_MANIFEST_FORMAT || manifest.version != FORMAT_VERSION {
        return Err(Error::Archive(format!(
            "unsupported container manifest {:?} version {}",
            manifest.format, manifest.version
        )));
    }
    check_against_manifest(&out.entries, &manifest.files, CONTAINER_MANIFEST_FILE)?;
    let has = |name: &str| out.entries.iter().any(|e| e.path == name);
    let max = limits.max_metadata_bytes;
    let config: ContainerConfig = parse(dest, CONFIG_DUMP, max)?;
    let spec: serde_json::Value = parse(dest, SPEC_DUMP, max)?;
    let status = if has(STATUS_DUMP) { Some(parse(dest, STATUS_DUMP, max)?) } else { None };
    let cri_config = if has(CONTAINER_CONFIG_DUMP) { Some(parse(dest, CONTAINER_CONFIG_DUMP, max)?) } else { None };
    let deleted_files: Vec<String> = if has(DELETED_FILES) { parse(dest, DELETED_FILES, max)? } else { Vec::new() };
    for p in &deleted_files {
        check_deleted_path(p)?;
    }
    let bind_mounts: Vec<BindMount> = if has(BIND_MOUNTS) { parse(dest, BIND_MOUNTS, max)? } else { Vec::new() };
    for m in &bind_mounts {
        if !m.source.starts_with('/') || !m.destination.starts_with('/') {
            return Err(Error::Archive(format!("bind mount {} -> {} is not absolute", m.source, m.destination)));
        }
    }
    let rootfs_diff = has(ROOTFS_DIFF_TAR).then(|| dest.join(ROOTFS_DIFF_TAR));
    Ok(ExtractedContainer {
        dir: dest.to_owned(),
        config,
        spec,
        status,
        cri_config,
        deleted_files,
        bind_mounts,
        rootfs_diff,
        compression: out.compression,
        archive_digest: out.archive_digest,
    })
}

/// Reads and decodes one bounded JSON file.
pub(crate) fn parse<T: DeserializeOwned>(dir: &Path, name: &str, max: u64) -> Result<T> {
    let path = dir.join(name);
    let data = read_bounded(&path, max)?;
    parse_bytes(&data, &path)
}

pub(crate) fn parse_bytes<T: DeserializeOwned>(data: &[u8], path: &Path) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Archive(format!("{}: invalid JSON: {e}", path.display())))
}
