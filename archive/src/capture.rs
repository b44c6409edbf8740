//! Capturing a container's writable layer from its overlay upperdir while the container is
//! frozen: one walk, one uncompressed tar, no second pass (the peers tar the diff twice).

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    fs::Metadata,
    io::{BufWriter, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt},
    },
    path::Path,
};

use tar::{EntryType, Header};

use super::{
    fsutil::create_new,
    layout::FILE_MODE,
    tarout::{append_dir, base_header},
};
use crate::error::{Error, Result};

/// What [`capture_overlay_upperdir`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsCaptureStats {
    /// Size of the tar file.
    pub bytes: u64,
    pub entries: u64,
    /// Paths (leading `/`) deleted from the image: overlay whiteouts, plus every opaque
    /// directory, whose lower contents are hidden. [`super::apply_rootfs_diff`] deletes these
    /// before it extracts the diff, so an opaque directory comes back with only its upper
    /// contents.
    pub deleted: Vec<String>,
    /// The opaque directories among `deleted`, for callers that want to tell them apart.
    pub opaque_dirs: Vec<String>,
    /// Entries that cannot be carried in a checkpoint (sockets, device nodes): a bound socket is
    /// recreated by CRIU, device nodes are never restored from an archive. Logged, not silent.
    pub skipped: Vec<String>,
}

/// Prefix of the PAX records that carry extended attributes (GNU tar and libarchive use it).
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// xattrs that describe the overlay itself or a host label rather than the file.
fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") || name == b"security.selinux"
}

fn overlay_xattr(xattrs: &[(OsString, Vec<u8>)], suffix: &str) -> Option<Vec<u8>> {
    xattrs
        .iter()
        .find(|(n, _)| {
            let n = n.as_bytes();
            n.strip_prefix(b"trusted.overlay.").or_else(|| n.strip_prefix(b"user.overlay.")) == Some(suffix.as_bytes())
        })
        .map(|(_, v)| v.clone())
}

fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    // lgetxattr/llistxattr: symlinks are never followed.
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(Error::io(format!("list xattrs of {}", path.display()))(e)),
    };
    for name in names {
        if let Some(v) = xattr::get(path, &name).map_err(Error::io(format!("read xattr of {}", path.display())))? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// PAX extended-header records (`"<len> <key>=<value>\n"`) for the file's own xattrs.
pub fn pax_xattr_records(xattrs: &[(OsString, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs.iter().filter(|(n, _)| !is_internal_xattr(n.as_bytes())) {
        let body_len = 1 + PAX_XATTR_PREFIX.len() + name.len() + 1 + value.len() + 1;
        // The length field counts its own digits.
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {PAX_XATTR_PREFIX}").as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

struct Capture<W: Write> {
    tar: tar::Builder<W>,
    stats: RootfsCaptureStats,
    /// First path seen for each (dev, inode) with several links, to emit hard links.
    inodes: HashMap<(u64, u64), Vec<u8>>,
}

/// Walks an overlay upperdir and writes its new and changed files, directories, symlinks, hard
/// links and FIFOs into an uncompressed tar at `dest_tar` (created new, mode 0600), keeping
/// owners, modes, mtimes and xattrs (as PAX `SCHILY.xattr.*`). Whiteouts (0:0 character devices,
/// or files with the `overlay.whiteout` xattr) and opaque directories become
/// [`RootfsCaptureStats::deleted`]. Upperdirs that need the lower layers to be read
/// (`overlay.metacopy`, `overlay.redirect`) are refused, since copying them would lose data.
///
/// Meant to run while the container is frozen, so the tree does not change under the walk; it
/// does not fsync (the container archive that embeds the tar is fsynced later). On error the
/// partial tar is removed.
pub fn capture_overlay_upperdir(upperdir: &Path, dest_tar: &Path) -> Result<RootfsCaptureStats> {
    let file = create_new(dest_tar, FILE_MODE)?;
    let res = (|| {
        let mut cap = Capture {
            tar: tar::Builder::new(BufWriter::with_capacity(super::fsutil::IO_BUF, file)),
            stats: RootfsCaptureStats::default(),
            inodes: HashMap::new(),
        };
        cap.walk(upperdir, b"")?;
        let mut out = cap.tar.into_inner().map_err(Error::io("finish rootfs tar"))?;
        out.flush().map_err(Error::io(format!("write {}", dest_tar.display())))?;
        let mut stats = cap.stats;
        stats.bytes = out.get_ref().metadata().map_err(Error::io("stat rootfs tar"))?.len();
        Ok(stats)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(dest_tar);
    }
    res
}

fn header_for(kind: EntryType, meta: &Metadata) -> Header {
    let mut h = base_header(kind, meta.mode() & 0o7777, meta.mtime().max(0) as u64);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h
}

fn shown(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

fn deleted_name(rel: &[u8]) -> Result<String> {
    std::str::from_utf8(rel).map(|s| format!("/{s}")).map_err(|_| {
        Error::FailedPrecondition(format!("deleted path {} is not UTF-8 and cannot be recorded", shown(rel)))
    })
}

impl<W: Write> Capture<W> {
    fn walk(&mut self, dir: &Path, prefix: &[u8]) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(Error::io(format!("read {}", dir.display())))?
            .collect::<std::io::Result<_>>()
            .map_err(Error::io(format!("read {}", dir.display())))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let mut rel = prefix.to_vec();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(entry.file_name().as_bytes());
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(Error::io(format!("stat {}", path.display())))?;
            self.entry(&path, &rel, &meta)?;
        }
        Ok(())
    }

    fn pax(&mut self, rel: &[u8], xattrs: &[(OsString, Vec<u8>)]) -> Result<()> {
        let records = pax_xattr_records(xattrs);
        if records.is_empty() {
            return Ok(());
        }
        let mut h = base_header(EntryType::XHeader, 0o600, 0);
        h.set_size(records.len() as u64);
        // The name of a PAX header is informational; keep it short so it never needs a long-name
        // entry of its own (which would apply to the wrong header).
        let name = format!("PaxHeaders/{}", rel.len());
        h.set_path(&name).map_err(Error::io("PAX header name"))?;
        h.set_cksum();
        self.tar.append(&h, &records[..]).map_err(Error::io(format!("archive xattrs of {}", shown(rel))))
    }

    fn entry(&mut self, path: &Path, rel: &[u8], meta: &Metadata) -> Result<()> {
        let ft = meta.file_type();
        let rel_path = Path::new(OsStr::from_bytes(rel));
        let io = |what: &str| Error::io(format!("archive {what} {}", shown(rel)));
        if ft.is_char_device() && meta.rdev() == 0 {
            self.stats.deleted.push(deleted_name(rel)?);
            return Ok(());
        }
        if ft.is_dir() {
            let xattrs = read_xattrs(path)?;
            if overlay_xattr(&xattrs, "redirect").is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "{} is a renamed lower directory (overlay redirect_dir): not supported",
                    shown(rel)
                )));
            }
            if overlay_xattr(&xattrs, "opaque").as_deref() == Some(b"y") {
                let d = deleted_name(rel)?;
                self.stats.opaque_dirs.push(d.clone());
                self.stats.deleted.push(d);
            }
            self.pax(rel, &xattrs)?;
            append_dir(&mut self.tar, header_for(EntryType::Directory, meta), rel).map_err(io("directory"))?;
            self.stats.entries += 1;
            return self.walk(path, rel);
        }
        if ft.is_file() {
            let xattrs = read_xattrs(path)?;
            if overlay_xattr(&xattrs, "metacopy").is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "{} is an overlay metacopy file whose data lives in a lower layer: not supported",
                    shown(rel)
                )));
            }
            if meta.len() == 0 && overlay_xattr(&xattrs, "whiteout").is_some() {
                self.stats.deleted.push(deleted_name(rel)?);
                return Ok(());
            }
            if meta.nlink() > 1 {
                if let Some(first) = self.inodes.get(&(meta.dev(), meta.ino())).cloned() {
                    let mut h = header_for(EntryType::Link, meta);
                    let target = Path::new(OsStr::from_bytes(&first));
                    self.tar.append_link(&mut h, rel_path, target).map_err(io("hard link"))?;
                    self.stats.entries += 1;
                    return Ok(());
                }
                self.inodes.insert((meta.dev(), meta.ino()), rel.to_vec());
            }
            self.pax(rel, &xattrs)?;
            let mut h = header_for(EntryType::Regular, meta);
            h.set_size(meta.len());
            let file = super::fsutil::open_regular_nofollow(path)?;
            let mut src = std::io::Read::take(file, meta.len());
            self.tar.append_data(&mut h, rel_path, &mut src).map_err(io("file"))?;
            if src.limit() != 0 {
                return Err(Error::Archive(format!("{} shrank while it was captured", shown(rel))));
            }
            self.stats.entries += 1;
            return Ok(());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(Error::io(format!("readlink {}", path.display())))?;
            let mut h = header_for(EntryType::Symlink, meta);
            self.tar.append_link(&mut h, rel_path, &target).map_err(io("symlink"))?;
            self.stats.entries += 1;
            return Ok(());
        }
        if ft.is_fifo() {
            let mut h = header_for(EntryType::Fifo, meta);
            self.tar.append_data(&mut h, rel_path, std::io::empty()).map_err(io("fifo"))?;
            self.stats.entries += 1;
            return Ok(());
        }
        let what = if ft.is_socket() { "socket" } else { "device node" };
        tracing::warn!(path = %shown(rel), what, "not captured in the rootfs diff");
        self.stats.skipped.push(format!("{} ({what})", shown(rel)));
        Ok(())
    }
}
