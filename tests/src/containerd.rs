//! A private containerd per test run: own config, root, state, socket, CNI network and runtimes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::cleanup::{self, RunRecord};
use crate::cmd::{self, run, Output, Running, DEFAULT_TIMEOUT};
use crate::images::{ImageSpec, IMAGE_PREFIX, PAUSE};
use crate::procs;
use crate::wait::{wait_for, wait_until};

/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The two runtimes every integration test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's own `io.containerd.runc.v2`: the reference behaviour.
    Runc,
    /// Our `io.containerd.podcr.v1`.
    Podcr,
}

impl Runtime {
    pub const BOTH: [Runtime; 2] = [Runtime::Runc, Runtime::Podcr];

    /// What `ctr run --runtime` takes.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::Runc => "io.containerd.runc.v2",
            Runtime::Podcr => "io.containerd.podcr.v1",
        }
    }

    /// The CRI runtime handler name registered in the private config.
    pub fn handler(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Podcr => "podcr",
        }
    }

    /// The shim binary containerd derives from the runtime type.
    pub fn shim_binary(self) -> &'static str {
        match self {
            Runtime::Runc => "containerd-shim-runc-v2",
            Runtime::Podcr => "containerd-shim-podcr-v1",
        }
    }
}

/// Which containerd binary a run starts: the system's (Debian's 2.1.9) or an upstream build (see
/// [`crate::upstream`]). Everything else about the run (config, root, state, socket, CNI, the
/// podcr shim first on PATH) is the same for every daemon.
#[derive(Clone, Debug)]
pub struct Daemon {
    /// For messages: `system` or the upstream build's name.
    pub name: String,
    pub containerd: PathBuf,
    /// A directory put on containerd's PATH after the run's own bin dir, before the system's:
    /// an upstream build's own `containerd-shim-runc-v2` (main ships one), so runc.v2 tasks run
    /// with the shim of the same commit.
    pub extra_path: Option<PathBuf>,
    /// Run containerd's NRI plugin (its socket inside the run dir). Off by default, as before:
    /// only tests of NRI-dependent flows (PR 13971's two-phase restore) turn it on.
    pub nri: bool,
}

impl Daemon {
    /// `containerd` from PATH.
    pub fn system() -> Daemon {
        Daemon { name: "system".into(), containerd: PathBuf::from("containerd"), extra_path: None, nri: false }
    }

    /// The daemon `PODCR_TEST_CONTAINERD` names: unset or `system` for the system's, or an
    /// upstream build (`main`, `pr13822`, `pr13971`). This is how `scripts/test.sh` runs the
    /// existing tests, unchanged, against containerd main.
    pub fn from_env() -> Result<Daemon> {
        let name = std::env::var("PODCR_TEST_CONTAINERD").unwrap_or_default();
        if name.is_empty() || name == "system" {
            return Ok(Daemon::system());
        }
        let build = crate::upstream::Upstream::from_name(&name)
            .with_context(|| format!("PODCR_TEST_CONTAINERD={name}: expected system, main, pr13822 or pr13971"))?;
        crate::upstream::find(build)?.with_context(|| {
            format!(
                "PODCR_TEST_CONTAINERD={name} but no upstream builds at {}",
                crate::upstream::shipped_dir().display()
            )
        })
    }
}

/// A running private containerd. `stop()` (also run on drop) tears down everything the run created.
pub struct Containerd {
    /// The run's record; `containerd_pid` in it is only the first daemon's: see `child`.
    rec: RunRecord,
    /// The current containerd process (replaced by `restart`).
    child: Mutex<Option<Child>>,
    /// (namespace, image reference) pairs already imported.
    imported: Mutex<HashSet<(String, String)>>,
    ns_counter: AtomicU32,
    stopped: Mutex<bool>,
    daemon: Daemon,
    /// Extra environment for containerd, and so for the shims it starts.
    env: Vec<(String, String)>,
    /// podcr as `scripts/install.sh` put it in place, instead of the harness's own set-up.
    installed: Option<Installed>,
}

/// podcr installed by `scripts/install.sh` into a scratch root: containerd imports its drop-in
/// (the run's config then has no podcr runtime of its own) and finds the shim in `bin_dir`.
#[derive(Clone, Debug)]
pub struct Installed {
    pub dropin: PathBuf,
    pub bin_dir: PathBuf,
}

/// Where run dirs live: `$PODCR_TEST_TMPDIR` or /tmp/podcr-tests. Must allow overlayfs upper dirs and
/// short enough paths for unix sockets (108 bytes).
pub fn runs_base() -> PathBuf {
    std::env::var_os("PODCR_TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/podcr-tests"))
}

static SHARED: OnceLock<std::result::Result<Containerd, String>> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(c)) = SHARED.get() {
        if let Err(e) = c.stop() {
            eprintln!("podcr-tests: {e:#}");
        }
    }
}

impl Containerd {
    /// The one containerd of this test binary, started on first use and torn down when the process
    /// exits (the test harness exits normally even when tests fail, so `atexit` runs). Tests sharing it
    /// stay isolated through their own namespace (`namespace()`).
    pub fn shared() -> Result<&'static Containerd> {
        let r = SHARED.get_or_init(|| {
            let c = Containerd::start().map_err(|e| format!("{e:#}"))?;
            // SAFETY: registering a plain extern "C" fn; it only touches the OnceLock above.
            unsafe { libc::atexit(stop_shared_at_exit) };
            Ok(c)
        });
        r.as_ref().map_err(|e| anyhow::anyhow!("starting the shared containerd failed: {e}"))
    }

    /// Starts a private containerd ([`Daemon::from_env`]). Fails loudly if a tool or the podcr
    /// shim binary is missing.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with_env(&[])
    }

    /// [`Containerd::start`] with extra environment variables for containerd, which passes them
    /// on to the shims it starts (e.g. a shim tuning knob a test needs set).
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Containerd> {
        Containerd::launch(Daemon::from_env()?, env)
    }

    /// Starts a private run of `daemon`, set up exactly like [`start`](Self::start)'s.
    pub fn start_with(daemon: Daemon) -> Result<Containerd> {
        Containerd::launch(daemon, &[])
    }

    /// Starts a private containerd that knows podcr only through what `scripts/install.sh`
    /// installed (see [`Installed`]).
    pub fn start_installed(installed: Installed) -> Result<Containerd> {
        Containerd::launch_with(Daemon::from_env()?, &[], Some(installed))
    }

    fn launch(daemon: Daemon, env: &[(&str, &str)]) -> Result<Containerd> {
        Containerd::launch_with(daemon, env, None)
    }

    fn launch_with(daemon: Daemon, env: &[(&str, &str)], installed: Option<Installed>) -> Result<Containerd> {
        anyhow::ensure!(nix::unistd::geteuid().is_root(), "the integration tests need root (containerd, runc, CRIU)");
        for tool in ["containerd", "ctr", "runc", "criu", "umoci", "gcc", "ip", "tar"] {
            which(tool).with_context(|| format!("`{tool}` not found: run scripts/setup-host.sh"))?;
        }
        let base = runs_base();
        std::fs::create_dir_all(&base)?;
        cleanup::cleanup_stale_runs(&base)?;

        // create_dir (not _all) claims the id atomically, even against a run started concurrently.
        let (run_id, dir) = loop {
            let id = new_run_id();
            let dir = base.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("create the run dir"),
            }
        };
        cleanup::register_live(&run_id);
        let rec = RunRecord {
            run_id: run_id.clone(),
            owner_pid: std::process::id(),
            containerd_pid: None,
            dir: dir.clone(),
            socket: dir.join("containerd.sock"),
            bridge: format!("pt{run_id}"),
            ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
        };
        rec.save()?;
        cleanup::record_ip_forward(&base, &run_id)?;
        let cd = Containerd {
            rec,
            child: Mutex::new(None),
            imported: Mutex::new(HashSet::new()),
            ns_counter: AtomicU32::new(0),
            stopped: Mutex::new(false),
            daemon,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            installed,
        };
        // From here on, a failure tears the partial run down through Drop.
        cd.prepare()?;
        cd.spawn_daemon()?;
        // The CRI's runc podsandbox needs its pause image locally; pinned to our own in the config.
        cd.import(CRI_NAMESPACE, &PAUSE)?;
        Ok(cd)
    }

    /// Writes the run's config, CNI network and shim PATH dir.
    fn prepare(&self) -> Result<()> {
        let dir = self.rec.dir.clone();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        if self.installed.is_some() {
            return self.prepare_network_and_config();
        }
        // containerd finds `containerd-shim-podcr-v1` on its PATH; put just that binary there so nothing
        // else from the target dir shadows system tools.
        let shim = crate::target_profile_dir()?.join(Runtime::Podcr.shim_binary());
        anyhow::ensure!(
            shim.exists(),
            "{} not built: run `cargo build -p podcr-shim` (scripts/test.sh does) first",
            shim.display()
        );
        warn_if_stale(&shim);
        // A hard link (a copy across filesystems), not a symlink: the run keeps one consistent shim even
        // if cargo relinks target/debug while the tests run.
        let linked = bin.join(Runtime::Podcr.shim_binary());
        if std::fs::hard_link(&shim, &linked).is_err() {
            std::fs::copy(&shim, &linked)?;
        }
        self.prepare_network_and_config()
    }

    fn prepare_network_and_config(&self) -> Result<()> {
        let dir = self.rec.dir.clone();

        let subnet = pick_subnet()?;
        std::fs::create_dir_all(dir.join("cni"))?;
        std::fs::write(dir.join("cni/10-podcr-test.conflist"), cni_conflist(&self.rec, &subnet))?;
        let config = dir.join("config.toml");
        let mut text = containerd_config(&self.rec, self.daemon.nri);
        if let Some(i) = &self.installed {
            text = installed_config(&text, &i.dropin)?;
        }
        std::fs::write(&config, text)?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        crate::node_config::provision(&dir)?;
        Ok(())
    }

    /// The run's `podcr.toml`: its shims read it (through containerd's environment), and so does
    /// every `podcr` CLI the tests run (`PODCR_CONFIG`).
    pub fn node_config(&self) -> PathBuf {
        self.rec.dir.join(crate::node_config::FILE)
    }

    /// Starts the containerd process and waits until it answers on its socket.
    fn spawn_daemon(&self) -> Result<()> {
        let dir = &self.rec.dir;
        let bin = dir.join("bin");
        let config = dir.join("config.toml");
        // Append: a restarted containerd's log follows the previous one's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("containerd.log"))?;
        let extra = self.daemon.extra_path.as_ref().map(|p| format!("{}:", p.display())).unwrap_or_default();
        let first = self.installed.as_ref().map_or(bin, |i| i.bin_dir.clone());
        let path = format!("{}:{extra}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", first.display());
        let child = Command::new(&self.daemon.containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env_remove("XDG_RUNTIME_DIR")
            // Checkpoint temp dirs (ctrd-checkpoint*) go to $TMPDIR: keep them in the run dir.
            .env("TMPDIR", dir.join("tmp"))
            .env("PODCR_CONFIG", self.node_config())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn containerd")?;
        // Recorded for the next run's stale cleanup, in case this process is killed.
        let mut rec = self.rec.clone();
        rec.containerd_pid = Some(child.id());
        rec.save()?;
        *self.child.lock().unwrap() = Some(child);

        let ctr = self.ctr("default");
        wait_for("containerd to serve its socket", Duration::from_secs(30), || {
            if let Some(code) = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("containerd exited ({code}) during start-up:\n{}", self.log_tail(30));
            }
            Ok(ctr.run(["version"])?.success().then_some(()))
        })?;
        Ok(())
    }

    /// Restarts containerd with the same config, root and state, leaving shims and tasks running (as a
    /// node's containerd upgrade or crash would): exercises the shim's reconnect path.
    pub fn restart(&self) -> Result<()> {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            procs::signal(c.id(), nix::sys::signal::Signal::SIGTERM)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while c.try_wait()?.is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(crate::wait::POLL);
            }
        }
        self.spawn_daemon()
    }

    /// The containerd binary this run started.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    pub fn run_id(&self) -> &str {
        &self.rec.run_id
    }

    /// The run dir: config, root, state, logs, CNI config, all under it.
    pub fn dir(&self) -> &Path {
        &self.rec.dir
    }

    pub fn socket(&self) -> &Path {
        &self.rec.socket
    }

    /// containerd's root (persistent data) dir.
    pub fn root(&self) -> PathBuf {
        self.rec.dir.join("root")
    }

    /// containerd's state (runtime, tmpfs-like) dir.
    pub fn state(&self) -> PathBuf {
        self.rec.dir.join("state")
    }

    /// The current containerd process.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// Prefix of every namespace and cgroup this run creates (cleanup finds them by it).
    pub fn prefix(&self) -> String {
        self.rec.prefix()
    }

    /// A `ctr -a <socket> -n <ns>` runner.
    pub fn ctr(&self, namespace: &str) -> Ctr {
        Ctr { socket: self.rec.socket.clone(), namespace: namespace.to_string(), timeout: DEFAULT_TIMEOUT }
    }

    /// A fresh containerd namespace for one test, removed (with its tasks, containers and images) when
    /// the guard drops, pass or fail.
    pub fn namespace(&self, test: &str) -> TestNs<'_> {
        let n = self.ns_counter.fetch_add(1, Ordering::Relaxed);
        let clean: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let clean = clean.trim_matches('-').split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-");
        TestNs { cd: self, name: format!("{}-{n}-{clean}", self.prefix()) }
    }

    /// Imports `image` into `namespace` once per run; returns its reference.
    pub fn import(&self, namespace: &str, image: &ImageSpec) -> Result<String> {
        let reference = image.reference();
        let key = (namespace.to_string(), reference.clone());
        if self.imported.lock().unwrap().contains(&key) {
            return Ok(reference);
        }
        let tar = image.tarball()?;
        let base = format!("{IMAGE_PREFIX}/{}", image.name);
        self.ctr(namespace).ok(["image", "import", "--base-name", &base, &tar.to_string_lossy()])?;
        self.imported.lock().unwrap().insert(key);
        Ok(reference)
    }

    /// The last `lines` lines of containerd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.rec.dir.join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops containerd and removes everything the run created. Idempotent. The containerd log is kept
    /// in `<runs base>/logs/` (the last few runs) for post-mortems.
    pub fn stop(&self) -> Result<()> {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return Ok(());
        }
        *stopped = true;
        keep_log(&self.rec);
        let mut rec = self.rec.clone();
        rec.containerd_pid = self.pid();
        let r = cleanup::teardown(&rec, std::env::var_os("PODCR_TEST_KEEP").is_some());
        // teardown signalled containerd by pid; reap our child so it does not linger as a zombie.
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        r
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("podcr-tests: {e:#}");
        }
    }
}

fn keep_log(rec: &RunRecord) {
    let logs = runs_base().join("logs");
    if std::fs::create_dir_all(&logs).is_err() {
        return;
    }
    let _ = std::fs::copy(rec.dir.join("containerd.log"), logs.join(format!("{}-containerd.log", rec.run_id)));
    // Keep the newest 10 logs only.
    if let Ok(rd) = std::fs::read_dir(&logs) {
        let mut files: Vec<_> =
            rd.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect();
        files.sort();
        for (_, p) in files.iter().rev().skip(10) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Short, unique enough: it is also part of the bridge name, which Linux limits to 15 bytes.
fn new_run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mix = nanos ^ ((std::process::id() as u64) << 32) ^ (nanos >> 29);
    format!("{:06x}", mix & 0xff_ffff)
}

/// A 10.88.x.0/24 no route or address on the host uses yet, starting at a per-run offset.
fn pick_subnet() -> Result<String> {
    let used =
        cmd::run_ok("ip", ["-4", "route", "show", "table", "all"])?.stdout + &cmd::run_ok("ip", ["-4", "addr"])?.stdout;
    let start = (std::process::id() % 200) as u16;
    for i in 0..200u16 {
        let x = 20 + (start + i) % 200;
        if !used.contains(&format!("10.88.{x}.")) {
            return Ok(format!("10.88.{x}.0/24"));
        }
    }
    bail!("no free 10.88.x.0/24 subnet for the test CNI network")
}

fn cni_conflist(rec: &RunRecord, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("podcr-test-{}", rec.run_id),
        "plugins": [{
            "type": "bridge",
            "bridge": rec.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                // Keep IP allocations private to the run (default is /var/lib/cni/networks).
                "dataDir": rec.dir.join("cni-ipam"),
            }
        }]
    })
    .to_string()
}

/// The run's config with its own podcr runtime taken out and `dropin` imported instead.
fn installed_config(config: &str, dropin: &Path) -> Result<String> {
    let table = "      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podcr]\n        runtime_type = 'io.containerd.podcr.v1'\n        sandboxer = 'shim'\n";
    anyhow::ensure!(config.contains(table), "the run's config no longer has the podcr table to replace");
    let without = config.replace(table, "");
    Ok(without.replacen("version = 3\n", &format!("version = 3\nimports = ['{}']\n", dropin.display()), 1))
}

/// containerd 2.1 config (version 3). Everything that would otherwise land in /var/lib/containerd,
/// /run/containerd, /etc/cni or /var/run/netns is moved under the run dir.
fn containerd_config(rec: &RunRecord, nri: bool) -> String {
    let d = rec.dir.display();
    let nri = if nri {
        format!("disable = false\n    socket_path = '{d}/nri.sock'\n    plugin_path = '{d}/nri-plugins'\n    plugin_config_path = '{d}/nri-conf'")
    } else {
        "disable = true".to_string()
    };
    format!(
        r#"version = 3
root = '{d}/root'
state = '{d}/state'
temp = '{d}/tmp'

[grpc]
  address = '{d}/containerd.sock'

[ttrpc]
  address = '{d}/containerd.sock.ttrpc'

[plugins]
  # NRI would listen on the global /var/run/nri/nri.sock unless moved into the run.
  [plugins.'io.containerd.nri.v1.nri']
    {nri}
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d}/opt'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    # No registry is reachable: the sandbox (pause) image is built and imported locally.
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.runtime']
    # root here lacks CAP_SYS_RESOURCE: it may not lower a process's oom_score_adj.
    restrict_oom_score_adj = true
    enable_cdi = false
    # Pod network namespaces under <state>/netns instead of the global /var/run/netns.
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        sandboxer = 'podsandbox'
      # No options table: containerd 2.1 fails StartContainer on non-runc options for shim sandboxes.
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podcr]
        runtime_type = 'io.containerd.podcr.v1'
        sandboxer = 'shim'
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni', '/opt/cni/bin']
      conf_dir = '{d}/cni'
      max_conf_num = 1
"#,
        pause = PAUSE.reference(),
    )
}

/// `cargo test -p podcr-tests` does not rebuild the shim (another package's binary); say so when its
/// sources are newer than the binary the tests are about to use.
fn warn_if_stale(shim: &Path) {
    let Ok(built) = std::fs::metadata(shim).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = None;
    for dir in ["shim/src", "sandbox-controller/src", "archive/src", "protos"] {
        newest_mtime(&root.join(dir), &mut newest);
    }
    if newest.is_some_and(|n| n > built) {
        eprintln!("podcr-tests: WARNING {} is older than its sources: run `cargo build -p podcr-shim`", shim.display());
    }
}

fn newest_mtime(dir: &Path, newest: &mut Option<SystemTime>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            newest_mtime(&e.path(), newest);
        } else if let Ok(t) = m.modified() {
            if newest.is_none_or(|n| t > n) {
                *newest = Some(t);
            }
        }
    }
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{tool} not in PATH")
}

/// `ctr -a <socket> -n <namespace> ...`.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub socket: PathBuf,
    pub namespace: String,
    /// Deadline for each command.
    pub timeout: Duration,
}

/// One line of `ctr task ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub pid: u32,
    /// RUNNING, STOPPED, PAUSED, CREATED, ...
    pub status: String,
}

impl Ctr {
    pub fn with_timeout(mut self, t: Duration) -> Ctr {
        self.timeout = t;
        self
    }

    /// The command, ready for more arguments or for spawning.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).arg("-n").arg(&self.namespace).args(args);
        c
    }

    /// Runs to completion; any exit code is returned, not an error.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run(&mut self.command(args), self.timeout)
    }

    /// Runs and requires exit 0; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Ok(self.run(args)?.ok()?.stdout)
    }

    /// Starts in the background (e.g. a foreground `ctr run` whose exit code a test waits for).
    pub fn spawn<I, S>(&self, args: I) -> Result<Running>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Running::spawn(&mut self.command(args))
    }

    /// Runs under a pseudo-terminal, for `--tty`.
    pub fn pty<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        cmd::run_in_pty(&mut self.command(args), self.timeout)
    }

    /// All tasks of the namespace (`ctr task ls`).
    pub fn tasks(&self) -> Result<Vec<TaskInfo>> {
        let out = self.ok(["task", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(TaskInfo {
                    id: f.first()?.to_string(),
                    pid: f.get(1)?.parse().ok()?,
                    status: f.get(2)?.to_string(),
                })
            })
            .collect())
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskInfo>> {
        Ok(self.tasks()?.into_iter().find(|t| t.id == id))
    }

    /// Waits until task `id` reports `status`; returns it.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<TaskInfo> {
        wait_for(&format!("task {id} to be {status}"), timeout, || Ok(self.task(id)?.filter(|t| t.status == status)))
    }

    /// Container ids of the namespace.
    pub fn containers(&self) -> Result<Vec<String>> {
        Ok(self.ok(["container", "ls", "-q"])?.lines().map(str::to_string).filter(|s| !s.is_empty()).collect())
    }
}

/// A per-test containerd namespace; see `Containerd::namespace`.
pub struct TestNs<'a> {
    cd: &'a Containerd,
    name: String,
}

impl TestNs<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn containerd(&self) -> &Containerd {
        self.cd
    }

    pub fn ctr(&self) -> Ctr {
        self.cd.ctr(&self.name)
    }

    /// Imports `image` into this namespace (once); returns its reference.
    pub fn import(&self, image: &ImageSpec) -> Result<String> {
        self.cd.import(&self.name, image)
    }

    /// Removes every task, container and image of the namespace, then the namespace. Also run on drop.
    pub fn cleanup(&self) -> Result<()> {
        let ctr = self.ctr().with_timeout(Duration::from_secs(30));
        for t in ctr.tasks().unwrap_or_default() {
            if t.status == "PAUSED" {
                let _ = ctr.run(["task", "resume", &t.id]);
            }
            if t.status != "STOPPED" {
                let _ = ctr.run(["task", "kill", "-a", "-s", "SIGKILL", &t.id]);
                let _ = ctr.wait_status(&t.id, "STOPPED", Duration::from_secs(10));
            }
            let _ = ctr.run(["task", "rm", "-f", &t.id]);
        }
        for c in ctr.containers().unwrap_or_default() {
            let _ = ctr.run(["container", "rm", &c]);
        }
        let images = ctr.ok(["image", "ls", "-q"]).unwrap_or_default();
        for i in images.lines().filter(|l| !l.is_empty()) {
            let _ = ctr.run(["image", "rm", "--sync", i]);
        }
        // The namespace can only go once content GC has run; containerd's own teardown gets it otherwise.
        let _ = wait_until("namespace removal", Duration::from_secs(5), || {
            Ok(self.cd.ctr("default").run(["namespace", "rm", &self.name])?.success())
        });
        cleanup::remove_cgroups(&self.name)?;
        let left = ctr.containers().unwrap_or_default();
        anyhow::ensure!(left.is_empty(), "containers left in {}: {left:?}", self.name);
        Ok(())
    }
}

impl Drop for TestNs<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("podcr-tests: cleanup of namespace {}: {e:#}", self.name);
        }
    }
}
