//! Podman as a peer: the same memhog containers, `podman container checkpoint --export` and
//! `podman container restore --import`, with storage, run state and cgroups kept inside the bench's
//! containerd run dir, so the harness's teardown (and its stale-run cleanup after a crash) removes
//! them with everything else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use podcr_tests::{cmd, images, Containerd};

const T: Duration = Duration::from_secs(900);

#[derive(Clone, Debug)]
pub struct Podman {
    dir: PathBuf,
    image: String,
    cgroup_parent: String,
}

pub struct CheckpointStats {
    pub frozen_ms: f64,
}

impl Podman {
    /// Storage under `<run dir>/podman`, the busybox test image loaded; fails with the reason when
    /// Podman cannot run containers here.
    pub fn setup(cd: &Containerd) -> Result<Podman> {
        let found = cmd::run(Command::new("podman").arg("--version"), Duration::from_secs(30));
        ensure!(found.is_ok_and(|o| o.success()), "podman not installed (scripts/setup-host.sh --bench installs it)");
        let dir = cd.dir().join("podman");
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut p = Podman {
            dir,
            image: String::new(),
            // cgroupfs below a cgroup named with the run's prefix: the harness removes those.
            cgroup_parent: format!("/{}-podman", cd.prefix()),
        };
        let tar = images::BUSYBOX.tarball()?;
        let out = p.ok(&["load", "-i", &tar.to_string_lossy()]).context("podman load")?;
        p.image = out
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .map(|s| s.trim().to_string())
            .context("podman load printed no image name")?;
        // A container that runs and exits proves runtime, conmon and storage work on this host.
        let probe = p.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--cgroup-parent",
            &p.cgroup_parent.clone(),
            &p.image.clone(),
            "true",
        ]);
        probe.context("podman cannot run a container here")?;
        Ok(p)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            // No systemd here, and cgroup v1: cgroupfs; events to a file instead of journald.
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            // runc, as podcr and containerd use, so the same CRIU driver is compared.
            .args(["--runtime", "runc"])
            .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1")
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(cmd::run(&mut self.command(args), T)?.ok()?.stdout)
    }

    pub fn run_memhog(&self, name: &str, mib: u64) -> Result<()> {
        let mib = mib.to_string();
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--log-driver",
            "k8s-file",
            "--cgroup-parent",
            &self.cgroup_parent,
            &self.image,
            "/usr/local/bin/memhog",
            &mib,
            "/memhog",
        ])?;
        Ok(())
    }

    pub fn wait_filled(&self, name: &str, timeout: Duration) -> Result<()> {
        podcr_tests::wait_for(&format!("podman {name} to fill its memory"), timeout, || {
            let logs = self.ok(&["logs", name])?;
            ensure!(!logs.contains("corrupt"), "memhog {name} reports corruption");
            Ok(logs.contains("filled ").then_some(()))
        })
    }

    /// Uncompressed export, leaving the container running, like the other sides.
    pub fn checkpoint(&self, name: &str, tar: &Path) -> Result<CheckpointStats> {
        let out = self.ok(&[
            "container",
            "checkpoint",
            "--leave-running",
            "--print-stats",
            "--compress",
            "none",
            "--export",
            &tar.to_string_lossy(),
            name,
        ])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("--print-stats output: {out}"))?;
        let frozen_us: f64 = v["container_statistics"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["criu_statistics"]["frozen_time"].as_f64()).sum())
            .unwrap_or(0.0);
        Ok(CheckpointStats { frozen_ms: frozen_us / 1e3 })
    }

    pub fn restore(&self, tar: &Path, name: &str) -> Result<()> {
        self.ok(&["container", "restore", "--import", &tar.to_string_lossy(), "--name", name])?;
        Ok(())
    }

    pub fn verify_counting(&self, name: &str) -> Result<()> {
        let mut last = String::new();
        for _ in 0..50 {
            let out = self.ok(&["exec", name, "cat", "/memhog"])?.trim().to_string();
            ensure!(!out.starts_with("corrupt"), "restored podman memhog {name}: {out}");
            if out.starts_with("ok ") && !last.is_empty() && out != last {
                return Ok(());
            }
            last = out;
            std::thread::sleep(Duration::from_millis(150));
        }
        bail!("restored podman memhog {name} is not counting (last read {last:?})")
    }

    /// Removes every container (memhog ignores SIGTERM: kill at once).
    pub fn remove_all(&self) {
        if let Err(e) = cmd::run(&mut self.command(&["rm", "-a", "-f", "-t", "0"]), T).and_then(|o| o.ok()) {
            eprintln!("    podman rm: {e:#}");
        }
    }

    /// Everything Podman made: containers, images, storage (the run dir teardown does the rest).
    pub fn teardown(&self) {
        self.remove_all();
        if let Err(e) = cmd::run(&mut self.command(&["system", "reset", "-f"]), T).and_then(|o| o.ok()) {
            eprintln!("podman system reset: {e:#}");
        }
    }
}
