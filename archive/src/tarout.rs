//! A tar writer that hashes every regular-file entry as it streams it, so the manifest costs no
//! second read of the data.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use tar::{EntryType, Header};

use super::{
    fsutil::{open_regular_nofollow, Hashing},
    metadata::FileDigest,
};
use crate::error::{Error, Result};

pub struct TarOut<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
    /// Digest of each regular-file entry written, by archive path.
    pub files: BTreeMap<String, FileDigest>,
    pub entries: u64,
}

/// A header with the fields podcr always sets the same way: owner root, fixed mtime.
pub fn base_header(kind: EntryType, mode: u32, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

/// Names a directory header `path/` when it fits the 100-byte name field: tar and checkpointctl
/// tools expect the slash, and the tar crate's path setter strips it. Longer names fall back to
/// a GNU long-name entry without the slash (the type flag still says directory).
pub fn append_dir<W: Write>(b: &mut tar::Builder<W>, mut h: Header, path: &[u8]) -> std::io::Result<()> {
    let name_len = h.as_old().name.len();
    if path.len() < name_len {
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path);
        name[path.len()] = b'/';
        h.set_cksum();
        b.append(&h, std::io::empty())
    } else {
        b.append_data(&mut h, Path::new(std::ffi::OsStr::from_bytes(path)), std::io::empty())
    }
}

impl<W: Write> TarOut<W> {
    pub fn new(inner: W, mtime: u64) -> TarOut<W> {
        let mut builder = tar::Builder::new(inner);
        builder.mode(tar::HeaderMode::Deterministic);
        TarOut { builder, mtime, files: BTreeMap::new(), entries: 0 }
    }

    fn io(&self, what: &str, path: &str) -> impl FnOnce(std::io::Error) -> Error {
        Error::io(format!("archive {what} {path}"))
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let h = base_header(EntryType::Directory, mode, self.mtime);
        append_dir(&mut self.builder, h, path.as_bytes()).map_err(self.io("directory", path))?;
        self.entries += 1;
        Ok(())
    }

    pub fn add_bytes(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = base_header(EntryType::Regular, mode, self.mtime);
        h.set_size(data.len() as u64);
        let mut r = Hashing::new(data);
        self.builder.append_data(&mut h, path, &mut r).map_err(self.io("file", path))?;
        self.files.insert(path.to_owned(), r.digest().1);
        self.entries += 1;
        Ok(())
    }

    /// Streams a regular file (never a symlink) into the archive, checking that exactly the size
    /// announced in the header was written: a file that changes under us must fail the archive,
    /// not corrupt it.
    pub fn add_file(&mut self, path: &str, mode: u32, src: &Path) -> Result<()> {
        let file = open_regular_nofollow(src)?;
        let len = file.metadata().map_err(Error::io(format!("stat {}", src.display())))?.len();
        let mut h = base_header(EntryType::Regular, mode, self.mtime);
        h.set_size(len);
        let mut r = Hashing::new(std::io::BufReader::with_capacity(super::fsutil::IO_BUF, file.take(len)));
        self.builder.append_data(&mut h, path, &mut r).map_err(self.io("file", path))?;
        if r.count() != len {
            return Err(Error::Archive(format!("{} changed size while it was archived", src.display())));
        }
        self.files.insert(path.to_owned(), r.digest().1);
        self.entries += 1;
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(self) -> Result<W> {
        self.builder.into_inner().map_err(Error::io("finish tar"))
    }
}
