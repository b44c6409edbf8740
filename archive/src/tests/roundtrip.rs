//! Write → read round trips, file modes, entry order, and checkpointctl reading what we write.

use std::{os::unix::fs::PermissionsExt, process::Command};

use super::support::*;
use crate::{error::Error, *};

fn entry_names(archive: &std::path::Path) -> Vec<(String, tar::EntryType, u32)> {
    let file = std::fs::File::open(archive).unwrap();
    let (_, dec) = crate::codec::Decoder::detect(file).unwrap();
    let mut a = tar::Archive::new(dec);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let raw = e.path_bytes().into_owned();
            (String::from_utf8(raw).unwrap(), e.header().entry_type(), e.header().mode().unwrap())
        })
        .collect()
}

#[test]
fn container_archive_round_trip_all_compressions() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let (path, stats) = container_archive(tmp.path(), tmp.path(), "app", c);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
        assert!(!tmp.path().join("app.tar.tmp").exists());

        let names = entry_names(&path);
        let order: Vec<&str> = names.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            order,
            [
                "checkpoint/",
                "checkpoint/inventory.img",
                "checkpoint/pages-1.img",
                "config.dump",
                "spec.dump",
                "status.dump",
                "container-config.dump",
                "stats-dump",
                "dump.log",
                "rootfs-diff.tar",
                "deleted.files",
                "bind.mounts",
                "podcr.container.manifest.json"
            ]
        );
        assert_eq!(names[0].1, tar::EntryType::Directory);
        assert_eq!(names[0].2, 0o700);
        assert!(names[1..].iter().all(|(_, t, m)| *t == tar::EntryType::Regular && *m == 0o600));

        let dest = tmp.path().join("x");
        let got = extract_container_archive_verified(&path, &stats.digest(), &dest, &Limits::default()).unwrap();
        assert_eq!(got.compression, c);
        assert_eq!(got.config, meta("app").config());
        assert_eq!(got.spec["annotations"]["io.kubernetes.cri.container-name"], "app");
        assert_eq!(got.spec["annotations"]["io.kubernetes.cri.sandbox-namespace"], "default");
        assert_eq!(got.status.as_ref().unwrap()["state"], "CONTAINER_RUNNING");
        assert_eq!(got.cri_config.as_ref().unwrap()["log_path"], "app.log");
        assert_eq!(got.deleted_files, vec!["/etc/motd".to_string()]);
        assert_eq!(got.bind_mounts, meta("app").bind_mounts);
        assert_eq!(std::fs::read(got.image_dir().join("pages-1.img")).unwrap(), vec![7u8; 70_000]);
        assert_eq!(got.rootfs_diff, Some(dest.join("rootfs-diff.tar")));
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dest.join("config.dump")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(got.image_dir()).unwrap().permissions().mode() & 0o777, 0o700);

        // A digest that does not match the pod manifest is refused and leaves nothing behind.
        let mut wrong = stats.digest();
        wrong.sha256 = "00".repeat(32);
        let dest2 = tmp.path().join("y");
        assert!(matches!(
            extract_container_archive_verified(&path, &wrong, &dest2, &Limits::default()),
            Err(Error::Archive(_))
        ));
        assert!(!dest2.exists());
    }
}

#[test]
fn writer_refuses_bad_input_and_leaves_no_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let s = staging(tmp.path());
    std::fs::write(s.join("surprise"), b"x").unwrap();
    let dest = tmp.path().join("app.tar");
    assert!(matches!(
        write_container_archive(&s, &meta("app"), &dest, Compression::None),
        Err(Error::InvalidArgument(_))
    ));
    std::fs::remove_file(s.join("surprise")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.join("checkpoint/evil.img")).unwrap();
    assert!(write_container_archive(&s, &meta("app"), &dest, Compression::None).is_err());
    std::fs::remove_file(s.join("checkpoint/evil.img")).unwrap();
    let mut m = meta("../app");
    assert!(write_container_archive(&s, &m, &dest, Compression::None).is_err());
    m = meta("app");
    m.deleted_files = vec!["relative".into()];
    assert!(write_container_archive(&s, &m, &dest, Compression::None).is_err());
    assert_eq!(listing(tmp.path()), vec!["staging".to_string()]);
    // A missing checkpoint/ is an orchestrator bug, not an empty checkpoint.
    std::fs::remove_dir_all(s.join("checkpoint")).unwrap();
    assert!(write_container_archive(&s, &meta("app"), &dest, Compression::None).is_err());
}

#[test]
fn pod_dir_verify_pack_unpack() {
    for c in [Compression::None, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = pod_dir(tmp.path(), &["app", "side-car"], c);
        let before = listing(&dir);
        let pod = verify_pod_dir(&dir, &Limits::default(), &trust()).unwrap();
        assert_eq!(pod.manifest.containers.len(), 2);
        assert_eq!(pod.options.containers["app"], format!("app.tar{}", c.extension()));
        assert_eq!(pod.pod_config["metadata"]["name"], "pod");
        assert_eq!(pod.options.annotations[annotations::ENGINE_NAME], "podcr");
        assert_eq!(listing(&dir), before, "verification must not modify the checkpoint");
        open_pod_dir(&dir, &Limits::default(), &trust()).unwrap();

        let packed = tmp.path().join("pod.tar.zst");
        let stats = pack_pod_dir(&dir, &packed, Compression::Zstd).unwrap();
        assert_eq!(stats.entries as usize, before.len());
        assert!(matches!(pack_pod_dir(&dir, &dir.join("x.tar"), Compression::None), Err(Error::InvalidArgument(_))));
        let dest = tmp.path().join("unpacked");
        let pod2 = unpack_pod_archive(&packed, &dest, &Limits::default(), &trust()).unwrap();
        assert_eq!(pod2.manifest, pod.manifest);
        assert_eq!(listing(&dest), before);
        for (name, path, digest) in pod2.container_archives() {
            let x = tmp.path().join(format!("x-{name}"));
            extract_container_archive_verified(&path, &digest, &x, &Limits::default()).unwrap();
        }
    }
}

#[test]
fn pod_dir_tampering_is_detected() {
    let limits = Limits::default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = pod_dir(tmp.path(), &["app"], Compression::None);
    // Flip one byte of the container archive: same size, different hash.
    let archive = dir.join("app.tar");
    let mut data = std::fs::read(&archive).unwrap();
    data[600] ^= 1;
    std::fs::write(&archive, &data).unwrap();
    assert!(matches!(verify_pod_dir(&dir, &limits, &trust()), Err(Error::Archive(_))));
    // open_pod_dir defers the archive hash to the extraction, which catches it.
    let pod = open_pod_dir(&dir, &limits, &trust()).unwrap();
    let (_, path, digest) = pod.container_archives().remove(0);
    assert!(extract_container_archive_verified(&path, &digest, &tmp.path().join("x"), &limits).is_err());
    data[600] ^= 1;
    std::fs::write(&archive, &data).unwrap();
    verify_pod_dir(&dir, &limits, &trust()).unwrap();

    std::fs::write(dir.join("extra"), b"x").unwrap();
    assert!(matches!(verify_pod_dir(&dir, &limits, &trust()), Err(Error::Archive(_))));
    std::fs::remove_file(dir.join("extra")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("evil")).unwrap();
    assert!(verify_pod_dir(&dir, &limits, &trust()).is_err());
    std::fs::remove_file(dir.join("evil")).unwrap();
    let opts = std::fs::read(dir.join(POD_OPTIONS_FILE)).unwrap();
    std::fs::remove_file(dir.join(POD_OPTIONS_FILE)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join(POD_OPTIONS_FILE)).unwrap();
    assert!(verify_pod_dir(&dir, &limits, &trust()).is_err());
    std::fs::remove_file(dir.join(POD_OPTIONS_FILE)).unwrap();
    std::fs::write(dir.join(POD_OPTIONS_FILE), opts).unwrap();
    verify_pod_dir(&dir, &limits, &trust()).unwrap();
    std::fs::remove_file(dir.join(POD_MANIFEST_FILE)).unwrap();
    let err = verify_pod_dir(&dir, &limits, &trust()).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
}

#[test]
fn finish_manifest_refuses_a_second_manifest_and_subdirs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pod_dir(tmp.path(), &["app"], Compression::None);
    let pod = verify_pod_dir(&dir, &Limits::default(), &trust()).unwrap();
    let info = PodManifestInfo {
        sandbox_id: "sb".into(),
        engine: "e".into(),
        arch: "a".into(),
        runtime: "runc".into(),
        criu_version: None,
        created: chrono::Utc::now(),
        containers: pod.manifest.containers.clone(),
    };
    assert!(matches!(finish_pod_manifest(&dir, &info, &Default::default(), None), Err(Error::AlreadyExists(_))));
    std::fs::remove_file(dir.join(POD_MANIFEST_FILE)).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    assert!(finish_pod_manifest(&dir, &info, &Default::default(), None).is_err());
}

fn checkpointctl() -> Option<&'static str> {
    let p = "/usr/bin/checkpointctl";
    std::path::Path::new(p).exists().then_some(p)
}

#[test]
fn checkpointctl_reads_our_container_archives() {
    let found = checkpointctl();
    if !prerequisite("checkpointctl_reads_our_container_archives", found.is_some(), "no /usr/bin/checkpointctl") {
        return;
    }
    let Some(bin) = found else { return };
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let (path, _) = container_archive(tmp.path(), tmp.path(), "app", c);
        let out = Command::new(bin).arg("show").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "show {c:?}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("containerd"), "{stdout}");
        assert!(stdout.contains("app-id"), "{stdout}");
        let out = Command::new(bin).args(["inspect", "--format", "json"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "inspect {c:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let v = if v.is_array() { v[0].clone() } else { v };
        assert_eq!(v["container_name"], "app", "{v}");
        // This checkpointctl build prints pod name and namespace only for CRI-O archives; the
        // annotations are still checked in container_archive_round_trip_all_compressions.
        assert_eq!(v["checkpoint_size"]["memory_pages_size"], 70_000, "{v}");
        assert_eq!(v["engine"], "containerd", "{v}");
    }
}

#[test]
fn signatures_are_checked_before_anything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = pod_dir(tmp.path(), &["app"], Compression::None);
    let limits = Limits::default();
    assert_eq!(verify_pod_dir(&dir, &limits, &trust()).unwrap().signer.as_deref(), Some(signer().key_id()));
    let stranger = TrustPolicy::new([signing::generate().verifying_key()], false);
    assert!(matches!(verify_pod_dir(&dir, &limits, &stranger), Err(Error::Untrusted(_))));
    // A manifest edited into other valid JSON, which its digests alone would not notice.
    let m = dir.join(POD_MANIFEST_FILE);
    let orig = std::fs::read(&m).unwrap();
    std::fs::write(&m, String::from_utf8(orig.clone()).unwrap().replace("\"sb\"", "\"sX\"")).unwrap();
    assert!(matches!(verify_pod_dir(&dir, &limits, &trust()), Err(Error::Untrusted(_))));
    std::fs::write(&m, &orig).unwrap();
    std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    assert!(matches!(verify_pod_dir(&dir, &limits, &trust()), Err(Error::Untrusted(_))));
    assert_eq!(verify_pod_dir(&dir, &limits, &TrustPolicy::unsigned_only()).unwrap().signer, None);
    // The transport form is refused at its first entries, and nothing is left behind.
    let packed = tmp.path().join("p.tar");
    pack_pod_dir(&dir, &packed, Compression::None).unwrap();
    let dest = tmp.path().join("u");
    assert!(matches!(unpack_pod_archive(&packed, &dest, &limits, &trust()), Err(Error::Untrusted(_))));
    assert!(!dest.exists());
}
