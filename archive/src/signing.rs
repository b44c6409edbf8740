//! Authenticated checkpoints: an ed25519 signature over the exact bytes of the pod manifest.
//!
//! `podcr.manifest.json` lists the size and SHA-256 of every other file of a checkpoint, and each
//! container archive carries its own manifest of every entry, so one signature over the pod
//! manifest covers every byte CRIU will later restore as root. The signature sits beside it in
//! `podcr.manifest.sig`:
//!
//! ```json
//! {"format":"podcr.manifest-signature","version":1,"algorithm":"ed25519",
//!  "key_id":"sha256:<hex of SHA-256 of the raw public key>","signature":"<hex>"}
//! ```
//!
//! Keys are PKCS#8 (private) and SPKI (public) PEM files, the formats `openssl genpkey
//! -algorithm ed25519` writes, so an admin can make and inspect them with standard tools.
//! Readers verify the signature before they parse or read anything else of a checkpoint: see
//! [`TrustPolicy::verify`].

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey},
    Signature, Signer as _, SigningKey, VerifyingKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::fsutil::read_bounded;
use crate::{
    error::{Error, Result},
    signing_config::SigningConfig,
};

/// `format` of the signature file.
pub const SIGNATURE_FORMAT: &str = "podcr.manifest-signature";
const ALGORITHM: &str = "ed25519";
/// A signature file is about 250 bytes; anything much larger is not one.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// A PEM key file is under 200 bytes.
const MAX_KEY_BYTES: u64 = 16 * 1024;
/// Most trusted keys read from the trusted directory.
const MAX_TRUSTED_KEYS: usize = 1024;
/// File names `podcr key generate` writes.
pub const KEY_FILE: &str = "signing.key";
pub const PUB_FILE: &str = "signing.pub";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: String,
    version: u32,
    algorithm: String,
    key_id: String,
    signature: String,
}

/// `sha256:<hex>` of the raw 32-byte public key: what a signature names its key by, and what
/// `podcr key generate` prints.
pub fn key_id(key: &VerifyingKey) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The node's signing key.
pub struct Signer {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.id).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: SigningKey) -> Signer {
        let id = key_id(&key.verifying_key());
        Signer { key, id }
    }

    /// Reads a PKCS#8 PEM private key. Like ssh with its keys, refuses one that group or others
    /// can read or that another user owns: whoever can read it can sign checkpoints this node
    /// and every node trusting it will restore as root.
    pub fn load(path: &Path) -> Result<Signer> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::FailedPrecondition(format!(
                "no checkpoint signing key at {}: run `podcr key generate` (or set [signing] allow_unsigned = true \
                 where checkpoints never leave this node)",
                path.display()
            )),
            _ => Error::io(format!("stat signing key {}", path.display()))(e),
        })?;
        if !meta.is_file() {
            return Err(Error::FailedPrecondition(format!("signing key {} is not a regular file", path.display())));
        }
        if meta.permissions().mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::FailedPrecondition(format!(
                "signing key {} must be owned by this user and not readable by group or others (chmod 600)",
                path.display()
            )));
        }
        let pem = read_bounded_following(path)?;
        let text = std::str::from_utf8(&pem)
            .map_err(|_| Error::InvalidArgument(format!("signing key {} is not PEM", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(text).map_err(|e| {
            Error::InvalidArgument(format!("signing key {} is not an ed25519 PKCS#8 PEM key: {e}", path.display()))
        })?;
        Ok(Signer::new(key))
    }

    /// The node's key per `[signing]`: `None` when there is no key file and unsigned
    /// checkpoints are allowed; an error naming the fix when there is none and they are not.
    pub fn from_config(cfg: &SigningConfig) -> Result<Option<Signer>> {
        match Signer::load(&cfg.key) {
            Ok(s) => Ok(Some(s)),
            Err(Error::FailedPrecondition(_)) if cfg.allow_unsigned && !cfg.key.exists() => {
                warn!(key = %cfg.key.display(), "no signing key: writing an unsigned checkpoint ([signing] allow_unsigned)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signature file's bytes for `manifest` (the exact bytes written to disk).
    pub fn sign(&self, manifest: &[u8]) -> Result<Vec<u8>> {
        let sig = self.key.sign(manifest);
        let file = SignatureFile {
            format: SIGNATURE_FORMAT.into(),
            version: 1,
            algorithm: ALGORITHM.into(),
            key_id: self.id.clone(),
            signature: hex::encode(sig.to_bytes()),
        };
        serde_json::to_vec_pretty(&file).map_err(|source| Error::Json { path: "<signature>".into(), source })
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> Result<String> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidArgument(format!("encode private key: {e}")))?;
        Ok(pem.to_string())
    }

    /// The public key as SPKI PEM, what other nodes put in their trusted directory.
    pub fn public_pem(&self) -> Result<String> {
        public_pem(&self.key.verifying_key())
    }
}

pub fn public_pem(key: &VerifyingKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF).map_err(|e| Error::InvalidArgument(format!("encode public key: {e}")))
}

/// Parses an SPKI PEM ed25519 public key.
pub fn parse_public_key(pem: &[u8], shown: &Path) -> Result<VerifyingKey> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| Error::InvalidArgument(format!("{} is not a PEM public key", shown.display())))?;
    let key = VerifyingKey::from_public_key_pem(text)
        .map_err(|e| Error::InvalidArgument(format!("{} is not an ed25519 public key in PEM: {e}", shown.display())))?;
    if key.is_weak() {
        return Err(Error::InvalidArgument(format!("{} is a weak (small-order) ed25519 key", shown.display())));
    }
    Ok(key)
}

/// Makes a new key from the OS's random source.
pub fn generate() -> Signer {
    Signer::new(SigningKey::generate(&mut rand_core::OsRng))
}

/// Writes a new key pair into `dir`: `signing.key` (0600, created, never overwritten) and
/// `signing.pub`. Returns the signer and both paths.
pub fn write_new_keypair(dir: &Path) -> Result<(Signer, PathBuf, PathBuf)> {
    let signer = generate();
    let key_path = dir.join(KEY_FILE);
    let pub_path = dir.join(PUB_FILE);
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(format!(
                "{} exists: move it away first (rotation keeps the old public key trusted until its checkpoints are gone)",
                p.display()
            )));
        }
    }
    write_new(&key_path, signer.private_pem()?.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, signer.public_pem()?.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((signer, key_path, pub_path))
}

/// Creates `path` with `mode` (exclusive, no symlink followed) and writes `data`, fsynced.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::io(format!("create {}", path.display())))?;
    f.write_all(data).map_err(Error::io(format!("write {}", path.display())))?;
    f.sync_all().map_err(Error::io(format!("fsync {}", path.display())))
}

/// Key files may be symlinks (a Kubernetes secret volume is made of them); their size is still
/// bounded before they are read.
fn read_bounded_following(path: &Path) -> Result<Vec<u8>> {
    let resolved = std::fs::canonicalize(path).map_err(Error::io(format!("resolve {}", path.display())))?;
    read_bounded(&resolved, MAX_KEY_BYTES)
}

/// Which signatures a restore accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: BTreeMap<String, VerifyingKey>,
    allow_unsigned: bool,
}

impl TrustPolicy {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, allow_unsigned: bool) -> TrustPolicy {
        TrustPolicy { keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(), allow_unsigned }
    }

    /// Accepts only unsigned checkpoints and nothing signed: for unit tests of other concerns.
    pub fn unsigned_only() -> TrustPolicy {
        TrustPolicy { keys: BTreeMap::new(), allow_unsigned: true }
    }

    /// The policy `[signing]` describes: every `*.pub` in `trusted_dir` (a missing directory
    /// trusts no key). The directory and its keys must be owned by this user and writable by no
    /// one else, since whoever can add a key there can have any code restored as root.
    pub fn from_config(cfg: &SigningConfig) -> Result<TrustPolicy> {
        let mut keys = Vec::new();
        let dir = &cfg.trusted_dir;
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("stat trusted key directory {}", dir.display()))(e)),
            Ok(meta) => {
                check_not_writable_by_others(&meta, dir)?;
                let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
                for entry in entries {
                    let entry = entry.map_err(Error::io(format!("read {}", dir.display())))?;
                    let path = entry.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("pub") {
                        continue;
                    }
                    let meta = std::fs::metadata(&path).map_err(Error::io(format!("stat {}", path.display())))?;
                    if !meta.is_file() {
                        continue;
                    }
                    check_not_writable_by_others(&meta, &path)?;
                    keys.push(parse_public_key(&read_bounded_following(&path)?, &path)?);
                    if keys.len() > MAX_TRUSTED_KEYS {
                        return Err(Error::InvalidArgument(format!(
                            "more than {MAX_TRUSTED_KEYS} keys in {}",
                            dir.display()
                        )));
                    }
                }
            }
        }
        Ok(TrustPolicy::new(keys, cfg.allow_unsigned))
    }

    pub fn allows_unsigned(&self) -> bool {
        self.allow_unsigned
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn trusts(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Verifies `signature` (the signature file's bytes, `None` when the checkpoint has none)
    /// over `manifest`. Returns the signer's key id, or `None` for an unsigned checkpoint the
    /// policy allows. A signature that names a trusted key but does not verify is refused even
    /// when unsigned checkpoints are allowed: that is a forgery or damage, never "unsigned".
    pub fn verify(&self, manifest: &[u8], signature: Option<&[u8]>) -> Result<Option<String>> {
        let Some(raw) = signature else {
            if self.allow_unsigned {
                warn!("restoring an unsigned checkpoint ([signing] allow_unsigned)");
                return Ok(None);
            }
            return Err(Error::Untrusted(
                "the checkpoint is not signed: restore only checkpoints signed by a trusted key (or set [signing] \
                 allow_unsigned = true where checkpoints never leave this node)"
                    .into(),
            ));
        };
        if raw.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(Error::Untrusted(format!("the signature file is larger than {MAX_SIGNATURE_BYTES} bytes")));
        }
        let file: SignatureFile = serde_json::from_slice(raw)
            .map_err(|e| Error::Untrusted(format!("the signature file is not a podcr signature: {e}")))?;
        if file.format != SIGNATURE_FORMAT || file.version != 1 || file.algorithm != ALGORITHM {
            return Err(Error::Untrusted(format!(
                "unsupported signature {:?} version {} algorithm {:?}",
                file.format, file.version, file.algorithm
            )));
        }
        let Some(key) = self.keys.get(&file.key_id) else {
            if self.allow_unsigned {
                warn!(key_id = %file.key_id, "checkpoint signed by an unknown key, restored as unsigned ([signing] allow_unsigned)");
                return Ok(None);
            }
            return Err(Error::Untrusted(format!(
                "the checkpoint is signed by key {}, which this node does not trust (add its public key with `podcr key trust`)",
                file.key_id
            )));
        };
        let bytes: [u8; 64] = hex::decode(&file.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Untrusted("the signature is not 64 hex-encoded bytes".into()))?;
        key.verify_strict(manifest, &Signature::from_bytes(&bytes)).map_err(|_| {
            Error::Untrusted(format!(
                "the signature by key {} does not match the manifest: the checkpoint was modified or forged",
                file.key_id
            ))
        })?;
        Ok(Some(file.key_id))
    }
}

/// Refuses a trust anchor that another user could replace: owned by someone else, or writable
/// by group or others.
fn check_not_writable_by_others(meta: &std::fs::Metadata, path: &Path) -> Result<()> {
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::FailedPrecondition(format!(
            "{} must be owned by this user and writable by no one else",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_exact_bytes() {
        let signer = generate();
        let policy = TrustPolicy::new([signer.verifying_key()], false);
        let sig = signer.sign(b"manifest").unwrap();
        assert_eq!(policy.verify(b"manifest", Some(&sig)).unwrap().as_deref(), Some(signer.key_id()));
        let err = policy.verify(b"manifesT", Some(&sig)).unwrap_err();
        assert!(matches!(err, Error::Untrusted(ref m) if m.contains("modified or forged")), "{err}");
        // A forged signature is refused even where unsigned checkpoints are allowed.
        let lenient = TrustPolicy::new([signer.verifying_key()], true);
        assert!(lenient.verify(b"manifesT", Some(&sig)).is_err());
    }

    #[test]
    fn unknown_keys_and_unsigned_need_the_opt_in() {
        let signer = generate();
        let other = generate();
        let strict = TrustPolicy::new([other.verifying_key()], false);
        let sig = signer.sign(b"m").unwrap();
        let err = strict.verify(b"m", Some(&sig)).unwrap_err().to_string();
        assert!(err.contains("does not trust"), "{err}");
        assert!(strict.verify(b"m", None).unwrap_err().to_string().contains("not signed"));
        let lenient = TrustPolicy::new([other.verifying_key()], true);
        assert_eq!(lenient.verify(b"m", Some(&sig)).unwrap(), None);
        assert_eq!(lenient.verify(b"m", None).unwrap(), None);
        assert!(strict.verify(b"m", Some(b"{not json")).is_err());
    }

    #[test]
    fn key_files_roundtrip_and_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let (signer, key, public) = write_new_keypair(tmp.path()).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Signer::load(&key).unwrap().key_id(), signer.key_id());
        let vk = parse_public_key(&std::fs::read(&public).unwrap(), &public).unwrap();
        assert_eq!(key_id(&vk), signer.key_id());
        assert!(matches!(write_new_keypair(tmp.path()), Err(Error::AlreadyExists(_))));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(Signer::load(&key), Err(Error::FailedPrecondition(_))));

        let trusted = tmp.path().join("trusted.d");
        std::fs::create_dir(&trusted).unwrap();
        std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&public, trusted.join("node-a.pub")).unwrap();
        std::fs::write(trusted.join("README"), b"ignored").unwrap();
        let cfg = SigningConfig { key, trusted_dir: trusted.clone(), allow_unsigned: false };
        assert!(TrustPolicy::from_config(&cfg).unwrap().trusts(signer.key_id()));
        std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(TrustPolicy::from_config(&cfg), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn a_missing_key_is_refused_unless_unsigned_is_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SigningConfig { key: tmp.path().join("none.key"), ..SigningConfig::default() };
        let err = Signer::from_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("podcr key generate"), "{err}");
        cfg.allow_unsigned = true;
        assert!(Signer::from_config(&cfg).unwrap().is_none());
    }
}
