//! Issue 17 item 1: `scripts/install.sh` against scratch roots (what it changes in containerd's
//! configuration, and that `--uninstall` reverses exactly that), and `scripts/release.sh`'s tarball
//! installed into a scratch root that a private containerd then runs a podcr pod from. The same pod
//! measures the shim + holder memory the example RuntimeClass's overhead must cover.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use podcr_tests::cmd::Output;
use podcr_tests::{images, pods, procs, wait_for, Containerd, Installed, Runtime, CRI_NAMESPACE};
use serde::Deserialize;

const T: Duration = Duration::from_secs(60);
const DROPIN: &str = "/etc/containerd/conf.d/podcr.toml";
const IMPORT_LINE: &str = "imports = ['/etc/containerd/conf.d/podcr.toml']";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A scratch tree under target/tmp (the binaries copied into it are large; /tmp may be small).
fn scratch(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(&format!("install-{name}-")).tempdir_in(env!("CARGO_TARGET_TMPDIR"))?)
}

fn run(script: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(script);
    cmd.args(args);
    podcr_tests::cmd::run(&mut cmd, T)
}

/// install.sh from the source tree, with the debug binaries.
fn install(root: &Path, args: &[&str]) -> Result<Output> {
    let bin = podcr_tests::target_profile_dir()?;
    let mut a = vec!["--root", root.to_str().context("root path")?];
    a.extend_from_slice(args);
    if !args.contains(&"--uninstall") {
        a.extend_from_slice(&["--bin-dir", bin.to_str().context("bin path")?]);
    }
    run(&repo().join("scripts/install.sh"), &a)
}

fn ok(out: Output) -> Result<Output> {
    ensure!(out.success(), "{out:?}");
    Ok(out)
}

fn write(root: &Path, path: &str, text: &str) -> Result<()> {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().context("parent")?)?;
    Ok(std::fs::write(p, text)?)
}

fn read(root: &Path, path: &str) -> Result<String> {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> Result<Vec<String>> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root)?.display().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

const CONFIG_21: &str = "version = 3\nroot = '/var/lib/containerd'\n\n# the admin's own\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = 'runc'\n";

#[test]
fn a_21_config_gets_one_imports_line_and_uninstall_restores_it_byte_for_byte() -> Result<()> {
    let root = scratch("21")?;
    let r = root.path();
    write(r, "/etc/containerd/config.toml", CONFIG_21)?;
    let out = ok(install(r, &["--containerd-version", "2.1"])?)?;
    ensure!(out.stderr.contains("restart containerd"), "does not say what to restart: {out:?}");
    let config = read(r, "/etc/containerd/config.toml")?;
    ensure!(
        config == CONFIG_21.replacen("version = 3\n", &format!("version = 3\n{IMPORT_LINE}\n"), 1),
        "config.toml changed beyond one imports line after `version`:\n{config}"
    );
    let dropin = read(r, DROPIN)?;
    let parsed: toml::Value = toml::from_str(&dropin).context("the drop-in is no TOML")?;
    let runtimes = &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"];
    ensure!(runtimes.get("default_runtime_name").is_none(), "the drop-in touches the default runtime:\n{dropin}");
    let podcr = &runtimes["runtimes"]["podcr"];
    ensure!(podcr["runtime_type"].as_str() == Some("io.containerd.podcr.v1"), "{dropin}");
    ensure!(podcr["sandboxer"].as_str() == Some("shim"), "{dropin}");
    ensure!(podcr.get("options").is_none(), "an options table breaks containerd 2.1/2.2: {dropin}");
    for b in ["podcr", "containerd-shim-podcr-v1"] {
        let installed = std::fs::read(r.join("usr/local/bin").join(b))?;
        let built = std::fs::read(podcr_tests::target_profile_dir()?.join(b))?;
        ensure!(installed == built, "{b} is not the built binary");
    }
    // A second run (an upgrade) changes nothing more.
    ok(install(r, &["--containerd-version", "2.1"])?)?;
    ensure!(read(r, "/etc/containerd/config.toml")? == config, "the rerun edited config.toml again");

    let out = ok(install(r, &["--uninstall"])?)?;
    ensure!(out.stderr.contains("restart containerd"), "{out:?}");
    ensure!(read(r, "/etc/containerd/config.toml")? == CONFIG_21, "uninstall did not restore config.toml");
    ensure!(files(r)? == ["etc/containerd/config.toml"], "left behind: {:?}", files(r)?);
    Ok(())
}

#[test]
fn a_one_line_imports_array_is_appended_to_and_a_multiline_one_refused_untouched() -> Result<()> {
    let root = scratch("imports")?;
    let r = root.path();
    let with_imports = "version = 3\nimports = ['/etc/other.toml']  # site\n[grpc]\n  address = '/x.sock'\n";
    write(r, "/etc/containerd/config.toml", with_imports)?;
    ok(install(r, &["--containerd-version", "2.1"])?)?;
    let config = read(r, "/etc/containerd/config.toml")?;
    ensure!(
        config.lines().nth(1) == Some("imports = ['/etc/other.toml', '/etc/containerd/conf.d/podcr.toml']  # site"),
        "{config}"
    );
    ok(install(r, &["--uninstall"])?)?;
    ensure!(read(r, "/etc/containerd/config.toml")? == with_imports, "{}", read(r, "/etc/containerd/config.toml")?);

    let multiline = "version = 3\nimports = [\n  '/etc/other.toml',\n]\n";
    write(r, "/etc/containerd/config.toml", multiline)?;
    let out = install(r, &["--containerd-version", "2.1"])?;
    ensure!(!out.success() && out.stderr.contains("several lines"), "{out:?}");
    ensure!(files(r)? == ["etc/containerd/config.toml"], "a refused install changed files: {:?}", files(r)?);
    ensure!(read(r, "/etc/containerd/config.toml")? == multiline, "a refused install edited config.toml");
    Ok(())
}

#[test]
fn without_a_config_22_reads_the_dropin_and_21_gets_a_minimal_config() -> Result<()> {
    let root = scratch("noconfig")?;
    let r = root.path();
    ok(install(r, &["--containerd-version", "2.2"])?)?;
    ensure!(!r.join("etc/containerd/config.toml").exists(), "created a config.toml for 2.2");
    ensure!(r.join(DROPIN.trim_start_matches('/')).exists(), "no drop-in");
    ok(install(r, &["--uninstall"])?)?;
    ensure!(files(r)?.is_empty(), "left behind: {:?}", files(r)?);

    ok(install(r, &["--containerd-version", "2.1"])?)?;
    ensure!(
        read(r, "/etc/containerd/config.toml")? == format!("version = 3\n{IMPORT_LINE}\n"),
        "{}",
        read(r, "/etc/containerd/config.toml")?
    );
    ok(install(r, &["--uninstall"])?)?;
    ensure!(files(r)?.is_empty(), "left behind: {:?}", files(r)?);

    let out = install(r, &["--containerd-version", "1.7"])?;
    ensure!(!out.success() && out.stderr.contains("too old"), "{out:?}");
    Ok(())
}

#[test]
fn files_it_did_not_install_are_refused_and_files_changed_since_are_kept() -> Result<()> {
    let root = scratch("foreign")?;
    let r = root.path();
    write(r, "/usr/local/bin/podcr", "someone else's\n")?;
    let out = install(r, &["--containerd-version", "2.2"])?;
    ensure!(!out.success() && out.stderr.contains("not installed by this script"), "{out:?}");
    ensure!(files(r)? == ["usr/local/bin/podcr"], "a refused install changed files: {:?}", files(r)?);
    std::fs::remove_file(r.join("usr/local/bin/podcr"))?;

    ok(install(r, &["--containerd-version", "2.2"])?)?;
    write(r, DROPIN, "# the admin's edit\n")?;
    let out = ok(install(r, &["--uninstall"])?)?;
    ensure!(out.stderr.contains("kept /etc/containerd/conf.d/podcr.toml"), "{out:?}");
    ensure!(files(r)? == ["etc/containerd/conf.d/podcr.toml"], "{:?}", files(r)?);
    Ok(())
}

/// `podFixed.memory` of examples/runtimeclass.yaml, in bytes.
fn example_overhead() -> Result<u64> {
    let text = std::fs::read_to_string(repo().join("examples/runtimeclass.yaml"))?;
    let rc = serde_json::Value::deserialize(serde_norway::Deserializer::from_str(&text))?;
    let q = rc["overhead"]["podFixed"]["memory"].as_str().context("no overhead.podFixed.memory")?;
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let mult = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => bail!("unit {other:?} in {q}"),
    };
    Ok(num.parse::<u64>()? * mult)
}

/// Proportional set size of `pid` (shared pages split among their users), in bytes.
fn pss(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no Pss in smaps_rollup")?;
    Ok(kb * 1024)
}

#[test]
fn the_release_tarball_installs_and_a_private_containerd_runs_a_podcr_pod_from_it() -> Result<()> {
    let dist = scratch("dist")?;
    ok(run(
        &repo().join("scripts/release.sh"),
        &[
            "--bin-dir",
            podcr_tests::target_profile_dir()?.to_str().context("path")?,
            "--out",
            dist.path().to_str().context("path")?,
        ],
    )?)?;
    let tarball = std::fs::read_dir(dist.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .context("no tarball")?;
    let name = tarball.file_name().context("name")?.to_string_lossy().into_owned();
    ensure!(name.starts_with(&format!("podcr-{}-", env!("CARGO_PKG_VERSION"))), "{name}");
    let check = Command::new("sha256sum").arg("-c").arg(format!("{name}.sha256")).current_dir(dist.path()).output()?;
    ensure!(check.status.success(), "checksum: {check:?}");
    let untar = Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(dist.path()).status()?;
    ensure!(untar.success(), "untar failed");
    let top = dist.path().join(name.trim_end_matches(".tar.gz"));
    for f in [
        "bin/podcr",
        "bin/containerd-shim-podcr-v1",
        "install.sh",
        "LIBRARIES",
        "VERSION",
        "examples/runtimeclass.yaml",
    ] {
        ensure!(top.join(f).exists(), "the tarball lacks {f}");
    }
    drop(tarball);

    // The tarball's own install.sh, with its own bin/, into a scratch root.
    let root = scratch("node")?;
    let r = root.path();
    let version = Command::new("containerd").arg("--version").output()?;
    let version = String::from_utf8(version.stdout)?;
    let xy = version
        .split_whitespace()
        .find_map(|w| {
            let w = w.trim_start_matches('v');
            let mut it = w.split('.');
            let (a, b) = (it.next()?.parse::<u32>().ok()?, it.next()?.parse::<u32>().ok()?);
            Some(format!("{a}.{b}"))
        })
        .context("containerd --version")?;
    ok(run(&top.join("install.sh"), &["--root", r.to_str().context("path")?, "--containerd-version", &xy])?)?;
    drop(dist);

    let bin_dir = r.join("usr/local/bin");
    let cd = Containerd::start_installed(Installed {
        dropin: r.join(DROPIN.trim_start_matches('/')),
        bin_dir: bin_dir.clone(),
    })?;
    let image = cd.import(CRI_NAMESPACE, &images::BUSYBOX)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rs = rt.block_on(cd.cri_runtime())?;
    let pod = rt.block_on(pods::run_pod(&cd, &mut rs, Runtime::Podcr, "installed", &image, &[("c", &["counter"])]))?;
    pods::wait_count(&pod.log("c"), 2, T)?;

    let shim = podcr_tests::faults::shim_of(&cd, &pod.id)?.context("no shim for the pod")?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", shim.pid))?;
    ensure!(exe == bin_dir.join("containerd-shim-podcr-v1"), "the pod's shim runs {}", exe.display());
    // What a pod costs beyond its containers: the shim and the holder (the shim's child that
    // holds the pod's namespaces; containers are reparented to the shim too, so match by argv).
    let holder = podcr_tests::faults::descendants(shim.pid)?
        .into_iter()
        .find(|p| p.argv.iter().any(|a| a == "__podcr-holder"))
        .context("no holder under the shim")?;
    let used = pss(shim.pid)? + pss(holder.pid)?;
    let overhead = example_overhead()?;
    eprintln!("shim + holder PSS: {} KiB; RuntimeClass overhead: {} KiB", used >> 10, overhead >> 10);
    ensure!(
        used <= overhead,
        "shim + holder use {} KiB, more than the example overhead {} KiB",
        used >> 10,
        overhead >> 10
    );
    ensure!(
        overhead <= 2 * used,
        "the example overhead {} KiB is far above the {} KiB used",
        overhead >> 10,
        used >> 10
    );

    // Uninstalling under a running pod would strand it: refused.
    let out = install(r, &["--uninstall"])?;
    ensure!(!out.success() && out.stderr.contains("shims still run"), "{out:?}");
    rt.block_on(pods::remove_pod(&mut rs, &pod.id))?;
    wait_for("the pod's shim to exit", T, || Ok((!procs::alive(shim.pid)).then_some(())))?;
    ok(install(r, &["--uninstall"])?)?;
    ensure!(files(r)?.is_empty(), "left behind: {:?}", files(r)?);
    cd.stop()
}

/// No Kubernetes runs here, so the installer DaemonSet is checked for what ties it to the rest:
/// it runs install.sh from the image into the host's root and uninstalls in preStop, and the node
/// label its helper sets is the one the RuntimeClass's nodeSelector asks for.
#[test]
fn the_installer_daemonset_labels_nodes_for_the_runtimeclass() -> Result<()> {
    let yaml = |f: &str| -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(repo().join("examples").join(f))?;
        serde_norway::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).context("parse a YAML document"))
            .collect()
    };
    let rc = yaml("runtimeclass.yaml")?.remove(0);
    let selector = rc["scheduling"]["nodeSelector"].as_object().context("RuntimeClass without nodeSelector")?;
    let (key, value) = selector.iter().next().context("empty nodeSelector")?;
    let docs = yaml("install-daemonset.yaml")?;
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").context("no DaemonSet")?;
    let spec = &ds["spec"]["template"]["spec"];
    ensure!(spec["nodeSelector"]["podcr.io/install"] == "true", "DaemonSet nodeSelector: {}", spec["nodeSelector"]);
    let c = &spec["containers"][0];
    let script = c["command"][2].as_str().context("no container script")?;
    ensure!(script.contains("/podcr/install.sh --root /host\n"), "{script}");
    ensure!(script.contains(&format!("label_node '\"{}\"'", value.as_str().context("label value")?)), "{script}");
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"][2].as_str().context("no preStop")?;
    ensure!(pre_stop.contains("label_node null") && pre_stop.contains("--uninstall"), "{pre_stop}");
    ensure!(
        pre_stop.find("label_node null") < pre_stop.find("--uninstall"),
        "the label must go before the uninstall: {pre_stop}"
    );
    ensure!(spec["volumes"][0]["hostPath"]["path"] == "/", "the host root is not mounted");
    let helper = std::fs::read_to_string(repo().join("examples/installer/installer.sh"))?;
    ensure!(helper.contains(&format!("\\\"{key}\\\":$1")), "installer.sh does not set {key}:\n{helper}");
    let dockerfile = std::fs::read_to_string(repo().join("examples/installer/Dockerfile"))?;
    ensure!(dockerfile.contains("installer.sh /podcr/installer.sh"), "{dockerfile}");
    ensure!(docs.iter().any(|d| d["kind"] == "ClusterRole"), "no RBAC for the node label");
    Ok(())
}
