//! CRI pods for the pod checkpoint/restore tests: pods of counter containers created through
//! containerd's CRI with the podcr handler, their CRI logs read as counter values, and the
//! `podcr` command line run against the test's containerd.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerFilter, ContainerState,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxStateValue, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::{cmd::Output, cri, wait_for, Containerd, Runtime};

pub type Cri = RuntimeServiceClient<Channel>;

/// CRI ExecSync of `cmd` in `container` (10 s): its exit code and trimmed stdout.
pub async fn exec(rs: &mut Cri, container: &str, cmd: &[&str]) -> Result<(i32, String)> {
    let r = rs
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await?
        .into_inner();
    Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).trim().to_string()))
}

/// A running CRI pod and its containers (name, id).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub log_dir: PathBuf,
    pub containers: Vec<(String, String)>,
}

impl Pod {
    pub fn container(&self, name: &str) -> Result<&str> {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.as_str())
            .with_context(|| format!("no container {name} in pod {}", self.name))
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.log_dir.join(format!("{container}.log"))
    }
}

/// Creates a pod named `name` with the given containers (name, command) through the CRI.
/// Namespaces as the kubelet sets them by default: the pod's network and IPC, a PID namespace
/// per container.
pub fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

pub async fn run_pod(
    cd: &Containerd,
    rs: &mut Cri,
    rt: Runtime,
    name: &str,
    image: &str,
    containers: &[(&str, &[&str])],
) -> Result<Pod> {
    let mut config = cd.pod_config(name)?;
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context =
            Some(LinuxSandboxSecurityContext { namespace_options: Some(kubelet_namespaces()), ..Default::default() });
    }
    let id = rs
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: rt.handler().into() })
        .await
        .with_context(|| format!("RunPodSandbox {name}\n{}", cd.log_tail(20)))?
        .into_inner()
        .pod_sandbox_id;
    let mut pod = Pod { id, name: name.into(), log_dir: PathBuf::from(&config.log_directory), containers: Vec::new() };
    for (cname, command) in containers {
        let mut cconfig = cri::container_config(cname, image, command);
        cconfig.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cid = create_container(rs, &pod.id, &config, cconfig).await?;
        rs.start_container(StartContainerRequest { container_id: cid.clone() })
            .await
            .with_context(|| format!("StartContainer {cname}"))?;
        pod.containers.push((cname.to_string(), cid));
    }
    Ok(pod)
}

pub async fn create_container(
    rs: &mut Cri,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String> {
    Ok(rs
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id)
}

/// Every `count N` value a counter printed, in order, from a CRI log.
pub fn counts(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(" stdout F count ").and_then(|(_, n)| n.trim().parse().ok()))
        .collect()
}

pub fn last_count(log: &Path) -> Option<u64> {
    counts(log).last().copied()
}

/// Waits until the counter logging to `log` has printed at least `n`.
pub fn wait_count(log: &Path, n: u64, timeout: Duration) -> Result<u64> {
    wait_for(&format!("count >= {n} in {}", log.display()), timeout, || Ok(last_count(log).filter(|c| *c >= n)))
}

/// Waits until the counter has advanced past `from`, i.e. it is running.
pub fn wait_advances(log: &Path, from: u64, timeout: Duration) -> Result<u64> {
    wait_count(log, from + 3, timeout)
}

/// `podcr --address <this containerd> ARGS...`, with its output.
pub fn podcr<I, S>(cd: &Containerd, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let bin = crate::target_profile_dir()?.join("podcr");
    let mut cmd = Command::new(bin);
    cmd.arg("--address").arg(cd.socket()).args(args).env("PODCR_CONFIG", cd.node_config());
    crate::cmd::run(&mut cmd, Duration::from_secs(180))
}

/// A container's CRI log file as containerd reports it (the pod's log directory joined with the
/// container's log path): where a restored pod, whose log paths are its own, writes.
pub async fn log_path(rs: &mut Cri, container: &str) -> Result<PathBuf> {
    let status = rs
        .container_status(ContainerStatusRequest { container_id: container.into(), verbose: false })
        .await
        .with_context(|| format!("ContainerStatus {container}"))?
        .into_inner()
        .status
        .context("no container status")?;
    anyhow::ensure!(!status.log_path.is_empty(), "container {container} has no log path");
    Ok(PathBuf::from(status.log_path))
}

/// The id of the container named `name` in pod `pod`.
pub async fn container_id(rs: &mut Cri, pod: &str, name: &str) -> Result<String> {
    let list = rs
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
        })
        .await?
        .into_inner()
        .containers;
    list.into_iter()
        .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .map(|c| c.id)
        .with_context(|| format!("no {name} in {pod}"))
}

/// The state of every container of a pod, by container name.
pub async fn container_states(rs: &mut Cri, pod: &str) -> Result<Vec<(String, i32)>> {
    let items = rs
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
        })
        .await?
        .into_inner()
        .containers;
    Ok(items.into_iter().map(|c| (c.metadata.map(|m| m.name).unwrap_or_default(), c.state)).collect())
}

pub async fn all_running(rs: &mut Cri, pod: &str) -> Result<bool> {
    let states = container_states(rs, pod).await?;
    Ok(!states.is_empty() && states.iter().all(|(_, s)| *s == ContainerState::ContainerRunning as i32))
}

/// Exit code of a container as the CRI reports it.
pub async fn exit_code(rs: &mut Cri, container: &str) -> Result<(i32, i32)> {
    let status = rs
        .container_status(ContainerStatusRequest { container_id: container.into(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    Ok((status.state, status.exit_code))
}

/// Finds a pod by name among the CRI's ready pods.
pub async fn find_pod(rs: &mut Cri, name: &str) -> Result<Option<String>> {
    let pods = rs
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue { state: k8s_cri::v1::PodSandboxState::SandboxReady as i32 }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    Ok(pods.into_iter().find(|p| p.metadata.as_ref().is_some_and(|m| m.name == name)).map(|p| p.id))
}

pub async fn remove_pod(rs: &mut Cri, id: &str) -> Result<()> {
    rs.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.context("StopPodSandbox")?;
    rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.context("RemovePodSandbox")?;
    Ok(())
}

/// Files in a directory, sorted.
pub fn dir_entries(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

pub fn ensure_success(what: &str, out: &Output) -> Result<()> {
    if !out.success() {
        bail!("{what} failed ({:?}):\nstdout: {}\nstderr: {}", out.code, out.stdout, out.stderr);
    }
    Ok(())
}
