//! containerd main (301026e5, v2.4.0-beta.0+70, close to 2.4.0) with podcr: what differs from
//! 2.1.9. The existing task, sandbox and checkpoint tests run against it unchanged through
//! `PODCR_TEST_CONTAINERD=main` (see `scripts/test.sh`); these cover what only main shows:
//!
//! - the CRI has no pod checkpoint/restore yet: `CheckpointPod` answers Unimplemented and leaves
//!   the pod alone, so the `podcr` CLI stays the way in (it uses plain CreateContainer and the
//!   shim's Checkpoint service, never the CRI's restore through CreateContainer, which 2.4 removed);
//! - hostNetwork pods with the podcr runtime handler run (2.1.9 crashes on them: the fix,
//!   containerd commit b32cecd31, is in 2.3.0 and later).
//!
//! Without `../shared/upstream/` each test prints one `SKIP:` line.

use std::{collections::HashMap, time::Duration};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    RunPodSandboxRequest, StartContainerRequest,
};
use podcr_tests::{
    cri,
    cri_pod::CheckpointPodRequest,
    images,
    pods::{self},
    upstream::{self, Upstream},
    wait_for, Containerd, Runtime, CRI_NAMESPACE,
};
use tonic::{Code, Request};

const T: Duration = Duration::from_secs(60);
const COUNTER: &[&str] = &["/usr/local/bin/counter", "/count", "100"];

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn start(test: &str) -> Result<Option<&'static Containerd>> {
    let Some(daemon) = upstream::daemon(Upstream::Main, test)? else {
        return Ok(None);
    };
    Ok(Some(Box::leak(Box::new(blocking(move || Containerd::start_with(daemon)).await?))))
}

async fn finish(cd: &Containerd, test: &str, result: Result<()>) -> Result<()> {
    if let Err(e) = &result {
        eprintln!("{test} failed: {e:#}\ncontainerd main log tail:\n{}", cd.log_tail(40));
    }
    let stopped = cd.stop();
    result?;
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_cri_checkpoint_pod_is_unimplemented_and_leaves_the_pod_running() -> Result<()> {
    const TEST: &str = "main_cri_checkpoint_pod_is_unimplemented";
    let Some(cd) = start(TEST).await? else {
        return Ok(());
    };
    let result = async {
        let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
        let mut rs = cd.cri_runtime().await?;
        let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, "main-ckpt", &image, &[("counter", COUNTER)]).await?;
        let log = pod.log("counter");
        {
            let l = log.clone();
            blocking(move || pods::wait_count(&l, 5, T)).await?;
        }
        let out = cd.dir().join("main-ckpt-out");
        std::fs::create_dir(&out)?;
        let mut req = Request::new(CheckpointPodRequest {
            pod_sandbox_id: pod.id.clone(),
            output_path: out.display().to_string(),
            container_ids: pod.containers.iter().map(|(_, id)| id.clone()).collect(),
            options: HashMap::new(),
        });
        req.set_timeout(Duration::from_secs(60));
        let err =
            cd.cri_pods().await?.checkpoint_pod(req).await.err().context("containerd main answered CheckpointPod")?;
        ensure!(err.code() == Code::Unimplemented, "CheckpointPod on containerd main: {err:?}");
        ensure!(pods::dir_entries(&out)?.is_empty(), "an unimplemented CheckpointPod wrote files");
        let from = pods::last_count(&log).unwrap_or(0);
        blocking(move || pods::wait_advances(&log, from, T)).await?;
        pods::remove_pod(&mut rs, &pod.id).await
    }
    .await;
    finish(cd, TEST, result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_cri_host_network_podcr_pod_runs() -> Result<()> {
    const TEST: &str = "main_cri_host_network_podcr_pod_runs";
    let Some(cd) = start(TEST).await? else {
        return Ok(());
    };
    let result = async {
        let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
        let mut rs = cd.cri_runtime().await?;
        let host = NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let mut config = cd.pod_config("main-hostnet")?;
        if let Some(linux) = config.linux.as_mut() {
            linux.security_context =
                Some(LinuxSandboxSecurityContext { namespace_options: Some(host.clone()), ..Default::default() });
        }
        let id = rs
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: Runtime::Podcr.handler().into(),
            })
            .await
            .context("RunPodSandbox hostNetwork")?
            .into_inner()
            .pod_sandbox_id;
        let mut c = cri::container_config("counter", &image, COUNTER);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(host),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cid = pods::create_container(&mut rs, &id, &config, c).await?;
        rs.start_container(StartContainerRequest { container_id: cid.clone() }).await.context("StartContainer")?;
        let log = std::path::Path::new(&config.log_directory).join("counter.log");
        blocking(move || pods::wait_count(&log, 5, T)).await?;
        // The container shares the host's network namespace, and containerd is still there.
        let (code, out) = {
            let r = rs
                .exec_sync(k8s_cri::v1::ExecSyncRequest {
                    container_id: cid.clone(),
                    cmd: vec!["readlink".into(), "/proc/self/ns/net".into()],
                    timeout: 10,
                })
                .await?
                .into_inner();
            (r.exit_code, String::from_utf8_lossy(&r.stdout).trim().to_string())
        };
        let host_net = std::fs::read_link("/proc/self/ns/net")?.to_string_lossy().into_owned();
        ensure!(code == 0 && out == host_net, "hostNetwork container's netns is {out:?}, the host's {host_net:?}");
        wait_for("containerd main to answer", T, || Ok(cd.ctr("default").run(["version"])?.success().then_some(())))?;
        pods::remove_pod(&mut rs, &id).await
    }
    .await;
    finish(cd, TEST, result).await
}
