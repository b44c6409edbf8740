//! Pod checkpoint and restore through the real stack: CRI pods on containerd 2.1 with the podcr
//! handler, `podcr checkpoint` / `podcr restore`, runc and CRIU.
//!
//! The workload is `counter`, which keeps its count only in memory: a restored counter that goes
//! on from the checkpointed value, and not from 1, proves its memory came back.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{ContainerState, StopContainerRequest};
use podcr_tests::{
    images,
    pods::{self, Cri},
    Containerd, Runtime, CRI_NAMESPACE,
};

const T: Duration = Duration::from_secs(60);
const POD_NS: &str = "podcr-test";
/// Writes a file, deletes one from the image, starts a child process, then counts.
const APP: &[&str] = &[
    "sh",
    "-c",
    "echo hello > /data.txt && rm /usr/local/bin/memhog && { /usr/local/bin/counter /child-count 100 >/dev/null & } && exec /usr/local/bin/counter /count 100",
];
const SIDECAR: &[&str] = &["/usr/local/bin/counter", "/count", "100"];

async fn import(cd: &'static Containerd) -> Result<String> {
    tokio::task::spawn_blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?
}

use podcr_tests::pods::exec;

async fn read_number(rs: &mut Cri, container: &str, file: &str) -> Result<u64> {
    let (code, out) = exec(rs, container, &["cat", file]).await?;
    ensure!(code == 0, "cat {file} failed in {container}");
    out.parse().with_context(|| format!("{file} holds {out:?}"))
}

/// Whether pod `id`'s shim has a restore staging directory (`podcr-restore/`) below `dir`, and
/// the CRIU image files left in it; symlinks are not followed.
fn staged_images(dir: &std::path::Path, id: &str) -> Result<(bool, Vec<std::path::PathBuf>)> {
    fn walk(
        dir: &std::path::Path,
        id: &str,
        in_staging: bool,
        found: &mut bool,
        out: &mut Vec<std::path::PathBuf>,
    ) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
        for e in entries.flatten() {
            let ft = e.file_type()?;
            let here = e.file_name() == "podcr-restore" && e.path().to_string_lossy().contains(id);
            *found |= here && ft.is_dir();
            if ft.is_dir() {
                walk(&e.path(), id, in_staging || here, found, out)?;
            } else if in_staging && e.file_name().to_string_lossy().ends_with(".img") {
                out.push(e.path());
            }
        }
        Ok(())
    }
    let (mut found, mut out) = (false, Vec::new());
    walk(dir, id, false, &mut found, &mut out)?;
    Ok((found, out))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_leave_running_then_restore_continues_counters() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let pod =
        pods::run_pod(cd, &mut rs, Runtime::Podcr, "ckpt-live", &image, &[("app", APP), ("sidecar", SIDECAR)]).await?;
    let (app_log, side_log) = (pod.log("app"), pod.log("sidecar"));
    {
        let (a, s) = (app_log.clone(), side_log.clone());
        blocking(move || {
            pods::wait_count(&a, 10, T)?;
            pods::wait_count(&s, 10, T)
        })
        .await?;
    }
    let before = pods::last_count(&app_log).context("app printed nothing")?;

    let dir = cd.dir().join("ckpt-live");
    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                ["checkpoint", "--leave-running", "--pod-namespace", POD_NS, "ckpt-live", "-o"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([dir.display().to_string()]),
            )
        }
    })
    .await?;
    pods::ensure_success("podcr checkpoint", &out)?;
    ensure!(out.stdout.to_lowercase().contains("freeze"), "the freeze window is not reported:\n{}", out.stdout);
    let after = pods::last_count(&app_log).context("app log")?;

    // leave-running: both counters go on.
    {
        let (a, s) = (app_log.clone(), side_log.clone());
        let side_after = pods::last_count(&s).unwrap_or(0);
        blocking(move || {
            pods::wait_advances(&a, after, T)?;
            pods::wait_advances(&s, side_after, T)
        })
        .await?;
    }
    ensure!(pods::all_running(&mut rs, &pod.id).await?, "containers stopped after a leave-running checkpoint");

    // pod.options names CRIU's version (read through the shim's reaper-aware runner).
    let options: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("pod.options"))?)?;
    let criu = options["annotations"]["org.criu.checkpoint.criu.version"].as_str().unwrap_or_default();
    ensure!(criu.starts_with('4'), "pod.options does not record CRIU's version: {options}");

    // checkpointctl reads every container archive as a containerd checkpoint of this pod.
    for name in ["app", "sidecar"] {
        let archive = dir.join(format!("{name}.tar"));
        let show = podcr_tests::cmd::run_ok("checkpointctl", ["show".as_ref(), archive.as_os_str()])?;
        ensure!(
            show.stdout.contains(name) && show.stdout.contains("ckpt-live"),
            "checkpointctl show {name}:\n{}",
            show.stdout
        );
        let inspect = podcr_tests::cmd::run_ok("checkpointctl", ["inspect".as_ref(), archive.as_os_str()])?;
        ensure!(inspect.stdout.contains("containerd"), "checkpointctl inspect {name}:\n{}", inspect.stdout);
    }

    // The original goes away entirely. The restored pod logs where podcr restore, as its
    // caller, puts a new pod's logs: never where the checkpoint says.
    pods::remove_pod(&mut rs, &pod.id).await?;

    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                [
                    "restore".to_string(),
                    dir.display().to_string(),
                    "--name".into(),
                    "ckpt-live-restored".into(),
                    "--pod-namespace".into(),
                    POD_NS.into(),
                ],
            )
        }
    })
    .await?;
    pods::ensure_success("podcr restore", &out)?;
    let restored =
        pods::find_pod(&mut rs, "ckpt-live-restored").await?.context("restored pod not listed by the CRI")?;
    ensure!(
        pods::all_running(&mut rs, &restored).await?,
        "restored containers are not running: {:?}",
        pods::container_states(&mut rs, &restored).await?
    );
    // CRIU has read the staged images: the shim's copy of the pod's memory is gone.
    let (found, left) = staged_images(cd.dir(), &restored)?;
    ensure!(found, "no restore staging directory of pod {restored} under {}", cd.dir().display());
    ensure!(left.is_empty(), "staged CRIU images left after the restore: {left:?}");
    let restored_app =
        k8s_ids(&mut rs, &restored).await?.into_iter().find(|(n, _)| n == "app").map(|(_, id)| id).context("no app")?;
    let app_log = pods::log_path(&mut rs, &restored_app).await?;
    let log_root = podcr_tests::node_config::pod_log_root(cd.dir());
    ensure!(
        app_log.starts_with(&log_root),
        "the restored app logs to {}, not under the node's pod log root {}",
        app_log.display(),
        log_root.display()
    );

    let first = {
        let a = app_log.clone();
        blocking(move || podcr_tests::wait_for("restored app output", T, || Ok(pods::counts(&a).first().copied())))
            .await?
    };
    ensure!(
        first > before && first <= after + 1,
        "restored counter starts at {first}; the checkpoint was taken between {before} and {after}"
    );
    {
        let a = app_log.clone();
        blocking(move || pods::wait_advances(&a, first, T).map(|_| ())).await?;
    }

    let states = pods::container_states(&mut rs, &restored).await?;
    let ids = k8s_ids(&mut rs, &restored).await?;
    let app = ids.iter().find(|(n, _)| n == "app").map(|(_, id)| id.clone()).context("no app")?;
    ensure!(
        exec(&mut rs, &app, &["cat", "/data.txt"]).await?.1 == "hello",
        "file written before the checkpoint is gone"
    );
    ensure!(
        exec(&mut rs, &app, &["test", "!", "-e", "/usr/local/bin/memhog"]).await?.0 == 0,
        "a deleted file came back"
    );
    let child = read_number(&mut rs, &app, "/child-count").await?;
    ensure!(
        child + 20 >= before,
        "the child process restarted instead of being restored (child at {child}, app was at {before})"
    );
    let child_later = {
        tokio::time::sleep(Duration::from_millis(500)).await;
        read_number(&mut rs, &app, "/child-count").await?
    };
    ensure!(child_later > child, "the restored child process is not running ({child} -> {child_later})");

    // The restored containers' exits reach containerd: counter exits 42 on SIGTERM.
    rs.stop_container(StopContainerRequest { container_id: app.clone(), timeout: 10 }).await?;
    let (state, code) = pods::exit_code(&mut rs, &app).await?;
    ensure!(
        state == ContainerState::ContainerExited as i32 && code == 42,
        "restored app exit: state {state} code {code} ({states:?})"
    );
    pods::remove_pod(&mut rs, &restored).await?;
    Ok(())
}

async fn k8s_ids(rs: &mut Cri, pod: &str) -> Result<Vec<(String, String)>> {
    let items = rs
        .list_containers(k8s_cri::v1::ListContainersRequest {
            filter: Some(k8s_cri::v1::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() }),
        })
        .await?
        .into_inner()
        .containers;
    Ok(items.into_iter().map(|c| (c.metadata.map(|m| m.name).unwrap_or_default(), c.id)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_with_stop_stops_the_containers() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let pod =
        pods::run_pod(cd, &mut rs, Runtime::Podcr, "ckpt-stop", &image, &[("a", SIDECAR), ("b", SIDECAR)]).await?;
    {
        let (a, b) = (pod.log("a"), pod.log("b"));
        blocking(move || {
            pods::wait_count(&a, 5, T)?;
            pods::wait_count(&b, 5, T)
        })
        .await?;
    }
    let dir = cd.dir().join("ckpt-stop");
    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                [
                    "checkpoint".to_string(),
                    "--pod-namespace".into(),
                    POD_NS.into(),
                    "ckpt-stop".into(),
                    "--stop".into(),
                    "-o".into(),
                    dir.display().to_string(),
                ],
            )
        }
    })
    .await?;
    pods::ensure_success("podcr checkpoint", &out)?;
    ensure!(dir.join("podcr.manifest.json").is_file(), "no manifest: {:?}", pods::dir_entries(&dir)?);
    for _ in 0..100 {
        let states = pods::container_states(&mut rs, &pod.id).await?;
        if states.iter().all(|(_, s)| *s == ContainerState::ContainerExited as i32) {
            let a = pod.log("a");
            let last = pods::last_count(&a).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(400)).await;
            ensure!(pods::last_count(&a).unwrap_or(0) == last, "a stopped container still counts");
            pods::remove_pod(&mut rs, &pod.id).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "containers still running after a checkpoint with --stop: {:?}",
        pods::container_states(&mut rs, &pod.id).await?
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_criu_cannot_dump_fails_the_checkpoint_and_leaves_all_running() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    // An established TCP connection cannot be dumped without tcp-established.
    let tcp: &[&str] = &[
        "sh",
        "-c",
        "/usr/local/bin/tcp_echo 7777 >/dev/null & sleep 0.3; exec /usr/local/bin/tcp_peer 127.0.0.1 7777 /peer",
    ];
    let pod =
        pods::run_pod(cd, &mut rs, Runtime::Podcr, "ckpt-fail", &image, &[("counter", SIDECAR), ("tcp", tcp)]).await?;
    let log = pod.log("counter");
    {
        let l = log.clone();
        blocking(move || pods::wait_count(&l, 5, T).map(|_| ())).await?;
    }
    let tcp_id = pod.container("tcp")?.to_string();
    let mut peer_ok = false;
    for _ in 0..50 {
        if exec(&mut rs, &tcp_id, &["cat", "/peer"]).await?.1.starts_with("ok") {
            peer_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(peer_ok, "the TCP peer never connected");

    let dir = cd.dir().join("ckpt-fail");
    std::fs::create_dir(&dir)?;
    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                [
                    "checkpoint".to_string(),
                    "--leave-running".into(),
                    "--pod-namespace".into(),
                    POD_NS.into(),
                    "ckpt-fail".into(),
                    "-o".into(),
                    dir.display().to_string(),
                ],
            )
        }
    })
    .await?;
    ensure!(!out.success(), "checkpoint of an established TCP connection succeeded without tcp-established");
    eprintln!("podcr checkpoint failed as expected:\n{}", out.stderr);
    ensure!(out.stderr.contains("tcp"), "the error does not name the container:\n{}", out.stderr);
    ensure!(out.stderr.contains("Connected TCP socket"), "the error does not quote CRIU's reason:\n{}", out.stderr);
    ensure!(pods::dir_entries(&dir)?.is_empty(), "partial files left: {:?}", pods::dir_entries(&dir)?);

    let last = pods::last_count(&log).unwrap_or(0);
    blocking(move || pods::wait_advances(&log, last, T).map(|_| ())).await?;
    ensure!(pods::all_running(&mut rs, &pod.id).await?, "a container stopped after a failed checkpoint");
    let p1 = exec(&mut rs, &tcp_id, &["cat", "/peer"]).await?.1;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p2 = exec(&mut rs, &tcp_id, &["cat", "/peer"]).await?.1;
    ensure!(
        p1 != p2 && p2.starts_with("ok"),
        "the TCP peer is frozen or broken after a failed checkpoint: {p1:?} -> {p2:?}"
    );
    pods::remove_pod(&mut rs, &pod.id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_pod_tcp_connection_survives_with_tcp_established() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let server: &[&str] = &["/usr/local/bin/tcp_echo", "7778"];
    let client: &[&str] = &["sh", "-c", "sleep 0.5; exec /usr/local/bin/tcp_peer 127.0.0.1 7778 /peer"];
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, "ckpt-tcp", &image, &[("server", server), ("client", client)])
        .await?;
    let client_id = pod.container("client")?.to_string();
    let peer = |rs: &mut Cri, id: String| {
        let mut rs = rs.clone();
        async move { exec(&mut rs, &id, &["cat", "/peer"]).await.map(|r| r.1) }
    };
    let mut seq = 0u64;
    for _ in 0..50 {
        if let Some(n) = peer(&mut rs, client_id.clone()).await?.strip_prefix("ok ").and_then(|n| n.parse().ok()) {
            seq = n;
            if seq > 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(seq > 3, "the in-pod TCP connection never got going");

    let dir = cd.dir().join("ckpt-tcp");
    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                [
                    "checkpoint".to_string(),
                    "--tcp-established".into(),
                    "--pod-namespace".into(),
                    POD_NS.into(),
                    "ckpt-tcp".into(),
                    "-o".into(),
                    dir.display().to_string(),
                ],
            )
        }
    })
    .await?;
    pods::ensure_success("podcr checkpoint --tcp-established", &out)?;
    pods::remove_pod(&mut rs, &pod.id).await?;

    let out = blocking({
        let dir = dir.clone();
        move || {
            pods::podcr(
                cd,
                ["restore".to_string(), dir.display().to_string(), "--name".into(), "ckpt-tcp-restored".into()],
            )
        }
    })
    .await?;
    pods::ensure_success("podcr restore", &out)?;
    let restored = pods::find_pod(&mut rs, "ckpt-tcp-restored").await?.context("restored pod not listed")?;
    let ids = k8s_ids(&mut rs, &restored).await?;
    let client = ids.iter().find(|(n, _)| n == "client").map(|(_, id)| id.clone()).context("no client")?;
    let n = |s: &str| s.strip_prefix("ok ").and_then(|n| n.parse::<u64>().ok());
    let first = peer(&mut rs, client.clone()).await?;
    // The peer writes on its own clock; on a loaded 2-core machine a fixed pause can fall between
    // two of its writes, so wait (bounded) for the next one.
    let mut later = first.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        later = peer(&mut rs, client.clone()).await?;
        if n(&later).is_none() || n(&later) > n(&first) {
            break;
        }
    }
    ensure!(
        matches!((n(&first), n(&later)), (Some(a), Some(b)) if b > a && a + 5 >= seq),
        "the connection did not survive: before {seq}, after restore {first:?} then {later:?}"
    );
    pods::remove_pod(&mut rs, &restored).await?;
    Ok(())
}

/// Migration: the checkpoint travels as one zstd archive to a second containerd (its own root,
/// state and socket: another node), is restored there twice as two pods after the original is
/// gone, and a restored pod can itself be checkpointed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_restores_twice_on_a_second_containerd_and_checkpoints_again() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = import(cd).await?;
    let mut rs = cd.cri_runtime().await?;
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, "migrate", &image, &[("app", SIDECAR)]).await?;
    let log = pod.log("app");
    {
        let l = log.clone();
        blocking(move || pods::wait_count(&l, 10, T).map(|_| ())).await?;
    }
    let dir = cd.dir().join("migrate");
    let archive = cd.dir().join("migrate.tar.zst");
    let out = blocking({
        let (dir, archive) = (dir.clone(), archive.clone());
        move || {
            pods::podcr(
                cd,
                [
                    "checkpoint".to_string(),
                    "--stop".into(),
                    "--pod-namespace".into(),
                    POD_NS.into(),
                    "migrate".into(),
                    "--compression".into(),
                    "zstd".into(),
                    "-o".into(),
                    dir.display().to_string(),
                    "--archive".into(),
                    archive.display().to_string(),
                ],
            )
        }
    })
    .await?;
    pods::ensure_success("podcr checkpoint --archive", &out)?;
    let at_checkpoint = pods::last_count(&log).context("no count")?;
    pods::remove_pod(&mut rs, &pod.id).await?;

    // The second node: a separate containerd with its own root, state and socket.
    let node2: &'static Containerd = Box::leak(Box::new(blocking(Containerd::start).await?));
    let result = async {
        let image2 = import(node2).await?;
        ensure!(image2 == image, "the image reference differs between nodes: {image2} vs {image}");
        let mut rs2 = node2.cri_runtime().await?;
        // Node 2 does not restore what node 1 signed until its admin trusts node 1's key.
        let out = blocking({
            let archive = archive.clone();
            move || {
                pods::podcr(
                    node2,
                    ["restore".to_string(), archive.display().to_string(), "--name".into(), "untrusted".into()],
                )
            }
        })
        .await?;
        ensure!(
            !out.success() && out.stderr.contains("does not trust"),
            "node 2 restored an untrusted checkpoint: {}",
            out.stderr
        );
        ensure!(pods::find_pod(&mut rs2, "untrusted").await?.is_none(), "a refused restore left a pod on node 2");
        let node1_key = podcr_tests::node_config::public_key(cd.dir());
        let out =
            blocking(move || pods::podcr(node2, ["key".to_string(), "trust".into(), node1_key.display().to_string()]))
                .await?;
        pods::ensure_success("podcr key trust on node 2", &out)?;
        let mut restored = Vec::new();
        for name in ["migrated-1", "migrated-2"] {
            let out = blocking({
                let archive = archive.clone();
                move || {
                    pods::podcr(
                        node2,
                        ["restore".to_string(), archive.display().to_string(), "--name".into(), name.into()],
                    )
                }
            })
            .await?;
            pods::ensure_success(&format!("podcr restore {name} on node 2"), &out)?;
            let id = pods::find_pod(&mut rs2, name).await?.with_context(|| format!("{name} not listed on node 2"))?;
            ensure!(pods::all_running(&mut rs2, &id).await?, "{name}: containers not running");
            restored.push(id);
        }
        // Both copies came from the same memory image: each continues from the checkpoint.
        for id in &restored {
            let ids = k8s_ids(&mut rs2, id).await?;
            let app = ids.iter().find(|(n, _)| n == "app").map(|(_, c)| c.clone()).context("no app")?;
            let first = read_number(&mut rs2, &app, "/count").await?;
            ensure!(
                first >= at_checkpoint.saturating_sub(2),
                "restored copy at {first}, checkpoint at {at_checkpoint}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            ensure!(read_number(&mut rs2, &app, "/count").await? > first, "restored copy does not count");
        }

        // A restored pod checkpoints again (a second hop of a migration).
        let again = node2.dir().join("migrate-again");
        let out = blocking({
            let again = again.clone();
            move || {
                pods::podcr(
                    node2,
                    [
                        "checkpoint".to_string(),
                        "--leave-running".into(),
                        "--pod-namespace".into(),
                        POD_NS.into(),
                        "migrated-1".into(),
                        "-o".into(),
                        again.display().to_string(),
                    ],
                )
            }
        })
        .await?;
        pods::ensure_success("podcr checkpoint of a restored pod", &out)?;
        for id in restored {
            pods::remove_pod(&mut rs2, &id).await?;
        }
        Ok(())
    }
    .await;
    let stopped = blocking(move || node2.stop()).await;
    result.and(stopped)
}
