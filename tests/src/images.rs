//! Test images built locally, because no registry is reachable from CI.
//!
//! Static C helpers (tests/images/*.c) are compiled with `gcc -static`; images are OCI layouts made with
//! umoci from busybox-static plus those helpers, tarred for `ctr image import`. Both are cached under the
//! cargo target dir, keyed by a hash of everything that goes into them, so reruns cost nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cmd::{run, run_ok, DEFAULT_TIMEOUT};

/// Bump when the way images are assembled changes, so stale cache entries are not reused.
const FORMAT: &str = "podcr-test-images-v2";

/// Registry-like prefix of every test image; nothing is ever pulled from it.
pub const IMAGE_PREFIX: &str = "localhost/podcr-test";

/// A small static C program from tests/images/.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Helper {
    /// Sleeps until SIGTERM and reaps children: the CRI pause (infra) process.
    Pause,
    /// `counter [FILE] [MS]`: in-memory counter, printed and written to FILE (default /count).
    Counter,
    /// `tcp_echo PORT`: TCP echo server.
    TcpEcho,
    /// `tcp_peer HOST PORT [FILE]`: one long-lived connection to an echo server, checked every 100 ms.
    TcpPeer,
    /// `memhog MIB [FILE]`: touches MIB MiB with a known pattern and re-verifies it while counting.
    Memhog,
}

impl Helper {
    pub const ALL: [Helper; 5] = [Helper::Pause, Helper::Counter, Helper::TcpEcho, Helper::TcpPeer, Helper::Memhog];

    /// Binary name, also the file name inside images (/usr/local/bin/<name>).
    pub fn name(self) -> &'static str {
        match self {
            Helper::Pause => "pause",
            Helper::Counter => "counter",
            Helper::TcpEcho => "tcp_echo",
            Helper::TcpPeer => "tcp_peer",
            Helper::Memhog => "memhog",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Helper::Pause => include_str!("../images/pause.c"),
            Helper::Counter => include_str!("../images/counter.c"),
            Helper::TcpEcho => include_str!("../images/tcp_echo.c"),
            Helper::TcpPeer => include_str!("../images/tcp_peer.c"),
            Helper::Memhog => include_str!("../images/memhog.c"),
        }
    }

    /// Path of the compiled static binary, building it on first use.
    pub fn binary(self) -> Result<PathBuf> {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let hash = hash_parts(&[FORMAT.as_bytes(), self.source().as_bytes(), gcc_version()?.as_bytes()]);
        let out = cache_dir()?.join("helpers").join(format!("{}-{}", self.name(), &hash[..16]));
        if out.exists() {
            return Ok(out);
        }
        std::fs::create_dir_all(out.parent().unwrap())?;
        let src = out.with_extension("c");
        std::fs::write(&src, self.source())?;
        let tmp = out.with_extension("tmp");
        run_ok(
            "gcc",
            ["-static".as_ref(), "-O2".as_ref(), "-Wall".as_ref(), "-o".as_ref(), tmp.as_os_str(), src.as_os_str()],
        )
        .with_context(|| format!("building helper {} (needs gcc and libc6-dev's libc.a)", self.name()))?;
        // Rename last so a half-written binary is never taken from the cache.
        std::fs::rename(&tmp, &out)?;
        Ok(out)
    }
}

/// What goes into one test image.
#[derive(Clone, Copy, Debug)]
pub struct ImageSpec {
    /// Short name: the image is `localhost/podcr-test/<name>:latest`.
    pub name: &'static str,
    /// Include busybox-static and its applet links in /bin.
    pub busybox: bool,
    /// Helpers copied to /usr/local/bin/<name>.
    pub helpers: &'static [Helper],
    /// Image entrypoint (may be empty).
    pub entrypoint: &'static [&'static str],
    /// Image cmd (may be empty).
    pub cmd: &'static [&'static str],
}

/// busybox with every helper: the general-purpose test image (`sh`, `sleep`, `counter`, ...).
pub const BUSYBOX: ImageSpec =
    ImageSpec { name: "busybox", busybox: true, helpers: &Helper::ALL, entrypoint: &[], cmd: &["sh"] };

/// The CRI sandbox ("pause") image for runc's podsandbox: nothing but the static pause helper.
pub const PAUSE: ImageSpec = ImageSpec {
    name: "pause",
    busybox: false,
    helpers: &[Helper::Pause],
    entrypoint: &["/usr/local/bin/pause"],
    cmd: &[],
};

impl ImageSpec {
    /// Full image reference, as `ctr image import --base-name` names it.
    pub fn reference(&self) -> String {
        format!("{IMAGE_PREFIX}/{}:latest", self.name)
    }

    /// An OCI-layout tarball of the image, ready for `ctr image import --base-name <prefix>/<name>`.
    /// Built on first use, then cached.
    pub fn tarball(&self) -> Result<PathBuf> {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut parts: Vec<Vec<u8>> = vec![FORMAT.into(), self.name.into()];
        parts.push(format!("{:?}|{:?}|{}", self.entrypoint, self.cmd, self.busybox).into_bytes());
        let helper_bins = self.helpers.iter().map(|h| h.binary()).collect::<Result<Vec<_>>>()?;
        for b in &helper_bins {
            parts.push(b.file_name().unwrap().as_encoded_bytes().to_vec());
        }
        if self.busybox {
            parts.push(std::fs::read(busybox_path()?)?);
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let hash = hash_parts(&refs);
        let out = cache_dir()?.join("images").join(format!("{}-{}.tar", self.name, &hash[..16]));
        if out.exists() {
            return Ok(out);
        }
        std::fs::create_dir_all(out.parent().unwrap())?;
        let work = tempfile::Builder::new().prefix("build-").tempdir_in(out.parent().unwrap())?;
        self.build(work.path(), &helper_bins).with_context(|| format!("building test image {}", self.name))?;
        let tmp = out.with_extension("tmp");
        run_ok(
            "tar",
            ["-C".as_ref(), work.path().join("oci").as_os_str(), "-cf".as_ref(), tmp.as_os_str(), ".".as_ref()],
        )?;
        std::fs::rename(&tmp, &out)?;
        Ok(out)
    }

    fn build(&self, work: &Path, helper_bins: &[PathBuf]) -> Result<()> {
        let layout = work.join("oci");
        let image = format!("{}:latest", layout.display());
        let bundle = work.join("bundle");
        run_ok("umoci", ["init", "--layout", &layout.to_string_lossy()])?;
        run_ok("umoci", ["new", "--image", &image])?;
        run_ok("umoci", ["unpack", "--image", &image, &bundle.to_string_lossy()])?;
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "usr/local/bin", "tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        if self.busybox {
            std::fs::copy(busybox_path()?, rootfs.join("bin/busybox"))?;
            // The applet links `busybox --install` would make, made from the host's list without running
            // anything inside the rootfs.
            let list = run_ok(busybox_path()?.to_str().unwrap(), ["--list"])?.stdout;
            for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
                let link = rootfs.join("bin").join(applet);
                if !link.exists() {
                    std::os::unix::fs::symlink("busybox", link)?;
                }
            }
        }
        for (h, bin) in self.helpers.iter().zip(helper_bins) {
            std::fs::copy(bin, rootfs.join("usr/local/bin").join(h.name()))?;
        }
        // Config after repack: repack builds on the manifest the bundle was unpacked from, so config
        // changes made before it would be lost.
        run_ok("umoci", ["repack", "--image", &image, &bundle.to_string_lossy()])?;
        let mut cfg = Command::new("umoci");
        cfg.args(["config", "--image", &image, "--config.env", "PATH=/usr/local/bin:/bin"]);
        for e in self.entrypoint {
            cfg.args(["--config.entrypoint", e]);
        }
        for c in self.cmd {
            cfg.args(["--config.cmd", c]);
        }
        run(&mut cfg, DEFAULT_TIMEOUT)?.ok()?;
        Ok(())
    }
}

fn busybox_path() -> Result<PathBuf> {
    // busybox-static installs /bin/busybox; a dynamically linked busybox would not run in the image.
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        if p.exists() {
            return Ok(p.to_path_buf());
        }
    }
    bail!("busybox not found: install busybox-static (scripts/setup-host.sh does)")
}

fn gcc_version() -> Result<String> {
    static V: Mutex<Option<String>> = Mutex::new(None);
    let mut v = V.lock().unwrap_or_else(|e| e.into_inner());
    if v.is_none() {
        *v = Some(run_ok("gcc", ["--version"]).context("gcc is needed to build the test helpers")?.stdout);
    }
    Ok(v.clone().unwrap())
}

fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// `<cargo target dir>/podcr-test-cache`, or `$PODCR_TEST_CACHE`.
pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("PODCR_TEST_CACHE") {
        Some(d) => PathBuf::from(d),
        None => crate::target_dir()?.join("podcr-test-cache"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
