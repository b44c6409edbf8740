//! A container archive's metadata without unpacking it.
//!
//! `podcr restore` needs each container's CRI config to create the new containers, before the
//! shim extracts (and verifies again) the archives. Unpacking a whole archive for that would
//! write the pod's memory to disk once more, so this reader streams the tar, keeps only the four
//! small metadata documents (bounded in size) and discards the CRIU images. What it returns
//! steers CRI calls (images, mounts, commands), so it is returned only once the whole archive
//! file has been hashed and matches its digest in the (signed) pod manifest. Headers are held to
//! the same rules as extraction, behind the same tar guard.

use std::{io::Read, path::Path};

use super::{
    codec::Decoder,
    fsutil::{open_regular_nofollow, Hashing},
    layout::*,
    limits::Limits,
    metadata::{ContainerConfig, FileDigest},
    reader::{check_container_entry, parse_bytes},
    targuard::{GuardCaps, TarGuard},
};
use crate::error::{Error, Result};

/// What a container archive says about the container, from an archive matching its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerMetadata {
    pub config: ContainerConfig,
    /// `spec.dump`: the container's OCI runtime spec.
    pub spec: serde_json::Value,
    /// `status.dump`, when present.
    pub status: Option<serde_json::Value>,
    /// `container-config.dump` (the CRI `ContainerConfig`), when present.
    pub cri_config: Option<serde_json::Value>,
}

const WANTED: [&str; 4] = [CONFIG_DUMP, SPEC_DUMP, STATUS_DUMP, CONTAINER_CONFIG_DUMP];

/// Reads the metadata of the container archive at `archive`, which must match `expected` (its
/// entry in the verified pod manifest) byte for byte.
pub fn read_container_metadata(archive: &Path, expected: &FileDigest, limits: &Limits) -> Result<ContainerMetadata> {
    let at = |e: Error| match e {
        Error::Archive(m) => Error::Archive(format!("{}: {m}", archive.display())),
        other => other,
    };
    let file = open_regular_nofollow(archive)?;
    let (_, decoder) = Decoder::detect(Hashing::new(file))?;
    let mut tar = tar::Archive::new(TarGuard::new(decoder, GuardCaps::for_limits(limits)));
    let found = collect(tar.entries(), limits).map_err(at)?;
    let mut hashed = tar.into_inner().into_inner().finish().map_err(at)?.into_inner();
    std::io::copy(&mut hashed, &mut std::io::sink()).map_err(Error::io(format!("read {}", archive.display())))?;
    let got = hashed.digest().1;
    if &got != expected {
        return Err(Error::Archive(format!(
            "{} does not match the pod manifest (sha256 {} size {}, manifest says {} size {})",
            archive.display(),
            got.sha256,
            got.size,
            expected.sha256,
            expected.size
        )));
    }
    let doc = |name: &str| found.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_slice());
    let parse_opt = |name: &str| doc(name).map(|d| parse_bytes(d, &archive.join(name))).transpose();
    Ok(ContainerMetadata {
        config: parse_bytes(doc(CONFIG_DUMP).ok_or_else(|| missing(CONFIG_DUMP))?, &archive.join(CONFIG_DUMP))?,
        spec: parse_bytes(doc(SPEC_DUMP).ok_or_else(|| missing(SPEC_DUMP))?, &archive.join(SPEC_DUMP))?,
        status: parse_opt(STATUS_DUMP)?,
        cri_config: parse_opt(CONTAINER_CONFIG_DUMP)?,
    })
}

fn missing(name: &str) -> Error {
    Error::Archive(format!("no {name} in the container archive"))
}

fn collect<R: Read>(entries: std::io::Result<tar::Entries<'_, R>>, limits: &Limits) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |e: std::io::Error| Error::Archive(format!("corrupt tar stream: {e}"));
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    let mut count = 0u64;
    for entry in entries.map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        count += 1;
        if count > limits.max_entries {
            return Err(Error::Archive(format!("more than {} entries", limits.max_entries)));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(Error::Archive(format!("entry type {kind:?} is not allowed")));
        }
        let raw = entry.path_bytes();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| Error::Archive("entry name is not UTF-8".into()))?
            .trim_end_matches('/')
            .to_string();
        let size = entry.size();
        check_container_entry(&path, kind.is_dir(), size, limits)?;
        if WANTED.contains(&path.as_str()) {
            if found.iter().any(|(n, _)| *n == path) {
                return Err(Error::Archive(format!("duplicate entry {path}")));
            }
            let mut data = Vec::new();
            (&mut entry).take(limits.max_metadata_bytes + 1).read_to_end(&mut data).map_err(bad)?;
            if data.len() as u64 > limits.max_metadata_bytes {
                return Err(Error::Archive(format!("{path} is larger than {} bytes", limits.max_metadata_bytes)));
            }
            found.push((path, data));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{tests::support, write_container_archive, Compression};

    #[test]
    fn reads_metadata_of_every_compression_without_unpacking() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let tmp = tempfile::tempdir().unwrap();
            let staging = support::staging(tmp.path());
            let dest = tmp.path().join(format!("app.tar{}", c.extension()));
            let stats = write_container_archive(&staging, &support::meta("app"), &dest, c).unwrap();
            let m = read_container_metadata(&dest, &stats.digest(), &Limits::default()).unwrap();
            assert_eq!(m.config.name, "app");
            assert_eq!(m.cri_config.unwrap()["log_path"], "app.log");
            assert_eq!(m.status.unwrap()["state"], "CONTAINER_RUNNING");
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2, "nothing may be unpacked");
            let other = crate::FileDigest { sha256: "0".repeat(64), size: stats.bytes };
            assert!(matches!(read_container_metadata(&dest, &other, &Limits::default()), Err(Error::Archive(_))));
        }
    }

    fn any() -> crate::FileDigest {
        crate::FileDigest { sha256: String::new(), size: 0 }
    }

    #[test]
    fn refuses_links_and_unknown_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        support::raw_entry(&mut out, b"checkpoint/x", tar::EntryType::Symlink, b"", Some(b"/etc/passwd"), None);
        support::end(&mut out);
        let path = tmp.path().join("evil.tar");
        std::fs::write(&path, &out).unwrap();
        assert!(matches!(read_container_metadata(&path, &any(), &Limits::default()), Err(Error::Archive(_))));
        let mut out = Vec::new();
        support::raw_entry(&mut out, b"../etc/passwd", tar::EntryType::Regular, b"x", None, None);
        support::end(&mut out);
        std::fs::write(&path, &out).unwrap();
        assert!(matches!(read_container_metadata(&path, &any(), &Limits::default()), Err(Error::Archive(_))));
    }
}
