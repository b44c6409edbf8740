//! Names in a pod checkpoint and the checks on names and on the caller's output directory.

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Pod-level files (checkpointctl `lib/metadata.go` names where one exists).
pub const POD_OPTIONS_FILE: &str = "pod.options";
pub const POD_DUMP_FILE: &str = "pod.dump";
pub const POD_MANIFEST_FILE: &str = "podcr.manifest.json";
/// The detached ed25519 signature over the exact bytes of [`POD_MANIFEST_FILE`] (see
/// [`super::signing`]); not listed in the manifest it signs.
pub const SIGNATURE_FILE: &str = "podcr.manifest.sig";
/// `format` of [`POD_MANIFEST_FILE`].
pub const POD_MANIFEST_FORMAT: &str = "podcr.pod-checkpoint";

/// Container archive entries (checkpointctl names).
pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const STATUS_DUMP: &str = "status.dump";
/// The CRI `ContainerConfig` the container was created with (snake_case JSON), so a restore can
/// create the container again exactly as the kubelet asked; podcr's addition to the layout.
pub const CONTAINER_CONFIG_DUMP: &str = "container-config.dump";
pub const STATS_DUMP: &str = "stats-dump";
pub const DUMP_LOG: &str = "dump.log";
pub const ROOTFS_DIFF_TAR: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
pub const BIND_MOUNTS: &str = "bind.mounts";
pub const CONTAINER_MANIFEST_FILE: &str = "podcr.container.manifest.json";
/// `format` of [`CONTAINER_MANIFEST_FILE`].
pub const CONTAINER_MANIFEST_FORMAT: &str = "podcr.container-checkpoint";

/// The only version of both manifests this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Mode of every file podcr writes into a checkpoint, in tar headers and on disk: checkpoints
/// hold process memory, so only root may read them.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Longest CRI container name accepted (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// How a container archive or a pod transport archive is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// File name suffix, appended after `.tar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// Guesses the compression from the first bytes of a stream. Anything without a gzip or
    /// zstd magic number is treated as a plain tar, which the tar parser then validates.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Checks a CRI container name before it becomes a file name: `[A-Za-z0-9._-]`, no leading dot
/// (so neither `.`, `..` nor hidden files), at most [`MAX_NAME_LEN`] bytes.
pub fn validate_container_name(name: &str) -> Result<()> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.starts_with('.') || !ok_chars {
        return Err(Error::InvalidArgument(format!(
            "container name {name:?} cannot name a checkpoint file: want [A-Za-z0-9._-], no leading dot, at most {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

/// `<name>.tar[.gz|.zst]`, the file name of a container's archive in the pod directory.
pub fn container_archive_name(name: &str, compression: Compression) -> Result<String> {
    validate_container_name(name)?;
    Ok(format!("{name}.tar{}", compression.extension()))
}

/// Validates `output_path` per the CRI contract: absolute, existing, a real directory (not a
/// symlink), and empty. Returns its canonical path, which callers can use to refuse two
/// concurrent checkpoints into the same directory.
pub fn check_output_dir(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!("output path {} is not absolute", path.display())));
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidArgument(format!("output path {} does not exist", path.display()))
        }
        _ => Error::io(format!("stat output path {}", path.display()))(e),
    })?;
    if meta.file_type().is_symlink() {
        return Err(Error::InvalidArgument(format!("output path {} is a symlink", path.display())));
    }
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!("output path {} is not a directory", path.display())));
    }
    let mut entries = std::fs::read_dir(path).map_err(Error::io(format!("read output path {}", path.display())))?;
    if entries.next().is_some() {
        return Err(Error::InvalidArgument(format!("output path {} is not empty", path.display())));
    }
    std::fs::canonicalize(path).map_err(Error::io(format!("canonicalize {}", path.display())))
}

/// Removes everything inside `dir` but not `dir` itself: the rollback of a failed checkpoint,
/// since the caller owns `output_path`. Symlinks inside are removed, never followed; `dir`
/// itself must not be a symlink.
pub fn clean_dir_contents(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).map_err(Error::io(format!("stat {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is not a directory (or is a symlink)", dir.display())));
    }
    remove_entries(dir)
}

/// [`clean_dir_contents`] without the check on `dir` itself, for a directory named through a
/// descriptor (`/proc/<pid>/fd/<fd>` is a symlink to it by design).
pub(crate) fn remove_entries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read {}", dir.display())))?;
        let path = entry.path();
        // file_type() comes from the directory entry (or lstat): it never follows a symlink.
        let ft = entry.file_type().map_err(Error::io(format!("stat {}", path.display())))?;
        let res = if ft.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        res.map_err(Error::io(format!("remove {}", path.display())))?;
    }
    Ok(())
}

/// Splits a relative path from an archive into its components, refusing anything that could
/// leave the extraction root: absolute paths, `..`, NUL bytes, empty paths. `.` components are
/// dropped; a trailing `/` is allowed (directories). An empty result means the root itself.
pub fn split_relative(raw: &[u8], max_len: usize) -> Result<Vec<&OsStr>> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.is_empty() {
        return Err(Error::Archive("entry with an empty path".into()));
    }
    if raw.len() > max_len {
        return Err(Error::Archive(format!("entry path longer than {max_len} bytes")));
    }
    if raw.contains(&0) {
        return Err(Error::Archive(format!("entry path {:?} contains NUL", shown())));
    }
    if raw[0] == b'/' {
        return Err(Error::Archive(format!("entry path {:?} is absolute", shown())));
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(Error::Archive(format!("entry path {:?} contains '..'", shown()))),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        for ok in ["app", "a.b-c_d", "x".repeat(253).as_str()] {
            validate_container_name(ok).unwrap();
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", "x".repeat(254).as_str(), "../x"] {
            assert!(matches!(validate_container_name(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        assert_eq!(container_archive_name("app", Compression::Zstd).unwrap(), "app.tar.zst");
    }

    #[test]
    fn compression_detection() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::detect(b"checkpoint/"), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }

    #[test]
    fn relative_paths() {
        let p = |s: &str| split_relative(s.as_bytes(), 4096).map(|v| v.len());
        assert_eq!(p("a/b/c").unwrap(), 3);
        assert_eq!(p("./a/").unwrap(), 1);
        assert_eq!(p(".").unwrap(), 0);
        for bad in ["", "/etc", "a/../../x", "..", "a\0b"] {
            assert!(matches!(p(bad), Err(Error::Archive(_))), "{bad:?}");
        }
        assert!(split_relative(&[b'a'; 10], 5).is_err());
    }

    #[test]
    fn output_dir_contract() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        assert!(matches!(check_output_dir(Path::new("rel")), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_output_dir(&dir), Err(Error::InvalidArgument(_))));
        std::fs::create_dir(&dir).unwrap();
        check_output_dir(&dir).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(check_output_dir(&link), Err(Error::InvalidArgument(_))));
        std::fs::write(dir.join("f"), b"x").unwrap();
        assert!(matches!(check_output_dir(&dir), Err(Error::InvalidArgument(_))));
        assert!(matches!(check_output_dir(&dir.join("f")), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn clean_dir_keeps_link_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let dir = tmp.path().join("out");
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(dir.join("sub/deeper/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("sub/link")).unwrap();
        clean_dir_contents(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
        assert!(clean_dir_contents(&tmp.path().join("link-to-out")).is_err());
        std::os::unix::fs::symlink(&dir, tmp.path().join("l")).unwrap();
        assert!(clean_dir_contents(&tmp.path().join("l")).is_err());
    }
}
