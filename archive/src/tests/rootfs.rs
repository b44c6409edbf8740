//! Overlay upperdir capture and its safe application to a rootfs.

use std::{
    ffi::CString,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use tar::EntryType;

use super::support::*;
use crate::{error::Error, *};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn mknod_whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path; mknod does not retain it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

/// An upperdir with every kind of entry overlay produces.
fn upperdir(root: &Path) -> std::path::PathBuf {
    let up = root.join("upper");
    std::fs::create_dir_all(up.join("etc/app")).unwrap();
    std::fs::write(up.join("etc/app/conf"), b"new conf").unwrap();
    std::fs::set_permissions(up.join("etc/app/conf"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    std::os::unix::fs::symlink("/etc/app/conf", up.join("etc/link")).unwrap();
    std::fs::hard_link(up.join("etc/app/conf"), up.join("etc/hard")).unwrap();
    nix::unistd::mkfifo(&up.join("etc/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    xattr::set(up.join("etc/app/conf"), "user.podcr.test", b"v").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(up.join("etc/sock")).unwrap();
    if is_root() {
        mknod_whiteout(&up.join("etc/motd"));
        std::fs::create_dir(up.join("opaque")).unwrap();
        std::fs::write(up.join("opaque/only"), b"upper only").unwrap();
        xattr::set(up.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
    }
    up
}

/// A rootfs as the image would lay it out.
fn lower(root: &Path) -> std::path::PathBuf {
    let r = root.join("rootfs");
    std::fs::create_dir_all(r.join("etc/app")).unwrap();
    std::fs::write(r.join("etc/motd"), b"hello").unwrap();
    std::fs::write(r.join("etc/app/conf"), b"old").unwrap();
    std::fs::create_dir_all(r.join("opaque/sub")).unwrap();
    std::fs::write(r.join("opaque/old"), b"lower").unwrap();
    std::fs::create_dir(r.join("etc/link")).unwrap(); // a dir the diff replaces by a symlink
    r
}

#[test]
fn capture_then_apply_restores_the_upper_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upperdir(tmp.path());
    let tar = tmp.path().join("diff.tar");
    let stats = capture_overlay_upperdir(&up, &tar).unwrap();
    assert_eq!(stats.bytes, std::fs::metadata(&tar).unwrap().len());
    assert_eq!(stats.skipped, vec!["/etc/sock (socket)".to_string()]);
    if is_root() {
        assert_eq!(stats.deleted, vec!["/etc/motd".to_string(), "/opaque".to_string()]);
        assert_eq!(stats.opaque_dirs, vec!["/opaque".to_string()]);
    }
    assert!(capture_overlay_upperdir(&up, &tar).is_err(), "never overwrites an existing tar");

    let rootfs = lower(tmp.path());
    apply_rootfs_diff(&tar, &rootfs, &stats.deleted, &Limits::default(), Privileged::Keep).unwrap();
    let conf = rootfs.join("etc/app/conf");
    assert_eq!(std::fs::read(&conf).unwrap(), b"new conf");
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o7777, 0o4750);
    assert_eq!(xattr::get(&conf, "user.podcr.test").unwrap(), Some(b"v".to_vec()));
    assert_eq!(std::fs::read_link(rootfs.join("etc/link")).unwrap(), Path::new("/etc/app/conf"));
    assert_eq!(std::fs::metadata(rootfs.join("etc/hard")).unwrap().ino(), std::fs::metadata(&conf).unwrap().ino());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&std::fs::metadata(rootfs.join("etc/fifo")).unwrap().file_type()));
    assert!(!rootfs.join("etc/sock").exists());
    if is_root() {
        assert!(!rootfs.join("etc/motd").exists());
        assert_eq!(listing(&rootfs.join("opaque")), vec!["only".to_string()]);
    }
    let up_mtime = std::fs::metadata(up.join("etc/app")).unwrap().mtime();
    assert_eq!(std::fs::metadata(rootfs.join("etc/app")).unwrap().mtime(), up_mtime);
}

#[test]
fn setid_bits_and_file_capabilities_are_dropped_unless_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upperdir(tmp.path());
    if is_root() {
        // A v2 file capability granting cap_setuid: what a hostile diff would carry.
        let mut cap = vec![0u8; 20];
        cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        cap[4..8].copy_from_slice(&(1u32 << 7).to_le_bytes());
        xattr::set(up.join("etc/app/conf"), "security.capability", &cap).unwrap();
    }
    let tar = tmp.path().join("diff.tar");
    let stats = capture_overlay_upperdir(&up, &tar).unwrap();
    let rootfs = lower(tmp.path());
    let applied = apply_rootfs_diff(&tar, &rootfs, &stats.deleted, &Limits::default(), Privileged::Strip).unwrap();
    let conf = rootfs.join("etc/app/conf");
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o7777, 0o0750);
    assert_eq!(xattr::get(&conf, "security.capability").unwrap(), None);
    assert_eq!(xattr::get(&conf, "user.podcr.test").unwrap(), Some(b"v".to_vec()), "other xattrs stay");
    assert!(applied.stripped.iter().any(|p| p.starts_with("/etc/app/conf (setuid/setgid")), "{:?}", applied.stripped);
    if is_root() {
        assert!(applied.stripped.iter().any(|p| p.contains("security.capability")), "{:?}", applied.stripped);
    }
}

#[test]
fn deep_nesting_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = "d/".repeat(300) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
    let out = b.into_inner().unwrap();
    let tar = tmp.path().join("deep.tar");
    std::fs::write(&tar, &out).unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let err = apply_rootfs_diff(&tar, &rootfs, &[], &Limits::default(), Privileged::Strip).unwrap_err();
    assert!(err.to_string().contains("deeper"), "{err}");
    assert!(listing(&rootfs).is_empty());
}

#[test]
fn capture_refuses_layers_that_need_the_lower_dirs() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = tmp.path().join("upper");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::write(up.join("meta"), b"").unwrap();
    xattr::set(up.join("meta"), "trusted.overlay.metacopy", b"").unwrap();
    let tar = tmp.path().join("d.tar");
    assert!(matches!(capture_overlay_upperdir(&up, &tar), Err(Error::FailedPrecondition(_))));
    assert!(!tar.exists(), "partial tar removed");
}

/// Applies a raw diff to a fresh rootfs next to an `outside` dir; the outside must not change.
type Raw<'a> = (&'a [u8], EntryType, &'a [u8], Option<&'a [u8]>);

fn apply_raw(entries: &[Raw], deleted: &[&str]) -> crate::error::Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/passwd"), b"root").unwrap();
    std::os::unix::fs::symlink(&outside, rootfs.join("escape")).unwrap();
    let mut bytes = Vec::new();
    for (name, kind, data, link) in entries {
        raw_entry(&mut bytes, name, *kind, data, *link, None);
    }
    end(&mut bytes);
    let tar = tmp.path().join("d.tar");
    std::fs::write(&tar, bytes).unwrap();
    let deleted: Vec<String> = deleted.iter().map(|s| s.to_string()).collect();
    let res = apply_rootfs_diff(&tar, &rootfs, &deleted, &Limits::default(), Privileged::Strip).map(|_| ());
    assert_eq!(listing(&outside), vec!["secret".to_string()]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
    assert_eq!(listing(tmp.path()), vec!["d.tar".to_string(), "outside".to_string(), "rootfs".to_string()]);
    res
}

#[test]
fn hostile_diffs_never_write_outside_the_rootfs() {
    let cases: Vec<(&str, Vec<Raw>)> = vec![
        ("dot-dot", vec![(b"../outside/x", EntryType::Regular, b"x", None)]),
        ("absolute", vec![(b"/outside/x", EntryType::Regular, b"x", None)]),
        ("through existing symlink", vec![(b"escape/x", EntryType::Regular, b"x", None)]),
        (
            "through new symlink",
            vec![(b"a", EntryType::Symlink, b"", Some(b"../outside")), (b"a/x", EntryType::Regular, b"x", None)],
        ),
        ("hard link outside", vec![(b"h", EntryType::Link, b"", Some(b"/etc/passwd"))]),
        ("hard link dot-dot", vec![(b"h", EntryType::Link, b"", Some(b"../outside/secret"))]),
        ("hard link not in diff", vec![(b"h", EntryType::Link, b"", Some(b"etc/passwd"))]),
        ("hard link via symlink", vec![(b"h", EntryType::Link, b"", Some(b"escape/secret"))]),
        ("char device", vec![(b"dev", EntryType::Char, b"", None)]),
        ("block device", vec![(b"blk", EntryType::Block, b"", None)]),
        ("duplicate", vec![(b"f", EntryType::Regular, b"1", None), (b"f", EntryType::Regular, b"2", None)]),
    ];
    for (what, entries) in cases {
        match apply_raw(&entries, &[]) {
            Err(Error::Archive(msg)) => eprintln!("{what}: refused: {msg}"),
            other => panic!("{what}: expected an archive error, got {other:?}"),
        }
    }
    for bad in ["relative", "/../outside/secret", "/", "/escape/secret"] {
        assert!(apply_raw(&[], &[bad]).is_err(), "deleted path {bad:?}");
    }
    // Replacing a symlink by a file removes the link, never writes through it.
    apply_raw(&[(b"escape", EntryType::Regular, b"x", None)], &[]).unwrap();
    apply_raw(&[(b"escape", EntryType::Directory, b"", None)], &[]).unwrap();
    // Deleting a symlink deletes the link itself; a missing parent means already deleted.
    apply_raw(&[], &["/escape", "/nope/x", "/etc/passwd"]).unwrap();
    // A legitimate hard link to a file of the same diff.
    apply_raw(&[(b"f", EntryType::Regular, b"1", None), (b"g", EntryType::Link, b"", Some(b"f"))], &[]).unwrap();
}
