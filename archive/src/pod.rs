//! Reading a pod checkpoint directory without trusting it and without modifying it.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use super::{
    fsutil::{digest_bytes, digest_file, read_bounded},
    layout::*,
    limits::Limits,
    metadata::{FileDigest, PodManifest, PodOptions},
    reader::parse_bytes,
    signing::{TrustPolicy, MAX_SIGNATURE_BYTES},
};
use crate::error::{Error, Result};

/// A verified pod checkpoint directory.
#[derive(Debug, Clone, PartialEq)]
pub struct PodCheckpoint {
    pub dir: PathBuf,
    pub manifest: PodManifest,
    pub options: PodOptions,
    /// `pod.dump`: the `PodSandboxConfig` as snake_case JSON.
    pub pod_config: serde_json::Value,
    /// Key id of the trusted key that signed the manifest; `None` for an unsigned checkpoint
    /// the node's policy allowed.
    pub signer: Option<String>,
}

impl PodCheckpoint {
    /// Path and expected digest of each container's archive, in manifest order.
    pub fn container_archives(&self) -> Vec<(String, PathBuf, FileDigest)> {
        self.manifest
            .containers
            .iter()
            .filter_map(|c| {
                let d = self.manifest.files.get(&c.archive)?;
                Some((c.name.clone(), self.dir.join(&c.archive), d.clone()))
            })
            .collect()
    }
}

/// Verifies a pod checkpoint directory completely: the signature over `podcr.manifest.json`
/// against `trust` (before anything else is read), the manifest (format, version,
/// bounded size, strict JSON), every listed file's size and SHA-256, no unlisted files, no
/// symlinks or subdirectories, `pod.options`/`pod.dump` bounded and consistent with the
/// manifest's containers. Reads only; the checkpoint is never modified.
pub fn verify_pod_dir(path: &Path, limits: &Limits, trust: &TrustPolicy) -> Result<PodCheckpoint> {
    check_pod_dir(path, limits, trust, true)
}

/// Like [`verify_pod_dir`] but checks only the size of the container archives, for callers that
/// verify each archive's digest while extracting it
/// ([`super::extract_container_archive_verified`]), which saves a full read of every archive.
pub fn open_pod_dir(path: &Path, limits: &Limits, trust: &TrustPolicy) -> Result<PodCheckpoint> {
    check_pod_dir(path, limits, trust, false)
}

/// Reads the manifest's exact bytes and verifies its signature (when the directory has one)
/// against `trust`; nothing of the manifest is parsed before this succeeds. Returns the bytes
/// and the signer's key id.
pub(super) fn read_signed_manifest(
    dir: &Path,
    limits: &Limits,
    trust: &TrustPolicy,
) -> Result<(Vec<u8>, Option<String>)> {
    let manifest_path = dir.join(POD_MANIFEST_FILE);
    let raw = read_bounded(&manifest_path, limits.max_manifest_bytes).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::Archive(format!("{} has no {POD_MANIFEST_FILE}: incomplete checkpoint", dir.display()))
        }
        e => e,
    })?;
    let sig = match read_bounded(&dir.join(SIGNATURE_FILE), MAX_SIGNATURE_BYTES) {
        Ok(s) => Some(s),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let signer = trust.verify(&raw, sig.as_deref())?;
    Ok((raw, signer))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn check_pod_dir(path: &Path, limits: &Limits, trust: &TrustPolicy, hash_archives: bool) -> Result<PodCheckpoint> {
    let meta = std::fs::symlink_metadata(path).map_err(Error::io(format!("stat {}", path.display())))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {} is not a directory (or is a symlink)",
            path.display()
        )));
    }
    let (raw, signer) = read_signed_manifest(path, limits, trust)?;
    let manifest_path = path.join(POD_MANIFEST_FILE);
    let manifest: PodManifest = parse_bytes(&raw, &manifest_path)?;
    if manifest.format != POD_MANIFEST_FORMAT || manifest.version != FORMAT_VERSION {
        return Err(Error::Archive(format!(
            "unsupported pod checkpoint {:?} version {}",
            manifest.format, manifest.version
        )));
    }
    if manifest.containers.len() > limits.max_containers || manifest.files.len() as u64 > limits.max_entries {
        return Err(Error::Archive("pod manifest lists too many containers or files".into()));
    }
    for name in manifest.files.keys() {
        if !plain_name(name) || name == POD_MANIFEST_FILE || name == SIGNATURE_FILE {
            return Err(Error::Archive(format!("pod manifest lists invalid file name {name:?}")));
        }
    }

    // Every file present must be listed and regular; every listed file must be present.
    let mut present = HashSet::new();
    for entry in std::fs::read_dir(path).map_err(Error::io(format!("read {}", path.display())))? {
        let entry = entry.map_err(Error::io(format!("read {}", path.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == POD_MANIFEST_FILE || name == SIGNATURE_FILE {
            // Both were read through no-follow opens above; a non-regular one failed there.
            continue;
        }
        if !manifest.files.contains_key(&name) {
            return Err(Error::Archive(format!("{:?} in {} is not in the manifest", name, path.display())));
        }
        let ft = entry.file_type().map_err(Error::io(format!("stat {}", entry.path().display())))?;
        if !ft.is_file() {
            return Err(Error::Archive(format!("{} is not a regular file", entry.path().display())));
        }
        present.insert(name);
    }
    if let Some(missing) = manifest.files.keys().find(|k| !present.contains(*k)) {
        return Err(Error::Archive(format!("{missing:?} listed in the manifest is missing")));
    }

    let archives: HashSet<&str> = manifest.containers.iter().map(|c| c.archive.as_str()).collect();
    let mut small = BTreeMap::new();
    for (name, want) in &manifest.files {
        let file = path.join(name);
        let got = if name == POD_OPTIONS_FILE || name == POD_DUMP_FILE {
            // Hash what is parsed, so a file swapped between the check and the read cannot slip in.
            let data = read_bounded(&file, limits.max_metadata_bytes)?;
            let d = digest_bytes(&data);
            small.insert(name.as_str(), data);
            d
        } else if hash_archives || !archives.contains(name.as_str()) {
            digest_file(&file)?
        } else {
            let len = std::fs::symlink_metadata(&file).map_err(Error::io(format!("stat {}", file.display())))?.len();
            FileDigest { sha256: want.sha256.clone(), size: len }
        };
        if &got != want {
            return Err(Error::Archive(format!(
                "{} does not match the manifest (sha256 {} size {}, manifest says {} size {})",
                file.display(),
                got.sha256,
                got.size,
                want.sha256,
                want.size
            )));
        }
    }
    let (Some(opts_raw), Some(dump_raw)) = (small.get(POD_OPTIONS_FILE), small.get(POD_DUMP_FILE)) else {
        return Err(Error::Archive(format!("checkpoint lacks {POD_OPTIONS_FILE} or {POD_DUMP_FILE}")));
    };
    let options: PodOptions = parse_bytes(opts_raw, &path.join(POD_OPTIONS_FILE))?;
    let pod_config: serde_json::Value = parse_bytes(dump_raw, &path.join(POD_DUMP_FILE))?;
    check_containers(&manifest, &options)?;
    Ok(PodCheckpoint { dir: path.to_owned(), manifest, options, pod_config, signer })
}

fn check_containers(manifest: &PodManifest, options: &PodOptions) -> Result<()> {
    if options.version != 1 {
        return Err(Error::Archive(format!("unsupported pod.options version {}", options.version)));
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for c in &manifest.containers {
        validate_container_name(&c.name).map_err(|e| Error::Archive(e.to_string()))?;
        if !names.insert(c.name.as_str()) || !ids.insert(c.id.as_str()) {
            return Err(Error::Archive(format!("container {:?} ({}) listed twice", c.name, c.id)));
        }
        if c.archive != container_archive_name(&c.name, c.compression)? || !manifest.files.contains_key(&c.archive) {
            return Err(Error::Archive(format!("container {:?}: bad or missing archive {:?}", c.name, c.archive)));
        }
        if options.containers.get(&c.name) != Some(&c.archive) {
            return Err(Error::Archive(format!("pod.options disagrees with the manifest about {:?}", c.name)));
        }
    }
    if options.containers.len() != manifest.containers.len() {
        return Err(Error::Archive("pod.options lists containers the manifest does not".into()));
    }
    Ok(())
}
