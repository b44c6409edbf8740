//! Property tests (issue 8 item 2): arbitrary and mutated bytes fed to every reader. Each run
//! must end in `Ok` or a clean `Error` (a panic fails the test), and must never create anything
//! outside the destination. Bounded by `PROPTEST_CASES` (default 256 per property).

use std::{path::Path, sync::OnceLock};

use proptest::prelude::*;

use super::{hostile::try_extract, support::*};
use crate::*;

fn config() -> ProptestConfig {
    // No regression files in the source tree; failures print the minimal input instead.
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// Valid archives to mutate, built once: plain, gzip and zstd container archives, a pod
/// transport archive and a rootfs diff.
struct Seeds {
    containers: Vec<Vec<u8>>,
    pod: Vec<u8>,
    diff: Vec<u8>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let containers = [Compression::None, Compression::Gzip, Compression::Zstd]
            .iter()
            .map(|c| {
                let (p, _) = container_archive(tmp.path(), tmp.path(), &format!("c{}", c.extension().len()), *c);
                std::fs::read(p).unwrap()
            })
            .collect();
        let dir = pod_dir(&tmp.path().join("p"), &["app"], Compression::None);
        let packed = tmp.path().join("pod.tar");
        pack_pod_dir(&dir, &packed, Compression::None).unwrap();
        let diff = std::fs::read(staging(&tmp.path().join("d")).join(ROOTFS_DIFF_TAR)).unwrap();
        Seeds { containers, pod: std::fs::read(packed).unwrap(), diff }
    })
}

/// Mutations: byte flips at arbitrary offsets, then an optional truncation.
fn mutate(seed: &[u8], flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = seed.to_vec();
    for (pos, x) in flips {
        if !b.is_empty() {
            let i = pos % b.len();
            b[i] ^= x.max(&1);
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

fn unpack_pod(bytes: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("pod.tar");
    std::fs::write(&f, bytes).unwrap();
    let res = unpack_pod_archive(&f, &tmp.path().join("dest"), &Limits::default(), &trust());
    let mut want = vec!["pod.tar".to_string()];
    if res.is_ok() {
        want.insert(0, "dest".into());
    }
    assert_eq!(listing(tmp.path()), want);
}

fn apply_diff(bytes: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.tar");
    std::fs::write(&f, bytes).unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let _ = apply_rootfs_diff(&f, &rootfs, &[], &Limits::default(), Privileged::Strip);
    // Whatever the diff did, it did it inside rootfs.
    assert_eq!(listing(tmp.path()), vec!["d.tar".to_string(), "rootfs".to_string()]);
}

fn parse_all(bytes: &[u8]) {
    let p = Path::new("fuzz");
    let _ = crate::reader::parse_bytes::<PodManifest>(bytes, p);
    let _ = crate::reader::parse_bytes::<ContainerManifest>(bytes, p);
    let _ = crate::reader::parse_bytes::<ContainerConfig>(bytes, p);
    let _ = crate::reader::parse_bytes::<PodOptions>(bytes, p);
    let _ = crate::reader::parse_bytes::<Vec<BindMount>>(bytes, p);
    if let Ok(v) = crate::reader::parse_bytes::<Vec<String>>(bytes, p) {
        for s in v {
            let _ = check_deleted_path(&s);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = try_extract(&bytes, &Limits::default());
        unpack_pod(&bytes);
        apply_diff(&bytes);
        parse_all(&bytes);
    }

    #[test]
    fn mutated_container_archives_are_handled(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(&seeds().containers[which], &flips, cut);
        let res = try_extract(&bytes, &Limits::default());
        // A byte flip may hit padding; otherwise the archive must be refused, never half-accepted.
        if flips.is_empty() && cut.is_none() {
            prop_assert!(res.is_ok());
        }
    }

    #[test]
    fn mutated_pod_archives_and_diffs_are_handled(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        unpack_pod(&mutate(&seeds().pod, &flips, cut));
        apply_diff(&mutate(&seeds().diff, &flips, cut));
    }

    #[test]
    fn tar_with_arbitrary_names_and_types(
        names in proptest::collection::vec(proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), Just(b'b'), any::<u8>()], 1..20), 1..6),
        kinds in proptest::collection::vec(prop_oneof![
            Just(b'0'), Just(b'1'), Just(b'2'), Just(b'3'), Just(b'5'), Just(b'6'), Just(b'x'), Just(b'g'), Just(b'L')], 6),
        links in proptest::collection::vec(proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), any::<u8>()], 0..20), 6),
    ) {
        let mut bytes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let name: Vec<u8> = name.iter().copied().filter(|b| *b != 0).take(99).collect();
            if name.is_empty() { continue; }
            let link: Vec<u8> = links[i].iter().copied().filter(|b| *b != 0).take(99).collect();
            raw_entry(&mut bytes, &name, tar::EntryType::new(kinds[i]), b"data", Some(&link), None);
        }
        end(&mut bytes);
        let _ = try_extract(&bytes, &Limits::default());
        unpack_pod(&bytes);
        apply_diff(&bytes);
    }
}
