//! Restoring a pod the kubelet creates: the pod's `podcr.io/restore-from: <name>` annotation
//! names a checkpoint directory under one of the node admin's checkpoint roots
//! (`[restore] checkpoint_roots`).
//!
//! The name comes from whoever may create pods, so it is held to one path component: no `/`, no
//! `..`, no absolute path, and the directory it names must not be a symlink (one could point out
//! of the root). The checkpoint is then opened through the archive module's verifying reader, like
//! every other restore, and its recorded Kubernetes namespace must be the pod's unless the admin
//! allows restores across namespaces: a checkpoint holds another team's memory and files.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    archive::{self, annotations::POD_NAMESPACE, Limits, PodCheckpoint},
    error::{Error, Result},
    node_config::RestoreConfig,
};

/// The pod annotation that asks for an in-place restore.
pub const RESTORE_FROM: &str = "podcr.io/restore-from";

/// Longest name a checkpoint directory can have (NAME_MAX).
const NAME_MAX: usize = 255;

/// Checks that `name` is a single, plain path component.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("{RESTORE_FROM}: {name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.starts_with('/') {
        return bad("is an absolute path; name a checkpoint in the node's checkpoint roots");
    }
    if name == "." || name == ".." || name.split('/').any(|c| c == "..") {
        return bad("leaves the checkpoint root");
    }
    if name.contains('/') {
        return bad("is more than one path component");
    }
    if name.contains('\0') || name.len() > NAME_MAX {
        return bad("is not a valid file name");
    }
    Ok(())
}

/// Finds the checkpoint directory `name` under the configured roots (first root that has it).
/// Refuses a symlink, and anything whose real location is not directly inside its root.
pub fn resolve(name: &str, config: &RestoreConfig) -> Result<PathBuf> {
    check_name(name)?;
    for root in &config.checkpoint_roots {
        let candidate = root.join(name);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", candidate.display()))(e)),
        };
        if meta.file_type().is_symlink() {
            return Err(Error::InvalidArgument(format!(
                "{RESTORE_FROM}: {} is a symlink; checkpoints are restored only from directories inside the checkpoint root",
                candidate.display()
            )));
        }
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{RESTORE_FROM}: {} is not a checkpoint directory",
                candidate.display()
            )));
        }
        // The root itself may be a symlink the admin made; the checkpoint must be its child.
        let real_root = std::fs::canonicalize(root).map_err(Error::io(format!("resolve {}", root.display())))?;
        let real = std::fs::canonicalize(&candidate).map_err(Error::io(format!("resolve {}", candidate.display())))?;
        let same = std::fs::symlink_metadata(&real).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if real.parent() != Some(real_root.as_path()) || !same {
            return Err(Error::InvalidArgument(format!(
                "{RESTORE_FROM}: {} is not inside {}",
                candidate.display(),
                root.display()
            )));
        }
        return Ok(real);
    }
    let roots: Vec<String> = config.checkpoint_roots.iter().map(|r| r.display().to_string()).collect();
    Err(Error::NotFound(format!("{RESTORE_FROM}: no checkpoint {name:?} in {}", roots.join(", "))))
}

/// Resolves `name`, opens the checkpoint through the archive's verifying reader (its signature
/// checked against `trust` before anything else is read), and checks it may be restored here
/// into a pod of Kubernetes namespace `pod_namespace`.
pub fn open(
    name: &str,
    pod_namespace: &str,
    config: &RestoreConfig,
    trust: &archive::TrustPolicy,
) -> Result<PodCheckpoint> {
    let path = resolve(name, config)?;
    let ckpt = archive::open_pod_dir(&path, &Limits::default(), trust)?;
    super::check_compatible(&ckpt)?;
    check_namespace(&ckpt, pod_namespace, config)?;
    Ok(ckpt)
}

/// The checkpoint's recorded Kubernetes namespace must be the pod's, unless the admin allows.
pub fn check_namespace(ckpt: &PodCheckpoint, pod_namespace: &str, config: &RestoreConfig) -> Result<()> {
    if config.allow_cross_namespace {
        return Ok(());
    }
    match ckpt.options.annotations.get(POD_NAMESPACE) {
        Some(ns) if ns == pod_namespace => Ok(()),
        Some(ns) => Err(Error::InvalidArgument(format!(
            "{RESTORE_FROM}: the checkpoint is of a pod in namespace {ns:?}; this pod is in {pod_namespace:?} \
             (the node admin can allow this with [restore] allow_cross_namespace)"
        ))),
        None => Err(Error::InvalidArgument(format!(
            "{RESTORE_FROM}: the checkpoint records no Kubernetes namespace, so it cannot be matched to namespace {pod_namespace:?}"
        ))),
    }
}

/// Names of the containers a checkpoint holds.
pub fn container_names(ckpt: &PodCheckpoint) -> Vec<String> {
    ckpt.manifest.containers.iter().map(|c| c.name.clone()).collect()
}

/// `root` as a checkpoint root of its own, for tests and callers with one directory.
pub fn single_root(root: &Path) -> RestoreConfig {
    RestoreConfig { checkpoint_roots: vec![root.to_path_buf()], ..Default::default() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::archive::PodOptions;

    #[test]
    fn names_are_one_plain_component() {
        check_name("checkpoint-web_default-2026-12-07T03:00:00Z").unwrap();
        for bad in ["", ".", "..", "../x", "a/../b", "/etc", "/var/lib/kubelet/pod-checkpoints/x", "a/b", "a\0b"] {
            assert!(matches!(check_name(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name("..").unwrap_err().to_string().contains("leaves the checkpoint root"));
        assert!(check_name("/etc").unwrap_err().to_string().contains("absolute path"));
    }

    #[test]
    fn resolves_in_root_order_and_refuses_symlinks_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, outside) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("outside"));
        for d in [&a, &b, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(b.join("ck")).unwrap();
        std::fs::create_dir(outside.join("secret")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), a.join("link")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", b.join("rel")).unwrap();
        std::fs::write(a.join("file"), b"x").unwrap();
        let config = RestoreConfig { checkpoint_roots: vec![a.clone(), b.clone()], ..Default::default() };
        assert_eq!(resolve("ck", &config).unwrap(), std::fs::canonicalize(b.join("ck")).unwrap());
        std::fs::create_dir(a.join("ck")).unwrap();
        assert_eq!(
            resolve("ck", &config).unwrap(),
            std::fs::canonicalize(a.join("ck")).unwrap(),
            "the first root wins"
        );
        for (name, want) in [("link", "symlink"), ("rel", "symlink"), ("file", "not a checkpoint directory")] {
            let e = resolve(name, &config).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        assert!(matches!(resolve("none", &config), Err(Error::NotFound(_))));
        assert!(matches!(resolve("../outside/secret", &config), Err(Error::InvalidArgument(_))));
        // A root that is itself a symlink (the admin's choice) still works.
        let via = tmp.path().join("via");
        std::os::unix::fs::symlink(&b, &via).unwrap();
        let config = single_root(&via);
        assert_eq!(resolve("ck", &config).unwrap(), std::fs::canonicalize(b.join("ck")).unwrap());
    }

    fn ckpt_in(ns: Option<&str>) -> PodCheckpoint {
        let mut annotations = BTreeMap::new();
        if let Some(ns) = ns {
            annotations.insert(POD_NAMESPACE.to_string(), ns.to_string());
        }
        PodCheckpoint {
            dir: PathBuf::from("/x"),
            manifest: serde_json::from_value(serde_json::json!({
                "format": "x", "version": 1, "created": "2026-01-01T00:00:00Z", "engine": "podcr", "arch": "x86_64",
                "runtime": "runc", "sandbox_id": "s", "containers": [], "files": {}
            }))
            .unwrap(),
            options: PodOptions { version: 1, containers: BTreeMap::new(), annotations },
            pod_config: serde_json::Value::Null,
            signer: None,
        }
    }

    #[test]
    fn the_namespace_must_match_unless_allowed() {
        let config = RestoreConfig::default();
        check_namespace(&ckpt_in(Some("team-a")), "team-a", &config).unwrap();
        let e = check_namespace(&ckpt_in(Some("team-b")), "team-a", &config).unwrap_err().to_string();
        assert!(e.contains("\"team-b\"") && e.contains("allow_cross_namespace"), "{e}");
        assert!(check_namespace(&ckpt_in(None), "team-a", &config).is_err());
        let allow = RestoreConfig { allow_cross_namespace: true, ..Default::default() };
        check_namespace(&ckpt_in(Some("team-b")), "team-a", &allow).unwrap();
    }
}
