//! A container archive's metadata without unpacking it.
//!
//! `podcr restore` needs each container's CRI config to create the new containers, before the
//! shim extracts (and verifies) the archives. Unpacking a whole archive for that would copy and
//! hash the pod's memory once more, so this reader walks the tar, keeps only the four small
//! metadata documents (bounded in size), and skips the CRIU images: by seeking in a plain tar, by
//! decompressing through a compressed one. Headers are held to the same rules as extraction.
//! Nothing here is hash-verified: it only steers what gets created, and the shim verifies every
//! byte against the manifests before it restores anything.

use std::{io::Read, path::Path};

use super::{
    codec::Decoder,
    fsutil::open_regular_nofollow,
    layout::*,
    limits::Limits,
    metadata::ContainerConfig,
    reader::{check_container_entry, parse_bytes},
};
use crate::error::{Error, Result};

/// What a container archive says about the container, unverified (see the module docs).
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

pub fn read_container_metadata(archive: &Path, limits: &Limits) -> Result<ContainerMetadata> {
    let file = open_regular_nofollow(archive)?;
    let (_, decoder) = Decoder::detect(file)?;
    let found = match decoder {
        Decoder::Plain(reader) => collect(tar::Archive::new(reader).entries_with_seek(), limits),
        compressed => collect(tar::Archive::new(compressed).entries(), limits),
    }
    .map_err(|e| match e {
        Error::Archive(m) => Error::Archive(format!("{}: {m}", archive.display())),
        other => other,
    })?;
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
        let path = std::str::from_utf8(&raw).map_err(|_| Error::Archive("entry name is not UTF-8".into()))?.trim_end_matches('/').to_string();
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
            write_container_archive(&staging, &support::meta("app"), &dest, c).unwrap();
            let m = read_container_metadata(&dest, &Limits::default()).unwrap();
            assert_eq!(m.config.name, "app");
            assert_eq!(m.cri_config.unwrap()["log_path"], "app.log");
            assert_eq!(m.status.unwrap()["state"], "CONTAINER_RUNNING");
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2, "nothing may be unpacked");
        }
    }

    #[test]
    fn refuses_links_and_unknown_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        support::raw_entry(&mut out, b"checkpoint/x", tar::EntryType::Symlink, b"", Some(b"/etc/passwd"), None);
        support::end(&mut out);
        let path = tmp.path().join("evil.tar");
        std::fs::write(&path, &out).unwrap();
        assert!(matches!(read_container_metadata(&path, &Limits::default()), Err(Error::Archive(_))));
        let mut out = Vec::new();
        support::raw_entry(&mut out, b"../etc/passwd", tar::EntryType::Regular, b"x", None, None);
        support::end(&mut out);
        std::fs::write(&path, &out).unwrap();
        assert!(matches!(read_container_metadata(&path, &Limits::default()), Err(Error::Archive(_))));
    }
}
