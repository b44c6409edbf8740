//! The node configuration (`podcr.toml`) each test run gives its shims and the `podcr` CLI, as a
//! node admin would write it. One function per section, so each concern provisions its own.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context, Result};
use podcr_sandbox_controller::archive::{self, signing};

/// File name of the run's configuration inside the run dir.
pub const FILE: &str = "podcr.toml";

/// Writes the run's `podcr.toml` into `dir` and returns its path.
pub fn provision(dir: &Path) -> Result<PathBuf> {
    let text = [restore_section(dir)?, signing_section(dir)?].join("\n");
    let path = dir.join(FILE);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `[restore]` for a run rooted at `dir`.
fn restore_section(_dir: &Path) -> Result<String> {
    Ok(String::new())
}

/// `[signing]` for a run rooted at `dir`: a fresh key pair in `dir/keys`, its public key the
/// only one in `dir/trusted.d`, unsigned checkpoints refused (the production default). The key
/// is remembered for [`run_signer`], so helpers that edit a checkpoint can sign it again.
fn signing_section(dir: &Path) -> Result<String> {
    let keys = dir.join("keys");
    let trusted = dir.join("trusted.d");
    std::fs::create_dir_all(&keys).with_context(|| format!("create {}", keys.display()))?;
    std::fs::create_dir_all(&trusted).with_context(|| format!("create {}", trusted.display()))?;
    let (_, key, public) = signing::write_new_keypair(&keys)?;
    std::fs::copy(&public, trusted.join("run.pub")).with_context(|| format!("trust {}", public.display()))?;
    remember_key(&key);
    Ok(format!(
        "[signing]\nkey = {:?}\ntrusted_dir = {:?}\nallow_unsigned = false\n",
        key.display().to_string(),
        trusted.display().to_string()
    ))
}

static RUN_KEY: Mutex<Option<PathBuf>> = Mutex::new(None);

fn remember_key(key: &Path) {
    if let Ok(mut k) = RUN_KEY.lock() {
        *k = Some(key.to_path_buf());
    }
}

/// The signing key of the run this process provisioned last (one private containerd, so one
/// node key, per test binary): what a test uses to model a checkpoint whose signer is trusted.
pub fn run_signer() -> Result<signing::Signer> {
    let key = RUN_KEY
        .lock()
        .ok()
        .and_then(|k| k.clone())
        .context("no test run was provisioned in this process, so there is no run key")?;
    Ok(signing::Signer::load(&key)?)
}

/// Signs `dir`'s `podcr.manifest.json` again with the run's key, as the node would have: for
/// tests that edit a checkpoint and then want only the edit, not the signature, to be judged.
pub fn resign(dir: &Path) -> Result<()> {
    let manifest = std::fs::read(dir.join(archive::POD_MANIFEST_FILE))?;
    let sig = run_signer()?.sign(&manifest)?;
    std::fs::write(dir.join(archive::SIGNATURE_FILE), sig)?;
    Ok(())
}
