//! Strict extraction of podcr's own archives (container archives and pod transport archives):
//! regular files and directories only, canonical relative UTF-8 paths, no duplicates, bounded
//! sizes and counts.
//!
//! Strategy: each entry's header is validated before anything of it is written, and the whole
//! extraction goes into a fresh directory created here with mode 0700. Checks that can only be
//! made at the end (the content hashes, the manifest being the last entry, a corrupt compressed
//! stream) make the caller delete that directory wholesale, so a failed extraction leaves nothing.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{self, Read, Write},
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::Path,
};

use nix::{
    fcntl::{openat, OFlag},
    sys::stat::{mkdirat, Mode},
};
use tar::EntryType;

use super::{
    cancel::{Cancel, CancelRead},
    codec::Decoder,
    fsutil::{open_dir_nofollow, open_regular_nofollow, walk_parent, Hashing},
    layout::{split_relative, Compression, DIR_MODE, FILE_MODE},
    limits::Limits,
    metadata::FileDigest,
    targuard::{GuardCaps, TarGuard},
};
use crate::error::{Error, Result};

/// What an entry is allowed to be, decided by the caller from its path and size.
pub type EntryCheck<'a> = &'a mut dyn FnMut(&str, bool, u64) -> Result<()>;

/// One extracted entry, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub path: String,
    /// `None` for directories.
    pub digest: Option<FileDigest>,
}

/// Result of a strict extraction.
#[derive(Debug)]
pub struct StrictOutput {
    pub compression: Compression,
    pub entries: Vec<Extracted>,
    /// Digest of the raw (compressed) archive file.
    pub archive_digest: FileDigest,
}

/// Creates `dest` (must not exist; its parent must) with mode 0700.
pub fn create_private_dir(dest: &Path) -> Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(dest).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => {
            Error::InvalidArgument(format!("extraction target {} already exists", dest.display()))
        }
        _ => Error::io(format!("create {}", dest.display()))(e),
    })
}

/// Runs `f` on a fresh private `dest`; on error removes `dest` and everything in it.
pub fn with_fresh_dir<T>(dest: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    create_private_dir(dest)?;
    let res = f();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    res
}

/// Canonical relative path of an entry: UTF-8, no `.`/`..`/empty components, no leading `/`;
/// a trailing `/` only on directories.
fn canonical_path(raw: &[u8], is_dir: bool, limits: &Limits) -> Result<String> {
    let comps = split_relative(raw, limits.max_path_len)?;
    if comps.len() > limits.max_depth {
        return Err(Error::Archive(format!("entry path is nested deeper than {} directories", limits.max_depth)));
    }
    let path = std::str::from_utf8(raw).map_err(|_| Error::Archive("entry path is not UTF-8".into()))?;
    let trimmed = if is_dir { path.strip_suffix('/').unwrap_or(path) } else { path };
    let joined: Vec<&str> = comps.iter().filter_map(|c| c.to_str()).collect();
    if comps.is_empty() || joined.join("/") != trimmed {
        return Err(Error::Archive(format!("entry path {path:?} is not in canonical form")));
    }
    Ok(trimmed.to_owned())
}

/// Extracts the archive at `archive` into `root_dir` (already created, empty) strictly; `check`
/// sees every entry's path, kind and claimed size before any byte of it is written.
pub fn extract_strict(archive: &Path, root_dir: &Path, limits: &Limits, check: EntryCheck) -> Result<StrictOutput> {
    extract_strict_until(archive, root_dir, limits, check, &Cancel::new())
}

/// [`extract_strict`] that fails at the next chunk read once `cancel` is cancelled.
pub fn extract_strict_until(
    archive: &Path,
    root_dir: &Path,
    limits: &Limits,
    check: EntryCheck,
    cancel: &Cancel,
) -> Result<StrictOutput> {
    // Never a FIFO or a symlink: either would let the archive's location decide what is read.
    let raw = CancelRead::new(open_regular_nofollow(archive)?, cancel.clone());
    let (compression, decoder) = Decoder::detect(Hashing::new(raw))?;
    let root = open_dir_nofollow(root_dir)?;
    // Extension headers and the stream's size are bounded before the parser reads them.
    let mut tar = tar::Archive::new(TarGuard::new(decoder, GuardCaps::for_limits(limits)));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut total = 0u64;
    let corrupt = |e: io::Error| Error::Archive(format!("{}: corrupt tar stream: {e}", archive.display()));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if out.len() as u64 >= limits.max_entries {
            return Err(Error::Archive(format!("more than {} entries", limits.max_entries)));
        }
        let kind = entry.header().entry_type();
        let is_dir = match kind {
            EntryType::Regular => false,
            EntryType::Directory => true,
            other => {
                let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(Error::Archive(format!(
                    "entry {p:?} has type {other:?}: only regular files and directories are allowed"
                )));
            }
        };
        let path = canonical_path(&entry.path_bytes(), is_dir, limits)?;
        let size = entry.header().size().map_err(corrupt)?;
        if !seen.insert(path.clone()) {
            return Err(Error::Archive(format!("duplicate entry {path:?}")));
        }
        if is_dir && size != 0 {
            return Err(Error::Archive(format!("directory entry {path:?} claims {size} bytes")));
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(Error::Archive(format!("archive content exceeds {} bytes", limits.max_total_bytes)));
        }
        check(&path, is_dir, size)?;
        let digest = write_entry(&root, &path, is_dir, size, &mut entry)?;
        out.push(Extracted { path, digest });
    }
    let decoder = tar.into_inner().into_inner();
    let raw = decoder.finish()?;
    let mut hashed = raw.into_inner();
    // The decompressor may stop before the end of the file; hash the rest so the digest covers
    // the whole file (finish() already refused anything left in the buffer).
    io::copy(&mut hashed, &mut io::sink()).map_err(Error::io(format!("read {}", archive.display())))?;
    let archive_digest = hashed.digest().1;
    Ok(StrictOutput { compression, entries: out, archive_digest })
}

fn write_entry(
    root: &OwnedFd,
    path: &str,
    is_dir: bool,
    size: u64,
    data: &mut impl Read,
) -> Result<Option<FileDigest>> {
    let comps = split_relative(path.as_bytes(), usize::MAX)?;
    let parent = walk_parent(root, &comps, Some(DIR_MODE))?;
    let name = comps.last().ok_or_else(|| Error::Archive("empty entry path".into()))?;
    if is_dir {
        match mkdirat(&parent, *name, Mode::from_bits_truncate(DIR_MODE)) {
            // An earlier file entry created it implicitly; a file of the same name would already
            // have been refused as a duplicate.
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::io(format!("mkdir {path}"))(e.into())),
        }
        return Ok(None);
    }
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(&parent, *name, flags, Mode::from_bits_truncate(FILE_MODE))
        .map_err(|e| Error::Archive(format!("cannot create {path:?}: {e}")))?;
    let mut file = io::BufWriter::with_capacity(super::fsutil::IO_BUF, File::from(fd));
    let mut src = Hashing::new(data.take(size));
    let copied = io::copy(&mut src, &mut file).map_err(|e| Error::Archive(format!("reading {path:?}: {e}")))?;
    if copied != size {
        return Err(Error::Archive(format!("entry {path:?} is truncated: {copied} of {size} bytes")));
    }
    file.flush().map_err(Error::io(format!("write {path}")))?;
    Ok(Some(src.digest().1))
}

/// Checks extracted entries against a manifest: every regular file listed with the same digest,
/// nothing listed that is absent. `skip` names the manifest itself.
pub fn check_against_manifest(entries: &[Extracted], files: &BTreeMap<String, FileDigest>, skip: &str) -> Result<()> {
    let mut listed = 0usize;
    for e in entries.iter().filter(|e| e.path != skip) {
        let Some(got) = &e.digest else { continue };
        match files.get(&e.path) {
            None => return Err(Error::Archive(format!("{:?} is not in the manifest", e.path))),
            Some(want) if want != got => {
                return Err(Error::Archive(format!(
                    "{:?} does not match the manifest (sha256 {} size {}, manifest says {} size {})",
                    e.path, got.sha256, got.size, want.sha256, want.size
                )))
            }
            Some(_) => listed += 1,
        }
    }
    if listed != files.len() {
        let present: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let missing: Vec<&String> = files.keys().filter(|k| !present.contains(k.as_str())).collect();
        return Err(Error::Archive(format!("files listed in the manifest are missing: {missing:?}")));
    }
    Ok(())
}
