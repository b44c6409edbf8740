//! The configs `podcr restore` sends as the caller of RestorePod: its own authority, not the
//! archive's.
//!
//! By default they are the checkpoint's configs with every field that reaches the host removed
//! (privileged, added capabilities, unconfined profiles, SELinux labels, NODE namespaces, host
//! path mounts, devices, CDI devices, `cgroup_parent`, annotations outside [`ANNOTATION_ALLOW`])
//! and the log paths derived from the new pod, the way the kubelet lays them out. An operator who
//! means to grant more passes the configs (`--pod-config`, `--container-config NAME=FILE`).
//! Either way [`check`] compares them with what the checkpointed processes need before anything
//! is created, and the shim compares again on verified data.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, SecurityProfile,
};
use podcr_sandbox_controller::restore;
use serde_json::Value;

use crate::zerofill::from_go_json;

/// Pod and container annotations carried over from a checkpoint: the kubelet's bookkeeping,
/// which no runtime acts on. Anything else may steer the runtime, NRI plugins or the shim (a
/// `podcr.io/restore-from` would start a second restore), so it is the operator's to give.
pub const ANNOTATION_ALLOW: &[&str] = &[
    "kubernetes.io/config.source",
    "kubernetes.io/config.seen",
    "kubernetes.io/config.hash",
    "io.kubernetes.container.hash",
    "io.kubernetes.container.restartCount",
    "io.kubernetes.container.terminationMessagePath",
    "io.kubernetes.container.terminationMessagePolicy",
    "io.kubernetes.pod.terminationGracePeriod",
];

/// Mount destinations containerd's CRI binds into every container itself. (The kubelet's
/// `/dev/termination-log` is a host path of the old pod: a checkpoint that has it needs an
/// operator's config that mounts one.)
const CRI_OWN_MOUNTS: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm"];

/// CRI `NamespaceMode`.
const NS_POD: i32 = 0;
const NS_CONTAINER: i32 = 1;
const NS_NODE: i32 = 2;
/// CRI `SecurityProfile.ProfileType::Unconfined`.
const PROFILE_UNCONFINED: i32 = 1;

/// How to grant what a default config leaves out.
pub fn grant_hint(container: &str) -> String {
    format!(
        "podcr restore does not grant this by default; to grant it, pass the configs yourself: \
         --container-config {container}=FILE (a CRI ContainerConfig as JSON) and, for pod-level fields, --pod-config FILE"
    )
}

/// The new pod's identity and where its logs go.
pub struct NewPod<'a> {
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub uid: &'a str,
    pub log_root: &'a Path,
}

fn keep_allowed(map: &mut std::collections::HashMap<String, String>) {
    map.retain(|k, _| ANNOTATION_ALLOW.contains(&k.as_str()));
}

fn unconfined(p: &Option<SecurityProfile>) -> bool {
    p.as_ref().is_some_and(|p| p.profile_type == PROFILE_UNCONFINED)
}

/// The pod config: from `--pod-config` when given (the operator's), else the checkpoint's with
/// the host-reaching fields removed; either way with the new identity and log directory.
pub fn pod_config(dump: Value, given: Option<PodSandboxConfig>, new: &NewPod) -> Result<PodSandboxConfig> {
    let operators = given.is_some();
    let mut cfg = match given {
        Some(cfg) => cfg,
        None => strip_pod(from_go_json(dump).context("pod.dump is not a CRI PodSandboxConfig")?),
    };
    let old = cfg.metadata.take().unwrap_or_default();
    let meta = PodSandboxMetadata {
        name: new.name.map(str::to_string).unwrap_or(old.name),
        namespace: new.namespace.map(str::to_string).unwrap_or(old.namespace),
        // A new pod is a new uid, unless the operator's config names one.
        uid: if operators && !old.uid.is_empty() { old.uid } else { new.uid.to_string() },
        attempt: 0,
    };
    anyhow::ensure!(!meta.name.is_empty(), "the checkpoint has no pod name; pass --name");
    if cfg.log_directory.is_empty() {
        // The kubelet's layout: <root>/<namespace>_<name>_<uid>.
        cfg.log_directory =
            new.log_root.join(format!("{}_{}_{}", meta.namespace, meta.name, meta.uid)).to_string_lossy().into_owned();
    }
    // The kubelet's pod labels name the pod; they follow the new identity.
    for (key, value) in [
        ("io.kubernetes.pod.name", &meta.name),
        ("io.kubernetes.pod.namespace", &meta.namespace),
        ("io.kubernetes.pod.uid", &meta.uid),
    ] {
        if let Some(v) = cfg.labels.get_mut(key) {
            v.clone_from(value);
        }
    }
    cfg.metadata = Some(meta);
    Ok(cfg)
}

// The deprecated profile fields are still honoured by containerd's CRI, so they are stripped too.
#[allow(deprecated)]
fn strip_pod(mut cfg: PodSandboxConfig) -> PodSandboxConfig {
    // The checkpoint's log directory is somebody else's path: derived anew from the new pod.
    cfg.log_directory = String::new();
    keep_allowed(&mut cfg.annotations);
    if let Some(linux) = cfg.linux.as_mut() {
        linux.cgroup_parent = String::new();
        if let Some(sc) = linux.security_context.as_mut() {
            sc.privileged = false;
            sc.selinux_options = None;
            if unconfined(&sc.seccomp) {
                sc.seccomp = None;
            }
            if unconfined(&sc.apparmor) {
                sc.apparmor = None;
            }
            if sc.seccomp_profile_path == "unconfined" {
                sc.seccomp_profile_path = String::new();
            }
            if let Some(ns) = sc.namespace_options.as_mut() {
                strip_namespaces(ns);
            }
        }
    }
    cfg
}

/// A container's config: the operator's file when given, else the checkpoint's stripped; the
/// name is the checkpoint's and the log path the kubelet's `<name>/<attempt>.log` unless the
/// operator's file sets one.
pub fn container_config(name: &str, checkpointed: ContainerConfig, given: Option<ContainerConfig>) -> ContainerConfig {
    let mut cfg = given.unwrap_or_else(|| strip_container(checkpointed));
    cfg.metadata = Some(ContainerMetadata { name: name.to_string(), attempt: 0 });
    if cfg.log_path.is_empty() {
        cfg.log_path = format!("{name}/0.log");
    }
    cfg
}

/// The node's namespaces become the pod's (PID: the container's own), and no namespace is
/// borrowed from another container by id.
fn strip_namespaces(ns: &mut NamespaceOption) {
    for mode in [&mut ns.network, &mut ns.ipc] {
        if *mode == NS_NODE {
            *mode = NS_POD;
        }
    }
    if ns.pid == NS_NODE {
        ns.pid = NS_CONTAINER;
    }
    ns.target_id = String::new();
}

#[allow(deprecated)]
fn strip_container(mut cfg: ContainerConfig) -> ContainerConfig {
    cfg.log_path = String::new();
    cfg.mounts.clear();
    cfg.devices.clear();
    cfg.cdi_devices.clear();
    keep_allowed(&mut cfg.annotations);
    if let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.privileged = false;
        sc.selinux_options = None;
        if let Some(caps) = sc.capabilities.as_mut() {
            caps.add_capabilities.clear();
            caps.add_ambient_capabilities.clear();
        }
        if unconfined(&sc.seccomp) {
            sc.seccomp = None;
        }
        if unconfined(&sc.apparmor) {
            sc.apparmor = None;
        }
        if sc.seccomp_profile_path == "unconfined" {
            sc.seccomp_profile_path = String::new();
        }
        if sc.apparmor_profile == "unconfined" {
            sc.apparmor_profile = String::new();
        }
        if let Some(ns) = sc.namespace_options.as_mut() {
            strip_namespaces(ns);
        }
    }
    cfg
}

/// Reads a CRI config from a JSON file (snake_case field names, absent fields are zero).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let value: Value = serde_json::from_slice(&data).with_context(|| format!("{} is not JSON", path.display()))?;
    from_go_json(value).with_context(|| format!("{} is not a CRI {what}", path.display()))
}

/// `NAME=FILE` of `--container-config`.
pub fn parse_container_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_string(), PathBuf::from(file))),
        _ => Err(format!("expected NAME=FILE, got {s:?}")),
    }
}

/// Refuses, before anything is created, a restore the checkpointed processes cannot have with
/// these configs: the restore policy (what the shim checks again), and every bind mount the
/// processes had that the config does not give them (CRIU cannot restore a process whose
/// mount has nothing to map to).
pub fn check(
    name: &str,
    config: &ContainerConfig,
    pod: &PodSandboxConfig,
    ckpt_pod: Option<&Value>,
    ckpt_config: Option<&Value>,
    ckpt_spec: &Value,
) -> Result<()> {
    let config_json = serde_json::to_value(config)?;
    let pod_json = serde_json::to_value(pod)?;
    restore::check_request(name, Some(&config_json), Some(&pod_json), None, ckpt_pod, ckpt_config, ckpt_spec)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", grant_hint(name)))?;
    let given: Vec<&str> = config.mounts.iter().map(|m| m.container_path.as_str()).collect();
    for m in ckpt_spec["mounts"].as_array().into_iter().flatten() {
        let bind = m["type"] == "bind"
            || m["options"].as_array().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        let dest = m["destination"].as_str().unwrap_or_default();
        let source = m["source"].as_str().unwrap_or_default();
        // containerd's own per-container files (image volumes, etc.) live in its state.
        let cri_own = CRI_OWN_MOUNTS.contains(&dest) || source.contains("/io.containerd.grpc.v1.cri/");
        if bind && !cri_own && !given.contains(&dest) {
            anyhow::bail!(
                "container {name:?}: mounts: the checkpointed processes had host path {source:?} mounted at {dest:?}, \
                 which this restore does not mount (CRIU cannot restore them without it)\n{}",
                grant_hint(name)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{
        Capability, CdiDevice, Device, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, Mount, NamespaceOption,
    };
    use serde_json::json;

    use super::*;

    fn hostile_container() -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: "app".into(), attempt: 4 }),
            command: vec!["/bin/sleep".into(), "1000".into()],
            log_path: "../../../../etc/profile.d/x.sh".into(),
            mounts: vec![Mount { container_path: "/host".into(), host_path: "/".into(), ..Default::default() }],
            devices: vec![Device {
                container_path: "/dev/sda".into(),
                host_path: "/dev/sda".into(),
                permissions: "rwm".into(),
            }],
            cdi_devices: vec![CdiDevice { name: "vendor.com/gpu=all".into() }],
            annotations: [
                ("io.kubernetes.container.hash".to_string(), "1".to_string()),
                ("nri.io/evil".to_string(), "x".to_string()),
            ]
            .into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    privileged: true,
                    capabilities: Some(Capability {
                        add_capabilities: vec!["SYS_ADMIN".into()],
                        drop_capabilities: vec!["NET_RAW".into()],
                        ..Default::default()
                    }),
                    seccomp: Some(SecurityProfile { profile_type: PROFILE_UNCONFINED, ..Default::default() }),
                    apparmor: Some(SecurityProfile { profile_type: PROFILE_UNCONFINED, ..Default::default() }),
                    namespace_options: Some(NamespaceOption {
                        network: NS_NODE,
                        pid: NS_NODE,
                        ipc: NS_NODE,
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
    fn default_container_configs_lose_every_host_reaching_field() {
        let cfg = container_config("app", hostile_container(), None);
        assert_eq!(cfg.log_path, "app/0.log");
        assert_eq!(cfg.metadata.as_ref().map(|m| m.attempt), Some(0));
        assert!(cfg.mounts.is_empty() && cfg.devices.is_empty() && cfg.cdi_devices.is_empty());
        assert_eq!(cfg.annotations.keys().collect::<Vec<_>>(), ["io.kubernetes.container.hash"]);
        let sc = cfg.linux.unwrap().security_context.unwrap();
        assert!(!sc.privileged);
        let caps = sc.capabilities.unwrap();
        assert!(caps.add_capabilities.is_empty());
        assert_eq!(caps.drop_capabilities, ["NET_RAW"], "drops narrow, so they stay");
        assert!(sc.seccomp.is_none() && sc.apparmor.is_none());
        let ns = sc.namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (NS_POD, NS_CONTAINER, NS_POD));
        assert_eq!(cfg.command, ["/bin/sleep", "1000"], "the process stays the checkpoint's");
    }

    #[test]
    fn an_operators_config_is_taken_as_given() {
        let cfg = container_config("app", ContainerConfig::default(), Some(hostile_container()));
        assert!(cfg.linux.unwrap().security_context.unwrap().privileged);
        assert_eq!(cfg.mounts.len(), 1);
        assert_eq!(cfg.metadata.unwrap().name, "app");
    }

    #[test]
    fn default_pod_configs_get_a_new_identity_and_no_host_reach() {
        let dump = serde_json::to_value(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "prod".into(),
                uid: "old".into(),
                attempt: 3,
            }),
            hostname: "web-0".into(),
            log_directory: "/etc".into(),
            labels: [("io.kubernetes.pod.uid".to_string(), "old".to_string()), ("app".to_string(), "web".to_string())]
                .into(),
            annotations: [("podcr.io/restore-from".to_string(), "x".to_string())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/".into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    privileged: true,
                    namespace_options: Some(NamespaceOption { network: NS_NODE, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let new = NewPod { name: None, namespace: Some("dev"), uid: "new", log_root: Path::new("/var/log/pods") };
        let cfg = pod_config(dump, None, &new).unwrap();
        let m = cfg.metadata.clone().unwrap();
        assert_eq!((m.name.as_str(), m.namespace.as_str(), m.uid.as_str(), m.attempt), ("web", "dev", "new", 0));
        assert_eq!(cfg.log_directory, "/var/log/pods/dev_web_new");
        assert_eq!(cfg.labels["io.kubernetes.pod.uid"], "new");
        assert_eq!(cfg.labels["app"], "web");
        assert!(cfg.annotations.is_empty(), "a restore-from must not start a second restore");
        let linux = cfg.linux.unwrap();
        assert!(linux.cgroup_parent.is_empty());
        let sc = linux.security_context.unwrap();
        assert!(!sc.privileged);
        assert_eq!(sc.namespace_options.unwrap().network, NS_POD);
        assert_eq!(cfg.hostname, "web-0");
        assert!(pod_config(json!({}), None, &new).is_err(), "no name");
    }

    #[test]
    fn check_refuses_what_the_processes_need_and_were_not_given() {
        let pod = PodSandboxConfig::default();
        let spec = json!({
            "process": {"args": ["/bin/sleep", "1000"], "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}, {"type": "ipc"}], "seccomp": {}},
            "mounts": [
                {"destination": "/etc/hosts", "type": "bind", "source": "/run/x/hosts", "options": ["rbind"]},
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]}
            ]
        });
        let cfg = container_config("app", hostile_container(), None);
        let e = check("app", &cfg, &pod, None, None, &spec).unwrap_err().to_string();
        assert!(e.contains("mounts") && e.contains("/data") && e.contains("--container-config app=FILE"), "{e}");
        let mut granted = cfg.clone();
        granted.mounts.push(Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            ..Default::default()
        });
        check("app", &granted, &pod, None, None, &spec).unwrap();
        // The checkpoint's (edited) CRI config asks for privileged: refused by default.
        let ckpt_config = serde_json::to_value(hostile_container()).unwrap();
        let e = check("app", &granted, &pod, None, Some(&ckpt_config), &spec).unwrap_err().to_string();
        assert!(e.contains("privileged") && e.contains("--container-config app=FILE"), "{e}");
        let given = container_config("app", ContainerConfig::default(), Some(hostile_container()));
        let mut given = given;
        given.mounts.push(Mount { container_path: "/data".into(), ..Default::default() });
        check("app", &given, &pod, None, Some(&ckpt_config), &spec).unwrap();
    }

    #[test]
    fn container_args_parse() {
        assert_eq!(parse_container_arg("app=/x.json").unwrap(), ("app".to_string(), PathBuf::from("/x.json")));
        assert!(parse_container_arg("app").is_err());
        assert!(parse_container_arg("=x").is_err());
    }
}
