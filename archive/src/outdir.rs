//! The caller's output directory, opened once and used only through that descriptor.
//!
//! A checkpoint writes the pod's memory as root into a directory the caller names. Resolving
//! that name again for every file would let whoever can change the path (a symlink swapped in
//! for a component, the directory renamed away) decide where root writes. So the directory is
//! opened once, one component at a time from `/` without following any symlink; it and every
//! ancestor must belong to root (or this user) and be writable by no one else (a sticky
//! ancestor such as `/tmp` is allowed, since others cannot replace root's entries in it); an
//! exclusive `flock` on it keeps two checkpoints out of one directory; and everything after that
//! goes through `/proc/<pid>/fd/<fd>`, which names the opened directory wherever it has moved.
//! (The pid, not `self`: runc and CRIU are handed paths below it and resolve them in their own
//! processes, as root, while this one holds the descriptor.)
//! Files inside are created exclusively without following symlinks and renamed into place with
//! `RENAME_NOREPLACE` (see [`super::fsutil::AtomicFile`]), so nothing planted there is followed
//! or overwritten.

use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{openat, Flock, FlockArg, OFlag},
    sys::stat::{fstat, FileStat, Mode},
};

use crate::error::{Error, Result};

/// An output directory opened and locked for one checkpoint; the lock goes with it.
#[derive(Debug)]
pub struct OutputDir {
    /// Held for its lock (released when dropped); the descriptor is reached through `via_fd`.
    _lock: Flock<OwnedFd>,
    given: PathBuf,
    via_fd: PathBuf,
}

const S_ISVTX: u32 = 0o1000;

fn owner_ok(st: &FileStat) -> bool {
    st.st_uid == 0 || st.st_uid == nix::unistd::geteuid().as_raw()
}

impl OutputDir {
    /// Opens `path` for a new checkpoint: the CRI contract (absolute, an existing directory,
    /// empty) plus the ownership, no-symlink and lock rules of the module docs.
    pub fn open(path: &Path) -> Result<OutputDir> {
        let dir = OutputDir::open_locked(path)?;
        let mut entries =
            std::fs::read_dir(dir.path()).map_err(Error::io(format!("read output path {}", path.display())))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!("output path {} is not empty", path.display())));
        }
        Ok(dir)
    }

    /// Opens `path` as [`OutputDir::open`] does but without requiring it to be empty: crash
    /// recovery reopens a dead shim's output this way to remove its partial files.
    pub fn open_locked(path: &Path) -> Result<OutputDir> {
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!("output path {} is not absolute", path.display())));
        }
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let mut cur = nix::fcntl::open("/", flags, Mode::empty()).map_err(|e| Error::io("open /")(e.into()))?;
        let mut shown = PathBuf::from("/");
        let mut last = fstat(&cur).map_err(|e| Error::io("stat /")(e.into()))?;
        let comps: Vec<_> = path.components().collect();
        for comp in &comps {
            let name = match comp {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(n) => *n,
                _ => return Err(Error::InvalidArgument(format!("output path {} contains '..'", path.display()))),
            };
            // The parent, now that it has a child on the way: root's (or ours), and either
            // writable by no one else or sticky.
            if !owner_ok(&last) || (last.st_mode & 0o022 != 0 && last.st_mode & S_ISVTX == 0) {
                return Err(Error::FailedPrecondition(format!(
                    "output path {}: ancestor {} is owned by uid {} or writable by others (mode {:o}), so another user could redirect it",
                    path.display(),
                    shown.display(),
                    last.st_uid,
                    last.st_mode & 0o7777
                )));
            }
            shown.push(name);
            cur = match openat(&cur, std::ffi::OsStr::from_bytes(name.as_bytes()), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ELOOP) => {
                    return Err(Error::InvalidArgument(format!(
                        "output path {}: {} is a symlink",
                        path.display(),
                        shown.display()
                    )))
                }
                Err(Errno::ENOTDIR) => {
                    return Err(Error::InvalidArgument(format!("output path {} is not a directory", shown.display())))
                }
                Err(Errno::ENOENT) => {
                    return Err(Error::InvalidArgument(format!("output path {} does not exist", shown.display())))
                }
                Err(e) => return Err(Error::io(format!("open {}", shown.display()))(e.into())),
            };
            last = fstat(&cur).map_err(|e| Error::io(format!("stat {}", shown.display()))(e.into()))?;
        }
        if !owner_ok(&last) || last.st_mode & 0o022 != 0 {
            return Err(Error::FailedPrecondition(format!(
                "output path {} is owned by uid {} or writable by group or others (mode {:o}): a checkpoint holds the pod's memory",
                path.display(),
                last.st_uid,
                last.st_mode & 0o7777
            )));
        }
        let lock = Flock::lock(cur, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| match e {
            Errno::EWOULDBLOCK => {
                Error::FailedPrecondition(format!("output path {} is in use by another checkpoint", path.display()))
            }
            e => Error::io(format!("lock {}", path.display()))(e.into()),
        })?;
        let via_fd = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), lock.as_raw_fd()));
        Ok(OutputDir { _lock: lock, given: path.to_owned(), via_fd })
    }

    /// The directory as this process opened it (`/proc/<pid>/fd/<fd>`): valid while `self` lives,
    /// wherever the directory is moved, whatever is put at its old path.
    pub fn path(&self) -> &Path {
        &self.via_fd
    }

    /// Removes everything inside the directory (a failed checkpoint's rollback, a dead shim's
    /// partial output), through the descriptor; symlinks inside are removed, never followed.
    pub fn clean(&self) -> Result<()> {
        super::layout::remove_entries(self.path())
    }

    /// The path the caller gave (for messages and crash-recovery markers).
    pub fn given(&self) -> &Path {
        &self.given
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn private_tmp() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        t
    }

    #[test]
    fn opens_an_empty_private_dir_and_locks_it() {
        let tmp = private_tmp();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dir = OutputDir::open(&out).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(out.join("f").exists());
        // A second checkpoint into the same directory is refused while the first holds it.
        std::fs::remove_file(out.join("f")).unwrap();
        let err = OutputDir::open(&out).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(dir);
        OutputDir::open(&out).unwrap();
    }

    #[test]
    fn follows_the_directory_not_its_path() {
        let tmp = private_tmp();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dir = OutputDir::open(&out).unwrap();
        std::fs::rename(&out, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), &out).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        assert!(tmp.path().join("moved/f").exists());
        assert!(!tmp.path().join("elsewhere").exists());
    }

    #[test]
    fn refuses_symlinks_shared_dirs_and_relative_paths() {
        let tmp = private_tmp();
        let real = tmp.path().join("real");
        std::fs::create_dir_all(real.join("out")).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        assert!(matches!(OutputDir::open(&tmp.path().join("link/out")), Err(Error::InvalidArgument(_))));
        assert!(matches!(OutputDir::open(&tmp.path().join("link")), Err(Error::InvalidArgument(_))));
        assert!(matches!(OutputDir::open(Path::new("rel")), Err(Error::InvalidArgument(_))));
        assert!(matches!(OutputDir::open(&tmp.path().join("none")), Err(Error::InvalidArgument(_))));
        std::fs::set_permissions(real.join("out"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(OutputDir::open(&real.join("out")), Err(Error::FailedPrecondition(_))));
        std::fs::set_permissions(real.join("out"), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A group-writable ancestor lets another user swap the directory out.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(OutputDir::open(&real.join("out")), Err(Error::FailedPrecondition(_))));
        // Sticky and world-writable, like /tmp, is fine.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o1777)).unwrap();
        OutputDir::open(&real.join("out")).unwrap();
    }
}
