//! The CRI path a kubelet takes: a pod with a CNI address and one container whose output reaches its
//! log, for runc.v2 (podsandbox + pause image) and podcr (sandboxer "shim").

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    CreateContainerRequest, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use podcr_tests::{cri, images, wait_for, Containerd, Runtime, CRI_NAMESPACE};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_one_container_runc() -> Result<()> {
    pod_with_one_container(Runtime::Runc).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_one_container_podcr() -> Result<()> {
    pod_with_one_container(Runtime::Podcr).await
}

async fn pod_with_one_container(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    // Image import shells out to ctr and waits: keep it off the async worker threads.
    let image = tokio::task::spawn_blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await??;
    let mut rs = cd.cri_runtime().await?;
    let pod_name = format!("one-{}", rt.handler());
    let pod_config = cd.pod_config(&pod_name)?;
    let log_dir = std::path::PathBuf::from(&pod_config.log_directory);

    let pod = rs
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: rt.handler().to_string(),
        })
        .await
        .with_context(|| format!("RunPodSandbox ({})\n{}", rt.handler(), cd.log_tail(20)))?
        .into_inner()
        .pod_sandbox_id;

    let status = rs
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await?
        .into_inner();
    let ip = status.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
    ensure!(ip.starts_with("10.88."), "pod has no address from the test CNI network: {ip:?}");

    let ctr = rs
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::container_config("talker", &image, &["sh", "-c", "echo hello-cri; exec sleep 600"])),
            sandbox_config: Some(pod_config),
        })
        .await
        .with_context(|| format!("CreateContainer\n{}", cd.log_tail(20)))?
        .into_inner()
        .container_id;
    rs.start_container(StartContainerRequest { container_id: ctr.clone() })
        .await
        .with_context(|| format!("StartContainer\n{}", cd.log_tail(20)))?;

    // CRI log lines look like "<timestamp> stdout F hello-cri".
    let log = log_dir.join("talker.log");
    let line = tokio::task::spawn_blocking(move || {
        wait_for("the container's output in its CRI log", T, || {
            let s = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(s.lines().find(|l| l.ends_with(" stdout F hello-cri")).map(str::to_string))
        })
    })
    .await??;
    ensure!(!line.is_empty());

    rs.stop_container(StopContainerRequest { container_id: ctr.clone(), timeout: 5 }).await?;
    rs.remove_container(RemoveContainerRequest { container_id: ctr }).await?;
    rs.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
    let left = rs
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .filter(|p| p.id == pod)
        .count();
    ensure!(left == 0, "pod {pod} still listed after RemovePodSandbox");
    Ok(())
}
