//! File-system helpers shared by the writer and the readers: hashing streams, atomic files,
//! no-follow opens, and walking a directory tree without ever following a symlink.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{openat, OFlag},
    sys::stat::{mkdirat, Mode},
};
use sha2::{Digest, Sha256};

use super::{layout::FILE_MODE, metadata::FileDigest};
use crate::error::{Error, Result};

/// Counts and hashes everything that passes through, in either direction.
pub struct Hashing<T> {
    pub inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }

    pub fn count(&self) -> u64 {
        self.bytes
    }

    pub fn digest(self) -> (T, FileDigest) {
        let d = FileDigest { sha256: hex::encode(self.hasher.finalize()), size: self.bytes };
        (self.inner, d)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Buffer size for archive I/O: large enough for sequential throughput, small enough that a
/// pod of many containers written in parallel stays a few MiB in the shim.
pub const IO_BUF: usize = 256 << 10;

/// Digest of an in-memory document.
pub fn digest_bytes(data: &[u8]) -> FileDigest {
    FileDigest { sha256: hex::encode(Sha256::digest(data)), size: data.len() as u64 }
}

/// Opens an existing regular file for reading without following a symlink at its last
/// component, and refuses anything but a regular file (a FIFO would block the reader forever).
pub fn open_regular_nofollow(path: &Path) -> Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::Archive(format!("{} is a symlink", path.display())),
            _ => Error::io(format!("open {}", path.display()))(e),
        },
    )?;
    let meta = file.metadata().map_err(Error::io(format!("stat {}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Archive(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// SHA-256 and size of a regular file, read without following symlinks.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let file = open_regular_nofollow(path)?;
    let mut h = Hashing::new(io::BufReader::with_capacity(IO_BUF, file));
    io::copy(&mut h, &mut io::sink()).map_err(Error::io(format!("read {}", path.display())))?;
    Ok(h.digest().1)
}

/// Reads a whole file of at most `max` bytes; a larger one is refused before it is read.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = open_regular_nofollow(path)?;
    let len = file.metadata().map_err(Error::io(format!("stat {}", path.display())))?.len();
    if len > max {
        return Err(Error::Archive(format!("{} is {len} bytes, more than the limit of {max}", path.display())));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // take() guards against a file that grows between the stat and the read.
    file.take(max + 1).read_to_end(&mut buf).map_err(Error::io(format!("read {}", path.display())))?;
    if buf.len() as u64 > max {
        return Err(Error::Archive(format!("{} grew past the limit of {max} bytes", path.display())));
    }
    Ok(buf)
}

/// Refuses an extraction of `needed` bytes into `dir` unless the file system keeps `reserve`
/// bytes free afterwards (space available to unprivileged users, so root's reserved blocks stay
/// untouched too).
pub fn check_free_space(dir: &Path, needed: u64, reserve: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io(format!("statvfs {}", dir.display()))(e.into()))?;
    #[allow(clippy::useless_conversion)] // fsblkcnt_t is not u64 on every target
    let avail = u64::from(st.blocks_available()).saturating_mul(st.fragment_size());
    if needed.saturating_add(reserve) > avail {
        return Err(Error::FailedPrecondition(format!(
            "{} has {avail} bytes free; the checkpoint needs {needed} and {reserve} must stay free",
            dir.display()
        )));
    }
    Ok(())
}

/// Refuses an extraction of `needed` files and directories into `dir` unless the file system
/// keeps a reserve of free inodes afterwards (1% of them, at least 10,000): an inode flood must
/// not leave the node unable to create files. File systems that report no inode count (btrfs)
/// are not checked.
pub fn check_free_inodes(dir: &Path, needed: u64) -> Result<()> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io(format!("statvfs {}", dir.display()))(e.into()))?;
    #[allow(clippy::useless_conversion)] // fsfilcnt_t is not u64 on every target
    let (total, avail) = (u64::from(st.files()), u64::from(st.files_available()));
    if total == 0 {
        return Ok(());
    }
    let reserve = (total / 100).max(10_000);
    if needed.saturating_add(reserve) > avail {
        return Err(Error::FailedPrecondition(format!(
            "{} has {avail} free inodes; the checkpoint needs {needed} and {reserve} must stay free",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates a new file (never an existing one, never through a symlink) with `mode`.
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::io(format!("create {}", path.display())))
}

/// fsyncs a directory so a rename or a new entry in it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(Error::io(format!("open {}", dir.display())))?;
    d.sync_all().map_err(Error::io(format!("fsync {}", dir.display())))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file written under a temporary name and renamed to `dest` only after an fsync, so readers
/// see either nothing or the complete file. Dropped without [`AtomicFile::commit`], the
/// temporary file is removed.
///
/// The temporary name is unique to this process and call (`<dest>.<pid>.<n>.tmp`), so one left
/// by a killed run never blocks the next; it is created exclusively without following a
/// symlink, and the rename is `RENAME_NOREPLACE`: an existing `dest` (a planted symlink, another
/// writer's file) is an error, never overwritten or followed.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = create_new(&tmp, FILE_MODE)?;
        Ok(AtomicFile { tmp, dest: dest.to_owned(), file: Some(file) })
    }

    pub fn file(&mut self) -> Result<&mut File> {
        self.file.as_mut().ok_or_else(|| Error::Archive("atomic file used after commit".into()))
    }

    /// fsync, rename over the destination, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| Error::Archive("atomic file committed twice".into()))?;
        file.sync_all().map_err(Error::io(format!("fsync {}", self.tmp.display())))?;
        drop(file);
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        renameat2(AT_FDCWD, &self.tmp, AT_FDCWD, &self.dest, RenameFlags::RENAME_NOREPLACE).map_err(|e| match e {
            Errno::EEXIST => Error::AlreadyExists(format!("{} exists; refusing to replace it", self.dest.display())),
            e => Error::io(format!("rename {} to {}", self.tmp.display(), self.dest.display()))(e.into()),
        })?;
        // The rename happened: from now on Drop must not touch the (renamed) temporary path.
        self.tmp = PathBuf::new();
        fsync_dir(parent_of(&self.dest))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `dest` atomically (see [`AtomicFile`]).
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.file()?.write_all(data).map_err(Error::io(format!("write {}", dest.display())))?;
    f.commit()
}

/// Opens a directory given by the caller (trusted path, but not a symlink at its last component).
pub fn open_dir_nofollow(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| Error::io(format!("open directory {}", path.display()))(e.into()))
}

/// Opens `name` inside `dir` as a directory, refusing a symlink or a non-directory. With `create`,
/// a missing directory is made with `mode` first.
pub fn open_subdir(dir: &impl AsFd, name: &OsStr, create: Option<u32>, shown: &str) -> Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOENT) if create.is_some() => {
            let mode = Mode::from_bits_truncate(create.unwrap_or(0o700));
            match mkdirat(dir.as_fd(), name, mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::io(format!("mkdir {shown}"))(e.into())),
            }
            openat(dir.as_fd(), name, flags, Mode::empty())
                .map_err(|e| Error::io(format!("open directory {shown}"))(e.into()))
        }
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            Err(Error::Archive(format!("refusing to write through {shown}: it is a symlink or not a directory")))
        }
        Err(e) => Err(Error::io(format!("open directory {shown}"))(e.into())),
    }
}

/// Opens the directory that will hold the last component of `comps`, walking from `root` one
/// component at a time with `O_NOFOLLOW`, so no symlink anywhere on the way is followed even if
/// the tree is hostile. Missing directories are created with `create` mode when given.
pub fn walk_parent(root: &OwnedFd, comps: &[&OsStr], create: Option<u32>) -> Result<OwnedFd> {
    let mut cur = root.try_clone().map_err(Error::io("dup directory fd"))?;
    let mut shown = PathBuf::new();
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        shown.push(comp);
        cur = open_subdir(&cur, comp, create, &shown.display().to_string())?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_commits_or_vanishes() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("f");
        write_atomic(&dest, b"hello").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        {
            let mut f = AtomicFile::create(&tmp.path().join("g")).unwrap();
            f.file().unwrap().write_all(b"partial").unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        // Never replaces what is there, a symlink least of all; a stale temporary file of a
        // killed writer does not block the next one.
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("l")).unwrap();
        assert!(matches!(write_atomic(&tmp.path().join("l"), b"x"), Err(Error::AlreadyExists(_))));
        assert!(matches!(write_atomic(&dest, b"again"), Err(Error::AlreadyExists(_))));
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        std::fs::write(tmp.path().join("g.tmp"), b"stale").unwrap();
        write_atomic(&tmp.path().join("g"), b"new").unwrap();
    }

    #[test]
    fn free_space_and_inodes_are_checked_with_a_reserve() {
        let tmp = tempfile::tempdir().unwrap();
        check_free_space(tmp.path(), 0, 0).unwrap();
        assert!(matches!(check_free_space(tmp.path(), u64::MAX / 2, 0), Err(Error::FailedPrecondition(_))));
        check_free_inodes(tmp.path(), 0).unwrap();
        let st = nix::sys::statvfs::statvfs(tmp.path()).unwrap();
        if st.files() > 0 {
            assert!(matches!(check_free_inodes(tmp.path(), u64::MAX / 2), Err(Error::FailedPrecondition(_))));
        }
    }

    #[test]
    fn walk_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("a/link")).unwrap();
        let fd = open_dir_nofollow(&root).unwrap();
        let comps = [OsStr::new("a"), OsStr::new("b"), OsStr::new("f")];
        walk_parent(&fd, &comps, Some(0o755)).unwrap();
        assert!(root.join("a/b").is_dir());
        let bad = [OsStr::new("a"), OsStr::new("link"), OsStr::new("f")];
        assert!(matches!(walk_parent(&fd, &bad, Some(0o755)), Err(Error::Archive(_))));
        assert!(read_bounded(&root.join("a/link"), 10).is_err());
        std::fs::write(root.join("big"), [0u8; 11]).unwrap();
        assert!(matches!(read_bounded(&root.join("big"), 10), Err(Error::Archive(_))));
    }
}
