//! Issue 3: the task API through `ctr`, against podcr and runc.v2 side by side with the same assertions.
//! runc.v2 is the reference: a test that fails only for podcr is a podcr bug.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use podcr_tests::{images, procs, wait_for, wait_until, Containerd, Runtime, TestNs};

const T: Duration = Duration::from_secs(30);

use podcr_tests::both_runtimes;

both_runtimes!(
    stdout_and_stderr_arrive,
    exit_status_is_reported,
    exec_without_tty,
    exec_with_tty,
    exec_with_tty_and_large_output,
    kill_delivers_the_signal,
    pause_and_resume,
    ps_lists_init_and_exec,
    metrics_are_reported,
    checkpoint_and_restore_continue_the_counter,
    killing_the_main_process_is_an_exit,
    nothing_remains_after_rm,
);

/// A namespace on the shared containerd with the busybox image imported.
fn setup(test: &str, rt: Runtime) -> Result<(TestNs<'static>, String)> {
    let cd = Containerd::shared()?;
    let ns = cd.namespace(&format!("{test}-{}", rt.handler()));
    let image = ns.import(&images::BUSYBOX)?;
    Ok((ns, image))
}

/// `ctr run -d` of `args` under `rt`; returns the task's host pid once it runs.
fn run_detached(ns: &TestNs, rt: Runtime, image: &str, id: &str, args: &[&str]) -> Result<u32> {
    let mut a = vec!["run", "-d", "--runtime", rt.runtime_type(), image, id];
    a.extend_from_slice(args);
    ns.ctr().ok(a)?;
    Ok(ns.ctr().wait_status(id, "RUNNING", T)?.pid)
}

/// The counter helper's current value, read through the task's root from the host: no exec needed,
/// and it works whatever bundle layout the runtime uses.
fn read_count(pid: u32) -> Result<Option<u64>> {
    let p = PathBuf::from(format!("/proc/{pid}/root/count"));
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| format!("{}: {s:?}", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn wait_count_above(pid: u32, min: u64) -> Result<u64> {
    wait_for(&format!("counter in pid {pid} to pass {min}"), T, || Ok(read_count(pid)?.filter(|n| *n > min)))
}

fn stdout_and_stderr_arrive(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("stdout", rt)?;
    let out = ns.ctr().run([
        "run",
        "--rm",
        "--runtime",
        rt.runtime_type(),
        &image,
        "echo",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ])?;
    ensure!(out.success(), "{out:?}");
    ensure!(out.stdout.trim() == "to-stdout", "stdout: {out:?}");
    ensure!(out.stderr.contains("to-stderr"), "stderr: {out:?}");
    Ok(())
}

fn exit_status_is_reported(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("exit", rt)?;
    let out = ns.ctr().run(["run", "--rm", "--runtime", rt.runtime_type(), &image, "exit3", "sh", "-c", "exit 3"])?;
    ensure!(out.code == 3, "expected exit 3: {out:?}");
    Ok(())
}

fn exec_without_tty(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("exec", rt)?;
    run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    let out = ns.ctr().run(["task", "exec", "--exec-id", "e1", "c", "sh", "-c", "echo out; echo err >&2; exit 5"])?;
    ensure!(out.code == 5, "exec exit code: {out:?}");
    ensure!(out.stdout.trim() == "out", "exec stdout: {out:?}");
    ensure!(out.stderr.contains("err"), "exec stderr: {out:?}");
    // The exec ran inside the container: its PID 1 is the container's init.
    let init = ns.ctr().ok(["task", "exec", "--exec-id", "e2", "c", "cat", "/proc/1/cmdline"])?;
    let argv: Vec<&str> = init.split('\0').filter(|a| !a.is_empty()).collect();
    ensure!(argv == ["sleep", "600"], "exec sees PID 1 as {argv:?}");
    Ok(())
}

fn exec_with_tty(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("exec-tty", rt)?;
    run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    let out =
        ns.ctr().pty(["task", "exec", "--tty", "--exec-id", "t1", "c", "sh", "-c", "tty; echo tty-ok; exit 4"])?;
    ensure!(out.code == 4, "tty exec exit code: {out:?}");
    ensure!(out.stdout.contains("/dev/pts/"), "exec'd process has no pty: {out:?}");
    ensure!(out.stdout.contains("tty-ok"), "tty output missing: {out:?}");
    Ok(())
}

/// A terminal exec whose output far exceeds the pty's buffer: every line must arrive, in order, and
/// the exit status after it (issue 17: this once failed on podcr with runc's "cannot use console
/// socket if runc will not detach or allocate tty").
fn exec_with_tty_and_large_output(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("exec-tty-big", rt)?;
    run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    const LINES: u32 = 50_000;
    let out = ns.ctr().pty([
        "task",
        "exec",
        "--tty",
        "--exec-id",
        "big",
        "c",
        "sh",
        "-c",
        &format!("seq 1 {LINES}; echo tty-big-done; exit 6"),
    ])?;
    ensure!(out.code == 6, "tty exec exit code: {}", out.code);
    let numbers: Vec<u32> = out.stdout.lines().filter_map(|l| l.trim_end_matches('\r').parse().ok()).collect();
    ensure!(
        numbers.len() == LINES as usize && numbers.iter().copied().eq(1..=LINES),
        "expected 1..={LINES} in order, got {} numbers (last {:?}); tail: {:?}",
        numbers.len(),
        numbers.last(),
        &out.stdout[out.stdout.len().saturating_sub(300)..]
    );
    ensure!(
        out.stdout.contains("tty-big-done"),
        "output ends early: {:?}",
        &out.stdout[out.stdout.len().saturating_sub(300)..]
    );
    Ok(())
}

fn kill_delivers_the_signal(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("kill", rt)?;
    // Foreground `ctr run` exits with the task's exit status; the counter exits 42 on SIGTERM.
    let fg = ns.ctr().spawn(["run", "--runtime", rt.runtime_type(), &image, "c", "counter"])?;
    let pid = ns.ctr().wait_status("c", "RUNNING", T)?.pid;
    wait_count_above(pid, 0)?;
    ns.ctr().ok(["task", "kill", "-s", "SIGTERM", "c"])?;
    let out = fg.wait(T)?;
    ensure!(out.code == 42, "expected the counter's SIGTERM exit 42: {out:?}");
    Ok(())
}

fn pause_and_resume(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("pause", rt)?;
    let pid = run_detached(&ns, rt, &image, "c", &["counter"])?;
    wait_count_above(pid, 0)?;
    ns.ctr().ok(["task", "pause", "c"])?;
    ns.ctr().wait_status("c", "PAUSED", T)?;
    let frozen = read_count(pid)?.context("no count")?;
    // Showing that nothing happens needs a window of time: 5 counter periods.
    std::thread::sleep(Duration::from_millis(500));
    let still = read_count(pid)?.context("no count")?;
    ensure!(still == frozen, "counter moved while paused: {frozen} -> {still}");
    ns.ctr().ok(["task", "resume", "c"])?;
    ns.ctr().wait_status("c", "RUNNING", T)?;
    wait_count_above(pid, still)?;
    Ok(())
}

fn ps_lists_init_and_exec(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("ps", rt)?;
    let init = run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    ns.ctr().ok(["task", "exec", "-d", "--exec-id", "sleeper", "c", "sleep", "601"])?;
    let pids = wait_for("ps to list two processes", T, || {
        let out = ns.ctr().ok(["task", "ps", "c"])?;
        let pids: Vec<u32> = out.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
        Ok((pids.len() >= 2).then_some(pids))
    })?;
    ensure!(pids.contains(&init), "init pid {init} missing from ps: {pids:?}");
    let exec = pids.iter().filter_map(|p| procs::proc(*p)).find(|p| p.argv == ["sleep", "601"]);
    ensure!(exec.is_some(), "the exec'd `sleep 601` missing from ps: {pids:?}");
    Ok(())
}

fn metrics_are_reported(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("metrics", rt)?;
    run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    let out = ns.ctr().ok(["task", "metrics", "--format", "json", "c"])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("metrics json: {out}"))?;
    // cgroup v1 (io.containerd.cgroups.v1.Metrics) and v2 name the fields differently.
    let mem = v.pointer("/memory/usage/usage").or_else(|| v.pointer("/memory/usage")).and_then(|x| x.as_u64());
    let pids = v.pointer("/pids/current").and_then(|x| x.as_u64());
    ensure!(mem.is_some_and(|m| m > 0), "no memory usage in metrics: {v}");
    ensure!(pids.is_some_and(|p| p >= 1), "no pids count in metrics: {v}");
    Ok(())
}

fn checkpoint_and_restore_continue_the_counter(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("checkpoint", rt)?;
    let ctr = ns.ctr().with_timeout(Duration::from_secs(120));
    let pid = run_detached(&ns, rt, &image, "c", &["counter"])?;
    // Far enough that a restarted (not restored) counter could not be there yet.
    wait_count_above(pid, 20)?;
    // The flow ctr 2.1 supports: checkpoint task + rw layer into an image, drop the container, restore.
    let ckpt = format!("localhost/podcr-test/checkpoint-{}:1", rt.handler());
    let before = read_count(pid)?.context("no count")?;
    ctr.ok(["container", "checkpoint", "--task", "--rw", "c", &ckpt])?;
    ctr.ok(["task", "kill", "-s", "SIGKILL", "c"])?;
    ctr.wait_status("c", "STOPPED", T)?;
    ctr.ok(["task", "rm", "c"])?;
    ctr.ok(["container", "rm", "c"])?;

    ctr.ok(["container", "restore", "--live", "--rw", "c", &ckpt])?;
    let restored = ctr.wait_status("c", "RUNNING", T)?.pid;
    // /count itself comes back with the rw layer, so wait for the process to write a new value. The
    // counter only counts up and was checkpointed after `before` was read: a restored process writes a
    // larger value, a restarted one would write 1, 2, ...
    let from_layer = wait_for("restored /count", T, || read_count(restored))?;
    let next = wait_for("the restored counter to write", T, || Ok(read_count(restored)?.filter(|n| *n != from_layer)))?;
    ensure!(next > before, "counter restarted instead of restoring: wrote {next}, was past {before}");
    Ok(())
}

fn killing_the_main_process_is_an_exit(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("kill-main", rt)?;
    // Foreground: ctr learns about the exit through the shim's exit event.
    let fg = ns.ctr().spawn(["run", "--runtime", rt.runtime_type(), &image, "fg", "sleep", "600"])?;
    let pid = ns.ctr().wait_status("fg", "RUNNING", T)?.pid;
    procs::signal(pid, Signal::SIGKILL)?;
    let out = fg.wait(T)?;
    ensure!(out.code == 137, "expected exit 137 after SIGKILL: {out:?}");
    // Detached: the task turns STOPPED.
    let pid = run_detached(&ns, rt, &image, "bg", &["sleep", "600"])?;
    procs::signal(pid, Signal::SIGKILL)?;
    ns.ctr().wait_status("bg", "STOPPED", T)?;
    Ok(())
}

fn nothing_remains_after_rm(rt: Runtime) -> Result<()> {
    let (ns, image) = setup("leftovers", rt)?;
    let cd = ns.containerd();
    let init = run_detached(&ns, rt, &image, "c", &["sleep", "600"])?;
    ns.ctr().ok(["task", "exec", "-d", "--exec-id", "e", "c", "sleep", "601"])?;
    let exec = wait_for("exec'd sleep", T, || {
        Ok(procs::all()?.into_iter().find(|p| p.argv == ["sleep", "601"]).map(|p| p.pid))
    })?;
    let ours = |p: &procs::Proc| p.arg_after("-namespace") == Some(ns.name());
    let shims: Vec<u32> = procs::shims_of(cd.socket())?.iter().filter(|p| ours(p)).map(|p| p.pid).collect();
    ensure!(!shims.is_empty(), "no shim found for namespace {}", ns.name());

    ns.ctr().ok(["task", "kill", "-s", "SIGKILL", "c"])?;
    ns.ctr().wait_status("c", "STOPPED", T)?;
    ns.ctr().ok(["task", "rm", "c"])?;
    ns.ctr().ok(["container", "rm", "c"])?;

    wait_until("the shim to exit", T, || Ok(shims.iter().all(|p| procs::proc(*p).is_none())))?;
    wait_until("the shim to exit", T, || Ok(!procs::shims_of(cd.socket())?.iter().any(ours)))?;
    for (what, pid) in [("init", init), ("exec", exec)] {
        // Gone entirely: not even a zombie waiting for a parent.
        wait_until(&format!("{what} pid {pid} to be reaped"), T, || Ok(procs::proc(pid).is_none()))?;
    }
    // Nobody may be left unreaped: not by the shim (container processes) nor by containerd (the shim
    // it started). Other tests' short-lived processes can be zombies for a moment, hence wait_until:
    // only a zombie that stays is a leak. (ctr children of this test process are reaped by `cmd`.)
    let leaked = |p: &procs::Proc| {
        p.is_zombie() && (shims.contains(&p.ppid) || (cd.pid() == Some(p.ppid) && p.comm.contains("shim")))
    };
    wait_until("no zombie left by the shim or containerd", T, || Ok(!procs::all()?.iter().any(leaked))).with_context(
        || format!("{:?}", procs::all().unwrap_or_default().into_iter().filter(leaked).collect::<Vec<_>>()),
    )?;
    ensure!(ns.ctr().tasks()?.is_empty() && ns.ctr().containers()?.is_empty(), "task or container left");
    Ok(())
}
