//! Deadlines of pod checkpoints and restores against the real stack (issue 13 item 1): a deadline
//! never leaves a pod frozen and never kills it. A pod of 1 GiB (`memhog`, which re-checks its
//! memory every tick and exits on a wrong byte) plus a counter sidecar is checkpointed through
//! the CLI with the deadline expiring (a) before the freeze, (b) while CRIU collects the memory
//! and (c) while it writes the pages. Each time, within 30 s: the output directory is empty, no
//! CRIU or runc of the checkpoint is left, every container cgroup is THAWED, the pod runs in the
//! same processes with its memory intact, and a second checkpoint succeeds. A restore whose
//! deadline expires mid-extraction leaves nothing, and a second restore then works.
//!
//! Where the deadline lands: (a) uses the shim's default dump estimate, which refuses a 1 GiB
//! pod a 2 s deadline before freezing it. (b) and (c) run on a private containerd whose shims
//! have the estimate off (`PODCR_DUMP_MIB_PER_SEC=0`), so a deadline can fall inside the dump;
//! the time is derived from a measured checkpoint of the same pod, and the shim's own error
//! (in containerd's log) says how far into the frozen window the deadline passed, so the test
//! knows which phase it hit and re-aims if noise moved it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use podcr_tests::{
    faults::{self, Inventory},
    images,
    pods::{self, Cri, Pod},
    Containerd, Runtime, CRI_NAMESPACE,
};
use tokio::sync::Mutex;

const T: Duration = Duration::from_secs(60);
/// How long the pod has to be whole again after a deadline (the "30 s later").
const SETTLE: Duration = Duration::from_secs(30);
const HOG_1G: &[&str] = &["/usr/local/bin/memhog", "1024", "/memhog"];
const COUNTER: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
const HOOK_ARG: &str = "__podcr-criu-hook";
const FAILED_LINE: &str = "pod checkpoint failed";

/// One 1 GiB pod at a time: two cores and the memory are shared with other test runs.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn tmp_for(cd: &Containerd, test: &str) -> PathBuf {
    cd.dir().join("deadline-tmp").join(test)
}

async fn podcr(cd: &'static Containerd, test: &str, args: Vec<String>) -> Result<podcr_tests::cmd::Output> {
    let tmp = tmp_for(cd, test);
    blocking(move || faults::podcr(cd, &tmp, args)).await
}

fn checkpoint_args(pod: &str, out: &Path, timeout: Option<Duration>) -> Vec<String> {
    let mut v: Vec<String> =
        ["checkpoint", "--pod-namespace", "podcr-test", pod, "-o"].iter().map(|s| s.to_string()).collect();
    v.push(out.display().to_string());
    if let Some(t) = timeout {
        v.push("--timeout".into());
        v.push(format!("{}ms", t.as_millis().max(1)));
    }
    v
}

async fn hog_pod(cd: &'static Containerd, rs: &mut Cri, name: &str) -> Result<Pod> {
    let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
    let pod = pods::run_pod(cd, rs, Runtime::Podcr, name, &image, &[("hog", HOG_1G), ("side", COUNTER)]).await?;
    advances(&pod, "hog", "ok").await.context("memhog never got going")?;
    advances(&pod, "side", "count").await?;
    Ok(pod)
}

async fn advances(pod: &Pod, container: &str, word: &'static str) -> Result<u64> {
    let log = pod.log(container);
    let from = faults::values(&log, word).last().copied().unwrap_or(0);
    blocking(move || faults::wait_value_advances(&log, word, from, T)).await
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

/// CRIU, runc or the CRIU hook still running under the pod's shim.
fn checkpoint_helpers(cd: &Containerd, sandbox_id: &str) -> Result<Vec<String>> {
    let Some(shim) = faults::shim_of(cd, sandbox_id)? else { bail!("no shim for pod {sandbox_id}") };
    Ok(faults::descendants(shim.pid)?
        .into_iter()
        .filter(|p| p.comm == "criu" || p.comm == "runc" || p.argv.iter().any(|a| a == HOOK_ARG))
        .map(|p| format!("{} {:?}", p.pid, p.argv))
        .collect())
}

/// The outcome every deadline must leave, waited for with a bound: nothing in `out`, no CRIU
/// left, every container THAWED, the same processes running, memory intact. Then a second
/// checkpoint of the pod succeeds.
async fn pod_unharmed(
    cd: &'static Containerd,
    rs: &mut Cri,
    pod: &Pod,
    name: &str,
    out: &Path,
    pids: &[u32],
    test: &str,
) -> Result<()> {
    {
        let (out, name, id, pids) = (out.to_path_buf(), name.to_string(), pod.id.clone(), pids.to_vec());
        blocking(move || {
            podcr_tests::wait_until("the pod whole again after the deadline", SETTLE, || {
                let left = pods::dir_entries(&out)?;
                let helpers = checkpoint_helpers(cd, &id)?;
                let states = faults::freezer_states(cd, &name)?;
                let now = sorted(faults::pod_pids(cd, &name));
                let whole = left.is_empty()
                    && helpers.is_empty()
                    && !states.is_empty()
                    && states.iter().all(|(_, s)| s == "THAWED")
                    && now == pids;
                if !whole {
                    eprintln!("  waiting: output {left:?}, helpers {helpers:?}, freezers {states:?}, pids {now:?} (were {pids:?})");
                }
                Ok(whole)
            })
        })
        .await?;
    }
    advances(pod, "hog", "ok").await.context("memhog does not run after the deadline")?;
    advances(pod, "side", "count").await.context("the sidecar does not run after the deadline")?;
    ensure!(faults::values(&pod.log("hog"), "corrupt").is_empty(), "memhog found corrupt memory");
    ensure!(
        pods::all_running(rs, &pod.id).await?,
        "a container stopped: {:?}",
        pods::container_states(rs, &pod.id).await?
    );

    let again = out.with_extension("again");
    let res = podcr(cd, test, checkpoint_args(name, &again, None)).await?;
    pods::ensure_success("the second checkpoint after a deadline", &res)?;
    faults::verify_checkpoint_dir(&again)?;
    std::fs::remove_dir_all(&again)?;
    advances(pod, "hog", "ok").await.context("memhog does not run after the second checkpoint")?;
    ensure!(pods::all_running(rs, &pod.id).await?, "the default checkpoint stopped a container");
    Ok(())
}

fn failed_lines(cd: &Containerd, sandbox_id: &str) -> Vec<String> {
    std::fs::read_to_string(cd.dir().join("containerd.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(FAILED_LINE) && l.contains(sandbox_id))
        .map(str::to_string)
        .collect()
}

/// The shim's own account of the failed checkpoint after `seen` earlier ones (the CLI gave up
/// at its deadline; the shim answers late once the dump ended and the pod is thawed).
async fn shim_failure(cd: &'static Containerd, sandbox_id: &str, seen: usize) -> Result<String> {
    let id = sandbox_id.to_string();
    blocking(move || {
        podcr_tests::wait_for("the shim to report the failed checkpoint", T, || {
            Ok(failed_lines(cd, &id).get(seen).cloned())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_short_for_the_dump_is_refused_before_the_freeze() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let mut rs = cd.cri_runtime().await?;
    let name = "dl-before";
    let pod = hog_pod(cd, &mut rs, name).await?;
    let pids = sorted(faults::pod_pids(cd, name));
    let out = cd.dir().join("dl-before-out");
    std::fs::create_dir(&out)?;

    // 1 GiB at the default 512 MiB/s is over 2 s of estimated dump: a 2 s deadline cannot cover it.
    let res = podcr(cd, name, checkpoint_args(name, &out, Some(Duration::from_secs(2)))).await?;
    ensure!(!res.success(), "the checkpoint succeeded within a deadline shorter than its estimate: {res:?}");
    eprintln!("refused as expected:\n{}", res.stderr.trim());
    ensure!(res.stderr.contains("nothing was frozen"), "not refused before the freeze:\n{}", res.stderr);
    ensure!(res.stderr.to_lowercase().contains("deadline"), "the error does not say deadline:\n{}", res.stderr);
    pod_unharmed(cd, &mut rs, &pod, name, &out, &pids, name).await?;
    pods::remove_pod(&mut rs, &pod.id).await
}

/// What a successful checkpoint of the pod measured, in ms.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// From the shim's start of the call to the freeze.
    prep: f64,
    /// The hog's dump from the freeze: CRIU's memory collection, then its page writing.
    dump_wall: f64,
    memdump: f64,
    memwrite: f64,
}

fn parse_ms(s: &str) -> Option<f64> {
    if let Some(v) = s.strip_suffix("µs") {
        return v.parse::<f64>().ok().map(|v| v / 1e3);
    }
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse().ok();
    }
    s.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1e3)
}

/// Reads `podcr checkpoint`'s report: "freeze window X   write Y   total Z ...", then the table.
fn measured(stdout: &str) -> Result<Measured> {
    let first: Vec<&str> = stdout.lines().next().context("no report")?.split_whitespace().collect();
    let after =
        |key: &str| first.iter().position(|t| *t == key).and_then(|i| first.get(i + 1)).and_then(|v| parse_ms(v));
    let (freeze, write, total) = (after("window"), after("write"), after("total"));
    let (Some(freeze), Some(write), Some(total)) = (freeze, write, total) else {
        bail!("unreadable report:\n{stdout}")
    };
    let row: Vec<&str> =
        stdout.lines().find(|l| l.starts_with("hog")).context("no hog row")?.split_whitespace().collect();
    let col = |i: usize| row.get(i).and_then(|v| parse_ms(v)).with_context(|| format!("column {i} of {row:?}"));
    let memwrite = row.last().and_then(|v| parse_ms(v)).context("no MEMWRITE")?;
    Ok(Measured { prep: (total - freeze - write).max(0.0), memdump: col(2)?, dump_wall: col(4)?, memwrite })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// CRIU collects the memory (its parasite is inside the process).
    MemoryDump,
    /// CRIU writes the collected pages to the images.
    PageWrite,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_during_the_dump_let_it_finish_then_thaw_the_pod_and_a_restore_deadline_leaves_nothing() -> Result<()>
{
    let _serial = SERIAL.lock().await;
    // Private: its shims run without the dump estimate, so a deadline can fall inside a dump.
    let cd: &'static Containerd =
        Box::leak(Box::new(blocking(|| Containerd::start_with_env(&[("PODCR_DUMP_MIB_PER_SEC", "0")])).await?));
    let mut rs = cd.cri_runtime().await?;
    let name = "dl-during";
    let pod = hog_pod(cd, &mut rs, name).await?;
    let pids = sorted(faults::pod_pids(cd, name));

    let ckpt = cd.dir().join("dl-measure");
    let res = podcr(cd, name, checkpoint_args(name, &ckpt, None)).await?;
    pods::ensure_success("the measuring checkpoint", &res)?;
    let m = measured(&res.stdout)?;
    eprintln!("measured: {m:?}\n{}", res.stdout.trim());
    ensure!(m.memdump > 0.0 && m.memwrite > 0.0, "CRIU reported no memory dump: {m:?}");

    // During CRIU's set-up: long before any dump is ready, so nothing is frozen.
    let out = cd.dir().join("dl-setup-out");
    std::fs::create_dir(&out)?;
    let seen = failed_lines(cd, &pod.id).len();
    let res = podcr(cd, name, checkpoint_args(name, &out, Some(Duration::from_millis(40)))).await?;
    ensure!(!res.success(), "a 40 ms checkpoint succeeded: {res:?}");
    let said = shim_failure(cd, &pod.id, seen).await?;
    eprintln!("deadline during CRIU's set-up: {said}");
    ensure!(said.contains("nothing was frozen"), "the 40 ms deadline froze the pod: {said}");
    pod_unharmed(cd, &mut rs, &pod, name, &out, &pids, name).await?;

    for phase in [Phase::MemoryDump, Phase::PageWrite] {
        deadline_in(cd, &mut rs, &pod, name, &pids, m, phase)
            .await
            .with_context(|| format!("deadline during {phase:?}"))?;
    }
    pods::remove_pod(&mut rs, &pod.id).await?;

    restore_deadline(cd, &mut rs, &ckpt).await
}

/// Aims the deadline at the middle of `phase` of the measured dump; re-aims when the shim says
/// it passed elsewhere (this machine is shared, so a dump's timing moves). Every attempt, hit
/// or miss, must leave the pod unharmed.
async fn deadline_in(
    cd: &'static Containerd,
    rs: &mut Cri,
    pod: &Pod,
    name: &str,
    pids: &[u32],
    m: Measured,
    phase: Phase,
) -> Result<()> {
    // Offsets from the freeze. CRIU's memdump time covers the whole page dump; when it and
    // memwrite add up to more than the dump, the page writing is its tail (CRIU writes while the
    // parasite is still inside), else it follows it.
    let nested = m.memdump + m.memwrite > m.dump_wall;
    let collect = if nested { (m.memdump - m.memwrite).max(0.0) } else { m.memdump };
    let start = if nested { m.dump_wall - m.memdump } else { m.dump_wall - m.memdump - m.memwrite }.max(0.0);
    let write_start = start + collect;
    let (lo, hi) = match phase {
        Phase::MemoryDump => (start, write_start),
        Phase::PageWrite => (write_start, write_start + m.memwrite),
    };
    let target = (lo + hi) / 2.0;
    let mut prep = m.prep;
    // When the dump was hit but never inside `phase` (its window can be a few hundred ms on a
    // loaded machine, and a dump's timing moves between attempts), the property under test still
    // held: the deadline passed while the pod was frozen and the pod came out whole.
    let mut hit_in_dump = None;
    for attempt in 1..=5 {
        let out = cd.dir().join(format!("dl-{phase:?}-{attempt}"));
        std::fs::create_dir(&out)?;
        // The shim's deadline is the CLI's less a tenth (under 5 s): aim the shim's.
        let shim_deadline = prep + target;
        let timeout = Duration::from_secs_f64(shim_deadline / 0.9 / 1e3);
        let seen = failed_lines(cd, &pod.id).len();
        let res = podcr(cd, name, checkpoint_args(name, &out, Some(timeout))).await?;
        let said = if res.success() { None } else { Some(shim_failure(cd, &pod.id, seen).await?) };
        eprintln!("{phase:?} attempt {attempt}: timeout {timeout:?}, shim says {said:?}");
        if res.success() {
            // Deadline after everything: a whole checkpoint, nothing to clean. Aim earlier.
            faults::verify_checkpoint_dir(&out)?;
            std::fs::remove_dir_all(&out)?;
            std::fs::create_dir(&out)?;
            prep -= 150.0;
        }
        pod_unharmed(cd, rs, pod, name, &out, pids, name).await?;
        let Some(said) = said else { continue };
        if said.contains("nothing was frozen") {
            prep += 100.0;
            continue;
        }
        if said.contains("writing the checkpoint") {
            // After the dump and the thaw, while the archives were written (packaging stops at
            // the next chunk and is joined): a third safe outcome, checked above. Aim earlier.
            prep -= (hi - lo) / 2.0 + 100.0;
            continue;
        }
        let passed_at: f64 = said
            .split("passed ")
            .nth(1)
            .and_then(|s| s.split(" ms after the pod was frozen").next())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the shim's error does not say when the deadline passed: {said}"))?;
        if (lo..hi).contains(&passed_at) {
            eprintln!("{phase:?}: the deadline passed {passed_at} ms after the freeze (phase {lo:.0}-{hi:.0} ms); the pod is whole");
            return Ok(());
        }
        ensure!(
            said.contains("while it was dumped"),
            "the deadline passed {passed_at} ms after the freeze but the shim does not say it was during the dump: {said}"
        );
        hit_in_dump = Some(passed_at);
        prep += target - passed_at;
    }
    if let Some(at) = hit_in_dump {
        eprintln!("{phase:?}: not hit exactly (phase {lo:.0}-{hi:.0} ms), but a deadline passed {at} ms into the dump and the pod is whole");
        return Ok(());
    }
    bail!("could not land a deadline in the dump in 5 attempts (every attempt left the pod whole)")
}

fn restore_dirs(root: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if p.file_name().is_some_and(|n| n == "podcr-restore") {
                    out.push(p);
                } else {
                    restore_dirs(&p, out);
                }
            }
        }
    }
}

/// A restore whose deadline passes while the 1 GiB container is extracted: it fails, the
/// extraction threads stop and nothing is left (no staging, sandbox, container, task, mount or
/// process); a second restore of the same checkpoint then works.
async fn restore_deadline(cd: &'static Containerd, rs: &mut Cri, ckpt: &Path) -> Result<()> {
    let test = "dl-restore";
    let tmp = tmp_for(cd, test);
    let before = Inventory::take(cd, rs, &tmp).await?;
    let args = |t: Option<&str>| {
        let mut v = vec!["restore".to_string(), ckpt.display().to_string(), "--name".into(), "dl-restored".into()];
        if let Some(t) = t {
            v.extend(["--timeout".to_string(), t.to_string()]);
        }
        v
    };
    let res = podcr(cd, test, args(Some("300ms"))).await?;
    ensure!(!res.success(), "a 300 ms restore of 1 GiB succeeded: {res:?}");
    eprintln!("restore refused at its deadline:\n{}", res.stderr.trim());
    ensure!(res.stderr.to_lowercase().contains("deadline"), "the error does not say deadline:\n{}", res.stderr);
    let log = cd.dir().join("containerd.log");
    blocking(move || {
        podcr_tests::wait_until("the shim to report the restore cut short mid-extraction", T, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text
                .lines()
                .any(|l| l.contains("pod restore failed") && l.contains("validating and extracting the checkpoint")))
        })
    })
    .await?;
    faults::wait_nothing_added(cd, rs, &tmp, &before).await.context("after the restore deadline")?;
    let root = cd.dir().to_path_buf();
    blocking(move || {
        podcr_tests::wait_until("no restore staging left", SETTLE, || {
            let mut left = Vec::new();
            restore_dirs(&root, &mut left);
            Ok(left.is_empty())
        })
    })
    .await?;

    let res = podcr(cd, test, args(None)).await?;
    pods::ensure_success("the second restore", &res)?;
    let id = pods::find_pod(rs, "dl-restored").await?.context("the restored pod is not listed")?;
    ensure!(pods::all_running(rs, &id).await?, "restored containers are not running");
    pods::remove_pod(rs, &id).await
}
