//! `podcr checkpoint`: builds the request containerd's CRI layer builds in PR 13822 and sends
//! it to the pod's shim.

use std::{
    collections::HashMap,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use k8s_cri::v1::{ContainerConfig, ContainerState, PodSandboxConfig, PodSandboxState};
use podcr_protos::{
    checkpoint::{CheckpointContainer, CheckpointRequest},
    protobuf::{well_known_types::any::Any, MessageField},
};
use prost::Message;
use tracing::debug;

use crate::{
    containerd::{Containerd, SHIM_SANDBOXER},
    cri::{config_from_info, Cri},
    error::{unique_match, LookupError},
    output, sandbox, shim,
};

pub const CONTAINER_CONFIG_TYPE: &str = "runtime.v1.ContainerConfig";
pub const CONTAINER_STATUS_TYPE: &str = "runtime.v1.ContainerStatus";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Zstd,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// Sandbox id (or a unique prefix), or the pod name with --pod-namespace.
    pub pod: String,
    /// Output directory: created (0700) if missing, must be empty otherwise. Default for a CRI
    /// pod: `checkpoint-<pod>_<namespace>-<RFC 3339 time>` in the node's first checkpoint root
    /// (`/var/lib/kubelet/pod-checkpoints`, KEP-5823's place), restorable by that name with the
    /// `podcr.io/restore-from` annotation.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Treat POD as a CRI pod name in this Kubernetes namespace.
    #[arg(long)]
    pub pod_namespace: Option<String>,
    /// Keep the pod running afterwards. This is the default (as with the CRI's CheckpointPod);
    /// the flag is accepted for compatibility.
    #[arg(long, conflicts_with = "stop")]
    pub leave_running: bool,
    /// Stop the pod's containers once all of them are dumped (sends leave-running=false); they
    /// are killed while still frozen, so nothing runs between the dump and the stop.
    #[arg(long)]
    pub stop: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Compression of the per-container archives.
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
    /// Also pack the checkpoint directory into this single file (.tar, or .tar.zst for zstd).
    /// An existing file is refused unless --force.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Replace an existing --archive file.
    #[arg(long, requires = "archive")]
    pub force: bool,
    /// The result on stdout: the stats table, or one JSON document (`-o` is the output
    /// directory here, so the format has its own flag).
    #[arg(long, value_enum, default_value_t)]
    pub format: output::Format,
    /// Print only where the checkpoint went (the archive, else the directory).
    #[arg(long, short, conflicts_with = "format")]
    pub quiet: bool,
}

impl CheckpointArgs {
    /// The options map, with only the options the user set, as the CRI passes them on.
    pub fn options(&self) -> HashMap<String, String> {
        let mut map = HashMap::new();
        if self.stop {
            map.insert("leave-running".to_string(), "false".to_string());
        }
        for (key, set) in [
            ("leave-running", self.leave_running),
            ("tcp-established", self.tcp_established),
            ("file-locks", self.file_locks),
        ] {
            if set {
                map.insert(key.to_string(), "true".to_string());
            }
        }
        if let Some(c) = self.compression {
            let value = match c {
                CompressionArg::None => "none",
                CompressionArg::Gzip => "gzip",
                CompressionArg::Zstd => "zstd",
            };
            map.insert("compression".into(), value.into());
        }
        map
    }
}

/// One container as the request carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerInput {
    pub id: String,
    pub name: String,
    pub config: Option<ContainerConfig>,
    pub status: Option<k8s_cri::v1::ContainerStatus>,
}

fn any<M: Message>(type_url: &str, msg: &M) -> MessageField<Any> {
    let mut a = Any::new();
    a.type_url = type_url.to_string();
    a.value = msg.encode_to_vec();
    MessageField::some(a)
}

pub fn build_request(
    sandbox_id: &str,
    output: &Path,
    pod_config: Option<&PodSandboxConfig>,
    containers: &[ContainerInput],
    options: HashMap<String, String>,
) -> CheckpointRequest {
    let mut req = CheckpointRequest::new();
    req.sandbox_id = sandbox_id.to_string();
    req.output_path = output.to_string_lossy().into_owned();
    if let Some(cfg) = pod_config {
        req.sandbox_config = any(sandbox::POD_SANDBOX_CONFIG_TYPE, cfg);
    }
    req.containers = containers
        .iter()
        .map(|c| {
            let mut w = CheckpointContainer::new();
            w.id = c.id.clone();
            w.name = c.name.clone();
            if let Some(cfg) = &c.config {
                w.config = any(CONTAINER_CONFIG_TYPE, cfg);
            }
            if let Some(st) = &c.status {
                w.status = any(CONTAINER_STATUS_TYPE, st);
            }
            w
        })
        .collect();
    req.options = options;
    req
}

/// Makes `dir` absolute and ready: created with mode 0700 when missing; an existing one must
/// be an empty directory (the shim checks again, but this gives the user a plainer message).
pub fn prepare_output(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))?;
    match std::fs::symlink_metadata(&abs) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(&abs).with_context(|| format!("create {}", abs.display()))?;
            // The umask may have narrowed the mode; make it exactly 0700.
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
        Ok(m) if !m.is_dir() => anyhow::bail!("{} exists and is not a directory", abs.display()),
        Ok(_) => {
            let mut entries = std::fs::read_dir(&abs).with_context(|| format!("read {}", abs.display()))?;
            anyhow::ensure!(entries.next().is_none(), "output directory {} is not empty", abs.display());
        }
    }
    Ok(abs)
}

/// KEP-5823's checkpoint location for a CRI pod: `<root>/checkpoint-<pod>_<namespace>-<time>`,
/// with the root (the first of `[restore] checkpoint_roots`) and its parents created 0700.
pub fn default_output(identity: Option<(String, String)>, now: chrono::DateTime<chrono::Utc>) -> Result<PathBuf> {
    let (name, namespace) = identity
        .filter(|(name, _)| !name.is_empty())
        .context("this pod has no CRI name and namespace to name its checkpoint after; pass --output")?;
    let config = podcr_sandbox_controller::node_config::NodeConfig::load()?;
    let root = config
        .restore
        .checkpoint_roots
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(podcr_sandbox_controller::node_config::restore::KUBELET_CHECKPOINT_ROOT));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("create {}", root.display()))?;
    let time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(root.join(format!("checkpoint-{name}_{namespace}-{time}")))
}

/// A CRI pod's name and Kubernetes namespace, from its config.
fn pod_identity(pod: Option<&PodSandboxConfig>) -> Option<(String, String)> {
    pod.and_then(|p| p.metadata.as_ref()).map(|m| (m.name.clone(), m.namespace.clone()))
}

/// A pod resolved to a sandbox id, and whether the CRI knows it.
struct Target {
    sandbox_id: String,
    cri: Option<Cri>,
}

async fn resolve(cd: &Containerd, address: &Path, args: &CheckpointArgs) -> Result<Target> {
    // The CRI is only there for pods in its namespace; elsewhere the pod is a plain sandbox.
    let cri = if cd.namespace_name == crate::CRI_NAMESPACE { Cri::connect(address).await.ok() } else { None };
    if let Some(ns) = &args.pod_namespace {
        let cri = cri.context("a pod name with --pod-namespace needs the CRI (namespace k8s.io)")?;
        let pods = cri.list_pods().await?;
        let id = pod_by_name(&pods, &args.pod, ns)?;
        // The same refusal as for ids: a pod of another runtime (runc's podsandbox) has no
        // shim to ask, and would otherwise fail later with a less telling error.
        if let Some(r) = cd.store_get(&id).await? {
            if r.sandboxer != SHIM_SANDBOXER {
                return Err(LookupError::NotShimSandbox(format!("{ns}/{}", args.pod), r.sandboxer).into());
            }
        }
        return Ok(Target { sandbox_id: id, cri: Some(cri) });
    }
    let records = cd.store_list().await?;
    let id = unique_match(&args.pod, records.iter().map(|r| r.sandbox_id.as_str()))?;
    if let Some(r) = records.iter().find(|r| r.sandbox_id == id) {
        if r.sandboxer != SHIM_SANDBOXER {
            return Err(LookupError::NotShimSandbox(id, r.sandboxer.clone()).into());
        }
    }
    let cri = match cri {
        Some(c) if c.list_pods().await.map(|p| p.iter().any(|p| p.id == id)).unwrap_or(false) => Some(c),
        _ => None,
    };
    Ok(Target { sandbox_id: id, cri })
}

/// The ready pod with this name in this namespace (an older, stopped attempt may share it).
pub fn pod_by_name(pods: &[k8s_cri::v1::PodSandbox], name: &str, namespace: &str) -> Result<String, LookupError> {
    let matching: Vec<&k8s_cri::v1::PodSandbox> = pods
        .iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name && m.namespace == namespace))
        .collect();
    let ready: Vec<&k8s_cri::v1::PodSandbox> =
        matching.iter().copied().filter(|p| p.state == PodSandboxState::SandboxReady as i32).collect();
    let pick = if ready.is_empty() { matching } else { ready };
    match pick.as_slice() {
        [] => Err(LookupError::NotFound(format!("{namespace}/{name}"))),
        [one] => Ok(one.id.clone()),
        many => Err(LookupError::Ambiguous {
            query: format!("{namespace}/{name}"),
            candidates: many.iter().map(|p| p.id.clone()).collect(),
        }),
    }
}

/// A CRI-shaped status for a container outside the CRI, so the checkpoint still records its
/// image (restore needs it) and labels, as `status.dump` does for CRI containers.
pub fn status_of(c: &containerd_client::services::v1::Container) -> k8s_cri::v1::ContainerStatus {
    let created_at = c
        .created_at
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(t.nanos)))
        .unwrap_or(0);
    k8s_cri::v1::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(k8s_cri::v1::ContainerMetadata { name: c.id.clone(), attempt: 0 }),
        state: ContainerState::ContainerRunning as i32,
        created_at,
        image: Some(k8s_cri::v1::ImageSpec { image: c.image.clone(), ..Default::default() }),
        image_ref: c.image.clone(),
        labels: c.labels.clone(),
        ..Default::default()
    }
}

/// The running containers of the pod with their CRI config and status, or, for a pod outside
/// the CRI, containerd's containers of the sandbox, named by id. The request lists them
/// explicitly (the shim refuses an empty list and containers that are not running), so the
/// user sees here which containers a checkpoint leaves out.
async fn containers(cd: &Containerd, target: &Target) -> Result<(Option<PodSandboxConfig>, Vec<ContainerInput>)> {
    let Some(cri) = &target.cri else {
        let list = cd.containers_in(&target.sandbox_id).await?;
        let inputs = list
            .into_iter()
            .map(|c| ContainerInput { name: c.id.clone(), id: c.id.clone(), config: None, status: Some(status_of(&c)) })
            .collect();
        return Ok((None, inputs));
    };
    let pod_config = cri.pod_config(&target.sandbox_id).await.unwrap_or_else(|e| {
        debug!(error = %format!("{e:#}"), "no pod config from the CRI; the shim has its own");
        None
    });
    debug!(has_pod_config = pod_config.is_some(), "pod from the CRI");
    let mut inputs = Vec::new();
    for c in cri.containers_of(&target.sandbox_id).await? {
        if c.state != ContainerState::ContainerRunning as i32 {
            let name = c.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
            eprintln!("not checkpointing container {name} ({}): it is not running", c.id);
            continue;
        }
        let resp = cri.container_status(&c.id).await?;
        let config: Option<ContainerConfig> = config_from_info(&resp.info);
        debug!(id = %c.id, has_config = config.is_some(), "container from the CRI");
        let name =
            c.metadata.as_ref().map(|m| m.name.clone()).filter(|n| !n.is_empty()).unwrap_or_else(|| c.id.clone());
        inputs.push(ContainerInput { id: c.id, name, config, status: resp.status });
    }
    Ok((pod_config, inputs))
}

pub async fn run(
    cd: &Containerd,
    address: &Path,
    state: &Path,
    args: &CheckpointArgs,
    timeout: Duration,
) -> Result<()> {
    let target = resolve(cd, address, args).await?;
    let (pod_config, inputs) = containers(cd, &target).await?;
    anyhow::ensure!(!inputs.is_empty(), "pod {} has no running containers to checkpoint", target.sandbox_id);
    // Before the pod is touched: a checkpoint that could not be packed would be wasted work.
    if let Some(archive) = &args.archive {
        check_archive_target(archive, args.force)?;
    }
    let output = match &args.output {
        Some(dir) => prepare_output(dir)?,
        None => {
            let identity = match pod_identity(pod_config.as_ref()) {
                Some(id) => Some(id),
                // containerd's verbose status may lack the config; its pod listing has the name.
                None => match &target.cri {
                    Some(cri) => cri
                        .list_pods()
                        .await?
                        .into_iter()
                        .find(|p| p.id == target.sandbox_id)
                        .and_then(|p| p.metadata)
                        .map(|m| (m.name, m.namespace)),
                    None => None,
                },
            };
            prepare_output(&default_output(identity, chrono::Utc::now())?)?
        }
    };
    let req = build_request(&target.sandbox_id, &output, pod_config.as_ref(), &inputs, args.options());
    let shim = shim::Shim::connect(&shim::address_of(cd, &target.sandbox_id, state).await?).await?;

    let progress = output::Progress::start(&format!("checkpointing pod {}", target.sandbox_id));
    let result = shim.checkpoint(&req, timeout).await;
    let elapsed = progress.finish().await;
    let resp = result?;
    eprintln!(
        "checkpointed pod {} ({} containers) into {} in {:.2}s",
        target.sandbox_id,
        inputs.len(),
        output.display(),
        elapsed.as_secs_f64()
    );
    let table = args.format == output::Format::Table && !args.quiet;
    if let (true, Some(stats)) = (table, resp.podcr_stats.as_ref()) {
        print!("{}", output::stats_report(stats));
    }
    if let Some(archive) = &args.archive {
        if args.force {
            remove_existing(archive)?;
        }
        crate::transport::pack(&output, archive)?;
        eprintln!("packed into {}", archive.display());
    }
    if args.quiet {
        println!("{}", args.archive.as_deref().unwrap_or(&output).display());
    } else if args.format == output::Format::Json {
        let doc = output::checkpoint_json(
            &target.sandbox_id,
            &output,
            args.archive.as_deref(),
            elapsed,
            resp.podcr_stats.as_ref(),
        );
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

/// Refuses an existing `--archive` file (or symlink) unless `force`; a directory never.
fn check_archive_target(archive: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(archive) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("stat {}", archive.display())),
        Ok(m) if m.is_dir() => anyhow::bail!("--archive {} is a directory", archive.display()),
        Ok(_) if force => Ok(()),
        Ok(_) => anyhow::bail!("--archive {} exists; pass --force to replace it", archive.display()),
    }
}

/// `--force`: the old file (or a symlink in its place, never its target) goes just before the
/// new one is renamed in, which never replaces anything.
fn remove_existing(archive: &Path) -> Result<()> {
    match std::fs::remove_file(archive) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", archive.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{PodSandbox, PodSandboxMetadata};

    use super::*;

    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: CheckpointArgs,
    }

    fn args(extra: &[&str]) -> CheckpointArgs {
        let mut argv = vec!["t", "pod", "-o", "/x"];
        argv.extend_from_slice(extra);
        T::parse_from(argv).a
    }

    #[test]
    fn only_set_options_are_sent() {
        // Nothing set: the shim's default, which leaves the pod running.
        assert!(args(&[]).options().is_empty());
        assert_eq!(args(&["--stop"]).options()["leave-running"], "false");
        assert_eq!(args(&["--leave-running"]).options()["leave-running"], "true");
        assert!(
            T::try_parse_from(["t", "pod", "-o", "/x", "--stop", "--leave-running"]).is_err(),
            "--stop and --leave-running conflict"
        );
        let o = args(&["--leave-running", "--file-locks", "--compression", "zstd"]).options();
        assert_eq!(o.len(), 3);
        assert_eq!(
            (o["leave-running"].as_str(), o["file-locks"].as_str(), o["compression"].as_str()),
            ("true", "true", "zstd")
        );
    }

    #[test]
    fn request_carries_cri_messages_as_any() {
        let cfg = ContainerConfig { command: vec!["sh".into()], ..Default::default() };
        let st = k8s_cri::v1::ContainerStatus { id: "c1".into(), ..Default::default() };
        let pod = PodSandboxConfig { hostname: "h".into(), ..Default::default() };
        let inputs = [
            ContainerInput { id: "c1".into(), name: "app".into(), config: Some(cfg.clone()), status: Some(st.clone()) },
            ContainerInput { id: "c2".into(), name: "c2".into(), ..Default::default() },
        ];
        let req = build_request("sb", Path::new("/out"), Some(&pod), &inputs, HashMap::new());
        assert_eq!((req.sandbox_id.as_str(), req.output_path.as_str()), ("sb", "/out"));
        assert_eq!(req.sandbox_config.type_url, "runtime.v1.PodSandboxConfig");
        assert_eq!(PodSandboxConfig::decode(req.sandbox_config.value.as_slice()).unwrap(), pod);
        let c = &req.containers[0];
        assert_eq!(c.config.type_url, CONTAINER_CONFIG_TYPE);
        assert_eq!(ContainerConfig::decode(c.config.value.as_slice()).unwrap(), cfg);
        assert_eq!(k8s_cri::v1::ContainerStatus::decode(c.status.value.as_slice()).unwrap(), st);
        assert!(req.containers[1].config.is_none() && req.containers[1].status.is_none());
        let bare = build_request("sb", Path::new("/out"), None, &[], HashMap::new());
        assert!(bare.sandbox_config.is_none());
    }

    #[test]
    fn pods_by_name_prefer_the_ready_one() {
        let pod = |id: &str, name: &str, state: PodSandboxState| PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata { name: name.into(), namespace: "ns".into(), ..Default::default() }),
            state: state as i32,
            ..Default::default()
        };
        let pods = [
            pod("old", "web", PodSandboxState::SandboxNotready),
            pod("new", "web", PodSandboxState::SandboxReady),
            pod("db1", "db", PodSandboxState::SandboxNotready),
            pod("db2", "db", PodSandboxState::SandboxNotready),
        ];
        assert_eq!(pod_by_name(&pods, "web", "ns").unwrap(), "new");
        assert!(matches!(pod_by_name(&pods, "db", "ns"), Err(LookupError::Ambiguous { .. })));
        assert!(matches!(pod_by_name(&pods, "web", "other"), Err(LookupError::NotFound(_))));
    }

    #[test]
    fn default_output_is_the_keps_place() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b");
        let toml = tmp.path().join("podcr.toml");
        std::fs::write(&toml, format!("[restore]\ncheckpoint_roots = [{:?}]\n", root.display().to_string())).unwrap();
        std::env::set_var(podcr_sandbox_controller::node_config::ENV_PATH, &toml);
        let pod = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata { name: "web".into(), namespace: "shop".into(), ..Default::default() }),
            ..Default::default()
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T03:04:05.678Z").unwrap().with_timezone(&chrono::Utc);
        let out = default_output(pod_identity(Some(&pod)), now).unwrap();
        std::env::remove_var(podcr_sandbox_controller::node_config::ENV_PATH);
        assert_eq!(out, root.join("checkpoint-web_shop-2026-12-07T03:04:05Z"));
        assert_eq!(std::fs::metadata(tmp.path().join("a")).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(default_output(None, now).is_err(), "a pod outside the CRI needs --output");
    }

    #[test]
    fn output_dir_is_created_private_and_must_be_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let abs = prepare_output(&dir).unwrap();
        assert_eq!(std::fs::metadata(&abs).unwrap().permissions().mode() & 0o777, 0o700);
        prepare_output(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        assert!(prepare_output(&dir).is_err());
        assert!(prepare_output(&dir.join("f")).is_err());
    }
}

#[cfg(test)]
mod archive_target_tests {
    use super::*;

    #[test]
    fn an_existing_archive_needs_force_and_a_stale_temporary_blocks_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("pod.tar.zst");
        check_archive_target(&archive, false).unwrap();
        std::fs::write(&archive, b"old").unwrap();
        let err = check_archive_target(&archive, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        check_archive_target(&archive, true).unwrap();
        assert!(check_archive_target(tmp.path(), true).is_err(), "a directory is never replaced");
        // A killed run's temporary file, under the old fixed name, does not matter.
        std::fs::write(tmp.path().join("pod.tar.zst.tmp"), b"stale").unwrap();
        remove_existing(&archive).unwrap();
        check_archive_target(&archive, false).unwrap();
    }
}
