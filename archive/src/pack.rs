//! The single-file transport form of a pod checkpoint: a flat tar of the directory, manifest
//! last, optionally compressed.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use super::{
    codec::Encoder,
    fsutil::{AtomicFile, Hashing},
    layout::*,
    limits::Limits,
    metadata::PodManifest,
    pod::{open_pod_dir, PodCheckpoint},
    reader::parse,
    tarout::TarOut,
    untar::{check_against_manifest, extract_strict, with_fresh_dir},
    writer::ArchiveStats,
};
use crate::error::{Error, Result};

/// Packs a finished pod checkpoint directory into one archive file (for copying to another
/// node), written atomically: `<archive_file>.tmp`, fsync, rename. Files are stored flat in name
/// order with `podcr.manifest.json` last; the archive must not be inside the directory.
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
    let manifest: PodManifest = parse(&dir, POD_MANIFEST_FILE, Limits::default().max_manifest_bytes)?;
    let mut out = AtomicFile::create(archive_file)?;
    let hashed = Hashing::new(BufWriter::with_capacity(super::fsutil::IO_BUF, out.file()?));
    let mtime = manifest.created.timestamp().max(0) as u64;
    let mut tar = TarOut::new(Encoder::new(hashed, compression)?, mtime);
    for name in manifest.files.keys() {
        tar.add_file(name, FILE_MODE, &dir.join(name))?;
    }
    for (name, want) in &manifest.files {
        if tar.files.get(name) != Some(want) {
            return Err(Error::Archive(format!("{name} changed since the manifest was written")));
        }
    }
    tar.add_file(POD_MANIFEST_FILE, FILE_MODE, &dir.join(POD_MANIFEST_FILE))?;
    let entries = tar.entries;
    let enc = tar.finish()?;
    let hashed = enc.finish().map_err(Error::io(format!("compress {}", archive_file.display())))?;
    let (mut buf, digest) = hashed.digest();
    buf.flush().map_err(Error::io(format!("write {}", archive_file.display())))?;
    drop(buf);
    out.commit()?;
    Ok(ArchiveStats { bytes: digest.size, sha256: digest.sha256, entries })
}

/// Unpacks a transport archive made by [`pack_pod_dir`] into `dest` (created here, mode 0700,
/// must not exist) and verifies it as [`super::verify_pod_dir`] does. Only flat regular files
/// are accepted, metadata files within `limits`, the manifest last; every file is hashed once,
/// while it is extracted. On any error `dest` is removed.
pub fn unpack_pod_archive(file: &Path, dest: &Path, limits: &Limits) -> Result<PodCheckpoint> {
    with_fresh_dir(dest, || {
        let mut check = |path: &str, is_dir: bool, size: u64| -> Result<()> {
            if is_dir || path.contains('/') {
                return Err(Error::Archive(format!("unexpected entry {path:?} in a pod archive")));
            }
            let max = match path {
                POD_MANIFEST_FILE => limits.max_manifest_bytes,
                POD_OPTIONS_FILE | POD_DUMP_FILE => limits.max_metadata_bytes,
                _ => return Ok(()),
            };
            if size > max {
                return Err(Error::Archive(format!("{path} claims {size} bytes, more than the limit of {max}")));
            }
            Ok(())
        };
        let out = extract_strict(file, dest, limits, &mut check)?;
        if out.entries.last().map(|e| e.path.as_str()) != Some(POD_MANIFEST_FILE) {
            return Err(Error::Archive(format!("{} does not end with {POD_MANIFEST_FILE}", file.display())));
        }
        // Structure, names, pod.options/pod.dump and sizes; the archives' digests come from the
        // extraction itself rather than from a second read.
        let pod = open_pod_dir(dest, limits)?;
        check_against_manifest(&out.entries, &pod.manifest.files, POD_MANIFEST_FILE)?;
        Ok(pod)
    })
}
