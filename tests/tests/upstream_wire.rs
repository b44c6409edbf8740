//! The upstream wire: CRI `CheckpointPod` / `RestorePod` (cri-api master, Kubernetes 1.37) sent to
//! containerd built from the two open pod checkpoint/restore PRs, each reaching podcr through its
//! own sandbox API design:
//!
//! - PR 13822: the CRI calls the shim's `containerd.runtime.sandbox.v1.Checkpoint` service;
//! - PR 13971: the CRI calls `CheckpointSandbox` / `RestoreSandbox` on the Sandbox service and
//!   adopts the tasks the shim restored.
//!
//! The same assertions for both: a running two-container podcr pod is checkpointed into an empty
//! directory with a deadline and the empty options map the alpha kubelet sends; the pod keeps
//! running, unfrozen; a second call into the now non-empty directory is refused; a checkpoint cut
//! short by its deadline leaves nothing behind; `RestorePod` makes a new pod whose containers are
//! CREATED, and after `StartContainer` the counter goes on from the checkpoint and the in-memory
//! token is the same. Without `../shared/upstream/` each test prints one `SKIP:` line.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, PodSandboxConfig, StartContainerRequest,
};
use podcr_tests::{
    cri,
    cri_pod::{CheckpointPodRequest, RestorePodRequest},
    images,
    pods::{self, Cri},
    upstream::{self, Upstream},
    wait_for, Containerd, Runtime, CRI_NAMESPACE,
};
use tonic::{Code, Request};

const T: Duration = Duration::from_secs(60);
const COUNTER: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
/// A random token kept only in the shell's memory, printed every second.
const TOKEN: &[&str] =
    &["sh", "-c", "tok=$(cat /proc/sys/kernel/random/uuid); while :; do echo \"token $tok\"; sleep 1; done"];

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Every token a `TOKEN` container printed, from its CRI log.
fn tokens(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(" stdout F token ").map(|(_, t)| t.trim().to_string()))
        .collect()
}

/// The container configs `pods::run_pod` creates, for RestorePod's `container_configs`.
fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut c = cri::container_config(name, image, command);
    c.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(pods::kubelet_namespaces()),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

fn pod_config(cd: &Containerd, name: &str) -> Result<PodSandboxConfig> {
    let mut config = cd.pod_config(name)?;
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(pods::kubelet_namespaces()),
            ..Default::default()
        });
    }
    Ok(config)
}

fn with_deadline<T>(msg: T, deadline: Duration) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(deadline);
    req
}

/// The pod still runs and is not frozen: every container RUNNING and both workloads go on.
async fn still_running(rs: &mut Cri, pod: &pods::Pod, what: &str) -> Result<()> {
    ensure!(
        pods::all_running(rs, &pod.id).await?,
        "{what}: the pod's containers are not all running: {:?}",
        pods::container_states(rs, &pod.id).await?
    );
    let (counter, token) = (pod.log("counter"), pod.log("token"));
    let from = pods::last_count(&counter).unwrap_or(0);
    let seen = tokens(&token).len();
    blocking(move || {
        pods::wait_advances(&counter, from, T)?;
        wait_for("the token container to print again", T, || Ok((tokens(&token).len() > seen).then_some(())))
    })
    .await
    .with_context(|| format!("{what}: the pod does not run on (frozen?)"))
}

fn dir_is_empty(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

async fn checkpoint_and_restore_through_the_cri(build: Upstream, test: &str, nri: bool) -> Result<()> {
    let Some(mut daemon) = upstream::daemon(build, test)? else {
        return Ok(());
    };
    daemon.nri = nri;
    let cd: &'static Containerd = Box::leak(Box::new(blocking(move || Containerd::start_with(daemon)).await?));
    let result = run(cd, build, nri).await;
    if let Err(e) = &result {
        eprintln!("{test} failed: {e:#}\ncontainerd ({}) log tail:\n{}", cd.daemon().name, cd.log_tail(40));
    }
    let stopped = cd.stop();
    result?;
    stopped
}

async fn run(cd: &'static Containerd, build: Upstream, nri: bool) -> Result<()> {
    let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
    let mut rs = cd.cri_runtime().await?;
    let mut cr = cd.cri_pods().await?;
    let name = format!("wire-{}{}", build.build(), if nri { "-nri" } else { "" });
    let pod =
        pods::run_pod(cd, &mut rs, Runtime::Podcr, &name, &image, &[("counter", COUNTER), ("token", TOKEN)]).await?;
    let (counter_log, token_log) = (pod.log("counter"), pod.log("token"));
    {
        let (c, t) = (counter_log.clone(), token_log.clone());
        blocking(move || {
            pods::wait_count(&c, 10, T)?;
            wait_for("a token", T, || Ok(tokens(&t).first().cloned()))
        })
        .await?;
    }
    let token = tokens(&token_log).first().cloned().context("no token")?;
    let ids: Vec<String> = pod.containers.iter().map(|(_, id)| id.clone()).collect();

    // An option key podcr does not know is refused before anything is touched.
    let bogus = cd.dir().join(format!("{name}-bogus"));
    std::fs::create_dir(&bogus)?;
    let refused = cr
        .checkpoint_pod(with_deadline(
            CheckpointPodRequest {
                pod_sandbox_id: pod.id.clone(),
                output_path: bogus.display().to_string(),
                container_ids: ids.clone(),
                options: HashMap::from([("no-such-option".to_string(), "1".to_string())]),
            },
            Duration::from_secs(60),
        ))
        .await
        .err()
        .context("CheckpointPod with an unknown option key succeeded")?;
    ensure!(refused.code() == Code::InvalidArgument, "unknown option key: {refused:?}");
    ensure!(dir_is_empty(&bogus)?, "a refused checkpoint wrote files");

    // The alpha kubelet's call: empty options, a deadline.
    let out = cd.dir().join(format!("{name}-ckpt"));
    std::fs::create_dir(&out)?;
    let before = pods::last_count(&counter_log).context("counter printed nothing")?;
    cr.checkpoint_pod(with_deadline(
        CheckpointPodRequest {
            pod_sandbox_id: pod.id.clone(),
            output_path: out.display().to_string(),
            container_ids: ids.clone(),
            options: HashMap::new(),
        },
        Duration::from_secs(120),
    ))
    .await
    .with_context(|| format!("CheckpointPod through containerd {}", build.build()))?;
    let after = pods::last_count(&counter_log).context("counter log")?;
    ensure!(!dir_is_empty(&out)?, "CheckpointPod succeeded but wrote nothing");
    // cri-api: "the runtime never returns a frozen pod"; a checkpoint does not end the pod.
    // ISSUE-13-ITEM-1: needs the CRI default leave-running (issue 13 item 1, another branch);
    // until that is merged, empty options stop the pod and this assertion fails.
    still_running(&mut rs, &pod, "after CheckpointPod with empty options").await?;

    // The directory is no longer empty: a second call is refused and changes nothing.
    let listing = pods::dir_entries(&out)?;
    let again = cr
        .checkpoint_pod(with_deadline(
            CheckpointPodRequest {
                pod_sandbox_id: pod.id.clone(),
                output_path: out.display().to_string(),
                container_ids: ids.clone(),
                options: HashMap::new(),
            },
            Duration::from_secs(60),
        ))
        .await;
    let err = again.err().context("a second CheckpointPod into a non-empty directory succeeded")?;
    ensure!(
        matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists),
        "second CheckpointPod: {err:?}"
    );
    ensure!(pods::dir_entries(&out)? == listing, "the refused call changed the checkpoint");

    // The original goes, and its logs, so the restored containers write fresh ones.
    pods::remove_pod(&mut rs, &pod.id).await?;
    std::fs::remove_file(&counter_log)?;
    std::fs::remove_file(&token_log)?;

    let config = pod_config(cd, &format!("{name}-restored"))?;
    let restored = cr
        .restore_pod(with_deadline(
            RestorePodRequest {
                checkpoint_path: out.display().to_string(),
                config: Some(config.clone()),
                runtime_handler: Runtime::Podcr.handler().into(),
                options: HashMap::new(),
                container_configs: vec![
                    container_config("counter", &image, COUNTER),
                    container_config("token", &image, TOKEN),
                ],
            },
            Duration::from_secs(120),
        ))
        .await
        .with_context(|| format!("RestorePod through containerd {}", build.build()))?
        .into_inner();
    let mut names: Vec<&str> = restored.restored_containers.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    ensure!(names == ["counter", "token"], "RestorePod returned {:?}", restored.restored_containers);
    for c in &restored.restored_containers {
        let status = rs
            .container_status(ContainerStatusRequest { container_id: c.container_id.clone(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        ensure!(
            status.state == ContainerState::ContainerCreated as i32,
            "restored {} is in state {} before StartContainer, not CREATED",
            c.name,
            status.state
        );
    }
    let log_dir = Path::new(&config.log_directory).to_path_buf();
    ensure!(!log_dir.join("counter.log").exists(), "the restored counter ran before StartContainer");
    for c in &restored.restored_containers {
        rs.start_container(StartContainerRequest { container_id: c.container_id.clone() })
            .await
            .with_context(|| format!("StartContainer {}", c.name))?;
    }
    let (counter_log, token_log) = (log_dir.join("counter.log"), log_dir.join("token.log"));
    let first = {
        let c = counter_log.clone();
        blocking(move || wait_for("restored counter output", T, || Ok(pods::counts(&c).first().copied()))).await?
    };
    ensure!(
        first > before && first <= after + 1,
        "restored counter starts at {first}; checkpointed between {before} and {after}"
    );
    let restored_token = {
        let t = token_log.clone();
        blocking(move || wait_for("restored token output", T, || Ok(tokens(&t).first().cloned()))).await?
    };
    ensure!(restored_token == token, "the token in memory changed across restore: {token} -> {restored_token}");
    {
        let c = counter_log.clone();
        blocking(move || pods::wait_advances(&c, first, T).map(|_| ())).await?;
    }
    let restored = pods::Pod {
        id: restored.pod_sandbox_id.clone(),
        name: format!("{name}-restored"),
        log_dir,
        containers: restored.restored_containers.iter().map(|c| (c.name.clone(), c.container_id.clone())).collect(),
    };
    cut_short(cd, &mut rs, &mut cr, &restored).await?;
    pods::remove_pod(&mut rs, &restored.id).await?;
    Ok(())
}

/// A deadline too short for the dump: refused, nothing left in the directory, and the pod runs
/// on, thawed. (Runs last: without issue 13 item 1's deadline safety a pod frozen here would keep
/// the rest of the test from running.)
async fn cut_short(
    cd: &Containerd,
    rs: &mut Cri,
    cr: &mut podcr_tests::cri_pod::PodRuntimeClient,
    pod: &pods::Pod,
) -> Result<()> {
    let name = &pod.name;
    let ids: Vec<String> = pod.containers.iter().map(|(_, id)| id.clone()).collect();
    // A deadline too short for the dump: refused, nothing left in the directory, pod unharmed.
    let short = cd.dir().join(format!("{name}-short"));
    std::fs::create_dir(&short)?;
    let cut = cr
        .checkpoint_pod(with_deadline(
            CheckpointPodRequest {
                pod_sandbox_id: pod.id.clone(),
                output_path: short.display().to_string(),
                container_ids: ids.clone(),
                options: HashMap::new(),
            },
            Duration::from_millis(300),
        ))
        .await;
    ensure!(cut.is_err(), "a checkpoint with a 300 ms deadline succeeded");
    {
        // The shim finishes its own cleanup after the caller gave up: wait for it, then check.
        let s = short.clone();
        blocking(move || {
            wait_for("the cut-short checkpoint's output to be empty", T, || Ok(dir_is_empty(&s)?.then_some(())))
        })
        .await?;
    }
    still_running(rs, pod, "after a checkpoint cut short by its deadline").await?;

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr13822_cri_checkpoint_pod_and_restore_pod_through_the_checkpoint_service() -> Result<()> {
    checkpoint_and_restore_through_the_cri(Upstream::Pr13822, "pr13822_cri_checkpoint_pod_and_restore_pod", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr13971_cri_checkpoint_pod_and_restore_pod_through_the_sandbox_service() -> Result<()> {
    checkpoint_and_restore_through_the_cri(Upstream::Pr13971, "pr13971_cri_checkpoint_pod_and_restore_pod", false).await
}

/// With NRI enabled (containerd's default) PR 13971 restores in two phases: `RestoreSandbox`
/// with `io.containerd.pod-restore.phase=prepare` (the pod only, before the containers are
/// staged), then `=complete` (the tasks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pr13971_with_nri_restores_in_two_phases() -> Result<()> {
    checkpoint_and_restore_through_the_cri(Upstream::Pr13971, "pr13971_with_nri_restores_in_two_phases", true).await
}
