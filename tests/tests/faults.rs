//! podcr under faults and bad input, against the real stack (issue 8): CRIU or the shim killed
//! mid-checkpoint, a full disk, containerd restarting, two checkpoints at once, and restores of
//! hostile, damaged, foreign or unrestorable checkpoints. Each test asserts the outcome a user
//! would check: the pod runs and is not frozen, no partial checkpoint remains, and a failed
//! restore leaves no sandbox, container, task, mount, netns, shim or process behind.
//!
//! Tests on the shared containerd take `SERIAL`, so the before/after inventories of one test are
//! not disturbed by another; tests that kill or restart things get a private containerd.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1::{
    ExecSyncRequest, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    PodSandboxStatusRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
};
use nix::sys::signal::Signal;
use podcr_tests::{
    cmd::Output,
    cri,
    faults::{self, Inventory},
    images,
    pods::{self, Cri, Pod},
    procs, Containerd, Runtime, CRI_NAMESPACE,
};
use tokio::sync::{Mutex, OnceCell};

const T: Duration = Duration::from_secs(60);
const POD_NS: &str = "podcr-test";
const COUNTER: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
/// Memory that takes CRIU a while to dump: the window in which faults are injected.
const HOG_256: &[&str] = &["/usr/local/bin/memhog", "256", "/memhog"];

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn setup(cd: &'static Containerd) -> Result<(String, Cri)> {
    let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
    Ok((image, cd.cri_runtime().await?))
}

/// What every test on the shared containerd starts with: `SERIAL`, held for as long as the
/// value lives (bind it as `_serial`, not `_`), the busybox image imported for the CRI, and a
/// CRI client.
struct Shared {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    cd: &'static Containerd,
    image: String,
    rs: Cri,
}

async fn shared() -> Result<Shared> {
    let serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let (image, rs) = setup(cd).await?;
    Ok(Shared { _serial: serial, cd, image, rs })
}

/// The CLI's TMPDIR for one test, inside the run.
fn tmp_for(cd: &Containerd, test: &str) -> PathBuf {
    cd.dir().join("faults-tmp").join(test)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

async fn podcr(cd: &'static Containerd, tmp: &Path, args: Vec<String>) -> Result<Output> {
    let tmp = tmp.to_path_buf();
    blocking(move || faults::podcr(cd, &tmp, args)).await
}

fn checkpoint_args(pod: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = strings(&["checkpoint", "--pod-namespace", POD_NS, pod, "-o"]);
    v.push(out.display().to_string());
    v.extend(strings(extra));
    v
}

/// Waits until the log of `container` shows its program running (`count`/`ok` advancing).
async fn wait_running(pod: &Pod, container: &str, word: &'static str) -> Result<u64> {
    let log = pod.log(container);
    let from = faults::values(&log, word).last().copied().unwrap_or(0);
    blocking(move || faults::wait_value_advances(&log, word, from, T)).await
}

fn all_thawed(states: &[(PathBuf, String)]) -> bool {
    !states.is_empty() && states.iter().all(|(_, s)| s == "THAWED")
}

/// A restore that must fail: fails, says something, and leaves nothing.
async fn restore_must_fail(
    cd: &'static Containerd,
    rs: &mut Cri,
    tmp: &Path,
    what: &str,
    args: Vec<String>,
) -> Result<String> {
    let before = Inventory::take(cd, rs, tmp).await?;
    let out = podcr(cd, tmp, args).await?;
    ensure!(!out.success(), "{what}: restore succeeded: {out:?}");
    ensure!(!out.stderr.trim().is_empty(), "{what}: failed without a message");
    eprintln!("{what}: refused as expected:\n{}", out.stderr.trim());
    faults::wait_nothing_added(cd, rs, tmp, &before)
        .await
        .with_context(|| format!("{what}: after the failed restore"))?;
    Ok(out.stderr)
}

/// One checkpoint of a two-container pod (a, b), made once and shared by the restore tests:
/// the directory, and the same packed as one archive file.
struct Base {
    dir: PathBuf,
    archive: PathBuf,
}

static BASE: OnceCell<Base> = OnceCell::const_new();

async fn base(cd: &'static Containerd, image: &str, rs: &mut Cri) -> Result<&'static Base> {
    BASE.get_or_try_init(|| async {
        let pod = pods::run_pod(cd, rs, Runtime::Podcr, "fault-base", image, &[("a", COUNTER), ("b", COUNTER)]).await?;
        wait_running(&pod, "a", "count").await?;
        wait_running(&pod, "b", "count").await?;
        let dir = cd.dir().join("fault-base-ckpt");
        let archive = cd.dir().join("fault-base.tar");
        let mut args = checkpoint_args("fault-base", &dir, &["--archive"]);
        args.push(archive.display().to_string());
        let out = podcr(cd, &tmp_for(cd, "base"), args).await?;
        pods::ensure_success("podcr checkpoint (base)", &out)?;
        pods::remove_pod(rs, &pod.id).await?;
        Ok(Base { dir, archive })
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Checkpoint faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_mid_dump_thaws_the_pod_and_leaves_no_archive() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let name = "fault-criu-kill";
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, name, &image, &[("hog", HOG_256), ("side", COUNTER)]).await?;
    wait_running(&pod, "hog", "ok").await?;
    wait_running(&pod, "side", "count").await?;
    let out = cd.dir().join("fault-criu-kill-out");
    std::fs::create_dir(&out)?;

    let tmp = tmp_for(cd, name);
    let hog = pod.container("hog")?.to_string();
    let run = faults::spawn_podcr(cd, &tmp, checkpoint_args(name, &out, &["--leave-running"]))?;
    let criu = blocking(move || {
        podcr_tests::wait_for("a CRIU dumping the hog", T, || Ok(faults::criu_dumping_container(cd, name, &hog)))
    })
    .await?;
    // Kill it once it writes the hog's memory: the middle of the dump, and a defined moment. A
    // CRIU killed while its parasite code is being set up inside the process (right after it
    // seizes it) takes the process down with it; no runtime can undo that, so that moment is not
    // what this test is about.
    let pages = out.join(".podcr-staging").join("hog").join("checkpoint");
    blocking(move || {
        podcr_tests::wait_until("CRIU writing the hog's memory pages", T, || {
            Ok(std::fs::read_dir(&pages)
                .map(|d| {
                    d.flatten().any(|e| {
                        e.file_name().to_string_lossy().starts_with("pages-")
                            && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
                    })
                })
                .unwrap_or(false))
        })
    })
    .await?;
    eprintln!("killing CRIU {} ({:?}) while it writes memory pages", criu.pid, criu.argv);
    procs::signal(criu.pid, Signal::SIGKILL)?;
    let res = blocking(move || run.wait(T)).await?;
    ensure!(!res.success(), "the checkpoint succeeded although CRIU was killed: {res:?}");
    eprintln!("podcr checkpoint failed as expected:\n{}", res.stderr.trim());
    ensure!(res.stderr.contains("hog"), "the error does not name the container whose dump failed:\n{}", res.stderr);

    ensure!(pods::dir_entries(&out)?.is_empty(), "partial checkpoint left: {:?}", pods::dir_entries(&out)?);
    let states = faults::freezer_states(cd, name)?;
    ensure!(all_thawed(&states), "containers left frozen: {states:?}");
    wait_running(&pod, "side", "count").await.context("the sidecar does not run after the failed checkpoint")?;
    wait_running(&pod, "hog", "ok").await.context("the dumped container does not run after CRIU was killed")?;
    ensure!(
        pods::all_running(&mut rs, &pod.id).await?,
        "a container stopped: {:?}",
        pods::container_states(&mut rs, &pod.id).await?
    );
    // The memory CRIU was reading is intact (memhog re-checks a page per tick and exits on damage).
    ensure!(faults::values(&pod.log("hog"), "corrupt").is_empty(), "memhog found corrupt memory");
    pods::remove_pod(&mut rs, &pod.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_mid_checkpoint_leaves_nothing_frozen_and_no_partial_archive() -> Result<()> {
    // Private: this kills the pod's shim.
    let cd: &'static Containerd = Box::leak(Box::new(Containerd::start()?));
    let result = shim_killed(cd).await;
    let stopped = cd.stop();
    result.and(stopped)
}

async fn shim_killed(cd: &'static Containerd) -> Result<()> {
    let (image, mut rs) = setup(cd).await?;
    let name = "fault-shim-kill";
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, name, &image, &[("hog", HOG_256), ("side", COUNTER)]).await?;
    wait_running(&pod, "hog", "ok").await?;
    wait_running(&pod, "side", "count").await?;
    let shim = faults::shim_of(cd, &pod.id)?.context("no shim for the pod")?;
    let bundle = cd.state().join("io.containerd.sandbox.controller.v1.shim").join(CRI_NAMESPACE).join(&pod.id);
    let out = cd.dir().join("fault-shim-kill-out");
    std::fs::create_dir(&out)?;

    let tmp = tmp_for(cd, name);
    let run = faults::spawn_podcr(cd, &tmp, checkpoint_args(name, &out, &["--leave-running"]))?;
    let hog = pod.container("hog")?.to_string();
    let criu = blocking(move || {
        podcr_tests::wait_for("a CRIU dumping the hog", T, || Ok(faults::criu_dumping_container(cd, name, &hog)))
    })
    .await?;
    // CRIU, once it has every task under ptrace, sets a freezer it found frozen to THAWED and
    // puts it back to FROZEN when it is done: so the pod is stopped here, whatever the freezer says.
    eprintln!("freezers during the dump: {:?}", faults::freezer_states(cd, name)?);
    eprintln!("killing the shim {} mid-checkpoint", shim.pid);
    procs::signal(shim.pid, Signal::SIGKILL)?;
    let res = blocking(move || run.wait(T)).await?;
    ensure!(!res.success(), "the checkpoint succeeded although its shim was killed: {res:?}");
    eprintln!("podcr checkpoint failed as expected:\n{}", res.stderr.trim());

    // containerd notices the dead shim and runs `shim delete`, which must thaw and clean up.
    let states = blocking(move || {
        podcr_tests::wait_for("the pod's containers to be thawed", T, || {
            let s = faults::freezer_states(cd, name)?;
            Ok(all_thawed(&s).then_some(s))
        })
    })
    .await
    .with_context(|| format!("containerd log:\n{}", cd.log_tail(40)))?;
    eprintln!("freezers after the shim died: {states:?}");
    // The shim's `runc checkpoint` and its CRIU outlive the shim; a CRIU that finished its dump
    // would set the freezers back to FROZEN. It must be gone, and the pod stay thawed after.
    blocking(move || podcr_tests::wait_until("the orphaned CRIU to be gone", T, || Ok(!procs::alive(criu.pid))))
        .await?;
    let steady = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < steady {
        let s = faults::freezer_states(cd, name)?;
        ensure!(all_thawed(&s), "the pod was frozen again after the shim died: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let (o, bundle) = (out.clone(), bundle.clone());
        blocking(move || {
            podcr_tests::wait_until("the partial checkpoint and the recovery marker to go", T, || {
                Ok(pods::dir_entries(&o)?.is_empty() && !bundle.join("podcr-checkpoint-recovery.json").exists())
            })
        })
        .await
        .with_context(|| format!("left in the output: {:?}", pods::dir_entries(&out)))?;
    }
    // No CRIU or runc of ours lingers, still holding the pod.
    ensure!(faults::criu_dumping(cd, name).is_none(), "a CRIU is still attached to the pod");

    // The CRI reports the pod's failure.
    let ready = k8s_cri::v1::PodSandboxState::SandboxReady as i32;
    let mut reported = false;
    for _ in 0..200 {
        match rs.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false }).await {
            Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.state == ready) => {}
            _ => {
                reported = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(reported, "the CRI still reports the pod ready after its shim died");

    // Whatever of the pod still runs (orphaned containers) runs: not frozen, not stuck.
    let pids = faults::pod_pids(cd, name);
    let stuck: Vec<_> = pids.iter().filter_map(|p| procs::proc(*p)).filter(|p| p.state == 'D').collect();
    eprintln!("after the shim died: pids in the pod's cgroups {pids:?}");
    if !stuck.is_empty() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let still: Vec<_> = stuck.iter().filter_map(|p| procs::proc(p.pid)).filter(|p| p.state == 'D').collect();
        ensure!(still.is_empty(), "processes of the pod stuck (frozen?): {still:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_while_writing_the_checkpoint_fails_cleanly() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let name = "fault-disk-full";
    // 8 MiB of memory: CRIU's images (staged inside the output dir) take ~8.5 MiB, the archive
    // as much again. 2 MiB fills up during CRIU's dump; 12 MiB only while the archive is written.
    let hog: &[&str] = &["/usr/local/bin/memhog", "8", "/memhog"];
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, name, &image, &[("hog", hog), ("side", COUNTER)]).await?;
    wait_running(&pod, "side", "count").await?;
    wait_running(&pod, "hog", "ok").await?;
    for size in ["2m", "12m"] {
        let fs = faults::Tmpfs::mount(&cd.dir().join(format!("fault-full-{size}")), size)?;
        let out = podcr(cd, &tmp_for(cd, name), checkpoint_args(name, &fs.dir, &["--leave-running"])).await?;
        ensure!(!out.success(), "a checkpoint into a {size} tmpfs succeeded: {out:?}");
        eprintln!("{size}: podcr checkpoint failed as expected:\n{}", out.stderr.trim());
        ensure!(
            out.stderr.contains("No space left on device"),
            "{size}: the error does not say the disk is full:\n{}",
            out.stderr
        );
        ensure!(
            pods::dir_entries(&fs.dir)?.is_empty(),
            "{size}: partial files left: {:?}",
            pods::dir_entries(&fs.dir)?
        );
        let states = faults::freezer_states(cd, name)?;
        ensure!(all_thawed(&states), "{size}: containers left frozen: {states:?}");
        wait_running(&pod, "side", "count").await?;
        wait_running(&pod, "hog", "ok").await?;
        ensure!(pods::all_running(&mut rs, &pod.id).await?, "{size}: a container stopped");
        drop(fs);
    }
    ensure!(faults::values(&pod.log("hog"), "corrupt").is_empty(), "memhog found corrupt memory");
    pods::remove_pod(&mut rs, &pod.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_checkpoints_at_once_one_runs_the_other_is_refused() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let name = "fault-twice";
    let hog: &[&str] = &["/usr/local/bin/memhog", "128", "/memhog"];
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, name, &image, &[("hog", hog), ("side", COUNTER)]).await?;
    wait_running(&pod, "hog", "ok").await?;
    let (first_dir, second_dir) = (cd.dir().join("fault-twice-1"), cd.dir().join("fault-twice-2"));
    let tmp = tmp_for(cd, name);
    let first = faults::spawn_podcr(cd, &tmp, checkpoint_args(name, &first_dir, &["--leave-running"]))?;
    // The second request comes while the first is certainly inside the pod: CRIU is dumping.
    blocking(move || podcr_tests::wait_for("the first checkpoint's CRIU", T, || Ok(faults::criu_dumping(cd, name))))
        .await?;
    let second = podcr(cd, &tmp, checkpoint_args(name, &second_dir, &["--leave-running"])).await?;
    let first = blocking(move || first.wait(T)).await?;
    pods::ensure_success("the first checkpoint", &first)?;
    ensure!(!second.success(), "both checkpoints ran: {second:?}");
    eprintln!("second checkpoint refused as expected:\n{}", second.stderr.trim());
    ensure!(
        second.stderr.contains("another checkpoint") && second.stderr.contains("in progress"),
        "the refusal does not say why:\n{}",
        second.stderr
    );
    ensure!(
        second.stderr.contains("FailedPrecondition") || second.stderr.to_lowercase().contains("precondition"),
        "not a FailedPrecondition:\n{}",
        second.stderr
    );
    let manifest = faults::verify_checkpoint_dir(&first_dir)?;
    ensure!(
        manifest["containers"].as_array().map(Vec::len) == Some(2),
        "the first checkpoint is not whole: {manifest}"
    );
    ensure!(
        pods::dir_entries(&second_dir)?.is_empty(),
        "the refused checkpoint wrote: {:?}",
        pods::dir_entries(&second_dir)?
    );
    ensure!(all_thawed(&faults::freezer_states(cd, name)?), "containers left frozen");
    wait_running(&pod, "side", "count").await?;
    pods::remove_pod(&mut rs, &pod.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_containerd_restart_the_pod_is_managed_and_checkpointed() -> Result<()> {
    let cd: &'static Containerd = Box::leak(Box::new(Containerd::start()?));
    let result = containerd_restart(cd).await;
    let stopped = cd.stop();
    result.and(stopped)
}

async fn containerd_restart(cd: &'static Containerd) -> Result<()> {
    let (image, mut rs) = setup(cd).await?;
    let name = "fault-restart";
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, name, &image, &[("app", COUNTER), ("side", COUNTER)]).await?;
    wait_running(&pod, "app", "count").await?;
    let shim = faults::shim_of(cd, &pod.id)?.context("no shim")?;

    blocking(move || cd.restart()).await?;
    let mut rs = cd.cri_runtime().await?;
    ensure!(procs::alive(shim.pid), "the shim died with containerd");
    ensure!(
        pods::find_pod(&mut rs, name).await?.as_deref() == Some(pod.id.as_str()),
        "the pod is not ready after the restart"
    );
    ensure!(pods::all_running(&mut rs, &pod.id).await?, "containers not running after the restart");
    wait_running(&pod, "app", "count").await.context("the container's output is no longer collected")?;

    let app = pod.container("app")?.to_string();
    let r = rs
        .exec_sync(ExecSyncRequest { container_id: app.clone(), cmd: strings(&["cat", "/count"]), timeout: 10 })
        .await
        .context("exec after the restart")?
        .into_inner();
    ensure!(
        r.exit_code == 0 && String::from_utf8_lossy(&r.stdout).trim().parse::<u64>().is_ok(),
        "exec after the restart: {r:?}"
    );

    let dir = cd.dir().join("fault-restart-ckpt");
    let out = podcr(cd, &tmp_for(cd, name), checkpoint_args(name, &dir, &["--leave-running"])).await?;
    pods::ensure_success("podcr checkpoint after a containerd restart", &out)?;
    faults::verify_checkpoint_dir(&dir)?;
    wait_running(&pod, "app", "count").await?;

    rs.stop_container(StopContainerRequest { container_id: app.clone(), timeout: 10 })
        .await
        .context("stop after the restart")?;
    let (state, code) = pods::exit_code(&mut rs, &app).await?;
    ensure!(
        state == k8s_cri::v1::ContainerState::ContainerExited as i32 && code == 42,
        "stop after the restart: state {state} code {code}"
    );
    pods::remove_pod(&mut rs, &pod.id).await?;
    // And the checkpoint taken after the restart restores.
    let out = podcr(
        cd,
        &tmp_for(cd, name),
        vec!["restore".into(), dir.display().to_string(), "--name".into(), "fault-restart-2".into()],
    )
    .await?;
    pods::ensure_success("podcr restore", &out)?;
    let restored = pods::find_pod(&mut rs, "fault-restart-2").await?.context("restored pod not listed")?;
    ensure!(pods::all_running(&mut rs, &restored).await?, "restored containers are not running");
    pods::remove_pod(&mut rs, &restored).await
}

// ---------------------------------------------------------------------------------------------
// Restore of bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_damaged_and_truncated_archives_fail_cleanly() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let base = base(cd, &image, &mut rs).await?;
    let tmp = tmp_for(cd, "hostile");
    let work = cd.dir().join("fault-hostile");
    std::fs::create_dir_all(&work)?;
    let tag = std::process::id();
    let outside = std::env::temp_dir().join(format!("podcr-pwned-{tag}"));
    let restore =
        |what: &Path| vec!["restore".to_string(), what.display().to_string(), "--name".into(), "fault-hostile".into()];

    let cases: Vec<(&str, Vec<u8>, u8, Vec<u8>)> = vec![
        ("a path escaping with ..", format!("../../../podcr-pwned-{tag}").into_bytes(), b'0', vec![]),
        ("an absolute path", outside.display().to_string().into_bytes(), b'0', vec![]),
        ("a symlink", b"pod.dump".to_vec(), b'2', b"/etc/shadow".to_vec()),
        ("a hard link", b"pod.dump".to_vec(), b'1', b"/etc/shadow".to_vec()),
        ("a device", b"pod.dump".to_vec(), b'3', vec![]),
    ];
    for (i, (what, entry, kind, link)) in cases.iter().enumerate() {
        let file = work.join(format!("hostile-{i}.tar"));
        faults::hostile_pod_archive(&file, entry, *kind, link)?;
        restore_must_fail(cd, &mut rs, &tmp, what, restore(&file)).await?;
        ensure!(!outside.exists(), "{what}: a file was written outside the extraction dir");
    }

    // The real archive, cut short and with one byte flipped.
    let bytes = std::fs::read(&base.archive)?;
    let truncated = work.join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    restore_must_fail(cd, &mut rs, &tmp, "a truncated archive", restore(&truncated)).await?;
    let mut flipped = bytes.clone();
    // Past the first headers, inside a container archive's data.
    let at = bytes.len() * 2 / 3;
    flipped[at] ^= 0x55;
    let tampered = work.join("tampered.tar");
    std::fs::write(&tampered, &flipped)?;
    restore_must_fail(cd, &mut rs, &tmp, "an archive with a flipped byte", restore(&tampered)).await?;

    // A checkpoint directory whose container archive was changed after the checkpoint.
    let dir = work.join("tampered-dir");
    faults::copy_dir(&base.dir, &dir)?;
    let mut a = std::fs::read(dir.join("a.tar"))?;
    let mid = a.len() / 2;
    a[mid] ^= 0x01;
    std::fs::write(dir.join("a.tar"), &a)?;
    let err = restore_must_fail(cd, &mut rs, &tmp, "a checkpoint dir with a modified container archive", restore(&dir))
        .await?;
    ensure!(err.contains("a.tar"), "the error does not name the damaged file:\n{err}");
    // Nothing was changed in a checkpoint directory by reading it.
    faults::verify_checkpoint_dir(&base.dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_for_another_architecture_or_runtime_are_refused() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let base = base(cd, &image, &mut rs).await?;
    let tmp = tmp_for(cd, "foreign");
    for (field, value) in [("arch", "aarch64"), ("runtime", "runsc")] {
        let dir = cd.dir().join(format!("fault-foreign-{field}"));
        faults::copy_dir(&base.dir, &dir)?;
        faults::edit_manifest(&dir, |m| m[field] = serde_json::json!(value))?;
        let args =
            vec!["restore".to_string(), dir.display().to_string(), "--name".into(), format!("fault-foreign-{field}")];
        let err = restore_must_fail(cd, &mut rs, &tmp, &format!("a checkpoint with {field} {value}"), args).await?;
        ensure!(err.contains(value), "the refusal does not name the {field} {value}:\n{err}");
        ensure!(err.contains(field), "the refusal does not say it is about the {field}:\n{err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_failing_to_restore_one_container_rolls_the_pod_back() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let base = base(cd, &image, &mut rs).await?;
    let dir = cd.dir().join("fault-criu-restore");
    faults::copy_dir(&base.dir, &dir)?;
    // CRIU's process tree image of container b zeroed, with every checksum fixed: podcr's checks
    // pass, CRIU's restore of b fails; a restores fine.
    faults::rewrite_member_rehashed(&dir, "b.tar", "checkpoint/pstree.img", |old| vec![0u8; old.len()])?;
    faults::verify_checkpoint_dir(&dir)?;
    let args = vec!["restore".to_string(), dir.display().to_string(), "--name".into(), "fault-criu-restore".into()];
    let err =
        restore_must_fail(cd, &mut rs, &tmp_for(cd, "criu-restore"), "a container CRIU cannot restore", args).await?;
    ensure!(err.to_lowercase().contains("restore"), "the error does not say the restore failed:\n{err}");
    ensure!(err.contains("was removed"), "the error does not say the pod was rolled back:\n{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_without_the_base_image_names_the_image() -> Result<()> {
    let base = {
        let Shared { _serial, cd, image, mut rs } = shared().await?;
        base(cd, &image, &mut rs).await?
    };
    // A second containerd that has only the pause image.
    let other: &'static Containerd = Box::leak(Box::new(Containerd::start()?));
    let result = async {
        let mut rs = other.cri_runtime().await?;
        // The other node trusts this node's checkpoints, as a migration target would.
        let key = podcr_tests::node_config::public_key(Containerd::shared()?.dir());
        let trust = faults::podcr(
            other,
            &tmp_for(other, "no-image-trust"),
            ["key".to_string(), "trust".into(), key.display().to_string()],
        )?;
        ensure!(trust.success(), "podcr key trust: {}", trust.stderr);
        let args =
            vec!["restore".to_string(), base.dir.display().to_string(), "--name".into(), "fault-no-image".into()];
        let err =
            restore_must_fail(other, &mut rs, &tmp_for(other, "no-image"), "a restore without the image", args).await?;
        ensure!(err.contains(&images::BUSYBOX.reference()), "the error does not name the missing image:\n{err}");
        Ok(())
    }
    .await;
    let stopped = other.stop();
    result.and(stopped)
}

// ---------------------------------------------------------------------------------------------
// Permissions and secrets

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?.permissions().mode()
        & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_private_and_secrets_stay_out_of_logs() -> Result<()> {
    let Shared { _serial, cd, image, mut rs } = shared().await?;
    let name = "fault-secret";
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    let secret = format!("hunter2-{}", uuid.trim());

    // A pod whose container has the secret in its environment.
    let mut config = cd.pod_config(name)?;
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(pods::kubelet_namespaces()),
            ..Default::default()
        });
    }
    let pod_id = rs
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: Runtime::Podcr.handler().into(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let mut cconfig = cri::container_config("app", &image, COUNTER);
    cconfig.envs = vec![KeyValue { key: "PODCR_SECRET".into(), value: secret.clone() }];
    cconfig.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(pods::kubelet_namespaces()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let cid = pods::create_container(&mut rs, &pod_id, &config, cconfig).await?;
    rs.start_container(StartContainerRequest { container_id: cid.clone() }).await?;
    let pod = Pod {
        id: pod_id.clone(),
        name: name.into(),
        log_dir: PathBuf::from(&config.log_directory),
        containers: vec![("app".into(), cid)],
    };
    wait_running(&pod, "app", "count").await?;

    // The shim's API socket and its directory: root only.
    let address = std::fs::read_to_string(
        cd.state().join("io.containerd.sandbox.controller.v1.shim").join(CRI_NAMESPACE).join(&pod_id).join("address"),
    )?;
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    ensure!(mode(&socket)? & 0o077 == 0, "shim socket {} has mode {:o}", socket.display(), mode(&socket)?);
    let sockdir = socket.parent().context("socket dir")?;
    ensure!(mode(sockdir)? & 0o077 == 0, "shim socket dir {} has mode {:o}", sockdir.display(), mode(sockdir)?);

    let dir = cd.dir().join("fault-secret-ckpt");
    let archive = cd.dir().join("fault-secret.tar.zst");
    let mut args = checkpoint_args(name, &dir, &["--leave-running", "--compression", "zstd", "--archive"]);
    args.push(archive.display().to_string());
    let tmp = tmp_for(cd, name);
    pods::ensure_success("podcr checkpoint", &podcr(cd, &tmp, args).await?)?;
    ensure!(mode(&dir)? == 0o700, "checkpoint dir has mode {:o}", mode(&dir)?);
    for f in pods::dir_entries(&dir)? {
        let m = mode(&dir.join(&f))?;
        ensure!(m == 0o600, "{f} has mode {m:o}, want 0600");
    }
    ensure!(mode(&archive)? == 0o600, "the packed archive has mode {:o}", mode(&archive)?);
    pods::remove_pod(&mut rs, &pod_id).await?;

    let out = podcr(
        cd,
        &tmp,
        vec![
            "restore".into(),
            archive.display().to_string(),
            "--name".into(),
            "fault-secret-2".into(),
            "--created-only".into(),
        ],
    )
    .await?;
    pods::ensure_success("podcr restore", &out)?;
    let restored = pods::find_pod(&mut rs, "fault-secret-2").await?.context("restored pod not listed")?;
    // The extracted CRIU images (as secret as the archive) live in private directories.
    let work = cd
        .root()
        .join("io.containerd.sandbox.controller.v1.shim")
        .join(CRI_NAMESPACE)
        .join(&restored)
        .join("podcr-restore");
    ensure!(work.is_dir(), "no restore staging at {}", work.display());
    for d in std::iter::once(work.clone()).chain(std::fs::read_dir(&work)?.flatten().map(|e| e.path())) {
        ensure!(mode(&d)? & 0o077 == 0, "restore staging {} has mode {:o}", d.display(), mode(&d)?);
    }
    // The CLI's own unpack and scratch directories are gone.
    ensure!(pods::dir_entries(&tmp)?.is_empty(), "the CLI left files in its TMPDIR: {:?}", pods::dir_entries(&tmp)?);
    let ids = pods::container_states(&mut rs, &restored).await?;
    ensure!(ids.len() == 1, "restored containers: {ids:?}");
    pods::remove_pod(&mut rs, &restored).await?;

    // containerd's log carries the shim's log; runc and CRIU logs sit in the bundles.
    let mut logs = vec![cd.dir().join("containerd.log")];
    for root in [cd.state(), cd.root()] {
        collect_logs(&root, &mut logs);
    }
    for log in &logs {
        let text = std::fs::read(log).unwrap_or_default();
        ensure!(!String::from_utf8_lossy(&text).contains(&secret), "the secret appears in {}", log.display());
    }
    eprintln!("secret absent from {} log files", logs.len());
    Ok(())
}

/// Log files below `dir`, not descending into container root filesystems.
fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() && name != "rootfs" && !path.starts_with(Path::new("/proc")) => {
                collect_logs(&path, out)
            }
            Ok(t) if t.is_file() && (name.ends_with(".log") || name == "log.json" || name == "log") => out.push(path),
            _ => {}
        }
    }
}
