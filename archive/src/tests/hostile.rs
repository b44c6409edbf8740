//! Hand-built malicious container and pod archives: each must fail with a clean error, write
//! nothing outside the destination, and leave no destination behind.

use std::collections::BTreeMap;

use tar::EntryType;

use super::support::*;
use crate::{error::Error, fsutil::digest_bytes, *};

type Spec<'a> = (&'a [u8], EntryType, &'a [u8], Option<&'a [u8]>);

/// A container archive made of `entries`, followed by a valid manifest of its regular files, so
/// each test's hostile entry is the only thing wrong with it.
fn craft(entries: &[Spec], manifest: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut files = BTreeMap::new();
    for (name, kind, data, link) in entries {
        raw_entry(&mut out, name, *kind, data, *link, None);
        if *kind == EntryType::Regular {
            files.insert(String::from_utf8_lossy(name).into_owned(), digest_bytes(data));
        }
    }
    if manifest {
        let m = ContainerManifest { format: CONTAINER_MANIFEST_FORMAT.into(), version: 1, files };
        raw_entry(
            &mut out,
            CONTAINER_MANIFEST_FILE.as_bytes(),
            EntryType::Regular,
            &serde_json::to_vec(&m).unwrap(),
            None,
            None,
        );
    }
    end(&mut out);
    out
}

const CONFIG: &[u8] =
    br#"{"id":"x","name":"app","createdTime":"2026-01-01T00:00:00Z","checkpointedTime":"2026-01-01T00:00:00Z"}"#;

fn base() -> Vec<Spec<'static>> {
    vec![
        (b"checkpoint/", EntryType::Directory, b"", None),
        (b"checkpoint/inventory.img", EntryType::Regular, b"inv", None),
        (b"config.dump", EntryType::Regular, CONFIG, None),
        (b"spec.dump", EntryType::Regular, b"{}", None),
    ]
}

fn with(extra: Spec<'static>) -> Vec<u8> {
    let mut e = base();
    e.insert(2, extra);
    craft(&e, true)
}

/// Extracts `bytes` into `<tmp>/parent/dest`; asserts that a failure leaves `parent` as it was
/// and that nothing appeared next to `parent` either.
pub fn try_extract(bytes: &[u8], limits: &Limits) -> crate::error::Result<ExtractedContainer> {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, bytes).unwrap();
    let parent = tmp.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    std::fs::write(parent.join("canary"), b"c").unwrap();
    let res = extract_container_archive(&archive, &parent.join("dest"), limits);
    let expect: Vec<String> = if res.is_ok() { vec!["canary".into(), "dest".into()] } else { vec!["canary".into()] };
    assert_eq!(listing(&parent), expect);
    assert_eq!(listing(tmp.path()), vec!["a.tar".to_string(), "parent".to_string()]);
    assert_eq!(std::fs::read(parent.join("canary")).unwrap(), b"c");
    res
}

fn assert_archive_err(bytes: &[u8], what: &str) {
    match try_extract(bytes, &Limits::default()) {
        Err(Error::Archive(msg)) => eprintln!("{what}: refused: {msg}"),
        other => panic!("{what}: expected an archive error, got {other:?}"),
    }
}

#[test]
fn crafted_baseline_is_accepted() {
    let got = try_extract(&craft(&base(), true), &Limits::default()).unwrap();
    assert_eq!(got.config.name, "app");
    assert!(got.status.is_none() && got.rootfs_diff.is_none() && got.deleted_files.is_empty());
}

#[test]
fn path_escapes_are_refused() {
    assert_archive_err(&with((b"../x", EntryType::Regular, b"evil", None)), "dot-dot");
    assert_archive_err(&with((b"checkpoint/../../x", EntryType::Regular, b"evil", None)), "nested dot-dot");
    assert_archive_err(&with((b"/abs", EntryType::Regular, b"evil", None)), "absolute");
    assert_archive_err(&with((b"./config.dump", EntryType::Regular, b"{}", None)), "non-canonical");
    assert_archive_err(&with((b"checkpoint//x", EntryType::Regular, b"x", None)), "double slash");
}

#[test]
fn links_and_special_files_are_refused() {
    assert_archive_err(&with((b"checkpoint/x", EntryType::Symlink, b"", Some(b"/etc"))), "symlink");
    assert_archive_err(&with((b"checkpoint/p", EntryType::Link, b"", Some(b"/etc/passwd"))), "hard link");
    assert_archive_err(&with((b"checkpoint/dev", EntryType::Char, b"", None)), "char device");
    assert_archive_err(&with((b"checkpoint/blk", EntryType::Block, b"", None)), "block device");
    assert_archive_err(&with((b"checkpoint/fifo", EntryType::Fifo, b"", None)), "fifo");
    assert_archive_err(&with((b"g", EntryType::XGlobalHeader, b"10 a=bcde\n", None)), "global pax header");
}

#[test]
fn structure_violations_are_refused() {
    assert_archive_err(&with((b"config.dump", EntryType::Regular, CONFIG, None)), "duplicate");
    assert_archive_err(&with((b"checkpoint/", EntryType::Directory, b"", None)), "duplicate dir");
    assert_archive_err(&with((b"surprise", EntryType::Regular, b"x", None)), "unknown top-level file");
    assert_archive_err(&with((b"config.dump/x", EntryType::Regular, b"x", None)), "file used as dir");
    assert_archive_err(&craft(&base(), false), "no manifest");
    let mut e = base();
    e.remove(0);
    e.remove(0);
    assert_archive_err(&craft(&e, true), "no checkpoint dir");
    // An entry after the manifest (a manifest can only vouch for what precedes it).
    let mut bytes = craft(&base(), true);
    bytes.truncate(bytes.len() - 1024);
    raw_entry(&mut bytes, b"dump.log", EntryType::Regular, b"late", None, None);
    end(&mut bytes);
    assert_archive_err(&bytes, "entry after manifest");
}

#[test]
fn oversized_claims_are_refused_before_reading() {
    let mut bytes = Vec::new();
    raw_entry(&mut bytes, b"checkpoint/", EntryType::Directory, b"", None, None);
    // 5 GiB claimed, 3 bytes present: the size check must fire before any read or allocation.
    raw_entry(&mut bytes, b"config.dump", EntryType::Regular, b"{}x", None, Some(5 << 30));
    end(&mut bytes);
    match try_extract(&bytes, &Limits::default()) {
        Err(Error::Archive(msg)) => assert!(msg.contains("limit"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let small = Limits { max_entries: 3, ..Limits::default() };
    assert!(matches!(try_extract(&craft(&base(), true), &small), Err(Error::Archive(_))));
    let small = Limits { max_total_bytes: 10, ..Limits::default() };
    assert!(matches!(try_extract(&craft(&base(), true), &small), Err(Error::Archive(_))));
    // A big CRIU image claimed but cut short: truncated, not trusted.
    let mut bytes = Vec::new();
    raw_entry(&mut bytes, b"checkpoint/", EntryType::Directory, b"", None, None);
    raw_entry(&mut bytes, b"checkpoint/pages-1.img", EntryType::Regular, b"abc", None, Some(1 << 20));
    assert_archive_err(&bytes, "truncated entry data");
}

#[test]
fn content_not_matching_the_manifest_is_refused() {
    let mut bytes = craft(&base(), true);
    // The data block of checkpoint/inventory.img (not the "inventory" in its header).
    let pos = (0..bytes.len()).step_by(512).find(|p| bytes[*p..].starts_with(b"inv\0")).unwrap();
    bytes[pos] = b'X';
    assert_archive_err(&bytes, "tampered byte");
    // Manifest lists a file that is absent.
    let mut e = base();
    e.pop();
    let mut out = Vec::new();
    for (name, kind, data, link) in &e {
        raw_entry(&mut out, name, *kind, data, *link, None);
    }
    let mut files = BTreeMap::new();
    files.insert("spec.dump".to_string(), digest_bytes(b"{}"));
    files.insert("config.dump".to_string(), digest_bytes(CONFIG));
    files.insert("checkpoint/inventory.img".to_string(), digest_bytes(b"inv"));
    let m = ContainerManifest { format: CONTAINER_MANIFEST_FORMAT.into(), version: 1, files };
    raw_entry(
        &mut out,
        CONTAINER_MANIFEST_FILE.as_bytes(),
        EntryType::Regular,
        &serde_json::to_vec(&m).unwrap(),
        None,
        None,
    );
    end(&mut out);
    assert_archive_err(&out, "missing listed file");
}

#[test]
fn corrupt_compressed_streams_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for c in [Compression::Gzip, Compression::Zstd] {
        let (path, _) = container_archive(tmp.path(), tmp.path(), &format!("app{}", c.extension().len()), c);
        let good = std::fs::read(&path).unwrap();
        try_extract(&good, &Limits::default()).unwrap();
        assert_archive_err(&good[..good.len() / 2], "truncated stream");
        assert_archive_err(&good[..good.len() - 4], "stream without trailer");
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        bad[mid + 1] ^= 0x55;
        assert!(try_extract(&bad, &Limits::default()).is_err(), "corrupted {c:?}");
        let mut junk = good.clone();
        junk.extend_from_slice(b"trailing junk");
        assert_archive_err(&junk, "trailing junk");
    }
}

#[test]
fn existing_destination_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, craft(&base(), true)).unwrap();
    let dest = tmp.path().join("dest");
    std::os::unix::fs::symlink("/tmp", &dest).unwrap();
    assert!(matches!(extract_container_archive(&archive, &dest, &Limits::default()), Err(Error::InvalidArgument(_))));
    assert!(std::fs::symlink_metadata(&dest).unwrap().file_type().is_symlink());
}

fn pod_archive_err(entries: &[Spec]) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pod.tar");
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        raw_entry(&mut out, name, *kind, data, *link, None);
    }
    end(&mut out);
    std::fs::write(&file, out).unwrap();
    let dest = tmp.path().join("dest");
    let res = unpack_pod_archive(&file, &dest, &Limits::default(), &trust());
    assert!(matches!(res, Err(Error::Archive(_) | Error::Untrusted(_))), "{res:?}");
    assert_eq!(listing(tmp.path()), vec!["pod.tar".to_string()]);
}

#[test]
fn hostile_pod_archives_are_refused() {
    pod_archive_err(&[(b"../x", EntryType::Regular, b"x", None)]);
    pod_archive_err(&[(b"sub/", EntryType::Directory, b"", None)]);
    pod_archive_err(&[(b"sub/x", EntryType::Regular, b"x", None)]);
    pod_archive_err(&[(b"app.tar", EntryType::Symlink, b"", Some(b"/etc/shadow"))]);
    pod_archive_err(&[(b"pod.options", EntryType::Regular, b"{}", None)]);
    pod_archive_err(&[(b"podcr.manifest.json", EntryType::Regular, b"not json", None)]);
    // A well-formed, signed pod archive whose manifest does not vouch for an extra file, and one
    // whose manifest comes last (after data a reader would have to take on trust).
    let tmp = tempfile::tempdir().unwrap();
    let dir = pod_dir(tmp.path(), &["app"], Compression::None);
    let head = [POD_MANIFEST_FILE.to_string(), SIGNATURE_FILE.to_string()];
    let read = |n: &str| (n.as_bytes().to_vec(), std::fs::read(dir.join(n)).unwrap());
    let rest: Vec<String> = listing(&dir).into_iter().filter(|n| !head.contains(n)).collect();
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = head.iter().chain(&rest).map(|n| read(n)).collect();
    entries.push((b"extra".to_vec(), b"x".to_vec()));
    let specs: Vec<Spec> =
        entries.iter().map(|(n, d)| (n.as_slice(), EntryType::Regular, d.as_slice(), None)).collect();
    pod_archive_err(&specs);
    let last: Vec<(Vec<u8>, Vec<u8>)> = rest.iter().chain(&head).map(|n| read(n)).collect();
    let specs: Vec<Spec> = last.iter().map(|(n, d)| (n.as_slice(), EntryType::Regular, d.as_slice(), None)).collect();
    pod_archive_err(&specs);
}
