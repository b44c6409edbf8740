//! Builders for test checkpoints: a staging dir like the orchestrator makes, and raw tar bytes
//! with whatever hostile header a test needs (the tar crate's safe setters refuse most of them).

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use tar::{EntryType, Header};

use crate::*;

pub fn meta(name: &str) -> ContainerArchiveMeta {
    let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
    ContainerArchiveMeta {
        id: format!("{name}-id"),
        name: name.into(),
        image_name: Some("docker.io/library/busybox:latest".into()),
        image_ref: Some("sha256:abc".into()),
        image_id: None,
        created: t,
        checkpointed: t,
        spec: serde_json::json!({"ociVersion": "1.2.0", "annotations": {}}),
        status: Some(serde_json::json!({"id": format!("{name}-id"), "state": "CONTAINER_RUNNING"})),
        cri_config: Some(serde_json::json!({"metadata": {"name": name}, "log_path": format!("{name}.log")})),
        sandbox_name: Some("pod".into()),
        sandbox_namespace: Some("default".into()),
        deleted_files: vec!["/etc/motd".into()],
        runtime: "runc".into(),
        bind_mounts: vec![BindMount {
            source: "/var/lib/kubelet/x".into(),
            destination: "/data".into(),
            file_type: BindMountType::Directory,
            permissions: 0o755,
        }],
    }
}

/// A staging dir with fake CRIU images, logs and a one-file rootfs diff.
pub fn staging(root: &Path) -> PathBuf {
    let s = root.join("staging");
    std::fs::create_dir_all(s.join("checkpoint")).unwrap();
    std::fs::write(s.join("checkpoint/inventory.img"), b"inventory").unwrap();
    std::fs::write(s.join("checkpoint/pages-1.img"), vec![7u8; 70_000]).unwrap();
    std::fs::write(s.join("dump.log"), b"criu log\n").unwrap();
    std::fs::write(s.join("stats-dump"), b"stats").unwrap();
    let mut diff = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    diff.append_data(&mut h, "etc/hello", &b"hi"[..]).unwrap();
    std::fs::write(s.join("rootfs-diff.tar"), diff.into_inner().unwrap()).unwrap();
    s
}

/// Writes a container archive for `name` into `dir` and returns its path.
pub fn container_archive(tmp: &Path, dir: &Path, name: &str, c: Compression) -> (PathBuf, ArchiveStats) {
    let staging = staging(&tmp.join(format!("s-{name}")));
    let dest = dir.join(container_archive_name(name, c).unwrap());
    let stats = write_container_archive(&staging, &meta(name), &dest, c).unwrap();
    (dest, stats)
}

/// A complete pod checkpoint directory with the given containers.
pub fn pod_dir(tmp: &Path, names: &[&str], c: Compression) -> PathBuf {
    let out = tmp.join("pod");
    std::fs::create_dir_all(&out).unwrap();
    let mut known = std::collections::BTreeMap::new();
    let mut containers = Vec::new();
    let mut map = std::collections::BTreeMap::new();
    for name in names {
        let (path, stats) = container_archive(tmp, &out, name, c);
        let archive = path.file_name().unwrap().to_str().unwrap().to_string();
        known.insert(archive.clone(), stats.digest());
        map.insert(name.to_string(), archive.clone());
        containers.push(ManifestContainer {
            id: format!("{name}-id"),
            name: name.to_string(),
            archive,
            image: None,
            compression: c,
            unpacked: None,
        });
    }
    let opts = PodOptions::podcr(map, &PodIdentity { pod_name: "pod".into(), ..Default::default() });
    write_pod_files(&out, &opts, &serde_json::json!({"metadata": {"name": "pod"}})).unwrap();
    let info = PodManifestInfo {
        sandbox_id: "sb".into(),
        engine: "podcr test".into(),
        arch: std::env::consts::ARCH.into(),
        runtime: "runc".into(),
        criu_version: None,
        created: Utc::now(),
        containers,
    };
    finish_pod_manifest(&out, &info, &known, Some(signer())).unwrap();
    out
}

/// The key every test checkpoint is signed with.
pub fn signer() -> &'static crate::Signer {
    static SIGNER: std::sync::OnceLock<crate::Signer> = std::sync::OnceLock::new();
    SIGNER.get_or_init(crate::signing::generate)
}

/// Trusts [`signer`] only.
pub fn trust() -> crate::TrustPolicy {
    crate::TrustPolicy::new([signer().verifying_key()], false)
}

/// One raw tar entry: header with the name bytes written directly (no validation), optional
/// link name, claimed size (may differ from data), then data padded to 512.
pub fn raw_entry(
    out: &mut Vec<u8>,
    name: &[u8],
    kind: EntryType,
    data: &[u8],
    link: Option<&[u8]>,
    claimed: Option<u64>,
) {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(nix::unistd::geteuid().as_raw() as u64);
    h.set_gid(nix::unistd::getegid().as_raw() as u64);
    h.set_mtime(0);
    h.set_size(claimed.unwrap_or(data.len() as u64));
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

pub fn end(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 1024));
}

/// Names in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => return vec![],
    };
    v.sort();
    v
}

/// Whether a test's outside prerequisite (`what`) is there. A missing one fails the test, naming
/// the set-up script, so a host without it cannot pass the suite untested; with
/// `PODCR_ALLOW_SKIP=1` (a developer box without CRIU) it prints one `SKIP:` line instead and
/// the caller returns.
pub fn prerequisite(test: &str, present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("PODCR_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("SKIP: {test}: {what} (PODCR_ALLOW_SKIP=1)");
        return false;
    }
    panic!("{test}: {what}; run scripts/setup-host.sh, or set PODCR_ALLOW_SKIP=1 to skip it");
}
