//! The node configuration (`podcr.toml`) each test run gives its shims and the `podcr` CLI, as a
//! node admin would write it. One function per section, so each concern provisions its own.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, Result};
use podcr_archive::{self as archive, signing};

/// File name of the run's configuration inside the run dir.
pub const FILE: &str = "podcr.toml";

/// Writes the run's `podcr.toml` into `dir` and returns its path.
pub fn provision(dir: &Path) -> Result<PathBuf> {
    let text = [restore_section(dir)?, signing_section(dir)?, metrics_section(dir)?].join("\n");
    let path = dir.join(FILE);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The run's checkpoint roots (`[restore] checkpoint_roots`): the kubelet's, then podcr's own.
pub fn checkpoint_roots(dir: &Path) -> [PathBuf; 2] {
    [dir.join("checkpoints").join("kubelet"), dir.join("checkpoints").join("podcr")]
}

/// Where `podcr restore` puts restored pods' logs in this run (`[restore] pod_log_root`).
pub fn pod_log_root(dir: &Path) -> PathBuf {
    dir.join("pod-logs")
}

/// `[restore]` for a run rooted at `dir`: checkpoint roots and the pod log root inside it.
fn restore_section(dir: &Path) -> Result<String> {
    let roots = checkpoint_roots(dir);
    for root in &roots {
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    }
    let quoted: Vec<String> = roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
    Ok(format!(
        "[restore]\ncheckpoint_roots = [{}]\npod_log_root = {:?}\n",
        quoted.join(", "),
        pod_log_root(dir).display().to_string()
    ))
}

/// `[signing]` for a run rooted at `dir`, as a node admin sets it up: the run's own key pair in
/// `dir/keys` (`signing.key`, `signing.pub`: what `podcr key generate` writes), and in
/// `dir/trusted.d` its public key plus the test process's editor key (see [`run_signer`]);
/// unsigned checkpoints refused, the production default. Each run (each "node") has its own key,
/// so a checkpoint moved to a second run is refused until that run trusts the first one's key.
fn signing_section(dir: &Path) -> Result<String> {
    let keys = dir.join("keys");
    let trusted = dir.join("trusted.d");
    std::fs::create_dir_all(&keys).with_context(|| format!("create {}", keys.display()))?;
    std::fs::create_dir_all(&trusted).with_context(|| format!("create {}", trusted.display()))?;
    let (_, key, public) = signing::write_new_keypair(&keys)?;
    std::fs::copy(&public, trusted.join("node.pub")).with_context(|| format!("trust {}", public.display()))?;
    std::fs::write(trusted.join("test-editor.pub"), signing::public_pem(&editor().verifying_key())?)?;
    Ok(format!(
        "[signing]\nkey = {:?}\ntrusted_dir = {:?}\nallow_unsigned = false\n",
        key.display().to_string(),
        trusted.display().to_string()
    ))
}

fn editor() -> &'static signing::Signer {
    static EDITOR: OnceLock<signing::Signer> = OnceLock::new();
    EDITOR.get_or_init(signing::generate)
}

/// The key this test process signs edited checkpoints with; every run it provisions trusts it.
/// It stands for a trusted node that is buggy or compromised, so tests of what restore refuses
/// in a checkpoint are judged on the edit, not stopped at the signature. Only in memory.
pub fn run_signer() -> &'static signing::Signer {
    editor()
}

/// The public key file of the run rooted at `dir` (what another node trusts to restore its
/// checkpoints).
pub fn public_key(dir: &Path) -> PathBuf {
    dir.join("keys").join(signing::PUB_FILE)
}

/// Signs `dir`'s `podcr.manifest.json` again with the run's key, as the node would have: for
/// tests that edit a checkpoint and then want only the edit, not the signature, to be judged.
pub fn resign(dir: &Path) -> Result<()> {
    let manifest = std::fs::read(dir.join(archive::POD_MANIFEST_FILE))?;
    let sig = run_signer().sign(&manifest)?;
    std::fs::write(dir.join(archive::SIGNATURE_FILE), sig)?;
    Ok(())
}

/// Where the run's shims leave their metrics files, inside the run so teardown removes them.
pub const METRICS_DIR: &str = "metrics";

/// `[metrics]`: the textfile collector directory is the run's own.
fn metrics_section(dir: &Path) -> Result<String> {
    let metrics = dir.join(METRICS_DIR);
    std::fs::create_dir_all(&metrics).with_context(|| format!("create {}", metrics.display()))?;
    Ok(format!("[metrics]\ntextfile_dir = {:?}\n", metrics.display().to_string()))
}
