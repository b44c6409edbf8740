//! Issue 17 item 3: what containerd learns from, and asks of, a shim binary itself, driven through
//! containerd's own client side by side with runc.v2 (the reference):
//! - `-info` (`ctr plugins inspect-runtime`) carries the OCI runtime's `Features`, so containerd
//!   knows about recursive read-only mounts; `-v` prints versions;
//! - the shim server moves into the shim cgroup named by the runtime options (`ShimCgroup`),
//!   and a cgroup that does not exist fails the task rather than being ignored.
//!
//! The terminal exec with a large output is `task_api::exec_with_tty_and_large_output`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use containerd_client::services::v1::snapshots::{snapshots_client::SnapshotsClient, MountsRequest};
use containerd_client::services::v1::{tasks_client::TasksClient, CreateTaskRequest};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::{transport::Channel, Request};
use podcr_tests::{images, wait_for, Containerd, Runtime, TestNs};

const T: Duration = Duration::from_secs(30);

/// `containerd.runc.v1.Options`, the one field these tests set (field 3 in containerd's
/// api/types/runc/options/oci.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "3")]
    shim_cgroup: String,
}

/// `ctr plugins inspect-runtime` of one runtime, as JSON.
fn inspect(ns: &TestNs, rt: Runtime) -> Result<serde_json::Value> {
    let out = ns.ctr().ok(["plugins", "inspect-runtime", "--runtime", rt.runtime_type()])?;
    serde_json::from_str(&out).with_context(|| format!("inspect-runtime output is no JSON: {out}"))
}

#[test]
fn info_reports_runc_features_as_runc_v2_does() -> Result<()> {
    let cd = Containerd::shared()?;
    let ns = cd.namespace("info-features");
    let runc = inspect(&ns, Runtime::Runc)?;
    let podcr = inspect(&ns, Runtime::Podcr)?;
    ensure!(podcr["Name"] == "io.containerd.podcr.v1", "podcr's name: {podcr:#}");
    ensure!(podcr["Version"]["Version"] == env!("CARGO_PKG_VERSION"), "podcr's version: {podcr:#}");
    let (rf, pf) = (&runc["Features"], &podcr["Features"]);
    ensure!(rf.is_object(), "runc.v2 reports no features (is runc too old?): {runc:#}");
    ensure!(pf.is_object(), "podcr reports no features: {podcr:#}");
    // What containerd reads from them: the mount options (rro) and the OCI versions.
    for key in ["ociVersionMin", "ociVersionMax", "mountOptions", "hooks"] {
        ensure!(rf[key] == pf[key], "{key} differs: runc.v2 {} / podcr {}", rf[key], pf[key]);
    }
    let rro = pf["mountOptions"].as_array().is_some_and(|o| o.iter().any(|m| m == "rro"));
    ensure!(rro, "runc {} supports rro but podcr does not say so", rf["ociVersionMax"]);
    // The one deliberate difference: podcr refuses user-namespaced pods, so it does not let the
    // CRI believe it supports them.
    let namespaces = |f: &serde_json::Value| -> Vec<String> {
        f["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let mut expected = namespaces(rf);
    ensure!(expected.iter().any(|n| n == "user"), "runc lists the user namespace: {rf:#}");
    expected.retain(|n| n != "user");
    ensure!(namespaces(pf) == expected, "namespaces: podcr {:?}, runc.v2 minus user {expected:?}", namespaces(pf));
    Ok(())
}

/// What the CRI makes of it. containerd 2.1.9 introspects only handlers whose `runtime_type` is
/// `io.containerd.runc.v2`, so the `podcr` handler gets no features whatever the shim answers;
/// containerd main (2.4) asks every handler, and from podcr's answer keeps recursive read-only
/// mounts on and user namespaces off. runc's handler proves the kernel and runc support rro here.
#[test]
fn cri_handler_features_follow_the_shims_answer_where_containerd_asks() -> Result<()> {
    let cd = Containerd::shared()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handlers = rt.block_on(async {
        let mut cri = cd.cri_runtime().await?;
        let req = k8s_cri::v1::StatusRequest { verbose: false };
        anyhow::Ok(cri.status(req).await?.into_inner().runtime_handlers)
    })?;
    let features = |name: &str| handlers.iter().find(|h| h.name == name).map(|h| h.features);
    let runc = features(Runtime::Runc.handler()).context("no runc handler in the CRI status")?;
    ensure!(runc.is_some_and(|f| f.recursive_read_only_mounts), "runc handler without rro: {handlers:?}");
    let podcr = features(Runtime::Podcr.handler()).context("no podcr handler in the CRI status")?;
    match (cd.daemon().name.as_str(), podcr) {
        ("system", None) => {}
        ("system", Some(f)) => {
            bail!("containerd 2.1.9 now reports features for the podcr handler ({f:?}): update the README")
        }
        (_, None) => bail!("containerd {} reports no features for podcr", cd.daemon().name),
        (_, Some(f)) => ensure!(
            f.recursive_read_only_mounts && !f.user_namespaces,
            "podcr's handler features: {f:?} (expected rro on, userns off)"
        ),
    }
    Ok(())
}

#[test]
fn dash_v_prints_the_version_like_runc_v2() -> Result<()> {
    let shim = podcr_tests::target_profile_dir()?.join(Runtime::Podcr.shim_binary());
    let mut outs = vec![];
    for bin in [PathBuf::from(Runtime::Runc.shim_binary()), shim] {
        let out =
            std::process::Command::new(&bin).arg("-v").output().with_context(|| format!("run {} -v", bin.display()))?;
        ensure!(out.status.success(), "{} -v: {out:?}", bin.display());
        outs.push(String::from_utf8(out.stdout)?);
    }
    for out in &outs {
        ensure!(out.lines().nth(1).is_some_and(|l| l.trim_start().starts_with("Version:")), "no Version line: {out}");
    }
    ensure!(outs[1].contains(env!("CARGO_PKG_VERSION")), "{}", outs[1]);
    Ok(())
}

use podcr_tests::both_runtimes;

both_runtimes!(shim_joins_the_shim_cgroup, a_missing_shim_cgroup_fails_the_task);

/// A cgroup made for the test in some hierarchies only (v1: memory and pids; v2: the one), named
/// with the run's prefix so the run's teardown removes it if the test cannot.
struct TestCgroup {
    rel: String,
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    fn new(ns: &TestNs) -> Result<TestCgroup> {
        let rel = format!("{}-shims", ns.name());
        let root = PathBuf::from("/sys/fs/cgroup");
        let parents = if root.join("cgroup.controllers").exists() {
            vec![root]
        } else {
            vec![root.join("memory"), root.join("pids")]
        };
        let mut dirs = vec![];
        for p in parents {
            let d = p.join(&rel);
            std::fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
            dirs.push(d);
        }
        Ok(TestCgroup { rel, dirs })
    }

    fn procs(&self) -> Result<Vec<u32>> {
        let text = std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The shim leaves once its task is gone; rmdir succeeds only then.
        let _ = wait_for("the shim to leave the test cgroup", T, || Ok(self.procs()?.is_empty().then_some(())));
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `ctr container create` under `rt`, then Tasks.Create through containerd's API with runc
/// options naming `shim_cgroup` (ctr has no flag for it; the CRI sends it only to runc.v2).
fn create_task(ns: &TestNs, rt: Runtime, id: &str, shim_cgroup: &str) -> Result<std::result::Result<u32, String>> {
    let image = ns.import(&images::BUSYBOX)?;
    ns.ctr().ok(["container", "create", "--runtime", rt.runtime_type(), &image, id, "sleep", "600"])?;
    let rt_ = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt_.block_on(async {
        let channel: Channel = containerd_client::connect(ns.containerd().socket()).await?;
        let header: MetadataValue<Ascii> = ns.name().parse()?;
        fn req<M>(msg: M, header: &MetadataValue<Ascii>) -> Request<M> {
            let mut r = Request::new(msg);
            r.metadata_mut().insert("containerd-namespace", header.clone());
            r
        }
        let mounts = SnapshotsClient::new(channel.clone())
            .mounts(req(MountsRequest { snapshotter: "overlayfs".into(), key: id.into() }, &header))
            .await
            .context("snapshot mounts")?
            .into_inner()
            .mounts;
        let options = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: prost::Message::encode_to_vec(&RuncOptions { shim_cgroup: shim_cgroup.into() }),
        };
        let create =
            CreateTaskRequest { container_id: id.into(), rootfs: mounts, options: Some(options), ..Default::default() };
        match TasksClient::new(channel).create(req(create, &header)).await {
            Ok(resp) => Ok(Ok(resp.into_inner().pid)),
            Err(status) => Ok(Err(status.message().to_string())),
        }
    })
}

fn parent_of(pid: u32) -> Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no PPid for {pid}"))
}

fn shim_joins_the_shim_cgroup(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    let ns = cd.namespace(&format!("shim-cgroup-{}", rt.handler()));
    let cg = TestCgroup::new(&ns)?;
    let pid = match create_task(&ns, rt, "c", &format!("/{}", cg.rel))? {
        Ok(pid) => pid,
        Err(e) => bail!("task create with a shim cgroup failed: {e}"),
    };
    // The task's init is reparented to the shim, a subreaper, once `runc create` exits.
    let shim = parent_of(pid)?;
    let comm = std::fs::read_to_string(format!("/proc/{shim}/comm"))?;
    ensure!(rt.shim_binary().starts_with(comm.trim()), "parent of {pid} is {comm:?}, not the shim");
    ensure!(cg.procs()?.contains(&shim), "shim {shim} is not in {} (holds {:?})", cg.rel, cg.procs()?);
    let cgroups = std::fs::read_to_string(format!("/proc/{shim}/cgroup"))?;
    if !PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
        for ctl in ["memory", "pids"] {
            let line = cgroups.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|x| x == ctl)));
            ensure!(
                line.is_some_and(|l| l.ends_with(&format!(":/{}", cg.rel))),
                "{ctl}: shim {shim} in {line:?}\n{cgroups}"
            );
        }
        // A hierarchy without that cgroup is left alone (containerd's cgroup1 Load skips it).
        let freezer = cgroups.lines().find(|l| l.split(':').nth(1) == Some("freezer"));
        ensure!(!freezer.is_some_and(|l| l.contains(&cg.rel)), "freezer: {freezer:?}");
    }
    // The container itself is not in the shim cgroup: runc puts it in its own.
    ensure!(!cg.procs()?.contains(&pid), "the container's init joined the shim cgroup");
    ns.ctr().ok(["task", "rm", "-f", "c"])?;
    Ok(())
}

fn a_missing_shim_cgroup_fails_the_task(rt: Runtime) -> Result<()> {
    let cd = Containerd::shared()?;
    let ns = cd.namespace(&format!("shim-cgroup-missing-{}", rt.handler()));
    let missing = format!("/{}-no-such-cgroup", ns.name());
    match create_task(&ns, rt, "c", &missing)? {
        Ok(pid) => bail!("a task whose shim cgroup does not exist started (pid {pid})"),
        Err(msg) => ensure!(msg.contains(&missing), "the error does not name the cgroup: {msg}"),
    }
    ensure!(ns.ctr().tasks()?.is_empty(), "a task is left: {:?}", ns.ctr().tasks()?);
    Ok(())
}
