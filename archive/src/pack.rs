//! The single-file transport form of a pod checkpoint: a flat tar of the directory, optionally
//! compressed, with `podcr.manifest.json` first and `podcr.manifest.sig` second, so a reader
//! verifies the signature before it reads a byte of anything else, and then holds every other
//! entry to the size the signed manifest gives it before the entry's data is read.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use super::{
    codec::Encoder,
    fsutil::{read_bounded, AtomicFile, Hashing},
    layout::*,
    limits::Limits,
    metadata::PodManifest,
    pod::{open_pod_dir, read_signed_manifest, PodCheckpoint},
    reader::parse_bytes,
    signing::TrustPolicy,
    tarout::TarOut,
    untar::{check_against_manifest, extract_strict, with_fresh_dir},
    writer::ArchiveStats,
};
use crate::error::{Error, Result};

/// Packs a finished pod checkpoint directory into one archive file (for copying to another
/// node), written atomically: `<archive_file>.tmp`, fsync, rename. The manifest and its
/// signature come first, then the files flat in name order; the archive must not be inside the
/// directory. Packing verifies nothing but the manifest's digests: trust is decided where the
/// archive is unpacked.
pub fn pack_pod_dir(output_path: &Path, archive_file: &Path, compression: Compression) -> Result<ArchiveStats> {
    let dir = std::fs::canonicalize(output_path).map_err(Error::io(format!("resolve {}", output_path.display())))?;
    let target_parent = archive_file
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .and_then(|p| std::fs::canonicalize(p).ok());
    if target_parent.as_deref() == Some(dir.as_path()) {
        return Err(Error::InvalidArgument(format!(
            "{} must not be inside the checkpoint directory",
            archive_file.display()
        )));
    }
    // The manifest is what makes the directory a complete checkpoint; read it to list the files.
    let limits = Limits::default();
    let raw = read_bounded(&dir.join(POD_MANIFEST_FILE), limits.max_manifest_bytes)?;
    let manifest: PodManifest = parse_bytes(&raw, &dir.join(POD_MANIFEST_FILE))?;
    let mut out = AtomicFile::create(archive_file)?;
    let hashed = Hashing::new(BufWriter::with_capacity(super::fsutil::IO_BUF, out.file()?));
    let mtime = manifest.created.timestamp().max(0) as u64;
    let mut tar = TarOut::new(Encoder::new(hashed, compression)?, mtime);
    tar.add_bytes(POD_MANIFEST_FILE, FILE_MODE, &raw)?;
    if std::fs::symlink_metadata(dir.join(SIGNATURE_FILE)).is_ok() {
        tar.add_file(SIGNATURE_FILE, FILE_MODE, &dir.join(SIGNATURE_FILE))?;
    }
    for name in manifest.files.keys() {
        tar.add_file(name, FILE_MODE, &dir.join(name))?;
    }
    for (name, want) in &manifest.files {
        if tar.files.get(name) != Some(want) {
            return Err(Error::Archive(format!("{name} changed since the manifest was written")));
        }
    }
    let entries = tar.entries;
    let content_bytes = tar.files.values().map(|d| d.size).sum();
    let enc = tar.finish()?;
    let hashed = enc.finish().map_err(Error::io(format!("compress {}", archive_file.display())))?;
    let (mut buf, digest) = hashed.digest();
    buf.flush().map_err(Error::io(format!("write {}", archive_file.display())))?;
    drop(buf);
    out.commit()?;
    Ok(ArchiveStats { bytes: digest.size, sha256: digest.sha256, entries, content_bytes })
}

/// Unpacks a transport archive made by [`pack_pod_dir`] into `dest` (created here, mode 0700,
/// must not exist) and verifies it as [`super::verify_pod_dir`] does. The manifest must be the
/// first entry and its signature (if any) the second; the signature is verified against `trust`
/// before any other entry is read. Every later entry must be a flat regular file the manifest
/// lists, claiming exactly the manifest's size (checked at its header, before its data is read),
/// and the file system must have room for all of them plus [`Limits::min_free_bytes`]. Every
/// file is hashed once, while it is extracted. On any error `dest` is removed.
pub fn unpack_pod_archive(file: &Path, dest: &Path, limits: &Limits, trust: &TrustPolicy) -> Result<PodCheckpoint> {
    with_fresh_dir(dest, || {
        let mut index = 0usize;
        let mut signed: Option<PodManifest> = None;
        let mut check = |path: &str, is_dir: bool, size: u64| -> Result<()> {
            index += 1;
            if is_dir || path.contains('/') {
                return Err(Error::Archive(format!("unexpected entry {path:?} in a pod archive")));
            }
            match (index, path) {
                (1, POD_MANIFEST_FILE) if size <= limits.max_manifest_bytes => return Ok(()),
                (1, _) => {
                    return Err(Error::Archive(format!(
                    "a pod archive starts with {POD_MANIFEST_FILE} of at most {} bytes, not {path:?} ({size} bytes)",
                    limits.max_manifest_bytes
                )))
                }
                (2, SIGNATURE_FILE) if size <= super::signing::MAX_SIGNATURE_BYTES => return Ok(()),
                (_, POD_MANIFEST_FILE | SIGNATURE_FILE) => {
                    return Err(Error::Archive(format!("{path} out of place or too large in a pod archive")))
                }
                _ => {}
            }
            if signed.is_none() {
                // The first data entry: nothing of it is read until the manifest is verified.
                let (raw, _) = read_signed_manifest(dest, limits, trust)?;
                let manifest: PodManifest = parse_bytes(&raw, &dest.join(POD_MANIFEST_FILE))?;
                let needed = manifest.files.values().fold(0u64, |a, d| a.saturating_add(d.size));
                super::fsutil::check_free_space(dest, needed, limits.min_free_bytes)?;
                super::fsutil::check_free_inodes(dest, manifest.files.len() as u64)?;
                signed = Some(manifest);
            }
            let want = signed
                .as_ref()
                .and_then(|m| m.files.get(path))
                .ok_or_else(|| Error::Archive(format!("{path:?} in the pod archive is not in its manifest")))?;
            if size != want.size {
                return Err(Error::Archive(format!(
                    "{path:?} claims {size} bytes; the signed manifest says {}",
                    want.size
                )));
            }
            Ok(())
        };
        let out = extract_strict(file, dest, limits, &mut check)?;
        // Structure, names, pod.options/pod.dump and sizes (the signature again, from the
        // extracted bytes); the archives' digests come from the extraction itself.
        let pod = open_pod_dir(dest, limits, trust)?;
        let data: Vec<_> = out.entries.into_iter().filter(|e| e.path != SIGNATURE_FILE).collect();
        check_against_manifest(&data, &pod.manifest.files, POD_MANIFEST_FILE)?;
        Ok(pod)
    })
}
