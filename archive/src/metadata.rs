//! The JSON documents of a checkpoint. Types that checkpointctl defines (`ContainerConfig`,
//! `CheckpointedPodOptions`, CRI-O's `bind.mounts`) keep its field names and stay lenient about
//! extra fields, as Go's decoder is; podcr's own manifests are decoded strictly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::Compression;

/// checkpointctl's `ContainerConfig` (`config.dump`). Times are RFC 3339 with up to nanosecond
/// precision, which Go's `time.Time` decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    #[serde(rename = "rootfsImage", default, skip_serializing_if = "String::is_empty")]
    pub rootfs_image: String,
    #[serde(rename = "rootfsImageRef", default, skip_serializing_if = "String::is_empty")]
    pub rootfs_image_ref: String,
    #[serde(rename = "rootfsImageName", default, skip_serializing_if = "String::is_empty")]
    pub rootfs_image_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(rename = "createdTime")]
    pub created_time: DateTime<Utc>,
    #[serde(rename = "checkpointedTime")]
    pub checkpointed_time: DateTime<Utc>,
    /// Go's zero time (`0001-01-01T00:00:00Z`) until a restore sets it.
    #[serde(rename = "restoredTime", default = "go_zero_time")]
    pub restored_time: DateTime<Utc>,
    #[serde(default)]
    pub restored: bool,
}

/// Go's zero `time.Time`, what checkpointctl's writers leave in unset time fields.
pub fn go_zero_time() -> DateTime<Utc> {
    // 0001-01-01 is inside chrono's range, so the fallback is never taken.
    chrono::NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether a bind mount's source is a file or a directory, so a restore can recreate a missing
/// source with the right type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMountType {
    File,
    Directory,
}

/// One entry of `bind.mounts`, CRI-O's layout: `{"source","destination","file_type","permissions"}`
/// where `permissions` is the source's mode bits (Go `os.FileMode`) as a number. podcr lists the
/// container's bind mounts that are not part of the image or the runtime's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub file_type: BindMountType,
    pub permissions: u32,
}

/// Annotation keys of `pod.options` (checkpointctl `lib/annotations.go`).
pub mod annotations {
    pub const ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
    pub const ENGINE_VERSION: &str = "org.criu.checkpoint.engine.version";
    pub const POD_NAME: &str = "org.criu.checkpoint.pod.name";
    pub const POD_ID: &str = "org.criu.checkpoint.pod.id";
    pub const POD_NAMESPACE: &str = "org.criu.checkpoint.pod.namespace";
    pub const POD_UID: &str = "org.criu.checkpoint.pod.uid";
    pub const HOST_ARCH: &str = "org.criu.checkpoint.host.arch";
    pub const CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
    pub const CGROUP_VERSION: &str = "org.criu.checkpoint.cgroup.version";
    pub const RUNTIME_NAME: &str = "org.criu.checkpoint.runtime.name";
    pub const RUNTIME_VERSION: &str = "org.criu.checkpoint.runtime.version";
}

/// checkpointctl's `CheckpointedPodOptions` (`pod.options`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodOptions {
    pub version: i32,
    /// CRI container name → its archive's file name in the pod directory.
    pub containers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Who and what made a pod checkpoint; becomes `pod.options` annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod_name: String,
    pub pod_id: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub engine_version: String,
    pub host_arch: String,
    pub criu_version: String,
    /// `v1` or `v2`.
    pub cgroup_version: String,
    /// The OCI runtime's name (`runc`).
    pub runtime: String,
    pub runtime_version: String,
}

impl PodOptions {
    /// `pod.options` for podcr with runc: version 1 and the `org.criu.checkpoint.*` annotations.
    /// Empty identity fields are left out rather than written as empty strings.
    pub fn podcr(containers: BTreeMap<String, String>, id: &PodIdentity) -> PodOptions {
        use annotations::*;
        let pairs = [
            (ENGINE_NAME, "podcr"),
            (ENGINE_VERSION, id.engine_version.as_str()),
            (POD_NAME, &id.pod_name),
            (POD_ID, &id.pod_id),
            (POD_NAMESPACE, &id.pod_namespace),
            (POD_UID, &id.pod_uid),
            (HOST_ARCH, &id.host_arch),
            (CRIU_VERSION, &id.criu_version),
            (CGROUP_VERSION, &id.cgroup_version),
            (RUNTIME_NAME, &id.runtime),
            (RUNTIME_VERSION, &id.runtime_version),
        ];
        let annotations =
            pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PodOptions { version: 1, containers, annotations }
    }
}

/// Size and SHA-256 (lowercase hex) of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// One container of a pod checkpoint, as listed in `podcr.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestContainer {
    pub id: String,
    pub name: String,
    /// File name of the container archive in the pod directory.
    pub archive: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub compression: Compression,
    /// What extracting the archive writes and how many entries it has, so a reader bounds both
    /// by the signed manifest before it decompresses anything. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked: Option<Unpacked>,
}

/// The extracted size of a container archive (see [`ManifestContainer::unpacked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unpacked {
    pub bytes: u64,
    pub entries: u64,
}

/// `podcr.manifest.json`: written last, so its presence means the checkpoint is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodManifest {
    pub format: String,
    pub version: u32,
    pub created: DateTime<Utc>,
    pub engine: String,
    pub arch: String,
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_version: Option<String>,
    pub sandbox_id: String,
    pub containers: Vec<ManifestContainer>,
    /// Every other file of the directory, by file name.
    pub files: BTreeMap<String, FileDigest>,
}

/// `podcr.container.manifest.json`, the last entry of a container archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerManifest {
    pub format: String,
    pub version: u32,
    /// Every regular-file entry before the manifest, by archive path.
    pub files: BTreeMap<String, FileDigest>,
}

/// What the writer needs besides the staging directory to build a container archive.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerArchiveMeta {
    pub id: String,
    /// CRI container name.
    pub name: String,
    /// Image as the user asked for it (`rootfsImageName`).
    pub image_name: Option<String>,
    /// Resolved image reference/digest (`rootfsImageRef`).
    pub image_ref: Option<String>,
    /// Image id (`rootfsImage`).
    pub image_id: Option<String>,
    pub created: DateTime<Utc>,
    pub checkpointed: DateTime<Utc>,
    /// The container's OCI runtime spec, stored as `spec.dump`.
    pub spec: serde_json::Value,
    /// CRI `ContainerStatus` as snake_case JSON, stored as `status.dump` when present.
    pub status: Option<serde_json::Value>,
    /// CRI `ContainerConfig` as snake_case JSON, stored as `container-config.dump` when present.
    pub cri_config: Option<serde_json::Value>,
    /// Pod name and namespace, added to the spec's annotations when missing so checkpointctl
    /// reports them.
    pub sandbox_name: Option<String>,
    pub sandbox_namespace: Option<String>,
    /// Paths deleted from the image layers (leading `/`), stored as `deleted.files`.
    pub deleted_files: Vec<String>,
    pub bind_mounts: Vec<BindMount>,
    /// The OCI runtime that ran the container (`runc`), for `config.dump`.
    pub runtime: String,
}

impl ContainerArchiveMeta {
    /// The `config.dump` document.
    pub fn config(&self) -> ContainerConfig {
        ContainerConfig {
            id: self.id.clone(),
            name: self.name.clone(),
            rootfs_image: self.image_id.clone().unwrap_or_default(),
            rootfs_image_ref: self.image_ref.clone().unwrap_or_default(),
            rootfs_image_name: self.image_name.clone().unwrap_or_default(),
            runtime: self.runtime.clone(),
            created_time: self.created,
            checkpointed_time: self.checkpointed,
            restored_time: go_zero_time(),
            restored: false,
        }
    }

    /// The spec with the `io.kubernetes.cri.*` annotations checkpointctl reads filled in where
    /// the spec lacks them. Existing values are kept; a spec that is not an object is kept as is.
    pub fn annotated_spec(&self) -> serde_json::Value {
        let mut spec = self.spec.clone();
        let Some(obj) = spec.as_object_mut() else { return spec };
        let anns = obj.entry("annotations").or_insert_with(|| serde_json::json!({}));
        let Some(anns) = anns.as_object_mut() else { return spec };
        let wanted = [
            ("io.kubernetes.cri.container-name", Some(&self.name)),
            ("io.kubernetes.cri.sandbox-name", self.sandbox_name.as_ref()),
            ("io.kubernetes.cri.sandbox-namespace", self.sandbox_namespace.as_ref()),
        ];
        for (key, value) in wanted {
            if let Some(v) = value {
                anns.entry(key).or_insert_with(|| serde_json::Value::String(v.clone()));
            }
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dump_matches_checkpointctl_names() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z").unwrap().with_timezone(&Utc);
        let meta = ContainerArchiveMeta {
            id: "abc".into(),
            name: "app".into(),
            image_name: Some("docker.io/library/busybox:latest".into()),
            image_ref: None,
            image_id: None,
            created: t,
            checkpointed: t,
            cri_config: None,
            spec: serde_json::json!({"annotations": {"io.kubernetes.cri.sandbox-name": "keep"}}),
            status: None,
            sandbox_name: Some("pod".into()),
            sandbox_namespace: Some("ns".into()),
            deleted_files: vec![],
            bind_mounts: vec![],
            runtime: "runc".into(),
        };
        let v = serde_json::to_value(meta.config()).unwrap();
        assert_eq!(v["rootfsImageName"], "docker.io/library/busybox:latest");
        assert_eq!(v["createdTime"], "2026-01-02T03:04:05.123456789Z");
        assert_eq!(v["restoredTime"], "0001-01-01T00:00:00Z");
        assert_eq!(v["runtime"], "runc");
        assert!(v.get("rootfsImageRef").is_none());
        let back: ContainerConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, meta.config());
        let spec = meta.annotated_spec();
        assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-name"], "keep");
        assert_eq!(spec["annotations"]["io.kubernetes.cri.container-name"], "app");
        assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-namespace"], "ns");
    }

    #[test]
    fn pod_options_and_bind_mounts() {
        let id = PodIdentity {
            pod_name: "p".into(),
            host_arch: "x86_64".into(),
            runtime: "runc".into(),
            ..Default::default()
        };
        let opts = PodOptions::podcr([("app".to_string(), "app.tar".to_string())].into(), &id);
        let v = serde_json::to_value(&opts).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["annotations"][annotations::ENGINE_NAME], "podcr");
        assert_eq!(v["annotations"][annotations::POD_NAME], "p");
        assert_eq!(v["annotations"][annotations::RUNTIME_NAME], "runc");
        assert!(v["annotations"].get(annotations::POD_UID).is_none());
        let bm: Vec<BindMount> =
            serde_json::from_str(r#"[{"source":"/a","destination":"/b","file_type":"directory","permissions":493}]"#)
                .unwrap();
        assert_eq!(bm[0].file_type, BindMountType::Directory);
        assert!(serde_json::from_str::<FileDigest>(r#"{"sha256":"x","size":1,"extra":1}"#).is_err());
    }
}
