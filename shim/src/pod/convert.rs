//! The only place where the pod side meets wire types: CRI and containerd protobufs in, the
//! controller's domain types out, and controller errors into the shim's error (whose single
//! mapping to ttrpc codes lives in `crate::error`).

use std::{collections::BTreeMap, path::PathBuf};

use chrono::{DateTime, Utc};
use k8s_cri::v1::PodSandboxConfig;
use podcr_sandbox_controller::backend::{DnsConfig, PodSpec};
use prost::Message;
use protobuf::well_known_types::{any::Any, timestamp::Timestamp};

use crate::error::Error;

/// `type_url` containerd's CRI puts on `CreateSandboxRequest.options` (typeurl's bare proto name).
pub const POD_SANDBOX_CONFIG_TYPE: &str = "runtime.v1.PodSandboxConfig";
pub const CONTAINER_CONFIG_TYPE: &str = "runtime.v1.ContainerConfig";
pub const CONTAINER_STATUS_TYPE: &str = "runtime.v1.ContainerStatus";

/// CRI `NamespaceMode` values (runtime.v1).
const NS_POD: i32 = 0;
const NS_NODE: i32 = 2;

/// Whether an `Any` carries the named message; containerd writes bare names, Go's `anypb` and
/// protobuf's `Any::pack` prefix a host (`type.googleapis.com/...`).
pub fn any_is(any: &Any, name: &str) -> bool {
    any.type_url.rsplit('/').next() == Some(name)
}

/// Decodes the pod config the CRI sends; `None` when the caller sent none (ctr, other clients).
pub fn pod_config(options: Option<&Any>) -> Result<Option<PodSandboxConfig>, Error> {
    match options {
        Some(any) if any_is(any, POD_SANDBOX_CONFIG_TYPE) => PodSandboxConfig::decode(any.value.as_slice())
            .map(Some)
            .map_err(|e| Error::invalid_argument(format!("decode {POD_SANDBOX_CONFIG_TYPE}: {e}"))),
        _ => Ok(None),
    }
}

/// Decodes a CRI message carried in an `Any` into snake_case JSON (the form `pod.dump`,
/// `status.dump` and the peers' JSON files use).
pub fn cri_any_json<M: Message + Default + serde::Serialize>(
    any: Option<&Any>,
    name: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(any) = any.filter(|a| !a.value.is_empty()) else { return Ok(None) };
    if !any_is(any, name) {
        return Err(Error::invalid_argument(format!("expected {name}, got {}", any.type_url)));
    }
    let msg = M::decode(any.value.as_slice()).map_err(|e| Error::invalid_argument(format!("decode {name}: {e}")))?;
    Ok(Some(serde_json::to_value(&msg)?))
}

/// Builds the pod spec from what CreateSandbox carries.
pub fn pod_spec(id: &str, bundle: &str, netns_path: &str, config: Option<&PodSandboxConfig>) -> Result<PodSpec, Error> {
    let netns = (!netns_path.is_empty()).then(|| PathBuf::from(netns_path));
    let mut spec = PodSpec {
        id: id.to_string(),
        bundle: PathBuf::from(bundle),
        netns_path: netns,
        hostname: String::new(),
        ..Default::default()
    };
    let Some(config) = config else {
        // No CRI config: a private pod with its own IPC and UTS, named after its id.
        spec.hostname = id.chars().take(12).collect();
        spec.name = id.to_string();
        return Ok(spec);
    };
    if let Some(meta) = &config.metadata {
        spec.name = meta.name.clone();
        spec.namespace = meta.namespace.clone();
        spec.uid = meta.uid.clone();
    }
    spec.hostname = config.hostname.clone();
    spec.labels = config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    spec.annotations = config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    spec.dns = config.dns_config.as_ref().map(|d| DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    if let Some(linux) = &config.linux {
        spec.cgroup_parent = (!linux.cgroup_parent.is_empty()).then(|| linux.cgroup_parent.clone());
        spec.sysctls = linux.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>();
    }
    // Absent options mean mode POD everywhere: that is how containerd's CRI reads them
    // (`GetNamespaceOptions().GetPid()` of nil is POD) when it builds each container's spec.
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    if ns.userns_options.as_ref().is_some_and(|u| u.mode == NS_POD) {
        return Err(Error::unimplemented("pods with a user namespace are not supported by podcr yet"));
    }
    spec.host_ipc = ns.ipc == NS_NODE;
    spec.host_pid = ns.pid == NS_NODE;
    spec.share_pid = ns.pid == NS_POD;
    if ns.network == NS_NODE {
        spec.netns_path = None;
    }
    spec.raw_config = Some(serde_json::to_value(config)?);
    Ok(spec)
}

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxMetadata};

    use super::*;

    fn config(pid_mode: i32, net_mode: i32) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            hostname: "web-0".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/podu1".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: net_mode,
                        pid: pid_mode,
                        ipc: NS_POD,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cri_config_round_trips_through_any() {
        let cfg = config(NS_POD, NS_POD);
        let any = Any { type_url: POD_SANDBOX_CONFIG_TYPE.into(), value: cfg.encode_to_vec(), ..Default::default() };
        let decoded = pod_config(Some(&any)).unwrap().unwrap();
        let spec = pod_spec("abc", "/b", "/var/run/netns/cni-1", Some(&decoded)).unwrap();
        assert_eq!((spec.name.as_str(), spec.namespace.as_str(), spec.hostname.as_str()), ("web", "default", "web-0"));
        assert!(spec.share_pid && !spec.host_ipc);
        assert_eq!(spec.netns_path, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(spec.cgroup_parent.as_deref(), Some("/kubepods/podu1"));
        assert_eq!(spec.raw_config.unwrap()["metadata"]["name"], "web");
    }

    #[test]
    fn host_network_drops_the_netns_and_other_types_are_ignored() {
        let spec = pod_spec("abc", "/b", "/x", Some(&config(1, NS_NODE))).unwrap();
        assert_eq!(spec.netns_path, None);
        assert!(!spec.share_pid);
        let other = Any { type_url: "google.protobuf.Empty".into(), ..Default::default() };
        assert!(pod_config(Some(&other)).unwrap().is_none());
        let bad = Any { type_url: POD_SANDBOX_CONFIG_TYPE.into(), value: vec![0xff, 0xff], ..Default::default() };
        assert!(matches!(pod_config(Some(&bad)), Err(Error::Pod(podcr_sandbox_controller::Error::InvalidArgument(_)))));
    }

    #[test]
    fn absent_namespace_options_mean_a_shared_pod_pid_namespace() {
        let cfg = PodSandboxConfig { hostname: "h".into(), ..Default::default() };
        let spec = pod_spec("abc", "/b", "/var/run/netns/x", Some(&cfg)).unwrap();
        assert!(spec.share_pid && !spec.host_pid && !spec.host_ipc);
    }
}
