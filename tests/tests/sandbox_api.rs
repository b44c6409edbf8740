//! Issue 4's done-when, for real: a pod through the CRI with the podcr handler behaves like one
//! with containerd's runc runtime (podsandbox + pause), one shim serves the whole pod, nothing of
//! the pod is left after RemovePodSandbox, `podcr sandbox run` works with `ctr run --sandbox`,
//! `ctr sandbox ls` and `ctr sandbox rm`, and a CRI pod survives a containerd restart.
//!
//! Every CRI scenario runs the same assertions for both runtimes, so podcr is held to what
//! containerd's own runtime does.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, DnsConfig, ExecSyncRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use podcr_tests::{
    cri, images,
    pods::{self, Cri},
    procs, wait_for, wait_until, Containerd, Runtime, CRI_NAMESPACE,
};

const T: Duration = Duration::from_secs(60);
const ECHO_PORT: u16 = 7777;
/// Distinctive DNS settings, so the test can tell the pod's resolv.conf from the host's.
const DNS_SERVER: &str = "10.96.0.10";
const DNS_SEARCH: &str = "podcr-test.svc.cluster.local";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn import(cd: &'static Containerd) -> Result<String> {
    blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await
}

/// Namespace modes as the kubelet sets them; `share_pid` is `shareProcessNamespace: true`.
fn namespaces(share_pid: bool) -> NamespaceOption {
    let pid = if share_pid { NamespaceMode::Pod } else { NamespaceMode::Container };
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A CRI pod under test: its config and its containers (name, id).
struct CriPod {
    id: String,
    config: PodSandboxConfig,
    containers: Vec<(String, String)>,
}

impl CriPod {
    fn container(&self, name: &str) -> &str {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.as_str())
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn cgroup_parent(&self) -> String {
        self.config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default()
    }
}

/// RunPodSandbox (with CNI and the test DNS config), then CreateContainer + StartContainer for
/// each (name, command).
async fn start_pod(
    cd: &Containerd,
    rs: &mut Cri,
    rt: Runtime,
    name: &str,
    image: &str,
    share_pid: bool,
    containers: &[(&str, &[&str])],
) -> Result<CriPod> {
    let mut config = cd.pod_config(name)?;
    config.dns_config = Some(DnsConfig {
        servers: vec![DNS_SERVER.into()],
        searches: vec![DNS_SEARCH.into()],
        options: vec!["ndots:5".into()],
    });
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context =
            Some(LinuxSandboxSecurityContext { namespace_options: Some(namespaces(share_pid)), ..Default::default() });
    }
    let id = rs
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: rt.handler().into() })
        .await
        .with_context(|| format!("RunPodSandbox {name} ({})\n{}", rt.handler(), cd.log_tail(20)))?
        .into_inner()
        .pod_sandbox_id;
    let mut pod = CriPod { id, config, containers: Vec::new() };
    for (cname, command) in containers {
        let mut cconfig = cri::container_config(cname, image, command);
        cconfig.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(share_pid)),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cid = pods::create_container(rs, &pod.id, &pod.config, cconfig)
            .await
            .with_context(|| format!("CreateContainer {cname}\n{}", cd.log_tail(20)))?;
        rs.start_container(StartContainerRequest { container_id: cid.clone() })
            .await
            .with_context(|| format!("StartContainer {cname}\n{}", cd.log_tail(20)))?;
        pod.containers.push((cname.to_string(), cid));
    }
    Ok(pod)
}

/// ExecSync: (exit code, trimmed stdout, stderr).
async fn exec(rs: &mut Cri, container: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
    let r = rs
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await
        .with_context(|| format!("ExecSync {cmd:?} in {container}"))?
        .into_inner();
    Ok((
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).trim().to_string(),
        String::from_utf8_lossy(&r.stderr).trim().to_string(),
    ))
}

/// ExecSync that must exit 0; returns stdout.
async fn exec_ok(rs: &mut Cri, container: &str, cmd: &[&str]) -> Result<String> {
    let (code, out, err) = exec(rs, container, cmd).await?;
    ensure!(code == 0, "{cmd:?} in {container} exited {code}: {out}\n{err}");
    Ok(out)
}

/// The pid the CRI reports for a running container (verbose ContainerStatus).
async fn container_pid(rs: &mut Cri, container: &str) -> Result<u32> {
    let resp = rs
        .container_status(ContainerStatusRequest { container_id: container.into(), verbose: true })
        .await?
        .into_inner();
    let status = resp.status.context("no container status")?;
    ensure!(
        status.state == ContainerState::ContainerRunning as i32,
        "container {container} is {:?}, not running",
        ContainerState::try_from(status.state)
    );
    let info: serde_json::Value = serde_json::from_str(resp.info.get("info").context("no verbose info")?)?;
    let pid = info["pid"].as_u64().context("no pid in the verbose info")?;
    ensure!(pid != 0, "container {container} reports pid 0");
    Ok(pid as u32)
}

async fn pod_status(rs: &mut Cri, pod: &str) -> Result<k8s_cri::v1::PodSandboxStatus> {
    rs.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose: false })
        .await?
        .into_inner()
        .status
        .context("no pod status")
}

fn ns_inode(pid: u32, ns: &str) -> Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).with_context(|| format!("/proc/{pid}/ns/{ns}"))?.ino())
}

/// Every live process whose network namespace is `inode`.
fn procs_in_netns(inode: u64) -> Result<Vec<procs::Proc>> {
    Ok(procs::all()?.into_iter().filter(|p| !p.is_zombie() && ns_inode(p.pid, "net").ok() == Some(inode)).collect())
}

/// The shims of this containerd that serve the pod or any of its containers.
fn shims_of_pod(cd: &Containerd, ids: &[&str]) -> Result<Vec<procs::Proc>> {
    Ok(procs::shims_of(cd.socket())?
        .into_iter()
        .filter(|p| p.arg_after("-id").is_some_and(|id| ids.contains(&id)))
        .collect())
}

/// Cgroup dirs (one per v1 controller mount) below the pod's cgroup parent.
fn cgroups_under(parent: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ctrl in std::fs::read_dir("/sys/fs/cgroup")? {
        let ctrl = ctrl?;
        // v1 links `cpu` -> `cpu,cpuacct`: look at each hierarchy once.
        if ctrl.file_type()?.is_symlink() {
            continue;
        }
        let dir = ctrl.path().join(parent.trim_start_matches('/'));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
    }
    Ok(out)
}

fn mountinfo() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?)
}

/// Everything of a running pod the host can see, recorded so the test can check it all went.
#[derive(Debug)]
struct PodFootprint {
    ids: Vec<String>,
    /// Pod processes: everything in the pod's netns (holder or pause, container processes).
    pids: BTreeSet<u32>,
    shim_pids: BTreeSet<u32>,
    netns_inode: u64,
    /// The netns file the CRI created (bind mount of the pod's netns).
    netns_file: PathBuf,
    cgroup_parent: String,
}

impl PodFootprint {
    async fn record(cd: &Containerd, rs: &mut Cri, pod: &CriPod) -> Result<PodFootprint> {
        let first = container_pid(rs, &pod.containers[0].1).await?;
        let netns_inode = ns_inode(first, "net")?;
        let mut ids = vec![pod.id.clone()];
        ids.extend(pod.containers.iter().map(|(_, id)| id.clone()));
        let pids: BTreeSet<u32> = procs_in_netns(netns_inode)?.iter().map(|p| p.pid).collect();
        // At least the anchor (holder or pause) and one process per container.
        ensure!(pids.len() > pod.containers.len(), "only {pids:?} in the pod's netns: no anchor process?");
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let shim_pids: BTreeSet<u32> = shims_of_pod(cd, &id_refs)?.iter().map(|p| p.pid).collect();
        ensure!(!shim_pids.is_empty(), "no shim found for pod {}", pod.id);
        // The CRI pins the pod's netns with a bind mount; mountinfo names it by its inode.
        let root = format!("net:[{netns_inode}]");
        let netns_file = mountinfo()?
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(root.as_str()))
            .and_then(|l| l.split_whitespace().nth(4))
            .map(PathBuf::from)
            .with_context(|| format!("no mount of the pod's netns {root}"))?;
        let cgroup_parent = pod.cgroup_parent();
        ensure!(
            !cgroups_under(&cgroup_parent)?.is_empty(),
            "no container cgroup under {cgroup_parent}: the check after removal would prove nothing"
        );
        let mounts = mountinfo()?;
        ensure!(mounts.contains(&pod.id), "no mount of pod {} found while it runs", pod.id);
        Ok(PodFootprint { ids, pids, shim_pids, netns_inode, netns_file, cgroup_parent })
    }

    /// Waits until nothing of the pod is left: processes, shim, mounts, netns, cgroups.
    fn wait_gone(&self) -> Result<()> {
        wait_until("the pod's processes and shim to exit", T, || {
            Ok(self.pids.iter().chain(&self.shim_pids).all(|p| !procs::alive(*p))
                && procs_in_netns(self.netns_inode)?.is_empty())
        })
        .with_context(|| format!("still alive: {:?}", self.still_alive()))?;
        wait_until("the pod's mounts to go", T, || {
            let m = mountinfo()?;
            Ok(!self.ids.iter().any(|id| m.contains(id.as_str())))
        })
        .with_context(|| {
            let m = mountinfo().unwrap_or_default();
            let left: Vec<&str> = m.lines().filter(|l| self.ids.iter().any(|id| l.contains(id.as_str()))).collect();
            format!("mounts left: {left:#?}")
        })?;
        ensure!(!self.netns_file.exists(), "netns file {} left", self.netns_file.display());
        ensure!(
            !mountinfo()?.contains(&*self.netns_file.to_string_lossy()),
            "netns {} still mounted",
            self.netns_file.display()
        );
        wait_until("the pod's cgroups to go", T, || Ok(cgroups_under(&self.cgroup_parent)?.is_empty()))
            .with_context(|| format!("cgroups left: {:?}", cgroups_under(&self.cgroup_parent)))?;
        Ok(())
    }

    fn still_alive(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .pids
            .iter()
            .chain(&self.shim_pids)
            .filter(|p| procs::alive(**p))
            .filter_map(|p| procs::proc(*p).map(|p| (p.pid, p.argv.join(" "))))
            .collect();
        v.extend(procs_in_netns(self.netns_inode).unwrap_or_default().into_iter().map(|p| (p.pid, p.argv.join(" "))));
        v
    }
}

/// Connects to `addr`, sends a line and expects it echoed back.
fn echo_roundtrip(addr: SocketAddr, msg: &str) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg.as_bytes())?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    ensure!(buf == msg.as_bytes(), "echo returned {:?}", String::from_utf8_lossy(&buf));
    Ok(())
}

/// StopPodSandbox, RemovePodSandbox (twice: it must be idempotent), and the pod is gone from the
/// CRI.
async fn stop_and_remove(cd: &Containerd, rs: &mut Cri, pod: &str) -> Result<()> {
    rs.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .with_context(|| format!("StopPodSandbox\n{}", cd.log_tail(20)))?;
    let state = pod_status(rs, pod).await?.state;
    ensure!(
        state == PodSandboxState::SandboxNotready as i32,
        "pod is {:?} after StopPodSandbox",
        PodSandboxState::try_from(state)
    );
    for _ in 0..2 {
        rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.into() })
            .await
            .with_context(|| format!("RemovePodSandbox\n{}", cd.log_tail(20)))?;
    }
    ensure!(pod_status(rs, pod).await.is_err(), "pod {pod} still has a status after removal");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The CRI flow of a kubelet, for both runtimes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_two_containers_runc() -> Result<()> {
    cri_pod_two_containers(Runtime::Runc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_two_containers_podcr() -> Result<()> {
    cri_pod_two_containers(Runtime::Podcr).await
}

async fn cri_pod_two_containers(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let name = format!("two-{}", rt.handler());
    let port = ECHO_PORT.to_string();
    let echo_cmd: &[&str] = &["/usr/local/bin/tcp_echo", &port];
    let pod =
        start_pod(cd, &mut rs, rt, &name, &image, false, &[("echo", echo_cmd), ("peer", &["sleep", "600"])]).await?;
    let (echo, peer) = (pod.container("echo").to_string(), pod.container("peer").to_string());

    // PodSandboxStatus: READY, with the address CNI gave it.
    let status = pod_status(&mut rs, &pod.id).await?;
    ensure!(status.state == PodSandboxState::SandboxReady as i32, "pod not ready: {status:?}");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    ensure!(ip.starts_with("10.88."), "pod has no address from the test CNI network: {ip:?}");

    // ContainerStatus: both run, in one network namespace, not the host's.
    let echo_pid = container_pid(&mut rs, &echo).await?;
    let peer_pid = container_pid(&mut rs, &peer).await?;
    for ns in ["net", "ipc", "uts"] {
        let (a, b) = (ns_inode(echo_pid, ns)?, ns_inode(peer_pid, ns)?);
        ensure!(a == b, "the containers do not share their {ns} namespace");
        ensure!(a != ns_inode(std::process::id(), ns)?, "the pod uses the host's {ns} namespace");
    }
    // Per-container PID namespaces without shareProcessNamespace.
    ensure!(ns_inode(echo_pid, "pid")? != ns_inode(peer_pid, "pid")?, "PID namespace shared");

    // The host reaches the pod IP (tcp_echo listens on 0.0.0.0 in the pod's netns).
    let addr: SocketAddr = format!("{ip}:{ECHO_PORT}").parse()?;
    blocking(move || wait_for("echo over the pod IP", T, || Ok(echo_roundtrip(addr, "from-host\n").ok())))
        .await
        .context("the host cannot reach the pod IP")?;

    // The other container reaches it on localhost.
    let script = format!("echo from-peer | nc -w 3 127.0.0.1 {ECHO_PORT}");
    let out = exec_ok(&mut rs, &peer, &["sh", "-c", &script]).await?;
    ensure!(out == "from-peer", "localhost echo from the peer container returned {out:?}");

    // hostname, hosts, resolv.conf bind-mounted, /dev/shm a pod-wide tmpfs.
    let hostname = pod.config.hostname.clone();
    ensure!(exec_ok(&mut rs, &peer, &["hostname"]).await? == hostname, "uts hostname");
    ensure!(exec_ok(&mut rs, &peer, &["cat", "/etc/hostname"]).await? == hostname, "/etc/hostname");
    let mounts = exec_ok(&mut rs, &echo, &["cat", "/proc/self/mountinfo"]).await?;
    for target in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"] {
        ensure!(
            mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(target)),
            "{target} is not mounted in the container:\n{mounts}"
        );
    }
    let resolv = exec_ok(&mut rs, &echo, &["cat", "/etc/resolv.conf"]).await?;
    ensure!(
        resolv.contains(&format!("nameserver {DNS_SERVER}")) && resolv.contains(DNS_SEARCH),
        "resolv.conf does not follow the pod's DNS config:\n{resolv}"
    );
    let hosts = exec_ok(&mut rs, &echo, &["cat", "/etc/hosts"]).await?;
    ensure!(hosts.contains("localhost"), "/etc/hosts:\n{hosts}");
    exec_ok(&mut rs, &echo, &["sh", "-c", "echo shared > /dev/shm/podcr-test"]).await?;
    let shm = exec_ok(&mut rs, &peer, &["cat", "/dev/shm/podcr-test"]).await?;
    ensure!(shm == "shared", "/dev/shm is not shared between the containers: {shm:?}");

    // One shim for the whole pod.
    let ids: Vec<&str> = [pod.id.as_str(), &echo, &peer].into();
    let shims = shims_of_pod(cd, &ids)?;
    ensure!(shims.len() == 1, "{} shims for one pod: {shims:#?}", shims.len());

    let footprint = PodFootprint::record(cd, &mut rs, &pod).await?;
    stop_and_remove(cd, &mut rs, &pod.id).await?;
    blocking(move || footprint.wait_gone()).await
}

// ---------------------------------------------------------------------------------------------
// shareProcessNamespace.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_runc() -> Result<()> {
    shared_pid_namespace(Runtime::Runc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_podcr() -> Result<()> {
    shared_pid_namespace(Runtime::Podcr).await
}

async fn shared_pid_namespace(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let name = format!("sharepid-{}", rt.handler());
    let pod =
        start_pod(cd, &mut rs, rt, &name, &image, true, &[("a", &["sleep", "601"]), ("b", &["sleep", "602"])]).await?;
    let (a, b) = (pod.container("a").to_string(), pod.container("b").to_string());
    let (pa, pb) = (container_pid(&mut rs, &a).await?, container_pid(&mut rs, &b).await?);
    ensure!(ns_inode(pa, "pid")? == ns_inode(pb, "pid")?, "the containers' PID namespaces differ");
    ensure!(ns_inode(pa, "pid")? != ns_inode(std::process::id(), "pid")?, "the pod uses the host's PID namespace");
    // Each container sees the other's process; PID 1 is the pod's anchor, not a container.
    for (c, other) in [(&a, "sleep 602"), (&b, "sleep 601")] {
        let ps = exec_ok(&mut rs, c, &["ps", "-o", "pid,args"]).await?;
        ensure!(ps.contains(other), "container {c} does not see `{other}`:\n{ps}");
        let pid1 = ps
            .lines()
            .find(|l| l.split_whitespace().next() == Some("1"))
            .with_context(|| format!("no PID 1 in:\n{ps}"))?;
        ensure!(!pid1.contains("sleep"), "PID 1 of the pod is a container process: {pid1}");
    }

    let footprint = PodFootprint::record(cd, &mut rs, &pod).await?;
    stop_and_remove(cd, &mut rs, &pod.id).await?;
    blocking(move || footprint.wait_gone()).await
}

// ---------------------------------------------------------------------------------------------
// containerd restarts under a running CRI pod.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_survives_containerd_restart_runc() -> Result<()> {
    cri_pod_survives_containerd_restart(Runtime::Runc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_survives_containerd_restart_podcr() -> Result<()> {
    cri_pod_survives_containerd_restart(Runtime::Podcr).await
}

async fn cri_pod_survives_containerd_restart(rt: Runtime) -> Result<()> {
    // A private containerd: restarting the shared one would disturb every other test.
    let cd: &'static Containerd = Box::leak(Box::new(blocking(Containerd::start).await?));
    let result = restart_flow(cd, rt).await;
    let stopped = blocking(move || cd.stop()).await;
    result.and(stopped)
}

async fn restart_flow(cd: &'static Containerd, rt: Runtime) -> Result<()> {
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let name = format!("restart-{}", rt.handler());
    let pod =
        start_pod(cd, &mut rs, rt, &name, &image, false, &[("app", &["/usr/local/bin/counter", "/count", "100"])])
            .await?;
    let app = pod.container("app").to_string();
    let before = PodFootprint::record(cd, &mut rs, &pod).await?;
    let app_pid = container_pid(&mut rs, &app).await?;

    blocking(move || cd.restart()).await?;

    // The CRI recovers its pods asynchronously after start-up; a fresh connection is needed.
    let mut rs = cd.cri_runtime().await?;
    let mut ready = false;
    for _ in 0..(T.as_millis() / 100) {
        if let Ok(s) = pod_status(&mut rs, &pod.id).await {
            if s.state == PodSandboxState::SandboxReady as i32 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(ready, "pod not READY after the restart: {:?}\n{}", pod_status(&mut rs, &pod.id).await, cd.log_tail(30));
    ensure!(
        container_pid(&mut rs, &app).await? == app_pid,
        "the container was restarted or lost across the containerd restart"
    );
    // Same shim, same anchor and container processes: nothing was re-created.
    for p in before.pids.iter().chain(&before.shim_pids) {
        ensure!(procs::alive(*p), "pod process {p} died across the restart");
    }
    let after: BTreeSet<u32> = procs_in_netns(before.netns_inode)?.iter().map(|p| p.pid).collect();
    ensure!(after == before.pids, "pod processes changed: {:?} -> {after:?}", before.pids);

    // containerd manages the pod again: exec reaches the container, the counter keeps counting.
    let n1: u64 = exec_ok(&mut rs, &app, &["cat", "/count"]).await?.parse()?;
    let mut advanced = false;
    for _ in 0..(T.as_millis() / 100) {
        let n2: u64 = exec_ok(&mut rs, &app, &["cat", "/count"]).await?.parse()?;
        if n2 > n1 {
            advanced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(advanced, "the counter stopped at {n1} after the restart");

    stop_and_remove(cd, &mut rs, &pod.id).await?;
    blocking(move || before.wait_gone()).await
}

// ---------------------------------------------------------------------------------------------
// `podcr sandbox run` + `ctr run --sandbox` + `ctr sandbox ls|rm`.

/// A network namespace made with `ip netns add`, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn add(name: &str) -> Result<NetNs> {
        podcr_tests::cmd::run_ok("ip", ["netns", "add", name])?;
        Ok(NetNs(name.to_string()))
    }
    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = podcr_tests::cmd::run_ok("ip", ["netns", "del", &self.0]);
    }
}

/// Removes a sandbox the test did not get to remove itself, so a failure leaves no shim behind.
struct SandboxGuard<'a> {
    cd: &'a Containerd,
    ns: String,
    id: String,
    armed: bool,
}

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = pods::podcr(self.cd, ["-n", &self.ns, "sandbox", "rm", "-f", &self.id]);
        }
    }
}

/// The row of `podcr sandbox ls` for `id`: (state, pid).
fn podcr_ls_row(cd: &Containerd, ns: &str, id: &str) -> Result<Option<(String, Option<u32>)>> {
    let out = pods::podcr(cd, ["-n", ns, "sandbox", "ls"])?;
    pods::ensure_success("podcr sandbox ls", &out)?;
    let header: Vec<&str> = out.stdout.lines().next().unwrap_or_default().split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (state_col, pid_col) = (col("STATE").context("no STATE column")?, col("PID").context("no PID column")?);
    Ok(out.stdout.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id))
            .then(|| (f.get(state_col).unwrap_or(&"").to_string(), f.get(pid_col).and_then(|p| p.parse().ok())))
    }))
}

#[test]
fn podcr_sandbox_with_ctr_netns() -> Result<()> {
    let cd = Containerd::shared()?;
    let netns = NetNs::add(&format!("{}-sbx", cd.prefix()))?;
    sandbox_with_ctr(cd, "sbx-netns", Some(&netns))
}

/// hostNetwork through the sandbox API (no CRI). On a private containerd: containerd 2.1.9 is
/// known to crash on hostNetwork shim sandboxes from the CRI, and a crash must not take the
/// shared one down with it.
#[test]
fn podcr_sandbox_with_ctr_host_network() -> Result<()> {
    let cd = Containerd::start()?;
    sandbox_with_ctr(&cd, "sbx-host", None)?;
    cd.stop()
}

fn sandbox_with_ctr(cd: &Containerd, test: &str, netns: Option<&NetNs>) -> Result<()> {
    let ns = cd.namespace(test);
    let image = ns.import(&images::BUSYBOX)?;
    let ctr = ns.ctr();
    let sb = format!("{test}-pod");
    let hostname = format!("{test}-host");

    let mut args =
        vec!["-n".to_string(), ns.name().into(), "sandbox".into(), "run".into(), "--hostname".into(), hostname.clone()];
    if let Some(n) = netns {
        args.extend(["--netns".into(), n.path().display().to_string()]);
    }
    args.push(sb.clone());
    let out = pods::podcr(cd, &args)?;
    pods::ensure_success("podcr sandbox run", &out)?;
    let mut guard = SandboxGuard { cd, ns: ns.name().to_string(), id: sb.clone(), armed: true };
    ensure!(out.stdout.trim() == sb, "podcr sandbox run printed {:?}", out.stdout);

    // ctr sees it; podcr reports it ready with the holder's pid.
    let ls = ctr.ok(["sandbox", "ls"])?;
    ensure!(ls.lines().any(|l| l.split_whitespace().next() == Some(sb.as_str())), "ctr sandbox ls:\n{ls}");
    let (state, holder) = podcr_ls_row(cd, ns.name(), &sb)?.context("podcr sandbox ls does not list it")?;
    ensure!(state == "SANDBOX_READY", "sandbox state {state}");
    let holder = holder.context("no sandbox pid")?;
    let holder_proc = procs::proc(holder).context("the reported sandbox pid is not a live process")?;
    ensure!(
        holder_proc.argv.iter().any(|a| a == "__podcr-holder"),
        "sandbox pid {holder} is not the holder: {:?}",
        holder_proc.argv
    );

    // Two containers in the sandbox. `--sandbox` only routes their tasks to the sandbox's shim;
    // unlike the CRI, ctr does not put them in the pod's namespaces, so say so as a user would:
    // through the holder (the pid the sandbox reports), as the CRI does through that pid.
    let port = ECHO_PORT.to_string();
    let with_ns: Vec<String> = ["network:net", "ipc:ipc", "uts:uts"]
        .iter()
        .flat_map(|s| {
            let (kind, file) = s.split_once(':').unwrap_or_default();
            ["--with-ns".to_string(), format!("{kind}:/proc/{holder}/ns/{file}")]
        })
        .collect();
    for (c, cmd) in [("echo", vec!["/usr/local/bin/tcp_echo", port.as_str()]), ("peer", vec!["sleep", "600"])] {
        let mut a = vec!["run", "-d", "--sandbox", &sb, "--runtime", Runtime::Podcr.runtime_type()];
        a.extend(with_ns.iter().map(String::as_str));
        a.extend([image.as_str(), c]);
        a.extend(cmd);
        ctr.ok(a)?;
    }
    let echo_task = ctr.wait_status("echo", "RUNNING", T)?;
    let peer_task = ctr.wait_status("peer", "RUNNING", T)?;

    // One shim serves the sandbox and both containers.
    let shims = shims_of_pod(cd, &[&sb, "echo", "peer"])?;
    ensure!(shims.len() == 1, "{} shims for one sandbox: {shims:#?}", shims.len());
    let shim = shims[0].pid;
    ensure!(holder_proc.ppid == shim, "the holder is not the shim's child");

    // The containers live in the holder's namespaces.
    for ns_kind in ["net", "ipc", "uts"] {
        let h = ns_inode(holder, ns_kind)?;
        ensure!(
            ns_inode(echo_task.pid, ns_kind)? == h && ns_inode(peer_task.pid, ns_kind)? == h,
            "containers are not in the sandbox's {ns_kind} namespace"
        );
    }
    let host_net = ns_inode(std::process::id(), "net")?;
    match netns {
        Some(n) => ensure!(
            ns_inode(holder, "net")? == std::fs::metadata(n.path())?.ino(),
            "the holder is not in {}",
            n.path().display()
        ),
        None => ensure!(ns_inode(holder, "net")? == host_net, "hostNetwork sandbox not in the host netns"),
    }
    if netns.is_some() {
        // Own UTS namespace with the pod hostname (hostNetwork pods share the host's).
        let h = ctr.ok(["task", "exec", "--exec-id", "h", "peer", "hostname"])?;
        ensure!(h.trim() == hostname, "hostname in the sandbox: {h:?}");
        // Only loopback exists in a fresh netns: bring it up, as a CNI plugin would.
        if let Some(n) = netns {
            podcr_tests::cmd::run_ok("ip", ["netns", "exec", &n.0, "ip", "link", "set", "lo", "up"])?;
        }
        let script = format!("echo from-peer | nc -w 3 127.0.0.1 {ECHO_PORT}");
        let out = wait_for("localhost echo between the containers", T, || {
            let o = ctr.run(["task", "exec", "--exec-id", "nc", "peer", "sh", "-c", &script])?;
            Ok((o.stdout.trim() == "from-peer").then_some(o.stdout))
        })?;
        ensure!(out.trim() == "from-peer");
    }

    // Tear down as a user would: tasks and containers, then `ctr sandbox rm`.
    for c in ["echo", "peer"] {
        ctr.ok(["task", "kill", "-s", "SIGKILL", c])?;
        ctr.wait_status(c, "STOPPED", T)?;
        ctr.ok(["task", "rm", c])?;
        ctr.ok(["container", "rm", c])?;
    }
    // The shim outlives its containers: the sandbox owns it.
    ensure!(procs::alive(shim) && procs::alive(holder), "shim or holder exited with the last container");
    ctr.ok(["sandbox", "rm", &sb])?;
    guard.armed = false;
    wait_until("shim and holder to exit", T, || Ok(!procs::alive(shim) && !procs::alive(holder)))?;
    let ls = ctr.ok(["sandbox", "ls"])?;
    ensure!(!ls.contains(&sb), "ctr sandbox ls still lists {sb}:\n{ls}");
    ensure!(podcr_ls_row(cd, ns.name(), &sb)?.is_none(), "podcr sandbox ls still lists {sb}");
    let m = mountinfo()?;
    ensure!(
        !m.contains(&sb),
        "mounts of {sb} left:\n{}",
        m.lines().filter(|l| l.contains(&sb)).collect::<Vec<_>>().join("\n")
    );
    if netns.is_none() {
        // Nothing else pinned the host's namespaces; make sure the host is untouched.
        ensure!(ns_inode(std::process::id(), "net")? == host_net);
    }
    drop(ns);
    Ok(())
}
