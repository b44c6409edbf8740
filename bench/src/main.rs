//! `podcr-bench`: podcr's pod checkpoint/restore measured side by side with what users have today,
//! in one run, on one private containerd (see scripts/bench.sh, which builds in release mode first).
//!
//! Sides, run in turn for every repetition of every pod shape (A B C D A B C D ...), so that drift on
//! a shared machine (other builds, page cache, thermal) spreads over all of them instead of biasing
//! whichever ran last:
//! - `podcr`: a CRI pod under the podcr handler; `podcr checkpoint --leave-running` once per
//!   compression, then `podcr restore` from the uncompressed checkpoint.
//! - `floor`: raw `runc checkpoint --leave-running` of every container of a runc.v2 pod, all in
//!   parallel, straight to disk: no rootfs diff, no metadata, no packaging. Nothing pod-aware can be
//!   faster than this with CRIU 4.2.
//! - `runc-v2`: on the same runc.v2 pod, what a containerd user does today: CRI CheckpointContainer
//!   one container after another, the tars packed into one archive; restore is a new pod and
//!   CreateContainer(image = the .tar) + StartContainer per container (containerd 2.1's CRI restore).
//! - `podman`: the same containers under Podman (own storage in the run dir), `podman container
//!   checkpoint --export` one after another, `podman container restore --import` likewise.
//!
//! Results: bench-results/results.csv (every sample), results.md (medians, ratios against the
//! targets), plot.png (time against memory), and the tables on stdout.

mod podman;
mod registry;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use k8s_cri::v1::{
    CheckpointContainerRequest, ContainerConfig, ContainerFilter, ExecSyncRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest,
};
use podcr_tests::{
    cmd::{self, Running},
    cri, images,
    pods::{self, Cri},
    procs, Containerd, Runtime, CRI_NAMESPACE,
};

use report::{Sample, Side};

/// Pod namespace (Kubernetes sense) of every benchmark pod: the harness's `pod_config` sets it.
const POD_NS: &str = "podcr-test";
/// Deadline for one checkpoint or restore of the biggest pods on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(900);

#[derive(Parser, Debug, Clone)]
#[command(name = "podcr-bench", about = "podcr pod checkpoint/restore against runc.v2, raw runc and Podman")]
struct Opts {
    /// Small and fast (under a minute): 2 repetitions, 64 MiB, pods of 1 and 2 containers, no gzip.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every pod shape (each side runs once per repetition, alternating).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// MiB each memhog container touches, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    sizes: Vec<u64>,
    /// Containers per pod, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    containers: Vec<usize>,
    /// podcr archive compressions to measure. The first is restored and compared with the peers in
    /// every repetition; the others only in the first (their sizes do not vary, and gzip alone would
    /// otherwise dominate the run's time).
    #[arg(long, value_delimiter = ',', default_value = "none,zstd,gzip")]
    compressions: Vec<String>,
    /// Skip Podman.
    #[arg(long)]
    no_podman: bool,
    /// Skip the runc.v2 side and the raw runc floor.
    #[arg(long)]
    no_runc: bool,
    /// Repetitions of the pod start latency measurement (per runtime).
    #[arg(long, default_value_t = 5)]
    start_reps: usize,
    /// Where results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

impl Opts {
    fn effective(mut self) -> Opts {
        if self.quick {
            self.reps = 2;
            self.sizes = vec![64];
            self.containers = vec![1, 2];
            self.compressions.retain(|c| c != "gzip");
            self.start_reps = 3;
        }
        self
    }
}

/// Everything one run shares.
struct Bench {
    cd: Containerd,
    rt: tokio::runtime::Runtime,
    image: String,
    podman: std::result::Result<podman::Podman, String>,
    samples: Vec<Sample>,
    failures: Vec<String>,
    notes: Vec<String>,
    pod_counter: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse().effective();
    match run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podcr-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts) -> Result<()> {
    for c in &opts.compressions {
        ensure!(["none", "gzip", "zstd"].contains(&c.as_str()), "unknown compression {c}");
    }
    ensure!(!opts.compressions.is_empty() && opts.reps > 0, "nothing to measure");
    let podcr_bin = podcr_tests::target_profile_dir()?.join("podcr");
    ensure!(
        podcr_bin.exists(),
        "{} not built: cargo build --release -p podcr-shim -p podcr-cli -p podcr-bench",
        podcr_bin.display()
    );
    std::fs::create_dir_all(&opts.out)?;

    eprintln!("==> starting a private containerd");
    let cd = Containerd::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let imported = cd.import(CRI_NAMESPACE, &images::BUSYBOX)?;
    let layout = cd.dir().join("bench-registry");
    std::fs::create_dir_all(&layout)?;
    cmd::run_ok("tar", ["-xf".as_ref(), images::BUSYBOX.tarball()?.as_os_str(), "-C".as_ref(), layout.as_os_str()])?;
    let registry = registry::Registry::serve(&layout)?;
    let image = pullable_name(&cd, &imported, registry.port)?;
    let podman = if opts.no_podman {
        Err("skipped (--no-podman)".to_string())
    } else {
        podman::Podman::setup(&cd).map_err(|e| format!("{e:#}"))
    };
    if let Err(why) = &podman {
        eprintln!("==> podman unavailable: {why}");
    }
    let mut b =
        Bench { cd, rt, image, podman, samples: Vec::new(), failures: Vec::new(), notes: Vec::new(), pod_counter: 0 };
    b.notes.push(host_note());

    let result = b.measure(&opts);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    b.notes.push(format!(
        "load average at the end {} (other work on the machine adds noise: compare sides within a run, not across runs)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    if let Ok(p) = &b.podman {
        p.teardown();
    }
    let stop = b.cd.stop();
    // Write whatever was measured even if a step failed half-way.
    let report = report::write(&opts.out, &b.samples, &b.failures, &b.notes, &opts, b.podman.as_ref().err())?;
    println!("{report}");
    result?;
    stop?;
    Ok(())
}

/// Kernel, CPUs, memory, load: the context any number here needs.
fn host_note() -> String {
    let uname = cmd::run_ok("uname", ["-r"]).map(|o| o.stdout.trim().to_string()).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!(
        "kernel {uname}, {cpus} CPUs, {} MiB RAM available at start, load average {}",
        meminfo("MemAvailable").unwrap_or(0) / 1024,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn meminfo(key: &str) -> Option<u64> {
    proc_field("/proc/meminfo", key)
}

/// The first number of the `key:` line of a /proc file (`/proc/meminfo`, `/proc/<pid>/status`).
fn proc_field<T: std::str::FromStr>(file: &str, key: &str) -> Option<T> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn free_disk_mib(path: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64 / (1 << 20))
}

impl Bench {
    fn measure(&mut self, opts: &Opts) -> Result<()> {
        self.pod_start_latency(opts)?;
        let mut shapes: Vec<(usize, u64)> =
            opts.containers.iter().flat_map(|n| opts.sizes.iter().map(move |m| (*n, *m))).collect();
        // Small pods first: a shape that does not fit is skipped, not the whole run.
        shapes.sort_by_key(|(n, m)| *n as u64 * m);
        for (n, mib) in shapes {
            let total = n as u64 * mib;
            // Workload + a restored copy's page cache, and for disk: podcr's checkpoints (one per
            // compression, the uncompressed one full size) or runc's (archives + packed copy).
            let need_ram = total * 2 + 1024;
            let need_disk = total * 3 + 2048;
            let ram = meminfo("MemAvailable").unwrap_or(0) / 1024;
            let disk = free_disk_mib(self.cd.dir())?;
            if ram < need_ram || disk < need_disk {
                let why = format!(
                    "{n}x{mib} MiB skipped: needs {need_ram} MiB RAM / {need_disk} MiB disk, {ram} / {disk} available"
                );
                eprintln!("==> {why}");
                self.notes.push(why);
                continue;
            }
            for rep in 0..opts.reps {
                eprintln!("==> {n} x {mib} MiB, repetition {}/{}", rep + 1, opts.reps);
                self.side(Side::Podcr, n, mib, rep, |b| b.podcr_side(opts, n, mib, rep));
                if !opts.no_runc {
                    self.side(Side::RuncV2, n, mib, rep, |b| b.runc_side(n, mib, rep));
                }
                if self.podman.is_ok() {
                    self.side(Side::Podman, n, mib, rep, |b| b.podman_side(n, mib, rep));
                }
            }
        }
        Ok(())
    }

    /// Runs one side; a failure is recorded and the run goes on, with the side's leftovers removed.
    fn side(&mut self, side: Side, n: usize, mib: u64, rep: usize, f: impl FnOnce(&mut Bench) -> Result<()>) {
        let started = Instant::now();
        if let Err(e) = f(self) {
            let msg = format!("{} {n}x{mib} MiB rep {rep}: {e:#}", side.name());
            eprintln!("    FAILED {msg}");
            self.failures.push(msg.lines().take(12).collect::<Vec<_>>().join("\n"));
        }
        if let Err(e) = self.remove_all_pods() {
            eprintln!("    cleanup after {}: {e:#}", side.name());
        }
        if let Ok(p) = &self.podman {
            p.remove_all();
        }
        // Settle dirty pages now so that the next side's writes do not pay for this one's.
        let _ = cmd::run(&mut Command::new("sync"), LONG);
        eprintln!("    {} done in {:.1}s", side.name(), started.elapsed().as_secs_f64());
    }

    /// Records one sample; `at` is (containers, MiB each, repetition).
    fn push(&mut self, side: Side, variant: &str, at: (usize, u64, usize), metric: &'static str, value: f64) {
        let (n, mib, rep) = at;
        self.samples.push(Sample { side, variant: variant.to_string(), containers: n, mib, rep, metric, value });
    }

    fn cri(&self) -> Result<Cri> {
        self.rt.block_on(self.cd.cri_runtime())
    }

    fn pod_name(&mut self, what: &str) -> String {
        self.pod_counter += 1;
        format!("{what}-{}", self.pod_counter)
    }

    fn work_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.cd.dir().join("bench").join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Stops and removes every CRI pod of this containerd (they are all the bench's).
    fn remove_all_pods(&self) -> Result<()> {
        let mut rs = self.cri()?;
        self.rt.block_on(async {
            let pods = rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items;
            for p in pods {
                pods::remove_pod(&mut rs, &p.id).await?;
            }
            anyhow::Ok(())
        })
    }

    /// CRI RunPodSandbox + two started containers, podcr and runc.v2 alternating.
    fn pod_start_latency(&mut self, opts: &Opts) -> Result<()> {
        eprintln!("==> pod start latency (RunPodSandbox + 2 containers), {} each", opts.start_reps);
        let sleep: &[&str] = &["sleep", "3600"];
        for rep in 0..opts.start_reps {
            for rt in [Runtime::Podcr, Runtime::Runc] {
                let side = if rt == Runtime::Podcr { Side::Podcr } else { Side::RuncV2 };
                let name = self.pod_name("start");
                let mut rs = self.cri()?;
                let t = Instant::now();
                let r = self.rt.block_on(pods::run_pod(
                    &self.cd,
                    &mut rs,
                    rt,
                    &name,
                    &self.image,
                    &[("a", sleep), ("b", sleep)],
                ));
                let took = t.elapsed();
                if let Some(pid) = r.as_ref().ok().and_then(|p| self.shim_pid(&p.id)) {
                    // Peak, and what of it is the shim's own (anonymous) memory rather than pages of
                    // the binary, which every shim of the node shares through the page cache.
                    for (key, metric) in [
                        ("VmHWM", "shim_hwm_idle_kib"),
                        ("RssAnon", "shim_anon_idle_kib"),
                        ("RssFile", "shim_file_idle_kib"),
                    ] {
                        if let Some(kib) = status_kib(pid, key) {
                            self.push(side, "-", (2, 0, rep), metric, kib);
                        }
                    }
                }
                match r {
                    // The first start of each runtime also pays for unpacking the image; keep it out.
                    Ok(_) if rep == 0 && opts.start_reps > 1 => {}
                    Ok(_) => self.push(side, "-", (2, 0, rep), "pod_start_ms", ms(took)),
                    Err(e) => self.failures.push(format!("pod start {}: {e:#}", rt.handler())),
                }
                self.remove_all_pods()?;
            }
        }
        Ok(())
    }

    fn memhog_pod(&mut self, rt: Runtime, what: &str, n: usize, mib: u64) -> Result<pods::Pod> {
        let name = self.pod_name(what);
        let arg = mib.to_string();
        let command: Vec<&str> = vec!["/usr/local/bin/memhog", &arg, "/memhog"];
        let names: Vec<String> = (0..n).map(|i| format!("hog{i}")).collect();
        let containers: Vec<(&str, &[&str])> = names.iter().map(|c| (c.as_str(), command.as_slice())).collect();
        let mut rs = self.cri()?;
        let pod = self.rt.block_on(pods::run_pod(&self.cd, &mut rs, rt, &name, &self.image, &containers))?;
        // Checkpointing a half-filled heap would measure less memory than asked for.
        for (c, _) in &pod.containers {
            let log = pod.log(c);
            podcr_tests::wait_for(&format!("{name}/{c} to fill {mib} MiB"), LONG, || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                ensure!(!text.contains("corrupt"), "memhog in {name}/{c} reports corruption");
                Ok(text.contains("filled ").then_some(()))
            })?;
        }
        Ok(pod)
    }

    /// After a restore: every memhog of the pod is running and still verifies its pages.
    fn verify_pod(&self, pod_id: &str, n: usize) -> Result<()> {
        let mut rs = self.cri()?;
        self.rt.block_on(async {
            let items = rs
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter { pod_sandbox_id: pod_id.into(), ..Default::default() }),
                })
                .await?
                .into_inner()
                .containers;
            ensure!(items.len() == n, "restored pod has {} containers, expected {n}", items.len());
            for c in items {
                let mut last = String::new();
                let mut ok = false;
                // The counter advances every 100 ms; two different "ok" readings prove it runs.
                for _ in 0..50 {
                    let r = rs
                        .exec_sync(ExecSyncRequest {
                            container_id: c.id.clone(),
                            cmd: vec!["cat".into(), "/memhog".into()],
                            timeout: 10,
                        })
                        .await?
                        .into_inner();
                    let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
                    ensure!(!out.starts_with("corrupt"), "restored memhog {}: {out}", c.id);
                    if out.starts_with("ok ") && !last.is_empty() && out != last {
                        ok = true;
                        break;
                    }
                    last = out;
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                ensure!(ok, "restored memhog {} is not counting (last read {last:?})", c.id);
            }
            anyhow::Ok(())
        })
    }

    /// The shim process serving `sandbox_id`.
    fn shim_pid(&self, sandbox_id: &str) -> Option<u32> {
        let shims = procs::shims_of(self.cd.socket()).ok()?;
        shims.iter().find(|p| p.arg_after("-id") == Some(sandbox_id)).map(|p| p.pid)
    }

    /// Peak RSS (VmHWM, KiB) of the shim serving `sandbox_id`.
    fn shim_hwm_kib(&self, sandbox_id: &str) -> Option<f64> {
        status_kib(self.shim_pid(sandbox_id)?, "VmHWM")
    }

    fn podcr(&self, args: &[String]) -> Result<cmd::Output> {
        let bin = podcr_tests::target_profile_dir()?.join("podcr");
        let mut c = Command::new(bin);
        c.arg("--address")
            .arg(self.cd.socket())
            .args(["--timeout", "15m"])
            .args(args)
            .env("PODCR_CONFIG", self.cd.node_config());
        cmd::run(&mut c, LONG)
    }

    fn podcr_side(&mut self, opts: &Opts, n: usize, mib: u64, rep: usize) -> Result<()> {
        let pod = self.memhog_pod(Runtime::Podcr, "podcr", n, mib)?;
        let shim = self.shim_pid(&pod.id);
        let mut restore_from = None;
        for (i, comp) in opts.compressions.iter().enumerate() {
            if i > 0 && rep > 0 {
                continue;
            }
            if let Some(p) = shim {
                reset_hwm(p);
            }
            let dir = self.work_dir(&format!("{}-{comp}", pod.name))?;
            std::fs::remove_dir(&dir)?;
            let args: Vec<String> =
                ["checkpoint", "--leave-running", "--pod-namespace", POD_NS, "--compression", comp, &pod.name, "-o"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([dir.display().to_string()])
                    .collect();
            let sampler = AnonSampler::start(shim);
            let t = Instant::now();
            let out = self.podcr(&args)?;
            let wall = t.elapsed();
            if let Some(kib) = sampler.finish() {
                self.push(Side::Podcr, comp, (n, mib, rep), "shim_anon_peak_kib", kib);
            }
            pods::ensure_success("podcr checkpoint", &out)?;
            let stats =
                report::parse_podcr_stats(&out.stdout).with_context(|| format!("podcr output:\n{}", out.stdout))?;
            self.push(Side::Podcr, comp, (n, mib, rep), "ckpt_wall_ms", ms(wall));
            self.push(Side::Podcr, comp, (n, mib, rep), "freeze_ms", stats.freeze_ms);
            self.push(Side::Podcr, comp, (n, mib, rep), "write_ms", stats.write_ms);
            self.push(Side::Podcr, comp, (n, mib, rep), "slowest_dump_ms", stats.slowest_dump_ms);
            self.push(Side::Podcr, comp, (n, mib, rep), "archive_bytes", dir_bytes(&dir)? as f64);
            if let Some(kib) = shim.and_then(|p| status_kib(p, "VmHWM")) {
                self.push(Side::Podcr, comp, (n, mib, rep), "shim_hwm_kib", kib);
            }
            if restore_from.is_none() {
                restore_from = Some(dir);
            } else {
                std::fs::remove_dir_all(&dir)?;
            }
        }
        let dir = restore_from.context("no checkpoint to restore")?;
        let variant = opts.compressions[0].clone();
        // The original goes first, as after a node drain: the restore must not share its memory.
        let mut rs = self.cri()?;
        self.rt.block_on(pods::remove_pod(&mut rs, &pod.id))?;
        let name = format!("{}-r", pod.name);
        let args: Vec<String> = [
            "restore".to_string(),
            dir.display().to_string(),
            "--name".into(),
            name.clone(),
            "--pod-namespace".into(),
            POD_NS.into(),
        ]
        .to_vec();
        let t = Instant::now();
        let out = self.podcr(&args)?;
        let wall = t.elapsed();
        pods::ensure_success("podcr restore", &out)?;
        self.push(Side::Podcr, &variant, (n, mib, rep), "restore_ms", ms(wall));
        let restored = self.rt.block_on(pods::find_pod(&mut rs, &name))?.context("restored pod not listed")?;
        self.verify_pod(&restored, n)?;
        if let Some(kib) = self.shim_hwm_kib(&restored) {
            self.push(Side::Podcr, &variant, (n, mib, rep), "shim_hwm_restored_kib", kib);
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// The floor, then runc.v2 through the CRI, on one runc.v2 pod.
    fn runc_side(&mut self, n: usize, mib: u64, rep: usize) -> Result<()> {
        let pod = self.memhog_pod(Runtime::Runc, "runc", n, mib)?;
        let work = self.work_dir(&pod.name)?;

        // Floor: raw runc checkpoint of every container at once.
        let root = runc_root(&pod.containers[0].1)?;
        let mut running = Vec::new();
        let t = Instant::now();
        for (name, id) in &pod.containers {
            let d = work.join("floor").join(name);
            std::fs::create_dir_all(&d)?;
            let mut c = Command::new("runc");
            c.arg("--root").arg(&root).args(["checkpoint", "--leave-running", "--image-path"]).arg(d.join("images"));
            c.arg("--work-path").arg(&d).arg(id);
            running.push((name.clone(), d, Running::spawn(&mut c)?));
        }
        let mut floor_bytes = 0;
        let mut slowest = Duration::ZERO;
        for (name, d, r) in running {
            let out = r.wait(LONG)?;
            ensure!(out.success(), "runc checkpoint {name}: {out:?}");
            slowest = slowest.max(t.elapsed());
            floor_bytes += dir_bytes(&d.join("images"))?;
        }
        let floor_wall = t.elapsed();
        self.push(Side::Floor, "none", (n, mib, rep), "ckpt_wall_ms", ms(floor_wall));
        // Containers frozen in parallel: the pod has a frozen container for as long as the set runs.
        self.push(Side::Floor, "none", (n, mib, rep), "freeze_ms", ms(slowest));
        self.push(Side::Floor, "none", (n, mib, rep), "archive_bytes", floor_bytes as f64);
        std::fs::remove_dir_all(work.join("floor"))?;
        let _ = cmd::run(&mut Command::new("sync"), LONG);

        // runc.v2 through the CRI, one container after another.
        let shim = self.shim_pid(&pod.id);
        if let Some(p) = shim {
            reset_hwm(p);
        }
        let mut rs = self.cri()?;
        let sampler = AnonSampler::start(shim);
        let mut frozen_sum = 0.0;
        let mut frozen_max = 0f64;
        let mut calls = Duration::ZERO;
        let mut tars = Vec::new();
        let t = Instant::now();
        for (name, id) in &pod.containers {
            let tar = work.join(format!("{name}.tar"));
            let c0 = Instant::now();
            self.rt
                .block_on(rs.checkpoint_container(CheckpointContainerRequest {
                    container_id: id.clone(),
                    location: tar.display().to_string(),
                    timeout: LONG.as_secs() as i64,
                }))
                .with_context(|| format!("CRI CheckpointContainer {name}\n{}", error_lines(&self.cd)))?;
            let call = c0.elapsed();
            calls += call;
            // CRIU's own frozen time when containerd copied stats-dump into the archive; else the call.
            let frozen = criu_frozen_ms_in_tar(&tar).unwrap_or(ms(call));
            frozen_sum += frozen;
            frozen_max = frozen_max.max(frozen);
            tars.push(tar);
        }
        let seq = t.elapsed();
        if let Some(kib) = sampler.finish() {
            self.push(Side::RuncV2, "none", (n, mib, rep), "shim_anon_peak_kib", kib);
        }
        let packed = work.join("pod.tar");
        let p0 = Instant::now();
        let mut tar_cmd = Command::new("tar");
        tar_cmd.arg("-cf").arg(&packed).arg("-C").arg(&work);
        for t in &tars {
            tar_cmd.arg(t.file_name().context("tar name")?);
        }
        cmd::run(&mut tar_cmd, LONG)?.ok()?;
        let pack = p0.elapsed();
        self.push(Side::RuncV2, "none", (n, mib, rep), "ckpt_wall_ms", ms(seq + pack));
        self.push(Side::RuncV2, "none", (n, mib, rep), "pack_ms", ms(pack));
        self.push(Side::RuncV2, "none", (n, mib, rep), "freeze_ms", frozen_sum);
        // The slowest container frozen on its own by CRIU: what a perfectly parallel pod freeze costs.
        self.push(Side::RuncV2, "none", (n, mib, rep), "max_frozen_ms", frozen_max);
        self.push(Side::RuncV2, "none", (n, mib, rep), "cri_calls_ms", ms(calls));
        self.push(Side::RuncV2, "none", (n, mib, rep), "archive_bytes", std::fs::metadata(&packed)?.len() as f64);
        std::fs::remove_file(&packed)?;
        if let Some(kib) = shim.and_then(|p| status_kib(p, "VmHWM")) {
            self.push(Side::RuncV2, "none", (n, mib, rep), "shim_hwm_kib", kib);
        }

        // Restore: a new runc pod, then each container from its archive, as crictl would.
        self.rt.block_on(pods::remove_pod(&mut rs, &pod.id))?;
        let name = format!("{}-r", pod.name);
        let t = Instant::now();
        let new_id = self.rt.block_on(cri_restore(&self.cd, &mut rs, &name, &pod.containers, &tars))?;
        let wall = t.elapsed();
        self.push(Side::RuncV2, "none", (n, mib, rep), "restore_ms", ms(wall));
        self.verify_pod(&new_id, n)?;
        if let Some(kib) = self.shim_hwm_kib(&new_id) {
            self.push(Side::RuncV2, "none", (n, mib, rep), "shim_hwm_restored_kib", kib);
        }
        std::fs::remove_dir_all(&work)?;
        Ok(())
    }

    fn podman_side(&mut self, n: usize, mib: u64, rep: usize) -> Result<()> {
        let podman = self.podman.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
        let name = self.pod_name("pm");
        let work = self.work_dir(&name)?;
        let names: Vec<String> = (0..n).map(|i| format!("{name}-hog{i}")).collect();
        for c in &names {
            podman.run_memhog(c, mib)?;
        }
        for c in &names {
            podman.wait_filled(c, LONG)?;
        }
        let mut frozen = 0.0;
        let mut bytes = 0;
        let mut archives = Vec::new();
        let t = Instant::now();
        for c in &names {
            let tar = work.join(format!("{c}.tar"));
            let stats = podman.checkpoint(c, &tar)?;
            frozen += stats.frozen_ms;
            bytes += std::fs::metadata(&tar)?.len();
            archives.push((c.clone(), tar));
        }
        let wall = t.elapsed();
        self.push(Side::Podman, "none", (n, mib, rep), "ckpt_wall_ms", ms(wall));
        self.push(Side::Podman, "none", (n, mib, rep), "freeze_ms", frozen);
        self.push(Side::Podman, "none", (n, mib, rep), "archive_bytes", bytes as f64);
        podman.remove_all();
        let t = Instant::now();
        for (c, tar) in &archives {
            podman.restore(tar, &format!("{c}-r"))?;
        }
        let wall = t.elapsed();
        self.push(Side::Podman, "none", (n, mib, rep), "restore_ms", ms(wall));
        for (c, _) in &archives {
            podman.verify_counting(&format!("{c}-r"))?;
        }
        std::fs::remove_dir_all(&work)?;
        Ok(())
    }
}

/// The CRI restore of containerd 2.1: RunPodSandbox, then CreateContainer with the checkpoint
/// archive as the image and StartContainer, container by container. Returns the new pod's id.
async fn cri_restore(
    cd: &Containerd,
    rs: &mut Cri,
    name: &str,
    containers: &[(String, String)],
    tars: &[PathBuf],
) -> Result<String> {
    let mut config = cd.pod_config(name)?;
    if let Some(linux) = config.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(pods::kubelet_namespaces()),
            ..Default::default()
        });
    }
    let id = rs
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: Runtime::Runc.handler().into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    for ((cname, _), tar) in containers.iter().zip(tars) {
        let mut cconfig: ContainerConfig = cri::container_config(cname, &tar.display().to_string(), &[]);
        cconfig.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pods::kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cid = match pods::create_container(rs, &id, &config, cconfig).await {
            Ok(cid) => cid,
            Err(e) => {
                let images = cd.ctr(CRI_NAMESPACE).ok(["images", "ls", "-q"]).unwrap_or_default();
                bail!("CreateContainer {cname} from {}: {e:#}\nimages: {images}\n{}", tar.display(), error_lines(cd));
            }
        };
        rs.start_container(StartContainerRequest { container_id: cid })
            .await
            .with_context(|| format!("StartContainer (restore) {cname}\n{}", error_lines(cd)))?;
    }
    Ok(id)
}

/// Names the imported image `localhost:<port>/podcr-bench/busybox` (tag and digest), as a pull
/// from the bench's registry would have: the CRI then records that repo digest as the containers'
/// image_ref, which containerd 2.1's CRI restore pulls (see registry.rs). Both runtimes use this name.
fn pullable_name(cd: &Containerd, imported: &str, port: u16) -> Result<String> {
    let ctr = cd.ctr(CRI_NAMESPACE);
    let ls = ctr.ok(["images", "ls"])?;
    let digest = ls
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&imported)).then(|| f.get(2).map(|d| d.to_string())).flatten()
        })
        .with_context(|| format!("{imported} not in `ctr images ls`:\n{ls}"))?;
    let repo = format!("localhost:{port}/podcr-bench/busybox");
    let tag = format!("{repo}:latest");
    ctr.ok(["images", "tag", "--local", "--force", imported, &tag, &format!("{repo}@{digest}")])?;
    Ok(tag)
}

/// containerd's recent error lines, for failure messages (its info lines drown them).
fn error_lines(cd: &Containerd) -> String {
    let tail = cd.log_tail(200);
    let errors: Vec<&str> = tail.lines().filter(|l| l.contains("level=error")).collect();
    errors[errors.len().saturating_sub(3)..].join("\n")
}

/// The runc root the runc.v2 shim keeps `id`'s state in (its default, per containerd namespace).
fn runc_root(id: &str) -> Result<PathBuf> {
    for root in [format!("/run/containerd/runc/{CRI_NAMESPACE}"), format!("/run/runc/{CRI_NAMESPACE}")] {
        if Path::new(&root).join(id).is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    bail!("no runc state for container {id} under /run/containerd/runc/{CRI_NAMESPACE}")
}

/// CRIU's frozen time from the `stats-dump` inside a CRI checkpoint archive, in ms.
fn criu_frozen_ms_in_tar(tar: &Path) -> Option<f64> {
    let mut a = tar::Archive::new(std::fs::File::open(tar).ok()?);
    for e in a.entries().ok()? {
        let mut e = e.ok()?;
        if e.path().ok()?.to_string_lossy().trim_start_matches("./") == "stats-dump" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut buf).ok()?;
            let s = podcr_sandbox_controller::checkpoint::criu_stats::parse_dump_stats(&buf).ok()?;
            return Some(s.frozen_time_us as f64 / 1e3);
        }
    }
    None
}

/// Samples a process's anonymous RSS (its own heap and stacks, not the shared binary) every few
/// milliseconds until dropped; the kernel keeps no peak for it.
struct AnonSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<f64>>,
}

impl AnonSampler {
    fn start(pid: Option<u32>) -> AnonSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = pid.map(|pid| {
            std::thread::spawn(move || {
                let mut peak = 0f64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, "RssAnon").unwrap_or(0.0));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            })
        });
        AnonSampler { stop, handle }
    }

    /// The peak in KiB, if there was a process to sample.
    fn finish(mut self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take()?.join().ok().filter(|p| *p > 0.0)
    }
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (proc(5), clear_refs "5"), so the next
/// reading is the peak of the next operation alone.
fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, key: &str) -> Option<f64> {
    proc_field(&format!("/proc/{pid}/status"), key)
}

/// Total size of the regular files below `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            total += dir_bytes(&e.path())?;
        } else if t.is_file() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}
