//! `podcr restore`: plays containerd's CRI part of PR 13822's RestorePod. A normal CRI pod and
//! containers are created from the checkpoint's configs, the shim is told to restore them
//! (it stages CRIU's images and restores when containerd creates each task), and the containers
//! are started. Any failure removes the new pod again.

use std::{path::Path, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use k8s_cri::v1::{ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, PodSandboxConfig, PodSandboxMetadata};
use podcr_protos::checkpoint::{RestoreContainer, RestoreRequest};
use podcr_sandbox_controller::archive::{self, ContainerMetadata as ArchiveMetadata, Limits};
use serde_json::Value;
use tracing::warn;

use crate::{containerd::Containerd, cri::Cri, error::LookupError, output, shim, transport, zerofill::from_go_json};

/// The CRI runtime handler podcr is registered under.
pub const HANDLER: &str = "podcr";

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Checkpoint directory, or an archive made with `podcr checkpoint --archive`.
    pub checkpoint: PathBuf,
    /// Name of the new pod (default: the checkpointed pod's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubernetes namespace of the new pod (default: the checkpointed pod's).
    #[arg(long)]
    pub pod_namespace: Option<String>,
    /// Give a hostNetwork pod its own network namespace instead: containerd 2.1's CRI crashes
    /// (nil spec in NewBundle) when it creates a hostNetwork pod with a shim sandboxer.
    #[arg(long)]
    pub pod_network: bool,
    /// Leave the restored containers created, not started (as CRI RestorePod does).
    #[arg(long)]
    pub created_only: bool,
}

/// The checkpointed pod config with a new identity: name and namespace as asked, a new uid
/// and attempt 0; everything else as it was.
pub fn pod_config(dump: Value, name: Option<&str>, namespace: Option<&str>, uid: &str) -> Result<PodSandboxConfig> {
    let mut cfg: PodSandboxConfig = from_go_json(dump).context("pod.dump is not a CRI PodSandboxConfig")?;
    let old = cfg.metadata.take().unwrap_or_default();
    cfg.metadata = Some(PodSandboxMetadata {
        name: name.map(str::to_string).unwrap_or(old.name),
        namespace: namespace.map(str::to_string).unwrap_or(old.namespace),
        uid: uid.to_string(),
        attempt: 0,
    });
    anyhow::ensure!(!cfg.metadata.as_ref().is_some_and(|m| m.name.is_empty()), "the checkpoint has no pod name; pass --name");
    Ok(cfg)
}

/// CRI `NamespaceMode::NODE`.
const NS_NODE: i32 = 2;

/// Refuses hostNetwork pods (see `--pod-network`), or moves them into a pod network.
pub fn check_network(cfg: &mut PodSandboxConfig, pod_network: bool) -> Result<()> {
    let ns = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()).and_then(|s| s.namespace_options.as_mut());
    let Some(ns) = ns.filter(|ns| ns.network == NS_NODE) else { return Ok(()) };
    anyhow::ensure!(
        pod_network,
        "the checkpointed pod uses the host network, and containerd 2.1's CRI crashes creating such a pod with a \
         shim sandboxer; pass --pod-network to restore it into its own network namespace"
    );
    ns.network = 0;
    Ok(())
}

/// A CRI ContainerConfig rebuilt from the container's OCI spec when the checkpoint carries no
/// CRI config: the exact argv as `command` (so image entrypoints cannot change it), env,
/// working directory, tty, and the labels and annotations of the CRI status.
pub fn config_from_dump(name: &str, image: &str, spec: &Value, status: Option<&Value>) -> ContainerConfig {
    let process = &spec["process"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let envs = strings(&process["env"])
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| KeyValue { key: k.to_string(), value: v.to_string() }))
        .collect();
    let map = |v: Option<&Value>| -> std::collections::HashMap<String, String> {
        v.and_then(Value::as_object)
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
        command: strings(&process["args"]),
        working_dir: process["cwd"].as_str().unwrap_or_default().to_string(),
        envs,
        tty: process["terminal"].as_bool().unwrap_or(false),
        labels: map(status.and_then(|s| s.get("labels"))),
        annotations: map(status.and_then(|s| s.get("annotations"))),
        ..Default::default()
    }
}

/// The image a container was checkpointed from, as the user named it.
fn image_of(c: &ArchiveMetadata) -> Option<String> {
    [&c.config.rootfs_image_name, &c.config.rootfs_image_ref, &c.config.rootfs_image]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .or_else(|| c.status.as_ref()?.get("image")?.get("image")?.as_str().map(str::to_string))
}

fn container_config(name: &str, c: &ArchiveMetadata) -> Result<ContainerConfig> {
    if let Some(saved) = &c.cri_config {
        let mut cfg: ContainerConfig = from_go_json(saved.clone())
            .with_context(|| format!("{} of {name} is not a CRI ContainerConfig", archive::CONTAINER_CONFIG_DUMP))?;
        cfg.metadata = Some(ContainerMetadata { name: name.to_string(), attempt: 0 });
        return Ok(cfg);
    }
    let image = image_of(c).with_context(|| format!("the checkpoint does not name the image of container {name}"))?;
    Ok(config_from_dump(name, &image, &c.spec, c.status.as_ref()))
}

/// Each container's name and CRI config, read from its archive's metadata without unpacking
/// it, and only once the whole archive matches the signed manifest: these configs pick images,
/// mounts and commands. The shim verifies every byte again when it extracts the archive.
fn read_containers(src: &transport::Source) -> Result<Vec<(String, ContainerConfig)>> {
    let limits = Limits::default();
    let mut out = Vec::new();
    for (name, path, digest) in src.checkpoint.container_archives() {
        let c = archive::read_container_metadata(&path, &digest, &limits)
            .with_context(|| format!("read container {name} from {}", path.display()))?;
        out.push((name.clone(), container_config(&name, &c)?));
    }
    anyhow::ensure!(!out.is_empty(), "the checkpoint has no containers");
    Ok(out)
}

fn new_uid() -> Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("generate a pod uid")?;
    Ok(raw.trim().to_string())
}

pub async fn run(cd: &Containerd, address: &Path, state: &Path, args: &RestoreArgs, timeout: Duration) -> Result<()> {
    let path = args.checkpoint.clone();
    let (src, containers) = tokio::task::spawn_blocking(move || -> Result<_> {
        let src = transport::open(&path)?;
        let containers = read_containers(&src)?;
        Ok((src, containers))
    })
    .await
    .context("checkpoint reader task")??;
    let mut pod = pod_config(src.checkpoint.pod_config.clone(), args.name.as_deref(), args.pod_namespace.as_deref(), &new_uid()?)?;
    check_network(&mut pod, args.pod_network)?;

    let cri = Cri::connect(address).await?;
    for (name, cfg) in &containers {
        let image = cfg.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if !cri.has_image(&image).await? {
            return Err(LookupError::MissingImage(image, name.clone()).into());
        }
    }

    let pod_id = cri.run_pod(pod.clone(), HANDLER).await?;
    let restored = restore_into(cd, &cri, &pod_id, &pod, &containers, &src.dir, state, args.created_only, timeout).await;
    match restored {
        Ok(ids) => {
            println!("{pod_id}");
            for (name, id) in ids {
                println!("{name}\t{id}");
            }
            Ok(())
        }
        Err(e) => {
            // Remove stops first, but an explicit stop tells a failing stop from a failing removal.
            if let Err(se) = cri.stop_pod(&pod_id).await {
                warn!(error = %format!("{se:#}"), "rollback: stop pod");
            }
            if let Err(re) = cri.remove_pod(&pod_id).await {
                return Err(e.context(format!("and rolling back pod {pod_id} failed too: {re:#}")));
            }
            Err(e.context(format!("restore failed; pod {pod_id} was removed")))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    cd: &Containerd,
    cri: &Cri,
    pod_id: &str,
    pod: &PodSandboxConfig,
    containers: &[(String, ContainerConfig)],
    checkpoint: &Path,
    state: &Path,
    created_only: bool,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let mut ids = Vec::new();
    for (name, cfg) in containers {
        ids.push((name.clone(), cri.create_container(pod_id, cfg.clone(), pod.clone()).await?));
    }
    let req = restore_request(pod_id, checkpoint, &ids);
    let shim = shim::Shim::connect(&shim::address_of(cd, pod_id, state).await?).await?;
    let progress = output::Progress::start(&format!("restoring pod {pod_id}"));
    let result = shim.restore(&req, timeout).await;
    progress.finish().await;
    result?;
    if !created_only {
        let starts = ids.iter().map(|(_, id)| cri.start_container(id));
        let failed: Vec<String> =
            futures::future::join_all(starts).await.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
        anyhow::ensure!(failed.is_empty(), "starting the restored containers: {}", failed.join("; "));
    }
    Ok(ids)
}

pub fn restore_request(pod_id: &str, checkpoint: &Path, ids: &[(String, String)]) -> RestoreRequest {
    let mut req = RestoreRequest::new();
    req.sandbox_id = pod_id.to_string();
    req.checkpoint_path = checkpoint.to_string_lossy().into_owned();
    req.containers = ids
        .iter()
        .map(|(name, id)| {
            let mut c = RestoreContainer::new();
            c.id = id.clone();
            c.name = name.clone();
            c
        })
        .collect();
    req
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pod_gets_a_new_identity() {
        let dump = serde_json::to_value(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata { name: "web".into(), namespace: "prod".into(), uid: "old".into(), attempt: 3 }),
            hostname: "web-0".into(),
            ..Default::default()
        })
        .unwrap();
        let cfg = pod_config(dump.clone(), None, None, "new").unwrap();
        assert_eq!(cfg.metadata, Some(PodSandboxMetadata { name: "web".into(), namespace: "prod".into(), uid: "new".into(), attempt: 0 }));
        assert_eq!(cfg.hostname, "web-0");
        let cfg = pod_config(dump, Some("web2"), Some("dev"), "u").unwrap();
        let m = cfg.metadata.unwrap();
        assert_eq!((m.name.as_str(), m.namespace.as_str()), ("web2", "dev"));
        assert!(pod_config(json!({}), None, None, "u").is_err());
        assert!(pod_config(json!({}), Some("x"), None, "u").is_ok());
    }

    #[test]
    fn host_network_needs_consent() {
        use k8s_cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption};
        let host = || PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption { network: NS_NODE, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_network(&mut host(), false).is_err());
        let mut cfg = host();
        check_network(&mut cfg, true).unwrap();
        assert_eq!(cfg.linux.unwrap().security_context.unwrap().namespace_options.unwrap().network, 0);
        check_network(&mut PodSandboxConfig::default(), false).unwrap();
    }

    #[test]
    fn config_from_spec_keeps_the_exact_process() {
        let spec = json!({"process": {"args": ["/bin/sh", "-c", "sleep 1"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/work", "terminal": true}});
        let status = json!({"labels": {"l": "1"}, "annotations": {"a": "2"}});
        let cfg = config_from_dump("app", "localhost/busybox:1", &spec, Some(&status));
        assert_eq!(cfg.command, ["/bin/sh", "-c", "sleep 1"]);
        assert!(cfg.args.is_empty());
        assert_eq!(cfg.envs[1], KeyValue { key: "A".into(), value: "b=c".into() });
        assert_eq!((cfg.working_dir.as_str(), cfg.tty), ("/work", true));
        assert_eq!(cfg.image.unwrap().image, "localhost/busybox:1");
        assert_eq!(cfg.labels["l"], "1");
        assert_eq!(cfg.annotations["a"], "2");
        assert_eq!(cfg.metadata.unwrap().name, "app");
    }

    #[test]
    fn request_names_new_ids() {
        let req = restore_request("pod", Path::new("/ckpt"), &[("app".into(), "c1".into())]);
        assert_eq!((req.sandbox_id.as_str(), req.checkpoint_path.as_str()), ("pod", "/ckpt"));
        assert_eq!((req.containers[0].id.as_str(), req.containers[0].name.as_str()), ("c1", "app"));
        assert!(req.options.is_empty());
    }
}
