//! containerd builds from upstream source (`../shared/upstream/` beside the repo, or
//! `$PODCR_UPSTREAM_DIR`): PR 13822's and PR 13971's heads and main, unpacked once with the
//! directory's own `unpack.sh` into `<test cache>/upstream/`. The harness starts them exactly like
//! the system containerd (see [`crate::containerd::Daemon`]).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result};

use crate::containerd::Daemon;

/// One upstream build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// containerd PR 13822 head (c642dd35): CRI pod C/R through the shim's `Checkpoint` service.
    Pr13822,
    /// containerd PR 13971 head (4d034fad): CRI pod C/R through `Sandbox.CheckpointSandbox`/`RestoreSandbox`.
    Pr13971,
    /// containerd main (301026e5, v2.4.0-beta.0+70): no pod C/R, no restore through CreateContainer.
    Main,
}

impl Upstream {
    /// The value of `PODCR_TEST_CONTAINERD` that selects this build (see [`Daemon::from_env`]).
    pub fn from_name(name: &str) -> Option<Upstream> {
        match name {
            "pr13822" => Some(Upstream::Pr13822),
            "pr13971" => Some(Upstream::Pr13971),
            "main" => Some(Upstream::Main),
            _ => None,
        }
    }

    /// The build's directory name as `unpack.sh` makes it.
    pub fn build(self) -> &'static str {
        match self {
            Upstream::Pr13822 => "containerd-pr13822",
            Upstream::Pr13971 => "containerd-pr13971",
            Upstream::Main => "containerd-main",
        }
    }
}

/// Where the upstream builds are shipped: `$PODCR_UPSTREAM_DIR`, else `<repo>/../shared/upstream`.
pub fn shipped_dir() -> PathBuf {
    match std::env::var_os("PODCR_UPSTREAM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream"),
    }
}

static UNPACKED: OnceLock<std::result::Result<Option<PathBuf>, String>> = OnceLock::new();

/// Unpacks (once per process; `unpack.sh` itself skips builds whose sha256 already matches) and
/// returns the cache dir, or `None` when no upstream builds are shipped here.
fn unpacked() -> Result<Option<PathBuf>> {
    UNPACKED
        .get_or_init(|| {
            let shipped = shipped_dir();
            let script = shipped.join("unpack.sh");
            if !script.is_file() {
                return Ok(None);
            }
            let dest = crate::images::cache_dir().map_err(|e| format!("{e:#}"))?.join("upstream");
            std::fs::create_dir_all(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
            crate::cmd::run_ok("sh", [script.as_os_str(), dest.as_os_str()])
                .map_err(|e| format!("{} {}: {e:#}", script.display(), dest.display()))?;
            Ok(Some(dest))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// The daemon of `build`, or `None` after printing one `SKIP:` line saying why (the caller then
/// returns without asserting anything; `scripts/test.sh` counts these lines).
pub fn daemon(build: Upstream, test: &str) -> Result<Option<Daemon>> {
    let found = find(build)?;
    if found.is_none() {
        // Straight to stderr, not eprintln!: the test harness captures the print macros of
        // passing tests, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {test}: no upstream containerd builds at {} (set PODCR_UPSTREAM_DIR)",
            shipped_dir().display()
        );
    }
    Ok(found)
}

/// The daemon of `build`, or `None` when no upstream builds are shipped here.
pub fn find(build: Upstream) -> Result<Option<Daemon>> {
    let Some(dir) = unpacked()? else {
        return Ok(None);
    };
    let dir = dir.join(build.build());
    let containerd = dir.join("containerd");
    anyhow::ensure!(containerd.is_file(), "{} missing after unpack.sh", containerd.display());
    Ok(Some(Daemon { name: build.build().to_string(), containerd, extra_path: Some(dir), nri: false }))
}

/// `true` when the upstream builds are present (for tests that only want to know).
pub fn present() -> bool {
    shipped_dir().join("unpack.sh").is_file()
}

/// The `containerd --version` line of a daemon (for failure messages).
pub fn version(d: &Daemon) -> Result<String> {
    let out = crate::cmd::run_ok(&d.containerd.to_string_lossy(), ["--version"]).context("containerd --version")?;
    Ok(out.stdout.trim().to_string())
}
