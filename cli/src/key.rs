//! `podcr key generate|trust`: the node's checkpoint signing key and the keys it trusts.
//!
//! A checkpoint is restored as root, so it is code: this node signs every checkpoint it makes
//! with its key and restores only checkpoints a key in `[signing] trusted_dir` signed. Moving a
//! pod to another node means trusting this node's public key there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use podcr_sandbox_controller::{
    archive::signing::{self, key_id, parse_public_key, write_new, write_new_keypair},
    node_config::NodeConfig,
};

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a signing key pair: signing.key (mode 0600) and signing.pub, and trust the new
    /// public key on this node. Refuses to overwrite an existing key.
    Generate {
        /// Directory for the key pair [default: the directory of `[signing] key`].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not add the public key to this node's trusted directory.
        #[arg(long)]
        no_trust: bool,
    },
    /// Trust checkpoints signed by the public key in FILE (another node's signing.pub).
    Trust { file: PathBuf },
}

pub fn run(cmd: &KeyCommand) -> Result<()> {
    let cfg = NodeConfig::load().with_context(|| format!("read {}", NodeConfig::path().display()))?.signing;
    match cmd {
        KeyCommand::Generate { out, no_trust } => {
            let dir = match out {
                Some(d) => d.clone(),
                None => cfg.key.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let (signer, key, public) = write_new_keypair(&dir)?;
            println!("{}", signer.key_id());
            eprintln!("wrote {} and {}", key.display(), public.display());
            if key != cfg.key {
                eprintln!("note: [signing] key is {}; this node signs with that file", cfg.key.display());
            }
            if !no_trust {
                trust(&cfg.trusted_dir, &public)?;
            }
            Ok(())
        }
        KeyCommand::Trust { file } => trust(&cfg.trusted_dir, file),
    }
}

/// Copies a public key into `dir` as `<key id>.pub` (created exclusively, mode 0644); trusting
/// the same key twice is not an error.
fn trust(dir: &Path, file: &Path) -> Result<()> {
    let pem = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    if pem.len() > 16 * 1024 {
        bail!("{} is too large to be a public key", file.display());
    }
    let key = parse_public_key(&pem, file)?;
    let id = key_id(&key);
    let name = format!("{}.pub", id.trim_start_matches("sha256:").get(..16).unwrap_or(&id));
    create_trusted_dir(dir)?;
    let dest = dir.join(name);
    match std::fs::read(&dest) {
        Ok(existing) if parse_public_key(&existing, &dest).is_ok_and(|k| k == key) => {
            eprintln!("{id} is already trusted ({})", dest.display());
            return Ok(());
        }
        Ok(_) => bail!("{} exists and holds another key", dest.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", dest.display())),
    }
    write_new(&dest, signing::public_pem(&key)?.as_bytes(), 0o644)?;
    println!("{id}");
    eprintln!("trusted {} as {}", file.display(), dest.display());
    Ok(())
}

fn create_trusted_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusting_a_key_is_idempotent_and_refuses_what_is_not_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (signer, _, public) = write_new_keypair(tmp.path()).unwrap();
        let dir = tmp.path().join("trusted.d");
        trust(&dir, &public).unwrap();
        trust(&dir, &public).unwrap();
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 1, "the same key is trusted once");
        let stored = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        assert_eq!(key_id(&parse_public_key(&std::fs::read(&stored).unwrap(), &stored).unwrap()), signer.key_id());
        let junk = tmp.path().join("junk.pub");
        std::fs::write(&junk, b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n").unwrap();
        assert!(trust(&dir, &junk).is_err());
        // A private key handed over by mistake is not trusted as if it were public.
        assert!(trust(&dir, &tmp.path().join(signing::KEY_FILE)).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }
}
