//! Issue 17 item 4: the `podcr` command line as containerd and Kubernetes users expect it — where
//! it connects (`-a` in both forms, `$CONTAINERD_ADDRESS`, `$CONTAINERD_NAMESPACE`), what it
//! prints (`-o json`, `-q`), `version` and `check`, completion and man pages, and how it fails:
//! a deadline on every containerd call (a socket that accepts and never answers must not hang
//! `podcr checkpoint`), local input refused before connecting, and the documented exit codes.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use podcr_tests::cmd::Output;
use podcr_tests::{images, pods, Containerd, Runtime, CRI_NAMESPACE};

const T: Duration = Duration::from_secs(120);

/// `podcr ARGS` with a clean environment for the variables podcr reads (set them per test).
fn podcr(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = Command::new(podcr_tests::target_profile_dir()?.join("podcr"));
    cmd.args(args);
    for var in ["CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "CONTAINER_RUNTIME_ENDPOINT"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    podcr_tests::cmd::run(&mut cmd, T)
}

fn code(out: &Output, expected: i32) -> Result<()> {
    ensure!(out.code == expected, "expected exit {expected}: {out:?}");
    Ok(())
}

fn sock(cd: &Containerd) -> String {
    cd.socket().display().to_string()
}

#[test]
fn every_address_form_and_the_environment_reach_containerd() -> Result<()> {
    let cd = Containerd::shared()?;
    let ns = cd.namespace("cli-address");
    let (s, n) = (sock(cd), ns.name().to_string());
    let id = format!("{n}-sb");
    let node_config = cd.node_config().display().to_string();
    let run = podcr(&["-a", &s, "-n", &n, "sandbox", "run", &id], &[("PODCR_CONFIG", &node_config)])?;
    code(&run, 0)?;
    let unix = format!("unix://{s}");
    type Form<'a> = (&'a [&'a str], Vec<(&'a str, &'a str)>);
    let forms: [Form; 4] = [
        (&["-a", &unix, "-n", &n], vec![]),
        (&["--address", &s, "--namespace", &n], vec![]),
        (&["-n", &n], vec![("CONTAINERD_ADDRESS", unix.as_str())]),
        (&[], vec![("CONTAINERD_ADDRESS", s.as_str()), ("CONTAINERD_NAMESPACE", n.as_str())]),
    ];
    for (flags, env) in &forms {
        let mut args = flags.to_vec();
        args.extend_from_slice(&["sandbox", "ls", "-q"]);
        let out = podcr(&args, env)?;
        code(&out, 0)?;
        ensure!(out.stdout.lines().collect::<Vec<_>>() == [id.as_str()], "{flags:?} {env:?}: {out:?}");
    }
    // A flag beats the environment, as with ctr.
    let out = podcr(&["-a", &s, "-n", &n, "sandbox", "ls", "-q"], &[("CONTAINERD_ADDRESS", "/nonexistent.sock")])?;
    code(&out, 0)?;

    let out = podcr(&["-a", &s, "-n", &n, "sandbox", "ls", "-o", "json"], &[])?;
    code(&out, 0)?;
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).context("ls -o json is no JSON")?;
    let row = rows.as_array().and_then(|r| r.first()).context("no rows")?;
    ensure!(row["id"] == id.as_str() && row["sandboxer"] == "shim", "{row:#}");
    ensure!(row["pid"].as_u64().is_some_and(|p| p > 0), "{row:#}");
    let table = podcr(&["-a", &s, "-n", &n, "sandbox", "ls"], &[])?;
    ensure!(table.stdout.starts_with("ID ") && table.stdout.contains(&id), "{table:?}");

    code(&podcr(&["-a", &s, "-n", &n, "sandbox", "rm", &id], &[])?, 0)?;
    Ok(())
}

/// A socket that accepts connections and never answers, as a wedged containerd would.
struct Silent {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Silent {
    fn start() -> Result<Silent> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path)?;
        // Detached: it holds what it accepts until the test process exits.
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                held.extend(conn.ok());
            }
        });
        Ok(Silent { path, _dir: dir })
    }
}

#[test]
fn a_socket_that_never_answers_fails_checkpoint_with_exit_3_instead_of_hanging() -> Result<()> {
    let silent = Silent::start()?;
    let out_dir = tempfile::tempdir()?;
    let output = out_dir.path().join("ckpt");
    let s = silent.path.display().to_string();
    for args in [
        vec!["-a", &s, "--call-timeout", "2s", "checkpoint", "default/web", "-o", output.to_str().context("path")?],
        vec!["-a", &s, "--call-timeout", "2s", "sandbox", "ls"],
        vec!["-a", &s, "--call-timeout", "2s", "version"],
    ] {
        let out = podcr(&args, &[])?;
        code(&out, 3)?;
        ensure!(
            out.stderr.contains("--call-timeout") && out.stderr.contains("hint: is containerd running?"),
            "{out:?}"
        );
        ensure!(
            out.stderr.lines().filter(|l| l.starts_with("podcr:")).count() == 1,
            "the error is printed once: {out:?}"
        );
    }
    ensure!(!output.exists(), "a checkpoint that never reached containerd created its output");

    let out = podcr(&["-a", "/nonexistent/containerd.sock", "sandbox", "ls"], &[])?;
    code(&out, 3)?;
    ensure!(out.stderr.contains("/nonexistent/containerd.sock"), "{out:?}");
    Ok(())
}

#[test]
fn local_input_is_refused_before_connecting_with_exit_2() -> Result<()> {
    // The silent socket would turn any connection attempt into exit 3: exit 2 proves none was made.
    let silent = Silent::start()?;
    let s = silent.path.display().to_string();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("file"), "x")?;
    let full = dir.path().to_str().context("path")?;
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["checkpoint", "web", "-o", full], "is not empty"),
        (vec!["checkpoint", "a/b/c", "-o", "/tmp/x"], "expected NAMESPACE/NAME"),
        (vec!["checkpoint", "ns1/web", "--pod-namespace", "ns2", "-o", "/tmp/x"], "--pod-namespace"),
        (vec!["restore", "/nonexistent/checkpoint"], "does not exist"),
        (vec!["-a", "tcp://127.0.0.1:1", "sandbox", "ls"], "tcp:// is not supported"),
    ];
    for (args, says) in cases {
        let mut a = vec!["--call-timeout", "2s"];
        if !args.contains(&"-a") {
            a.extend(["-a", s.as_str()]);
        }
        a.extend(args);
        let out = podcr(&a, &[])?;
        code(&out, 2)?;
        ensure!(out.stderr.contains(says), "expected {says:?}: {out:?}");
    }
    // clap's own usage errors share the code.
    code(&podcr(&["checkpoint"], &[])?, 2)?;
    Ok(())
}

#[test]
fn an_unknown_pod_exits_4_and_leaves_no_output() -> Result<()> {
    let cd = Containerd::shared()?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out");
    let out =
        podcr(&["-a", &sock(cd), "checkpoint", "podcr-test/no-such-pod", "-o", output.to_str().context("path")?], &[])?;
    code(&out, 4)?;
    ensure!(out.stderr.contains("no pod matches \"podcr-test/no-such-pod\""), "{out:?}");
    ensure!(!output.exists(), "output created for a pod that does not exist");
    Ok(())
}

#[test]
fn a_cri_pod_by_namespace_slash_name_checkpoints_and_restores_with_json_and_quiet_output() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = cd.import(CRI_NAMESPACE, &images::BUSYBOX)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rs = rt.block_on(cd.cri_runtime())?;
    let name = format!("{}-cli-byname", cd.prefix());
    let pod = rt.block_on(pods::run_pod(cd, &mut rs, Runtime::Podcr, &name, &image, &[("c", &["counter"])]))?;
    pods::wait_count(&pod.log("c"), 1, T)?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("ckpt");
    let node_config = cd.node_config().display().to_string();
    let sock_str = sock(cd);
    let out = podcr(
        &[
            "-a",
            &sock(cd),
            "checkpoint",
            &format!("podcr-test/{name}"),
            "-o",
            output.to_str().context("path")?,
            "--format",
            "json",
        ],
        &[("PODCR_CONFIG", &node_config)],
    )?;
    code(&out, 0)?;
    let doc = json(&out)?;
    ensure!(doc["sandbox_id"] == pod.id.as_str(), "checkpointed another pod: {doc:#}");
    ensure!(doc["output"] == output.display().to_string(), "{doc:#}");
    ensure!(doc["stats"]["total_bytes"].as_u64().is_some_and(|b| b > 0), "{doc:#}");
    ensure!(doc["stats"]["containers"].as_array().map(Vec::len) == Some(1), "{doc:#}");
    ensure!(std::fs::read_dir(&output)?.next().is_some(), "empty checkpoint");

    // -q: only where it went, for `$(podcr checkpoint -q ...)`; into a checkpoint root, so the
    // restore below may read it.
    let second = podcr_tests::node_config::checkpoint_roots(cd.dir())[1].join(&name);
    let out = podcr(
        &["-a", &sock(cd), "checkpoint", &pod.id, "-o", second.to_str().context("path")?, "-q"],
        &[("PODCR_CONFIG", &node_config)],
    )?;
    code(&out, 0)?;
    ensure!(out.stdout == format!("{}\n", second.display()), "{out:?}");

    let restored_name = format!("{name}-r");
    let args = ["restore", second.to_str().context("path")?, "--name", &restored_name, "--pod-namespace", "podcr-test"];
    let mut a = vec!["-a", sock_str.as_str()];
    a.extend(args);
    a.extend(["--format", "json"]);
    let out = podcr(&a, &[("PODCR_CONFIG", &node_config)])?;
    code(&out, 0)?;
    let doc = json(&out)?;
    let new_pod = doc["sandbox_id"].as_str().context("no sandbox_id")?.to_string();
    ensure!(!new_pod.is_empty() && new_pod != pod.id, "{doc:#}");
    ensure!(doc["containers"][0]["name"] == "c" && doc["containers"][0]["id"].is_string(), "{doc:#}");
    rt.block_on(pods::remove_pod(&mut rs, &new_pod))?;
    rt.block_on(pods::remove_pod(&mut rs, &pod.id))
}

#[test]
fn a_runc_pod_by_name_is_refused_as_not_a_podcr_pod() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = cd.import(CRI_NAMESPACE, &images::BUSYBOX)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rs = rt.block_on(cd.cri_runtime())?;
    let name = format!("{}-cli-runc", cd.prefix());
    let pod = rt.block_on(pods::run_pod(cd, &mut rs, Runtime::Runc, &name, &image, &[("c", &["counter"])]))?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("ckpt");
    let out = podcr(
        &["-a", &sock(cd), "checkpoint", &format!("podcr-test/{name}"), "-o", output.to_str().context("path")?],
        &[],
    )?;
    rt.block_on(pods::remove_pod(&mut rs, &pod.id))?;
    code(&out, 1)?;
    ensure!(out.stderr.contains("is not a shim sandbox") && out.stderr.contains("podsandbox"), "{out:?}");
    ensure!(!output.exists(), "output created for a pod podcr cannot checkpoint");
    Ok(())
}

fn json(out: &Output) -> Result<serde_json::Value> {
    serde_json::from_str(&out.stdout).with_context(|| format!("no JSON: {out:?}"))
}

#[test]
fn version_names_client_shim_containerd_runc_and_criu() -> Result<()> {
    let cd = Containerd::shared()?;
    let out = podcr(&["-a", &sock(cd), "version", "-o", "json"], &[])?;
    code(&out, 0)?;
    let v = json(&out)?;
    ensure!(v["client"]["version"] == env!("CARGO_PKG_VERSION"), "{v:#}");
    // The shim as containerd runs it (from the run's PATH): the one built with this client.
    ensure!(v["shim"]["version"] == env!("CARGO_PKG_VERSION"), "{v:#}");
    let containerd = String::from_utf8(Command::new(&cd.daemon().containerd).arg("--version").output()?.stdout)?;
    let cv = v["containerd"]["version"].as_str().context("no containerd version")?;
    ensure!(containerd.contains(cv.trim_start_matches('v')), "{cv} vs {containerd}");
    for tool in ["runc", "criu"] {
        let tv = v[tool]["version"].as_str().with_context(|| format!("no {tool} version: {v:#}"))?;
        let own = Command::new(tool).arg("--version").output()?;
        ensure!(String::from_utf8_lossy(&own.stdout).contains(tv), "{tool}: {tv}");
    }
    Ok(())
}

#[test]
fn check_passes_on_the_test_node_and_fails_for_a_missing_handler() -> Result<()> {
    let cd = Containerd::shared()?;
    let node_config = cd.node_config().display().to_string();
    let env = [("PODCR_CONFIG", node_config.as_str())];
    let out = podcr(&["-a", &sock(cd), "check", "-o", "json"], &env)?;
    let checks = json(&out)?;
    let outcome = |checks: &serde_json::Value, name: &str| -> String {
        checks
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["outcome"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    for name in [
        "containerd",
        "cri handler",
        "shim",
        "runc",
        "criu",
        "criu check",
        "node config",
        "signing key",
        "trusted keys",
    ] {
        ensure!(outcome(&checks, name) == "pass", "{name}: {checks:#}");
    }
    code(&out, 0)?;

    let out = podcr(&["-a", &sock(cd), "check", "--handler", "no-such-handler", "-o", "json"], &env)?;
    code(&out, 1)?;
    ensure!(outcome(&json(&out)?, "cri handler") == "fail", "{out:?}");
    let table = podcr(&["-a", &sock(cd), "check", "--handler", "no-such-handler"], &env)?;
    ensure!(table.stdout.contains("FAIL") && table.stderr.contains("checks failed"), "{table:?}");

    // A node without its signing key or any trusted key can neither checkpoint nor restore.
    let bare = cd.dir().join("cli-check-nokey");
    std::fs::create_dir_all(&bare)?;
    let config = bare.join("podcr.toml");
    std::fs::write(
        &config,
        format!(
            "[signing]\nkey = {:?}\ntrusted_dir = {:?}\n",
            bare.join("signing.key").display().to_string(),
            bare.join("trusted.d").display().to_string()
        ),
    )?;
    let config = config.display().to_string();
    let out = podcr(&["-a", &sock(cd), "check", "-o", "json"], &[("PODCR_CONFIG", config.as_str())])?;
    code(&out, 1)?;
    let checks = json(&out)?;
    for name in ["signing key", "trusted keys"] {
        ensure!(outcome(&checks, name) == "fail", "{name}: {checks:#}");
    }
    Ok(())
}

#[test]
fn completion_scripts_and_man_pages() -> Result<()> {
    for (shell, marker) in [("bash", "_podcr()"), ("zsh", "#compdef podcr"), ("fish", "complete -c podcr")] {
        let out = podcr(&["completion", shell], &[])?;
        code(&out, 0)?;
        ensure!(
            out.stdout.contains(marker) && out.stdout.contains("checkpoint"),
            "{shell}: {}",
            &out.stdout[..out.stdout.len().min(300)]
        );
    }
    let dir = tempfile::tempdir()?;
    code(&podcr(&["man", dir.path().to_str().context("path")?], &[])?, 0)?;
    for page in ["podcr.1", "podcr-checkpoint.1", "podcr-restore.1", "podcr-sandbox-ls.1", "podcr-check.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).with_context(|| page.to_string())?;
        ensure!(text.starts_with(".ie") || text.contains(".TH"), "{page} is no man page");
    }
    let main_page = std::fs::read_to_string(dir.path().join("podcr.1"))?;
    ensure!(main_page.contains("Exit codes"), "the exit codes are not in podcr(1)");
    Ok(())
}
