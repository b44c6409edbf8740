//! Restore under a kubelet (issue 12): these tests play the kubelet's part through containerd's
//! CRI exactly as a kubelet drives it (RunPodSandbox with the pod's labels and annotations in the
//! PodSandboxConfig, CreateContainer + StartContainer per container with kubelet-like configs and
//! log paths, StopPodSandbox + RemovePodSandbox), against real containerd, runc and CRIU. A pod
//! with `podcr.io/restore-from: <checkpoint name>` comes up restored in place with those calls and
//! nothing else; `podcr restore` acts as a caller that grants nothing the operator did not; and
//! edited checkpoints get no more than the caller grants on either path.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{
    CheckpointContainerRequest, ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest, ImageSpec,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest,
    SecurityProfile, StartContainerRequest,
};
use podcr_tests::{
    cri_pod::{CheckpointPodRequest, RestorePodRequest},
    faults, images, node_config,
    pods::{self, Cri},
    upstream::{self, Upstream},
    Containerd, Runtime, CRI_NAMESPACE,
};

const T: Duration = Duration::from_secs(60);
const NS: &str = "kr-team";
const RESTORE_FROM: &str = "podcr.io/restore-from";
/// Keeps a random token in a shell's memory (rewritten to /token every second) next to an
/// in-memory counter: after a restore both go on; after a fresh start both begin anew.
const APP: &[&str] = &[
    "sh",
    "-c",
    "T=$(cat /proc/sys/kernel/random/uuid); { while :; do echo \"$T\" > /token; sleep 1; done & } ; exec /usr/local/bin/counter /count 100",
];
const SIDE: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
/// Every capability containerd's CRI gives a container that asks for none (the kubelet's default).
const DEFAULT_CAP_MASK: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 27)
    | (1 << 29)
    | (1 << 31);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn import(cd: &'static Containerd) -> Result<String> {
    blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await
}

fn seconds_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The PodSandboxConfig a kubelet sends for pod `name` of namespace `ns` with uid `uid`: the
/// pod's labels and annotations copied in, the kubelet's log directory layout (under the run's
/// pod log root), a cgroup parent inside the run.
fn kubelet_pod(
    cd: &Containerd,
    name: &str,
    ns: &str,
    uid: &str,
    annotations: &[(&str, &str)],
) -> Result<PodSandboxConfig> {
    let log_dir = node_config::pod_log_root(cd.dir()).join(format!("{ns}_{name}_{uid}"));
    std::fs::create_dir_all(&log_dir)?;
    let mut anns: HashMap<String, String> =
        [("kubernetes.io/config.source", "api"), ("kubernetes.io/config.seen", "2026-12-07T03:00:00.000000000Z")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    anns.extend(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata { name: name.into(), uid: uid.into(), namespace: ns.into(), attempt: 0 }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: [
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", ns),
            ("io.kubernetes.pod.uid", uid),
            ("app", name),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        annotations: anns,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}-pods/{name}-{uid}", cd.prefix()),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pods::kubelet_namespaces()),
                seccomp: Some(SecurityProfile { profile_type: 1, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The ContainerConfig a kubelet sends (seccomp Unconfined as with the kubelet's default, the
/// kubelet's labels and annotations, `<name>/<attempt>.log`, resources).
fn kubelet_container(pod: &PodSandboxConfig, name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let meta = pod.metadata.clone().unwrap_or_default();
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), user_specified_image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: vec![KeyValue { key: "KUBERNETES_SERVICE_HOST".into(), value: "10.96.0.1".into() }],
        log_path: format!("{name}/0.log"),
        labels: [
            ("io.kubernetes.container.name", name),
            ("io.kubernetes.pod.name", meta.name.as_str()),
            ("io.kubernetes.pod.namespace", meta.namespace.as_str()),
            ("io.kubernetes.pod.uid", meta.uid.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        annotations: [("io.kubernetes.container.hash", "5e1c"), ("io.kubernetes.container.restartCount", "0")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources { cpu_shares: 2, oom_score_adj: 1000, ..Default::default() }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pods::kubelet_namespaces()),
                seccomp: Some(SecurityProfile { profile_type: 1, ..Default::default() }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A pod as the kubelet runs it: RunPodSandbox, then CreateContainer + StartContainer for each
/// container in order. A container whose create or start fails is reported, not fatal: the
/// kubelet carries on with the others.
struct KubeletPod {
    id: String,
    config: PodSandboxConfig,
    /// name → container id, or the error StartContainer (or CreateContainer) returned.
    containers: Vec<(String, Result<String, String>)>,
}

impl KubeletPod {
    fn id_of(&self, name: &str) -> Result<&str> {
        match self.containers.iter().find(|(n, _)| n == name) {
            Some((_, Ok(id))) => Ok(id),
            Some((_, Err(e))) => bail!("container {name} did not start: {e}"),
            None => bail!("no container {name}"),
        }
    }

    fn error_of(&self, name: &str) -> Option<&str> {
        self.containers.iter().find(|(n, _)| n == name).and_then(|(_, r)| r.as_ref().err().map(String::as_str))
    }

    fn log(&self, name: &str) -> PathBuf {
        Path::new(&self.config.log_directory).join(name).join("0.log")
    }
}

async fn run_kubelet_pod(
    cd: &Containerd,
    rs: &mut Cri,
    config: PodSandboxConfig,
    containers: Vec<ContainerConfig>,
) -> Result<KubeletPod> {
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let id = rs
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: Runtime::Podcr.handler().into(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name}\n{}", cd.log_tail(20)))?
        .into_inner()
        .pod_sandbox_id;
    let mut pod = KubeletPod { id, config, containers: Vec::new() };
    for c in containers {
        let cname = c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        if let Some(dir) = pod.log(&cname).parent() {
            std::fs::create_dir_all(dir)?;
        }
        let created = rs
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(c),
                sandbox_config: Some(pod.config.clone()),
            })
            .await;
        let result = match created {
            Err(e) => Err(format!("CreateContainer: {}", e.message())),
            Ok(r) => {
                let cid = r.into_inner().container_id;
                match rs.start_container(StartContainerRequest { container_id: cid.clone() }).await {
                    Ok(_) => Ok(cid),
                    Err(e) => Err(format!("StartContainer: {}", e.message())),
                }
            }
        };
        pod.containers.push((cname, result));
    }
    Ok(pod)
}

use podcr_tests::pods::exec;

async fn token(rs: &mut Cri, container: &str) -> Result<String> {
    let deadline = Instant::now() + T;
    loop {
        let (code, out) = exec(rs, container, &["cat", "/token"]).await?;
        if code == 0 && out.len() == 36 {
            return Ok(out);
        }
        ensure!(Instant::now() < deadline, "no token in {container}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_count(log: PathBuf, n: u64) -> Result<u64> {
    blocking(move || pods::wait_count(&log, n, T)).await
}

async fn first_count(log: PathBuf) -> Result<u64> {
    blocking(move || {
        podcr_tests::wait_for(&format!("output in {}", log.display()), T, || Ok(pods::counts(&log).first().copied()))
    })
    .await
}

fn task_pid(cd: &Containerd, id: &str) -> Result<u32> {
    cd.ctr(CRI_NAMESPACE).task(id)?.map(|t| t.pid).with_context(|| format!("no task {id}"))
}

/// The capabilities (effective, permitted, bounding) a process in the container holds, as read
/// by a process exec'd into it: `/proc/1/status` is the restored init, `/proc/self/status` the
/// exec'd process.
async fn caps(rs: &mut Cri, container: &str, status: &str) -> Result<u64> {
    let (code, out) = exec(rs, container, &["cat", status]).await?;
    ensure!(code == 0, "cat {status} in {container}");
    let mut all = 0u64;
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let v = out.lines().find_map(|l| l.strip_prefix(field)).with_context(|| format!("no {field} in {status}"))?;
        all |= u64::from_str_radix(v.trim(), 16)?;
    }
    Ok(all)
}

/// Asserts that no process of the container (its init, and a process exec'd into it) holds a
/// capability beyond containerd's default set, and that nothing of the host is mounted.
async fn holds_only_what_was_granted(rs: &mut Cri, container: &str) -> Result<()> {
    for status in ["/proc/1/status", "/proc/self/status"] {
        let held = caps(rs, container, status).await?;
        ensure!(
            held & !DEFAULT_CAP_MASK == 0,
            "{status} of {container} holds capabilities {:#x} beyond the granted {DEFAULT_CAP_MASK:#x}",
            held
        );
    }
    let (_, mounts) = exec(rs, container, &["cat", "/proc/self/mountinfo"]).await?;
    ensure!(
        !mounts.lines().any(|l| l.split_whitespace().nth(4) == Some("/host")),
        "a host path is mounted at /host in {container}:\n{mounts}"
    );
    Ok(())
}

fn checkpoint_named(cd: &Containerd, prefix: &str) -> Result<String> {
    let root = &node_config::checkpoint_roots(cd.dir())[0];
    let names: Vec<String> = pods::dir_entries(root)?.into_iter().filter(|n| n.starts_with(prefix)).collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one checkpoint {prefix}* in {}, found {other:?}", root.display()),
    }
}

async fn podcr(cd: &'static Containerd, args: Vec<String>) -> Result<podcr_tests::Output> {
    blocking(move || pods::podcr(cd, args)).await
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Items 3 and 4 of the issue, the kubelet flow end to end: checkpoint (--leave-running, to the
/// KEP's default place), remove, and a new pod with `podcr.io/restore-from` comes up restored
/// through RunPodSandbox/CreateContainer/StartContainer alone; a container not in the checkpoint
/// starts fresh, one whose config disagrees fails to start with the reason and leaves the others
/// alone; CRI CheckpointContainer still writes an archive checkpointctl reads; and the restored
/// pod still runs 60 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_with_restore_from_comes_up_restored() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let name = "kr-web";
    let src_cfg = kubelet_pod(cd, name, NS, "uid-src", &[])?;
    let configs = |pod: &PodSandboxConfig| {
        vec![kubelet_container(pod, "app", &image, APP), kubelet_container(pod, "side", &image, SIDE)]
    };
    let src = run_kubelet_pod(cd, &mut rs, src_cfg.clone(), configs(&src_cfg)).await?;
    let (app, side) = (src.id_of("app")?.to_string(), src.id_of("side")?.to_string());
    wait_count(src.log("app"), 10).await?;
    wait_count(src.log("side"), 10).await?;
    let token_before = token(&mut rs, &app).await?;
    let pids = (task_pid(cd, &app)?, task_pid(cd, &side)?);

    let before_checkpoint = pods::last_count(&src.log("app")).context("no app count")?;
    let out = podcr(cd, s(&["checkpoint", "--leave-running", "--pod-namespace", NS, name])).await?;
    pods::ensure_success("podcr checkpoint (default output)", &out)?;
    let ckpt = checkpoint_named(cd, &format!("checkpoint-{name}_{NS}-"))?;
    let at_checkpoint = pods::last_count(&src.log("app")).context("no app count")?;
    // --leave-running: the same processes go on counting.
    wait_count(src.log("app"), at_checkpoint + 5).await?;
    ensure!(
        (task_pid(cd, &app)?, task_pid(cd, &side)?) == pids,
        "the checkpointed containers are not the same processes"
    );
    ensure!(pods::all_running(&mut rs, &src.id).await?, "a container stopped after the checkpoint");
    let before_removal = pods::last_count(&src.log("app")).context("no app count")?;
    pods::remove_pod(&mut rs, &src.id).await?;

    // The kubelet creates the pod again with the annotation: the same configs, plus a container
    // the checkpoint does not have.
    let dst_cfg = kubelet_pod(cd, name, NS, "uid-dst", &[(RESTORE_FROM, &ckpt)])?;
    let mut dst_containers = configs(&dst_cfg);
    dst_containers.push(kubelet_container(&dst_cfg, "fresh", &image, SIDE));
    let dst = run_kubelet_pod(cd, &mut rs, dst_cfg.clone(), dst_containers).await?;
    let up = Instant::now();
    let app2 = dst.id_of("app")?.to_string();
    dst.id_of("side")?;
    dst.id_of("fresh")?;
    let first = first_count(dst.log("app")).await?;
    ensure!(
        first >= before_checkpoint && first <= at_checkpoint + 1 && first <= before_removal + 1,
        "the restored app starts at {first}; the checkpoint was taken between {before_checkpoint} and {at_checkpoint}"
    );
    let side_first = first_count(dst.log("side")).await?;
    ensure!(side_first > 10, "the restored side starts at {side_first}: it started fresh");
    let fresh_first = first_count(dst.log("fresh")).await?;
    ensure!(fresh_first <= 2, "a container not in the checkpoint starts at {fresh_first}, not fresh");
    ensure!(token(&mut rs, &app2).await? == token_before, "the restored app's in-memory token changed: it restarted");
    let dst_pids = (task_pid(cd, &app2)?, task_pid(cd, dst.id_of("side")?)?);
    holds_only_what_was_granted(&mut rs, &app2).await?;

    // The kubelet's container checkpoint API (CRI CheckpointContainer) on a podcr container.
    let tar = cd.dir().join("kr-fresh-checkpoint.tar");
    rs.checkpoint_container(CheckpointContainerRequest {
        container_id: dst.id_of("fresh")?.to_string(),
        location: tar.display().to_string(),
        timeout: 120,
    })
    .await
    .with_context(|| format!("CRI CheckpointContainer\n{}", cd.log_tail(20)))?;
    let show = blocking({
        let tar = tar.clone();
        move || podcr_tests::cmd::run_ok("checkpointctl", ["show".as_ref(), tar.as_os_str()])
    })
    .await?;
    ensure!(
        show.stdout.contains("fresh"),
        "checkpointctl show does not read the container checkpoint:\n{}",
        show.stdout
    );
    // Handed to `podcr restore`, that container checkpoint is named for what it is.
    let out = podcr(cd, s(&["restore", &tar.display().to_string(), "--name", "kr-not-a-pod"])).await?;
    ensure!(
        !out.success() && out.stderr.contains("single container's checkpoint"),
        "podcr restore of a container checkpoint: {out:?}"
    );
    ensure!(pods::find_pod(&mut rs, "kr-not-a-pod").await?.is_none(), "a refused restore made a pod");

    // A second pod from the same checkpoint whose side container runs another command: that
    // container's start fails with the reason; app is restored and runs.
    let bad_cfg = kubelet_pod(cd, "kr-web-2", NS, "uid-bad", &[(RESTORE_FROM, &ckpt)])?;
    let mut bad_containers = configs(&bad_cfg);
    bad_containers[1] = kubelet_container(&bad_cfg, "side", &image, &["/usr/local/bin/counter", "/other", "100"]);
    let bad = run_kubelet_pod(cd, &mut rs, bad_cfg, bad_containers).await?;
    let reason =
        bad.error_of("side").context("a side container that disagrees with the checkpoint started")?.to_string();
    ensure!(reason.contains("command") && reason.contains("side"), "the failure does not say why: {reason}");
    eprintln!("a disagreeing container's start failed: {reason}");
    let bad_app = bad.id_of("app")?.to_string();
    ensure!(first_count(bad.log("app")).await? > 10, "the app next to a refused container was not restored");
    ensure!(token(&mut rs, &bad_app).await? == token_before, "the second restore's app token differs");
    pods::remove_pod(&mut rs, &bad.id).await?;

    // Another image: refused the same way.
    let other_cfg = kubelet_pod(cd, "kr-web-3", NS, "uid-img", &[(RESTORE_FROM, &ckpt)])?;
    let pause = blocking(move || cd.import(CRI_NAMESPACE, &images::PAUSE)).await?;
    let other =
        run_kubelet_pod(cd, &mut rs, other_cfg.clone(), vec![kubelet_container(&other_cfg, "side", &pause, SIDE)])
            .await?;
    let reason = other.error_of("side").context("a container of another image started")?.to_string();
    ensure!(reason.contains("image"), "the failure does not name the image: {reason}");
    pods::remove_pod(&mut rs, &other.id).await?;

    // Still running, in the same processes, a minute after it came up.
    let left = Duration::from_secs(60).saturating_sub(up.elapsed());
    tokio::time::sleep(left).await;
    ensure!(
        pods::all_running(&mut rs, &dst.id).await?,
        "the restored pod stopped: {:?}",
        pods::container_states(&mut rs, &dst.id).await?
    );
    ensure!(
        (task_pid(cd, &app2)?, task_pid(cd, dst.id_of("side")?)?) == dst_pids,
        "the restored containers were restarted"
    );
    let later = pods::last_count(&dst.log("app")).context("no count")?;
    wait_count(dst.log("app"), later + 3).await?;
    pods::remove_pod(&mut rs, &dst.id).await?;
    Ok(())
}

/// A canary file outside every directory of the test, whose content and mtime must not change.
struct Canary {
    path: PathBuf,
    content: Vec<u8>,
    mtime: SystemTime,
}

impl Canary {
    fn new(name: &str) -> Result<Canary> {
        let dir = std::env::temp_dir().join(format!("podcr-canary-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("x.sh");
        let content = format!("# canary {name} {}\n", seconds_now()).into_bytes();
        std::fs::write(&path, &content)?;
        let mtime = std::fs::metadata(&path)?.modified()?;
        Ok(Canary { path, content, mtime })
    }

    fn unchanged(&self) -> Result<()> {
        let now = std::fs::read(&self.path)?;
        ensure!(now == self.content, "{} was written to: {:?}", self.path.display(), String::from_utf8_lossy(&now));
        ensure!(std::fs::metadata(&self.path)?.modified()? == self.mtime, "{} was touched", self.path.display());
        Ok(())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The edits of a hostile checkpoint: each makes the archive ask for more than a caller grants.
#[derive(Clone, Copy, Debug)]
enum Edit {
    Privileged,
    AddedCapability,
    HostRoot,
    LogPathOutside,
}

fn apply(edit: Edit, dir: &Path, canary: &Canary) -> Result<()> {
    let archive = "app.tar";
    match edit {
        Edit::Privileged => {
            faults::edit_pod_json(dir, "pod.dump", |p| p["linux"]["security_context"]["privileged"] = true.into())?;
            faults::edit_member_json(dir, archive, "container-config.dump", |c| {
                c["linux"]["security_context"]["privileged"] = true.into();
            })?;
            faults::edit_member_json(dir, archive, "spec.dump", |s| {
                for set in ["bounding", "effective", "permitted"] {
                    s["process"]["capabilities"][set] =
                        serde_json::json!(["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_CHOWN"]);
                }
            })
        }
        Edit::AddedCapability => {
            faults::edit_member_json(dir, archive, "container-config.dump", |c| {
                c["linux"]["security_context"]["capabilities"] = serde_json::json!({"add_capabilities": ["SYS_ADMIN"]});
            })?;
            faults::edit_member_json(dir, archive, "spec.dump", |s| {
                if let Some(b) = s["process"]["capabilities"]["bounding"].as_array_mut() {
                    b.push("CAP_SYS_ADMIN".into());
                }
            })
        }
        Edit::HostRoot => faults::edit_member_json(dir, archive, "container-config.dump", |c| {
            c["mounts"] = serde_json::json!([{"container_path": "/host", "host_path": "/", "readonly": false}]);
        }),
        Edit::LogPathOutside => {
            let target = canary.path.display().to_string();
            faults::edit_pod_json(dir, "pod.dump", |p| p["log_directory"] = "/".into())?;
            faults::edit_member_json(dir, archive, "container-config.dump", |c| {
                c["log_path"] = target.trim_start_matches('/').into()
            })
        }
    }
}

/// Item 4's edited checkpoints (manifest re-hashed, so they pass every integrity check) asking for
/// privileged, an added capability, a hostPath of `/`, or a log path outside the pod's log
/// directory: on both paths they are refused naming the field, or restored with only what the
/// caller granted; no process holds an ungranted capability, no host path is mounted and the
/// canary outside the test's directories is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_checkpoints_get_only_what_the_caller_grants() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let name = "kr-edit";
    let src_cfg = kubelet_pod(cd, name, NS, "uid-edit", &[])?;
    let src =
        run_kubelet_pod(cd, &mut rs, src_cfg.clone(), vec![kubelet_container(&src_cfg, "app", &image, SIDE)]).await?;
    src.id_of("app")?;
    wait_count(src.log("app"), 5).await?;
    let base = cd.dir().join("kr-edit-base");
    let out = podcr(cd, s(&["checkpoint", "--pod-namespace", NS, name, "-o", &base.display().to_string()])).await?;
    pods::ensure_success("podcr checkpoint", &out)?;
    pods::remove_pod(&mut rs, &src.id).await?;

    let root = node_config::checkpoint_roots(cd.dir())[1].clone();
    let canary = Canary::new("edit")?;
    // Only this test's pods: the others in this binary run beside it on the same containerd.
    let ours = |items: Vec<k8s_cri::v1::PodSandbox>| {
        items
            .into_iter()
            .filter(|p| {
                p.metadata.as_ref().is_some_and(|m| m.name.starts_with("kr-cli-") || m.name.starts_with("kr-ann-"))
            })
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    let pods_before = ours(rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items);
    for (i, edit) in
        [Edit::Privileged, Edit::AddedCapability, Edit::HostRoot, Edit::LogPathOutside].into_iter().enumerate()
    {
        let ckpt = format!("kr-edited-{i}");
        let dir = root.join(&ckpt);
        faults::copy_dir(&base, &dir)?;
        apply(edit, &dir, &canary)?;
        faults::verify_checkpoint_dir(&dir)?;
        let refused_field = match edit {
            Edit::Privileged => Some("privileged"),
            Edit::AddedCapability => Some("capabilities"),
            Edit::HostRoot | Edit::LogPathOutside => None,
        };

        // podcr restore: the caller grants nothing the archive asks for.
        let restored_name = format!("kr-cli-{i}");
        let out = podcr(cd, s(&["restore", &dir.display().to_string(), "--name", &restored_name])).await?;
        let listed = pods::find_pod(&mut rs, &restored_name).await?;
        match refused_field {
            Some(field) => {
                ensure!(!out.success(), "{edit:?}: podcr restore succeeded");
                ensure!(
                    out.stderr.contains(field) && out.stderr.contains("--container-config"),
                    "{edit:?}: the refusal does not name {field} and how to grant it:\n{}",
                    out.stderr
                );
                ensure!(listed.is_none(), "{edit:?}: a refused podcr restore created a pod");
                eprintln!("{edit:?}: podcr restore refused: {}", out.stderr.trim());
            }
            None => {
                pods::ensure_success(&format!("podcr restore of {edit:?}"), &out)?;
                let pod = listed.context("restored pod not listed")?;
                let ids = pods::container_states(&mut rs, &pod).await?;
                ensure!(ids.iter().all(|(_, s)| *s == ContainerState::ContainerRunning as i32), "{edit:?}: {ids:?}");
                let app = container_id(&mut rs, &pod, "app").await?;
                holds_only_what_was_granted(&mut rs, &app).await?;
                let log = pods::log_path(&mut rs, &app).await?;
                ensure!(
                    log.starts_with(node_config::pod_log_root(cd.dir())),
                    "{edit:?}: the restored app logs to {}",
                    log.display()
                );
                wait_count(log, 5).await?;
                pods::remove_pod(&mut rs, &pod).await?;
            }
        }

        // The annotation: the kubelet's configs are the request.
        let pod_cfg = kubelet_pod(cd, &format!("kr-ann-{i}"), NS, &format!("uid-ann-{i}"), &[(RESTORE_FROM, &ckpt)])?;
        let pod = run_kubelet_pod(cd, &mut rs, pod_cfg.clone(), vec![kubelet_container(&pod_cfg, "app", &image, SIDE)])
            .await?;
        match refused_field {
            Some(field) => {
                let reason = pod.error_of("app").with_context(|| format!("{edit:?}: the container started"))?;
                ensure!(reason.contains(field), "{edit:?}: the start failure does not name {field}: {reason}");
                eprintln!("{edit:?}: the annotation restore's StartContainer failed: {reason}");
            }
            None => {
                let app = pod.id_of("app")?.to_string();
                ensure!(first_count(pod.log("app")).await? > 3, "{edit:?}: the container was not restored");
                holds_only_what_was_granted(&mut rs, &app).await?;
            }
        }
        pods::remove_pod(&mut rs, &pod.id).await?;
        canary.unchanged().with_context(|| format!("after {edit:?}"))?;
    }
    let pods_after = ours(rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items);
    ensure!(pods_after == pods_before, "pods were left behind: {pods_before:?} before, {pods_after:?} after");
    canary.unchanged()
}

use podcr_tests::pods::container_id;

/// Item 3's name rules: a restore-from naming `..`, an absolute path, a symlink out of the
/// checkpoint root, or a checkpoint of another Kubernetes namespace is refused at RunPodSandbox,
/// before any of the pod exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_names_outside_the_roots_or_namespace_are_refused() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    // A real checkpoint of a pod in another namespace, outside the roots.
    let other_ns = "kr-elsewhere";
    let src_cfg = kubelet_pod(cd, "kr-theirs", other_ns, "uid-theirs", &[])?;
    let src =
        run_kubelet_pod(cd, &mut rs, src_cfg.clone(), vec![kubelet_container(&src_cfg, "app", &image, SIDE)]).await?;
    src.id_of("app")?;
    wait_count(src.log("app"), 3).await?;
    let outside = cd.dir().join("kr-outside-root");
    let out =
        podcr(cd, s(&["checkpoint", "--pod-namespace", other_ns, "kr-theirs", "-o", &outside.display().to_string()]))
            .await?;
    pods::ensure_success("podcr checkpoint", &out)?;
    pods::remove_pod(&mut rs, &src.id).await?;
    let root = node_config::checkpoint_roots(cd.dir())[0].clone();
    std::os::unix::fs::symlink(&outside, root.join("kr-link-out"))?;
    faults::copy_dir(&outside, &root.join("kr-theirs-copy"))?;

    let cases = [
        ("..", "leaves the checkpoint root"),
        ("../../kr-outside-root", "leaves the checkpoint root"),
        (outside.to_str().context("path")?, "absolute path"),
        ("kr-link-out", "symlink"),
        ("kr-theirs-copy", other_ns),
        ("kr-no-such-checkpoint", "no checkpoint"),
    ];
    for (i, (value, want)) in cases.iter().enumerate() {
        let cfg = kubelet_pod(cd, &format!("kr-name-{i}"), NS, &format!("uid-name-{i}"), &[(RESTORE_FROM, value)])?;
        let res = rs
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: Runtime::Podcr.handler().into(),
            })
            .await;
        let err = match res {
            Ok(r) => {
                let id = r.into_inner().pod_sandbox_id;
                pods::remove_pod(&mut rs, &id).await?;
                bail!("a pod with {RESTORE_FROM}: {value:?} was created");
            }
            Err(e) => e.message().to_string(),
        };
        ensure!(
            err.contains(RESTORE_FROM) && err.contains(want),
            "{value:?}: the refusal does not say {want:?}: {err}"
        );
        eprintln!("{RESTORE_FROM}: {value:?} refused: {err}");
    }
    // Only this test's pods: the others in this binary run beside it on the same containerd.
    let left = pods_named(&mut rs, "kr-name-").await?;
    ensure!(left.is_empty(), "refused pods were left behind: {left:?}");
    Ok(())
}

/// The CRI pods whose names start with `prefix`.
async fn pods_named(rs: &mut Cri, prefix: &str) -> Result<Vec<String>> {
    let items = rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    Ok(items
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name.starts_with(prefix)))
        .map(|p| p.id)
        .collect())
}

/// Item 1 on the wire: CRI `RestorePod` through containerd built from PR 13822 (the shim's
/// `Checkpoint.Restore` gets the request's configs) and PR 13971 (`RestoreSandbox`, the tasks'
/// specs). A request whose command disagrees with the checkpoint, and a checkpoint edited to need
/// a capability the request does not grant, are refused naming the field, and no pod is left.
async fn restore_pod_holds_the_checkpoint_to_the_request(build: Upstream, test: &str) -> Result<()> {
    let Some(daemon) = upstream::daemon(build, test)? else { return Ok(()) };
    let cd: &'static Containerd = Box::leak(Box::new(blocking(move || Containerd::start_with(daemon)).await?));
    let result = async {
        let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
        let mut rs = cd.cri_runtime().await?;
        let mut cr = cd.cri_pods().await?;
        let name = format!("kr-wire-{}", build.build());
        let src_cfg = kubelet_pod(cd, &name, NS, "uid-wire", &[])?;
        let src = run_kubelet_pod(cd, &mut rs, src_cfg.clone(), vec![kubelet_container(&src_cfg, "app", &image, SIDE)])
            .await?;
        let app = src.id_of("app")?.to_string();
        wait_count(src.log("app"), 5).await?;
        let out = cd.dir().join(format!("{name}-ckpt"));
        std::fs::create_dir(&out)?;
        cr.checkpoint_pod(with_deadline(
            CheckpointPodRequest {
                pod_sandbox_id: src.id.clone(),
                output_path: out.display().to_string(),
                container_ids: vec![app],
                options: HashMap::new(),
            },
            Duration::from_secs(120),
        ))
        .await
        .context("CheckpointPod")?;
        pods::remove_pod(&mut rs, &src.id).await?;
        let edited = cd.dir().join(format!("{name}-edited"));
        faults::copy_dir(&out, &edited)?;
        faults::edit_member_json(&edited, "app.tar", "spec.dump", |s| {
            if let Some(b) = s["process"]["capabilities"]["bounding"].as_array_mut() {
                b.push("CAP_SYS_ADMIN".into());
            }
        })?;
        for (i, (ckpt, command, field)) in
            [(&out, &["/usr/local/bin/counter", "/other", "100"][..], "command"), (&edited, SIDE, "capabilities")]
                .into_iter()
                .enumerate()
        {
            let cfg = kubelet_pod(cd, &format!("{name}-{i}"), NS, &format!("uid-wire-{i}"), &[])?;
            let err = cr
                .restore_pod(with_deadline(
                    RestorePodRequest {
                        checkpoint_path: ckpt.display().to_string(),
                        config: Some(cfg.clone()),
                        runtime_handler: Runtime::Podcr.handler().into(),
                        options: HashMap::new(),
                        container_configs: vec![kubelet_container(&cfg, "app", &image, command)],
                    },
                    Duration::from_secs(120),
                ))
                .await
                .err()
                .with_context(|| format!("RestorePod that needs {field} succeeded"))?;
            ensure!(err.message().contains(field), "{test}: RestorePod refusal does not name {field}: {err:?}");
            eprintln!("{test}: RestorePod refused: {}", err.message());
            let left = pods_named(&mut rs, &format!("{name}-{i}")).await?;
            ensure!(left.is_empty(), "{test}: a refused RestorePod left a pod: {left:?}");
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        eprintln!("{test} failed: {e:#}\ncontainerd log tail:\n{}", cd.log_tail(40));
    }
    let stopped = blocking(move || cd.stop()).await;
    result.and(stopped)
}

fn with_deadline<M>(msg: M, deadline: Duration) -> tonic::Request<M> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(deadline);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr13822_restore_pod_holds_the_checkpoint_to_the_request() -> Result<()> {
    restore_pod_holds_the_checkpoint_to_the_request(
        Upstream::Pr13822,
        "pr13822_restore_pod_holds_the_checkpoint_to_the_request",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr13971_restore_pod_holds_the_checkpoint_to_the_request() -> Result<()> {
    restore_pod_holds_the_checkpoint_to_the_request(
        Upstream::Pr13971,
        "pr13971_restore_pod_holds_the_checkpoint_to_the_request",
    )
    .await
}
