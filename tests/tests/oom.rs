//! An OOM kill reaches Kubernetes as it does with runc.v2: the shim publishes `/tasks/oom` and
//! containerd's CRI reports the container's reason as `OOMKilled`.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{ContainerState, ContainerStatusRequest, LinuxContainerConfig, LinuxContainerResources};
use podcr_tests::{cri, images, pods, Containerd, Runtime, CRI_NAMESPACE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_container_reports_oomkilled_podcr() -> Result<()> {
    oom_killed(Runtime::Podcr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_container_reports_oomkilled_runc() -> Result<()> {
    oom_killed(Runtime::Runc).await
}

async fn oom_killed(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    let image = tokio::task::spawn_blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await??;
    let mut rs = cd.cri_runtime().await?;
    let name = format!("oom-{}", rt.handler());
    let pod = pods::run_pod(cd, &mut rs, rt, &name, &image, &[]).await?;
    let pod_config = cd.pod_config(&name)?;
    // The reference runc.v2 shim starts watching for OOM only after `start`, so a process killed
    // within moments of exec loses its reason there; the workload waits briefly so both runtimes
    // are compared on the behaviour, not on runc.v2's race (podcr watches from create).
    let mut config = cri::container_config("hog", &image, &["sh", "-c", "sleep 0.5; exec /usr/local/bin/memhog 256"]);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() }),
        ..Default::default()
    });
    let id = pods::create_container(&mut rs, &pod.id, &pod_config, config).await?;
    rs.start_container(k8s_cri::v1::StartContainerRequest { container_id: id.clone() }).await?;

    let mut status = None;
    for _ in 0..300 {
        let s = rs
            .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        if s.state == ContainerState::ContainerExited as i32 {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.context("the memory hog was never killed")?;
    ensure!(
        status.reason == "OOMKilled",
        "{}: reason {:?}, exit code {}",
        rt.handler(),
        status.reason,
        status.exit_code
    );
    ensure!(status.exit_code == 137, "{}: exit code {}", rt.handler(), status.exit_code);
    pods::remove_pod(&mut rs, &pod.id).await
}
