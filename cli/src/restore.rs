//! `podcr restore`: plays containerd's CRI part of PR 13822's RestorePod, as the caller. A CRI
//! pod and containers are created from the caller's configs ([`crate::caller`]: the checkpoint's
//! without anything that reaches the host, or the operator's files), the shim is told to restore
//! them with those configs (it holds the checkpoint to them, stages CRIU's images and restores
//! when containerd creates each task), and the containers are started. Whatever the configs
//! cannot give the checkpointed processes is refused before anything is created; any later
//! failure removes the new pod again.

use std::{path::Path, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use k8s_cri::v1::{ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, PodSandboxConfig};
use podcr_protos::checkpoint::{RestoreContainer, RestoreRequest};
use podcr_sandbox_controller::archive::{self, ContainerMetadata as ArchiveMetadata, Limits};
use serde_json::Value;
use tracing::warn;

use podcr_sandbox_controller::node_config::NodeConfig;
use prost::Message;

use crate::{
    caller, containerd::Containerd, cri::Cri, error::LookupError, output, shim, transport, zerofill::from_go_json,
};

/// `type_url`s of the CRI messages in the request, as containerd's CRI writes them.
const POD_SANDBOX_CONFIG_TYPE: &str = "runtime.v1.PodSandboxConfig";
const CONTAINER_CONFIG_TYPE: &str = "runtime.v1.ContainerConfig";

/// The CRI runtime handler podcr is registered under.
pub const HANDLER: &str = "podcr";

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Checkpoint directory, or an archive made with `podcr checkpoint --archive`.
    pub checkpoint: PathBuf,
    /// Name of the new pod (default: the checkpointed pod's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubernetes namespace of the new pod (default: the checkpointed pod's).
    #[arg(long)]
    pub pod_namespace: Option<String>,
    /// The new pod's CRI PodSandboxConfig as JSON (snake_case), instead of the checkpoint's
    /// with its host-reaching fields removed: what it grants is the operator's decision.
    #[arg(long, value_name = "FILE")]
    pub pod_config: Option<PathBuf>,
    /// A container's CRI ContainerConfig as JSON (snake_case), instead of the checkpoint's with
    /// its host-reaching fields removed. Repeat per container.
    #[arg(long = "container-config", value_name = "NAME=FILE", value_parser = caller::parse_container_arg)]
    pub container_configs: Vec<(String, PathBuf)>,
    /// Leave the restored containers created, not started (as CRI RestorePod does).
    #[arg(long)]
    pub created_only: bool,
    /// The result on stdout: the pod id then one `NAME<TAB>ID` line per container, or one JSON
    /// document with the same.
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::output::Format,
    /// Print only the new pod's sandbox id.
    #[arg(long, short, conflicts_with = "format")]
    pub quiet: bool,
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

/// Each container's name, metadata and checkpointed CRI config, read from its archive's metadata
/// without unpacking it, and only once the whole archive matches the signed manifest: these configs
/// pick images, mounts and commands. The shim verifies every byte again when it extracts the archive.
fn read_containers(src: &transport::Source) -> Result<Vec<(String, ArchiveMetadata, ContainerConfig)>> {
    let limits = Limits::default();
    let mut out = Vec::new();
    for (name, path, digest) in src.checkpoint.container_archives() {
        // No more decompressed than the signed manifest says the archive holds.
        let unpacked = src.checkpoint.manifest.containers.iter().find(|c| c.name == name).and_then(|c| c.unpacked);
        let c = archive::read_container_metadata(&path, &digest, &limits.within(unpacked))
            .with_context(|| format!("read container {name} from {}", path.display()))?;
        let cfg = container_config(&name, &c)?;
        out.push((name.clone(), c, cfg));
    }
    anyhow::ensure!(!out.is_empty(), "the checkpoint has no containers");
    Ok(out)
}

fn new_uid() -> Result<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/random/uuid").context("generate a pod uid")?;
    Ok(raw.trim().to_string())
}

/// The caller's configs for the pod and each container, checked against the checkpoint (see
/// [`caller`]); nothing is created yet.
fn caller_configs(
    src: &transport::Source,
    args: &RestoreArgs,
) -> Result<(PodSandboxConfig, Vec<(String, ContainerConfig)>)> {
    let containers = read_containers(src)?;
    for (name, _) in &args.container_configs {
        anyhow::ensure!(
            containers.iter().any(|(n, _, _)| n == name),
            "--container-config {name}=...: the checkpoint has no container {name:?}"
        );
    }
    let config = NodeConfig::load()?;
    let given_pod =
        args.pod_config.as_deref().map(|p| caller::read_json::<PodSandboxConfig>(p, "PodSandboxConfig")).transpose()?;
    let uid = new_uid()?;
    let new = caller::NewPod {
        name: args.name.as_deref(),
        namespace: args.pod_namespace.as_deref(),
        uid: &uid,
        log_root: &config.restore.pod_log_root,
    };
    let pod = caller::pod_config(src.checkpoint.pod_config.clone(), given_pod, &new)?;
    let ckpt_pod = (!src.checkpoint.pod_config.is_null()).then_some(&src.checkpoint.pod_config);
    let mut out = Vec::new();
    for (name, meta, checkpointed) in containers {
        let given = args
            .container_configs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| caller::read_json::<ContainerConfig>(p, "ContainerConfig"))
            .transpose()?;
        let cfg = caller::container_config(&name, checkpointed, given);
        caller::check(&name, &cfg, &pod, ckpt_pod, meta.cri_config.as_ref(), &meta.spec)?;
        out.push((name, cfg));
    }
    Ok((pod, out))
}

/// Makes the pod's log directory and each container's, as the kubelet does before it creates
/// the pod (containerd's CRI only opens the files). Returns the pod's directory if this call
/// made it, for a rollback to remove.
fn make_log_dirs(pod: &PodSandboxConfig, containers: &[(String, ContainerConfig)]) -> Result<Option<PathBuf>> {
    if pod.log_directory.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(&pod.log_directory);
    let made = (!dir.exists()).then(|| dir.clone());
    for (_, cfg) in containers {
        if let Some(parent) = dir.join(&cfg.log_path).parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(made)
}

pub async fn run(cd: &Containerd, address: &Path, state: &Path, args: &RestoreArgs, timeout: Duration) -> Result<()> {
    let owned = args.clone();
    let (src, pod, containers) = tokio::task::spawn_blocking(move || -> Result<_> {
        let src = transport::open(&owned.checkpoint)?;
        let (pod, containers) = caller_configs(&src, &owned)?;
        Ok((src, pod, containers))
    })
    .await
    .context("checkpoint reader task")??;

    let cri = Cri::connect(address).await?;
    for (name, cfg) in &containers {
        let image = cfg.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if !cri.has_image(&image).await? {
            return Err(LookupError::MissingImage(image, name.clone()).into());
        }
    }
    let log_dir = make_log_dirs(&pod, &containers)?;

    let pod_id = match cri.run_pod(pod.clone(), HANDLER).await {
        Ok(id) => id,
        Err(e) => {
            if let Some(dir) = &log_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
    };
    let restored = restore_into(cd, &cri, &pod_id, &pod, &containers, src, state, args.created_only, timeout).await;
    match restored {
        Ok(ids) => {
            if args.quiet {
                println!("{pod_id}");
            } else if args.format == crate::output::Format::Json {
                let containers: Vec<serde_json::Value> =
                    ids.iter().map(|(name, id)| serde_json::json!({"name": name, "id": id})).collect();
                let doc = serde_json::json!({"sandbox_id": pod_id, "containers": containers});
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!("{pod_id}");
                for (name, id) in ids {
                    println!("{name}\t{id}");
                }
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
            if let Some(dir) = log_dir {
                if let Err(le) = std::fs::remove_dir_all(&dir) {
                    warn!(dir = %dir.display(), error = %le, "rollback: remove the pod's log directory");
                }
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
    src: transport::Source,
    state: &Path,
    created_only: bool,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    let mut ids = Vec::new();
    for (name, cfg) in containers {
        ids.push((name.clone(), cri.create_container(pod_id, cfg.clone(), pod.clone()).await?));
    }
    let req = restore_request(pod_id, &src.dir, pod, containers, &ids);
    let shim = shim::Shim::connect(&shim::address_of(cd, pod_id, state).await?).await?;
    let progress = output::Progress::start(&format!("restoring pod {pod_id}"));
    let result = shim.restore(&req, timeout).await;
    progress.finish().await;
    // The shim has its own verified copy now (or failed): an archive unpacked into TMPDIR, a
    // second copy of the pod's memory, goes before the containers start rather than after.
    drop(src);
    result?;
    if !created_only {
        let starts = ids.iter().map(|(_, id)| cri.start_container(id));
        let failed: Vec<String> = futures::future::join_all(starts)
            .await
            .into_iter()
            .filter_map(|r| r.err())
            .map(|e| format!("{e:#}"))
            .collect();
        anyhow::ensure!(failed.is_empty(), "starting the restored containers: {}", failed.join("; "));
    }
    Ok(ids)
}

fn any_of(type_url: &str, msg: &impl Message) -> protobuf::well_known_types::any::Any {
    protobuf::well_known_types::any::Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
        ..Default::default()
    }
}

/// RestorePod's request as the shim sees it: the new ids by name, with the caller's configs.
pub fn restore_request(
    pod_id: &str,
    checkpoint: &Path,
    pod: &PodSandboxConfig,
    configs: &[(String, ContainerConfig)],
    ids: &[(String, String)],
) -> RestoreRequest {
    let mut req = RestoreRequest::new();
    req.sandbox_id = pod_id.to_string();
    req.checkpoint_path = checkpoint.to_string_lossy().into_owned();
    req.sandbox_config = Some(any_of(POD_SANDBOX_CONFIG_TYPE, pod)).into();
    req.containers = ids
        .iter()
        .map(|(name, id)| {
            let mut c = RestoreContainer::new();
            c.id = id.clone();
            c.name = name.clone();
            c.config =
                configs.iter().find(|(n, _)| n == name).map(|(_, cfg)| any_of(CONTAINER_CONFIG_TYPE, cfg)).into();
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
    fn request_names_new_ids_and_carries_the_callers_configs() {
        let pod = PodSandboxConfig { hostname: "h".into(), ..Default::default() };
        let cfg = ContainerConfig { command: vec!["/bin/true".into()], ..Default::default() };
        let req = restore_request(
            "pod",
            Path::new("/ckpt"),
            &pod,
            &[("app".into(), cfg.clone())],
            &[("app".into(), "c1".into())],
        );
        assert_eq!((req.sandbox_id.as_str(), req.checkpoint_path.as_str()), ("pod", "/ckpt"));
        assert_eq!((req.containers[0].id.as_str(), req.containers[0].name.as_str()), ("c1", "app"));
        assert!(req.options.is_empty());
        let any = req.containers[0].config.as_ref().unwrap();
        assert_eq!(any.type_url, CONTAINER_CONFIG_TYPE);
        assert_eq!(ContainerConfig::decode(any.value.as_slice()).unwrap(), cfg);
        let pod_any = req.sandbox_config.as_ref().unwrap();
        assert_eq!(PodSandboxConfig::decode(pod_any.value.as_slice()).unwrap(), pod);
    }
}
