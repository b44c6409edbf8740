//! Applying a captured writable layer to a fresh rootfs on restore. The diff comes from an
//! archive, so it is hostile until proven otherwise: every path is resolved one component at a
//! time with `O_NOFOLLOW` from an fd of the rootfs, so nothing is ever written through a symlink,
//! even one the diff itself just created.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use nix::{
    errno::Errno,
    fcntl::{openat, AtFlags, OFlag},
    sys::{
        stat::{
            fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
            UtimensatFlags,
        },
        time::TimeSpec,
    },
    unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags},
};
use tar::EntryType;
use tracing::warn;

use super::{
    capture::PAX_XATTR_PREFIX,
    fsutil::{open_dir_nofollow, open_regular_nofollow, open_subdir, walk_parent},
    layout::split_relative,
    limits::Limits,
    targuard::{GuardCaps, TarGuard},
};
use crate::error::{Error, Result};

/// Checks one `deleted.files` entry: absolute, no `..`, no NUL, not `/` itself.
pub fn check_deleted_path(path: &str) -> Result<()> {
    let rel = path.strip_prefix('/').ok_or_else(|| Error::Archive(format!("deleted path {path:?} is not absolute")))?;
    if split_relative(rel.as_bytes(), 4096)
        .map_err(|e| Error::Archive(format!("deleted path {path:?}: {e}")))?
        .is_empty()
    {
        return Err(Error::Archive(format!("deleted path {path:?} names the root")));
    }
    Ok(())
}

fn nix_io(what: String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::io(what)(e.into())
}

/// Removes whatever `name` is inside `parent`: a directory tree (without following symlinks
/// inside it), a file, or a symlink itself. Missing is fine.
fn remove_any(parent: &OwnedFd, name: &OsStr, shown: &str) -> Result<()> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(nix_io(format!("stat {shown}"))(e)),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        // The fd path names the directory the walk opened, whatever symlinks exist above it;
        // std's remove_dir_all never follows symlinks below it.
        use std::os::fd::AsRawFd;
        let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()));
        p.push(name);
        std::fs::remove_dir_all(&p).map_err(Error::io(format!("remove {shown}")))
    } else {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(nix_io(format!("remove {shown}")))
    }
}

/// Deletes `deleted.files` entries from a rootfs. A path whose parent is missing is already
/// deleted; a path that goes through a symlink is refused rather than followed.
pub fn delete_rootfs_paths(rootfs: &Path, deleted: &[String]) -> Result<()> {
    let root = open_dir_nofollow(rootfs)?;
    for path in deleted {
        check_deleted_path(path)?;
        let comps = split_relative(&path.as_bytes()[1..], 4096)?;
        let parent = match walk_parent(&root, &comps, None) {
            Ok(p) => p,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let name = comps.last().ok_or_else(|| Error::Archive("empty deleted path".into()))?;
        remove_any(&parent, name, path)?;
    }
    Ok(())
}

/// What [`apply_rootfs_diff`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsApplyStats {
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
    /// Paths whose setuid/setgid bits or `security.capability` were dropped (see
    /// [`Privileged`]), each with what was dropped.
    pub stripped: Vec<String>,
}

/// What a rootfs diff may grant: a writable layer that adds a setuid-root binary or file
/// capabilities turns a checkpoint into a privilege escalation inside the restored container,
/// so by default both are dropped (and logged); an admin who restores only checkpoints of pods
/// they built can keep them (`[rootfs] keep_privileged = true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Privileged {
    #[default]
    Strip,
    Keep,
}

/// Most stripped paths logged one by one; the rest are counted.
const MAX_LOGGED_STRIPS: usize = 100;

/// Restores a container's writable layer into `rootfs` (the new container's rootfs, not yet
/// running): first deletes `deleted_files` (which also clears opaque directories, see
/// [`super::RootfsCaptureStats::deleted`]), then extracts `diff_tar` (plain tar, as captured).
///
/// Accepted: regular files, directories, symlinks (created, never followed), hard links to
/// regular files extracted earlier from the same diff, FIFOs; owners, modes, mtimes and
/// `SCHILY.xattr.*` xattrs are restored, except setuid/setgid bits and `security.capability`
/// unless `privileged` keeps them. Refused: absolute paths, `..`, paths deeper than
/// [`Limits::max_depth`], device nodes, sockets, sparse or unknown entries, duplicate paths,
/// writing through any symlink, oversized GNU long names or PAX headers (refused before they
/// are read), and anything beyond `limits`. An existing entry of the image is replaced unless
/// both are directories.
pub fn apply_rootfs_diff(
    diff_tar: &Path,
    rootfs: &Path,
    deleted_files: &[String],
    limits: &Limits,
    privileged: Privileged,
) -> Result<RootfsApplyStats> {
    delete_rootfs_paths(rootfs, deleted_files)?;
    let root = open_dir_nofollow(rootfs)?;
    let file = open_regular_nofollow(diff_tar)?;
    let caps = GuardCaps::for_limits(&Limits { max_entries: limits.max_rootfs_entries, ..*limits });
    let reader = TarGuard::new(io::BufReader::with_capacity(super::fsutil::IO_BUF, file), caps);
    let mut archive = tar::Archive::new(reader);
    let mut diff = DiffApply {
        root,
        limits,
        privileged,
        stats: RootfsApplyStats { deleted: deleted_files.len() as u64, ..Default::default() },
        seen: HashSet::new(),
        files: HashSet::new(),
        dir_times: Vec::new(),
    };
    let corrupt = |e: io::Error| Error::Archive(format!("{}: corrupt tar stream: {e}", diff_tar.display()));
    for entry in archive.entries().map_err(corrupt)? {
        diff.apply_entry(&mut entry.map_err(corrupt)?, &corrupt)?;
    }
    if diff.stats.stripped.len() > MAX_LOGGED_STRIPS {
        warn!(count = diff.stats.stripped.len(), "rootfs diff: privileged bits not restored on more paths than logged");
    }
    diff.set_dir_times()?;
    Ok(diff.stats)
}

/// The state [`apply_rootfs_diff`] carries from one tar entry to the next.
struct DiffApply<'a> {
    root: OwnedFd,
    limits: &'a Limits,
    privileged: Privileged,
    stats: RootfsApplyStats,
    /// Every path extracted so far (as [`path_key`]): a duplicate is refused, not replaced.
    seen: HashSet<Vec<u8>>,
    /// Regular files extracted so far: the only things a hard link may point to.
    files: HashSet<Vec<u8>>,
    /// Each directory's path and mtime, set once all entries are in (see [`Self::set_dir_times`]).
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
}

/// The header fields of one entry that end up on the extracted inode.
struct EntryAttrs {
    kind: EntryType,
    mode: Mode,
    owner: (Option<Uid>, Option<Gid>),
    mtime: TimeSpec,
    size: u64,
}

/// A path's identity for the duplicate and hard-link checks: its components, each ending in `/`.
fn path_key(comps: &[&OsStr]) -> Vec<u8> {
    comps.iter().flat_map(|c| [c.as_encoded_bytes(), b"/"]).flatten().copied().collect()
}

fn entry_attrs(h: &tar::Header, corrupt: &impl Fn(io::Error) -> Error) -> Result<EntryAttrs> {
    let mode = Mode::from_bits_truncate(h.mode().map_err(corrupt)? & 0o7777);
    let (uid, gid) = (h.uid().map_err(corrupt)?, h.gid().map_err(corrupt)?);
    let mtime = TimeSpec::new(h.mtime().map_err(corrupt)?.min(i64::MAX as u64) as i64, 0);
    let size = h.size().map_err(corrupt)?;
    let owner = (Some(Uid::from_raw(uid as u32)), Some(Gid::from_raw(gid as u32)));
    Ok(EntryAttrs { kind: h.entry_type(), mode, owner, mtime, size })
}

impl DiffApply<'_> {
    /// Checks one entry against the limits and the entries before it, then extracts it.
    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        corrupt: &impl Fn(io::Error) -> Error,
    ) -> Result<()> {
        let limits = self.limits;
        self.stats.entries += 1;
        if self.stats.entries > limits.max_rootfs_entries {
            return Err(Error::Archive(format!("rootfs diff has more than {} entries", limits.max_rootfs_entries)));
        }
        let raw = entry.path_bytes().into_owned();
        let comps = split_relative(&raw, limits.max_path_len)?;
        if comps.len() > limits.max_depth {
            return Err(Error::Archive(format!(
                "rootfs diff entry is nested deeper than {} directories",
                limits.max_depth
            )));
        }
        let key = path_key(&comps);
        let shown = format!("/{}", String::from_utf8_lossy(&raw));
        let mut attrs = entry_attrs(entry.header(), corrupt)?;
        let Some(name) = comps.last().copied() else {
            if attrs.kind == EntryType::Directory {
                return Ok(()); // "./": the rootfs itself keeps its attributes
            }
            return Err(Error::Archive(format!("entry {shown:?} names the root")));
        };
        if !self.seen.insert(key.clone()) {
            return Err(Error::Archive(format!("duplicate entry {shown:?}")));
        }
        self.stats.bytes = self.stats.bytes.saturating_add(attrs.size);
        if self.stats.bytes > limits.max_total_bytes {
            return Err(Error::Archive(format!("rootfs diff exceeds {} bytes", limits.max_total_bytes)));
        }
        let mut xattrs = xattrs_of(entry)?;
        if self.privileged == Privileged::Strip {
            self.strip_privileged(&mut attrs, &mut xattrs, &shown);
        }
        let parent = walk_parent(&self.root, &comps, Some(0o755))?;
        match attrs.kind {
            EntryType::Directory => {
                make_dir(&parent, name, &attrs, &xattrs, &shown)?;
                self.dir_times.push((comps.iter().map(|c| c.to_os_string()).collect(), attrs.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                write_file(&parent, name, entry, &attrs, &xattrs, &shown)?;
                self.files.insert(key);
            }
            EntryType::Symlink => make_symlink(&parent, name, entry, &attrs, &shown)?,
            EntryType::Link => {
                self.make_hard_link(&parent, name, entry, &shown)?;
                self.files.insert(key);
            }
            EntryType::Fifo => make_fifo(&parent, name, &attrs, &shown)?,
            other => {
                return Err(Error::Archive(format!(
                    "entry {shown:?} has type {other:?}, which a rootfs diff may not contain"
                )))
            }
        }
        Ok(())
    }

    /// Drops setuid/setgid bits (kept on directories, where they grant nothing) and
    /// `security.capability`, logging and counting each path it touched (see [`Privileged`]).
    fn strip_privileged(&mut self, attrs: &mut EntryAttrs, xattrs: &mut Vec<(String, Vec<u8>)>, shown: &str) {
        let mut dropped = Vec::new();
        if attrs.kind != EntryType::Directory && attrs.mode.intersects(Mode::S_ISUID | Mode::S_ISGID) {
            attrs.mode.remove(Mode::S_ISUID | Mode::S_ISGID);
            dropped.push("setuid/setgid");
        }
        let before = xattrs.len();
        xattrs.retain(|(name, _)| name != "security.capability");
        if xattrs.len() != before {
            dropped.push("security.capability");
        }
        if !dropped.is_empty() {
            if self.stats.stripped.len() < MAX_LOGGED_STRIPS {
                warn!(path = %shown, dropped = ?dropped, "rootfs diff: privileged bits not restored");
            }
            self.stats.stripped.push(format!("{shown} ({})", dropped.join(", ")));
        }
    }

    /// A hard link may only point to a regular file extracted earlier from this diff, so it never
    /// gives a second name to something the diff did not write itself.
    fn make_hard_link<R: Read>(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| Error::Archive(format!("hard link {shown:?} has no target")))?
            .into_owned();
        let tcomps = split_relative(&target, self.limits.max_path_len)?;
        if !self.files.contains(&path_key(&tcomps)) {
            return Err(Error::Archive(format!(
                "hard link {shown:?} points to {:?}, which is not a file earlier in the diff",
                String::from_utf8_lossy(&target)
            )));
        }
        let tparent = walk_parent(&self.root, &tcomps, None)?;
        let tname = tcomps.last().copied().ok_or_else(|| Error::Archive("empty link target".into()))?;
        remove_any(parent, name, shown)?;
        // No AT_SYMLINK_FOLLOW: the link is made to the entry itself, never through it.
        linkat(&tparent, tname, parent, name, AtFlags::empty()).map_err(nix_io(format!("link {shown}")))?;
        Ok(())
    }

    /// Directory mtimes last, deepest first: creating their children changed them.
    fn set_dir_times(&self) -> Result<()> {
        for (comps, mtime) in self.dir_times.iter().rev() {
            let comps: Vec<&OsStr> = comps.iter().map(|c| c.as_os_str()).collect();
            let parent = walk_parent(&self.root, &comps, None)?;
            if let Some(name) = comps.last() {
                utimensat(&parent, *name, mtime, mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(nix_io("set directory times".into()))?;
            }
        }
        Ok(())
    }
}

/// An existing directory is kept (the image's children stay); anything else in its place goes.
/// Its mtime is set later, by [`DiffApply::set_dir_times`].
fn make_dir(
    parent: &OwnedFd,
    name: &OsStr,
    attrs: &EntryAttrs,
    xattrs: &[(String, Vec<u8>)],
    shown: &str,
) -> Result<()> {
    if !is_dir(parent, name, shown)? {
        remove_any(parent, name, shown)?;
        mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(nix_io(format!("mkdir {shown}")))?;
    }
    let dir = open_subdir(parent, name, None, shown)?;
    fchown(&dir, attrs.owner.0, attrs.owner.1).map_err(nix_io(format!("chown {shown}")))?;
    fchmod(&dir, attrs.mode).map_err(nix_io(format!("chmod {shown}")))?;
    set_xattrs(&dir, xattrs, shown)
}

/// Created with `O_EXCL | O_NOFOLLOW` after removing what was there, so the write can only land
/// in a new file, never through a symlink or into a file the image hard-linked elsewhere.
fn write_file<R: Read>(
    parent: &OwnedFd,
    name: &OsStr,
    entry: &mut tar::Entry<'_, R>,
    attrs: &EntryAttrs,
    xattrs: &[(String, Vec<u8>)],
    shown: &str,
) -> Result<()> {
    let size = attrs.size;
    remove_any(parent, name, shown)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::Archive(format!("cannot create {shown}: {e}")))?;
    let mut out = File::from(fd);
    let copied =
        io::copy(&mut entry.take(size), &mut out).map_err(|e| Error::Archive(format!("reading {shown}: {e}")))?;
    if copied != size {
        return Err(Error::Archive(format!("entry {shown:?} is truncated: {copied} of {size} bytes")));
    }
    // chown before chmod: chown clears set-id bits.
    fchown(&out, attrs.owner.0, attrs.owner.1).map_err(nix_io(format!("chown {shown}")))?;
    fchmod(&out, attrs.mode).map_err(nix_io(format!("chmod {shown}")))?;
    set_xattrs(&out, xattrs, shown)?;
    futimens(&out, &attrs.mtime, &attrs.mtime).map_err(nix_io(format!("set times of {shown}")))
}

/// The symlink is created, never followed: every later walk opens components with `O_NOFOLLOW`.
fn make_symlink<R: Read>(
    parent: &OwnedFd,
    name: &OsStr,
    entry: &tar::Entry<'_, R>,
    attrs: &EntryAttrs,
    shown: &str,
) -> Result<()> {
    let target =
        entry.link_name_bytes().ok_or_else(|| Error::Archive(format!("symlink {shown:?} has no target")))?.into_owned();
    remove_any(parent, name, shown)?;
    symlinkat(OsStr::from_bytes(&target), parent, name).map_err(nix_io(format!("symlink {shown}")))?;
    fchownat(parent, name, attrs.owner.0, attrs.owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(nix_io(format!("chown {shown}")))?;
    utimensat(parent, name, &attrs.mtime, &attrs.mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(nix_io(format!("set times of {shown}")))
}

fn make_fifo(parent: &OwnedFd, name: &OsStr, attrs: &EntryAttrs, shown: &str) -> Result<()> {
    remove_any(parent, name, shown)?;
    mknodat(parent, name, SFlag::S_IFIFO, attrs.mode, 0).map_err(nix_io(format!("mkfifo {shown}")))?;
    fchownat(parent, name, attrs.owner.0, attrs.owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(nix_io(format!("chown {shown}")))?;
    // The FIFO was just created by us in a rootfs nothing runs in yet.
    fchmodat(parent, name, attrs.mode, FchmodatFlags::FollowSymlink).map_err(nix_io(format!("chmod {shown}")))
}

fn is_dir(parent: &OwnedFd, name: &OsStr, shown: &str) -> Result<bool> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(nix_io(format!("stat {shown}"))(e)),
    }
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(|e| Error::Archive(format!("bad PAX header: {e}")))? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| Error::Archive(format!("bad PAX record: {e}")))?;
        if let Ok(key) = ext.key() {
            if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                out.push((name.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// Only user-visible xattrs are restored; `trusted.*`/`security.selinux` could change how the
/// host treats the file, so an archive may not set them. File capabilities and POSIX ACLs stay
/// allowed: image layers carry them too.
fn set_xattrs(fd: &impl AsFd, xattrs: &[(String, Vec<u8>)], shown: &str) -> Result<()> {
    use xattr::FileExt;
    if xattrs.is_empty() {
        return Ok(());
    }
    let file = File::from(fd.as_fd().try_clone_to_owned().map_err(Error::io("dup fd"))?);
    for (name, value) in xattrs {
        let allowed = name.starts_with("user.")
            || matches!(name.as_str(), "security.capability" | "system.posix_acl_access" | "system.posix_acl_default");
        if !allowed || name.starts_with("user.overlay.") {
            return Err(Error::Archive(format!("{shown}: xattr {name:?} may not be restored from an archive")));
        }
        file.set_xattr(name, value).map_err(Error::io(format!("set xattr {name} on {shown}")))?;
    }
    Ok(())
}
