//! containerd restarts while tasks run (an upgrade or crash on a node): the shim must be found again and
//! keep serving its tasks. Each test restarts its own private containerd, never the shared one.

use std::time::Duration;

use anyhow::{ensure, Result};
use podcr_tests::{images, Containerd, Runtime};

const T: Duration = Duration::from_secs(30);

#[test]
fn task_survives_containerd_restart_runc() -> Result<()> {
    task_survives_containerd_restart(Runtime::Runc)
}

#[test]
fn task_survives_containerd_restart_podcr() -> Result<()> {
    task_survives_containerd_restart(Runtime::Podcr)
}

fn task_survives_containerd_restart(rt: Runtime) -> Result<()> {
    let cd = Containerd::start()?;
    let ns = cd.namespace(&format!("restart-{}", rt.handler()));
    let image = ns.import(&images::BUSYBOX)?;
    let ctr = ns.ctr();
    ctr.ok(["run", "-d", "--runtime", rt.runtime_type(), &image, "c", "counter"])?;
    let before = ctr.wait_status("c", "RUNNING", T)?;

    cd.restart()?;

    let after = ctr.wait_status("c", "RUNNING", T)?;
    ensure!(after.pid == before.pid, "task changed pid across the restart: {before:?} -> {after:?}");
    let out = ctr.ok(["task", "exec", "--exec-id", "e", "c", "cat", "/count"])?;
    ensure!(out.trim().parse::<u64>().is_ok(), "exec after restart: {out:?}");
    ctr.ok(["task", "kill", "-s", "SIGTERM", "c"])?;
    ctr.wait_status("c", "STOPPED", T)?;
    ctr.ok(["task", "rm", "c"])?;
    ctr.ok(["container", "rm", "c"])?;
    drop(ns);
    cd.stop()
}
