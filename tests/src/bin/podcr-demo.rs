//! The end-to-end demo behind scripts/demo.sh: a pod checkpointed and restored.
//!
//! It starts a private containerd with podcr registered, runs a two-container pod through
//! containerd's CRI (handler `podcr`) whose counters live only in memory, checkpoints the whole pod
//! while it runs with `podcr checkpoint` into one archive, shows the archive with checkpointctl,
//! deletes the pod, restores it from the archive with `podcr restore`, and shows the counters going
//! on from where they were. Everything it starts is cleaned up, pass or fail.

use std::{process::ExitCode, time::Duration};

use anyhow::{ensure, Context, Result};
use podcr_tests::{cmd::run_ok, images, pods, Containerd, Runtime, CRI_NAMESPACE};

const T: Duration = Duration::from_secs(60);
const POD_NS: &str = "podcr-test";

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn show(text: &str) {
    for line in text.lines() {
        println!("    | {line}");
    }
}

fn podcr(cd: &Containerd, args: &[String]) -> Result<()> {
    println!("    $ podcr {}", args.join(" "));
    let out = pods::podcr(cd, args)?;
    show(&out.stdout);
    show(&out.stderr);
    pods::ensure_success("podcr", &out)
}

async fn demo(cd: &'static Containerd) -> Result<()> {
    println!("    socket {}", cd.socket().display());
    step("building and importing the busybox test image (busybox-static + static C helpers, no registry)");
    let image = tokio::task::spawn_blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await??;
    println!("    {image}");

    step("RunPodSandbox (runtime handler podcr) with two containers whose counters live only in memory");
    let mut rs = cd.cri_runtime().await?;
    let counter: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
    let pod =
        pods::run_pod(cd, &mut rs, Runtime::Podcr, "demo", &image, &[("app", counter), ("sidecar", counter)]).await?;
    println!("    pod {}", pod.id);
    let app_log = pod.log("app");
    let log = app_log.clone();
    tokio::task::spawn_blocking(move || pods::wait_count(&log, 20, T)).await??;
    println!("    app counts: {:?}", tail(&pods::counts(&app_log)));

    step("checkpoint the whole pod while it runs: one freeze, every container dumped in parallel");
    let dir = cd.dir().join("demo-checkpoint");
    let archive = cd.dir().join("demo-pod.tar.zst");
    let args: Vec<String> =
        ["checkpoint", "--leave-running", "--compression", "zstd", "--pod-namespace", POD_NS, "demo", "-o"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.display().to_string(), "--archive".into(), archive.display().to_string()])
            .collect();
    tokio::task::spawn_blocking(move || podcr(cd, &args)).await??;
    let at_checkpoint = pods::last_count(&app_log).context("app log")?;
    println!("    the app's counter was at about {at_checkpoint} when the checkpoint finished, and keeps going");

    step("checkpointctl reads each container archive as a containerd checkpoint");
    let show_out = run_ok("checkpointctl", ["show".as_ref(), dir.join("app.tar.zst").as_os_str()])?;
    show(&show_out.stdout);

    step("delete the original pod");
    pods::remove_pod(&mut rs, &pod.id).await?;
    std::fs::remove_file(&app_log).ok();
    std::fs::remove_file(pod.log("sidecar")).ok();
    println!("    removed {}", pod.id);

    step("restore the pod from the single archive, as a new CRI pod");
    let args = vec!["restore".to_string(), archive.display().to_string(), "--name".into(), "demo-restored".into()];
    tokio::task::spawn_blocking(move || podcr(cd, &args)).await??;
    let restored = pods::find_pod(&mut rs, "demo-restored").await?.context("restored pod not listed by the CRI")?;
    ensure!(pods::all_running(&mut rs, &restored).await?, "restored containers are not running");
    // The restored pod logs where its new identity puts it (podcr restore acts as the kubelet
    // would), not at the checkpointed pod's paths.
    let app = pods::container_id(&mut rs, &restored, "app").await?;
    let app_log = pods::log_path(&mut rs, &app).await?;
    let log = app_log.clone();
    tokio::task::spawn_blocking(move || pods::wait_count(&log, 1, T)).await??;
    let first = pods::counts(&app_log).first().copied().context("no output")?;
    let log = app_log.clone();
    tokio::task::spawn_blocking(move || pods::wait_advances(&log, first, T)).await??;
    println!("    restored app counts: {:?}", tail(&pods::counts(&app_log)));
    ensure!(first > 1 && first <= at_checkpoint + 1, "restored counter started at {first}");
    println!("    the restored counter went on from {first}, not from 1: its memory came back");

    step("stop and remove the restored pod");
    pods::remove_pod(&mut rs, &restored).await?;
    Ok(())
}

fn tail(v: &[u64]) -> &[u64] {
    &v[v.len().saturating_sub(5)..]
}

fn main() -> ExitCode {
    step("starting a private containerd (own root, state, socket and CNI network) with podcr registered");
    let cd: &'static Containerd = match Containerd::start() {
        Ok(cd) => Box::leak(Box::new(cd)),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(demo(cd)));
    step("cleaning up (containerd, shims, mounts, network namespaces, cgroups)");
    let stopped = cd.stop();
    match result.and(stopped) {
        Ok(()) => {
            println!("\n==> done: a pod was checkpointed while running and restored from one archive");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}\ncontainerd log:\n{}", cd.log_tail(30));
            ExitCode::FAILURE
        }
    }
}
