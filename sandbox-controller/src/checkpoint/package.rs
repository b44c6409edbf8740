//! After the thaw: turn the staged CRIU images and rootfs tars into the checkpoint layout.
//!
//! Runs with the pod already running again, so its cost (metadata, tar, compression, hashing,
//! fsync) never adds to the freeze window. Container archives are written in parallel on the
//! blocking pool; the pod manifest is written last, so its presence means the checkpoint is whole.

use std::{collections::BTreeMap, path::Path};

use chrono::Utc;
use futures::future::join_all;

use super::{
    criu_stats,
    options::CheckpointOptions,
    orchestrate::{ContainerCheckpointStats, Dumped, Target, STAGING_DIR},
};
use crate::{
    archive::{
        self, container_archive_name, Cancel, ContainerArchiveMeta, FileDigest, ManifestContainer, PodIdentity,
        PodManifestInfo, PodOptions, Unpacked,
    },
    backend::{BackendIdentity, PodSpec},
    error::{Error, Result},
};

pub const ENGINE: &str = "podcr";

/// What the pod-level files record besides the containers.
pub(super) struct PodRecord<'a> {
    pub spec: &'a PodSpec,
    /// The CRI `PodSandboxConfig` as JSON (`pod.dump`).
    pub pod_config: Option<serde_json::Value>,
    /// The backend that runs the containers and wrote the images.
    pub backend: BackendIdentity,
    /// Signs the pod manifest; `None` only where `[signing] allow_unsigned` allows it.
    pub signer: Option<std::sync::Arc<archive::Signer>>,
}

pub(super) async fn package_pod(
    output: &Path,
    pod: PodRecord<'_>,
    targets: &[Target],
    dumped: &[Dumped],
    options: &CheckpointOptions,
    cancel: &Cancel,
) -> Result<Vec<ContainerCheckpointStats>> {
    let PodRecord { spec, pod_config, backend, signer } = pod;
    let checkpointed = Utc::now();
    let writes = targets.iter().zip(dumped).map(|(t, d)| {
        let meta = container_meta(spec, &backend, t, d, checkpointed)?;
        let archive_name = container_archive_name(&t.name, options.compression)?;
        let staging = t.staging.clone();
        let dest = output.join(&archive_name);
        let compression = options.compression;
        let cancel = cancel.clone();
        let stats = ContainerCheckpointStats {
            id: t.info.id.clone(),
            name: t.name.clone(),
            criu: criu_stats::read_dump_stats(&staging.join(archive::STATS_DUMP)).unwrap_or_default(),
            dump_wall: d.dump_wall,
            rootfs_diff_bytes: d.rootfs.bytes,
            archive_bytes: 0,
        };
        let manifest_entry = ManifestContainer {
            id: t.info.id.clone(),
            name: t.name.clone(),
            archive: archive_name.clone(),
            image: t.info.image.clone(),
            compression,
            unpacked: None,
        };
        Ok::<_, Error>(async move {
            let written = tokio::task::spawn_blocking(move || {
                archive::write_container_archive_until(&staging, &meta, &dest, compression, &cancel)
            })
            .await
            .map_err(|e| Error::Io { context: "archive writer task".into(), source: std::io::Error::other(e) })??;
            let manifest_entry = ManifestContainer {
                unpacked: Some(Unpacked { bytes: written.content_bytes, entries: written.entries }),
                ..manifest_entry
            };
            Ok::<_, Error>((
                ContainerCheckpointStats { archive_bytes: written.bytes, ..stats },
                manifest_entry,
                written.digest(),
                archive_name,
            ))
        })
    });
    // Every writer is joined, failed or not: one archive failing must not leave another thread
    // writing while the caller removes the output.
    let written = join_all(writes.collect::<Result<Vec<_>>>()?).await.into_iter().collect::<Result<Vec<_>>>()?;
    if cancel.is_cancelled() {
        return Err(Error::DeadlineExceeded("writing the checkpoint".into()));
    }

    let staging_root = output.join(STAGING_DIR);
    // Every dumped image is under it: tokio::fs removes it on the blocking pool, off the workers.
    tokio::fs::remove_dir_all(&staging_root).await.map_err(Error::io(format!("remove {}", staging_root.display())))?;

    let mut known: BTreeMap<String, FileDigest> = BTreeMap::new();
    let mut containers = Vec::new();
    let mut stats = Vec::new();
    let mut names = BTreeMap::new();
    for (s, entry, digest, archive_name) in written {
        names.insert(entry.name.clone(), archive_name.clone());
        known.insert(archive_name, digest);
        containers.push(entry);
        stats.push(s);
    }
    let identity = identity(spec, &backend);
    let mut pod_options = PodOptions::podcr(names, &identity);
    crate::restore::record_dump_flags(&mut pod_options.annotations, options);
    let output_owned = output.to_path_buf();
    let info = PodManifestInfo {
        sandbox_id: spec.id.clone(),
        engine: format!("{ENGINE} {}", env!("CARGO_PKG_VERSION")),
        arch: std::env::consts::ARCH.to_string(),
        runtime: backend.runtime.clone(),
        criu_version: Some(identity.criu_version.clone()).filter(|v| !v.is_empty()),
        created: checkpointed,
        containers,
    };
    let pod_config = pod_config.unwrap_or(serde_json::Value::Null);
    tokio::task::spawn_blocking(move || {
        archive::write_pod_files(&output_owned, &pod_options, &pod_config)?;
        archive::finish_pod_manifest(&output_owned, &info, &known, signer.as_deref())
    })
    .await
    .map_err(|e| Error::Io { context: "pod manifest task".into(), source: std::io::Error::other(e) })??;
    Ok(stats)
}

fn container_meta(
    spec: &PodSpec,
    backend: &BackendIdentity,
    t: &Target,
    d: &Dumped,
    checkpointed: chrono::DateTime<Utc>,
) -> Result<ContainerArchiveMeta> {
    let spec_path = t.info.bundle.join("config.json");
    let oci_spec: serde_json::Value = {
        let data = std::fs::read(&spec_path).map_err(Error::io(format!("read {}", spec_path.display())))?;
        serde_json::from_slice(&data).map_err(|source| Error::Json { path: spec_path.clone(), source })?
    };
    let image_ref = t.selection.status.as_ref().and_then(|s| s["image_ref"].as_str()).map(str::to_string);
    Ok(ContainerArchiveMeta {
        id: t.info.id.clone(),
        name: t.name.clone(),
        image_name: t.info.image.clone(),
        image_ref: image_ref.clone(),
        image_id: image_ref,
        created: t.info.created_at,
        checkpointed,
        spec: oci_spec,
        status: t.selection.status.clone(),
        cri_config: t.selection.config.clone(),
        sandbox_name: Some(spec.name.clone()).filter(|s| !s.is_empty()),
        sandbox_namespace: Some(spec.namespace.clone()).filter(|s| !s.is_empty()),
        runtime: backend.runtime.clone(),
        deleted_files: d.rootfs.deleted.clone(),
        bind_mounts: Vec::new(),
    })
}

fn identity(spec: &PodSpec, backend: &BackendIdentity) -> PodIdentity {
    PodIdentity {
        pod_name: spec.name.clone(),
        pod_id: spec.id.clone(),
        pod_namespace: spec.namespace.clone(),
        pod_uid: spec.uid.clone(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        host_arch: std::env::consts::ARCH.to_string(),
        criu_version: backend.dumper_version.clone(),
        cgroup_version: backend.cgroup_version.clone(),
        runtime: backend.runtime.clone(),
        runtime_version: backend.runtime_version.clone(),
    }
}
