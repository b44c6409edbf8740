//! A barrier inside CRIU, so the pod is frozen only once every dump is ready to run.
//!
//! Freezing first and then starting `runc checkpoint` puts runc's start-up and CRIU's own set-up
//! (kernel probing, parsing the container) inside the frozen window. CRIU runs an action script
//! at "pre-dump", after that set-up and just before it freezes and seizes the tasks. At Task.Create
//! the shim gives each container a CRIU config (runc passes the file named by the
//! `org.criu.config` annotation) whose action script calls back into the shim binary in hook mode.
//! During a pod checkpoint the shim listens on a socket in each container's bundle: every hook
//! reports "ready" and waits; once all are ready the shim freezes the pod and answers "go" (or
//! "abort", which fails that dump). Outside a pod checkpoint nobody listens and the hook returns
//! at once, so `ctr task checkpoint` and restores are unaffected.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::{DirBuilderExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream as AsyncUnixStream},
};

use crate::runc_error::{Error, Result};

/// argv[1] of the shim binary in hook mode.
pub const HOOK_ARG: &str = "__podcr-criu-hook";
const CONFIG_FILE: &str = "podcr-criu.conf";
const SCRIPT_FILE: &str = "podcr-criu-hook";
/// Sockets live here, not in the bundle: a socket path must fit `sun_path` (108 bytes), and
/// containerd's bundle paths alone come close to that.
const SOCKET_DIR: &str = "/run/podcr";
const ANNOTATION: &str = "org.criu.config";
/// runc's own default CRIU config, which the annotation replaces; its settings are carried over.
const RUNC_DEFAULT_CONFIG: &str = "/etc/criu/runc.conf";
/// How long a hook waits for the shim's answer before failing its dump.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// Gives the container in `bundle` the CRIU config with the hook. Called before `runc create`
/// or `runc restore` (runc records the annotation then). A config the user set is left alone.
pub fn install(bundle: &Path) -> Result<()> {
    let spec_path = bundle.join("config.json");
    let data = std::fs::read(&spec_path).map_err(Error::io(format!("read {}", spec_path.display())))?;
    let mut spec: serde_json::Value = serde_json::from_slice(&data)?;
    if spec.pointer(&format!("/annotations/{}", ANNOTATION.replace('/', "~1"))).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(Error::io("find the shim executable"))?;
    let script = bundle.join(SCRIPT_FILE);
    // Every CRIU action runs the script; all but pre-dump return from sh itself, because the
    // later ones run while the pod is frozen and must cost as little as possible.
    let body = format!(
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = pre-dump ] || exit 0\nexec '{}' {HOOK_ARG} '{}'\n",
        exe.display(),
        socket_path(bundle).display()
    );
    write_file(&script, &body, 0o700)?;
    let mut config = std::fs::read_to_string(RUNC_DEFAULT_CONFIG).unwrap_or_default();
    if !config.is_empty() && !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str(&format!("action-script {}\n", script.display()));
    let config_path = bundle.join(CONFIG_FILE);
    write_file(&config_path, &config, 0o600)?;
    let annotations = spec
        .as_object_mut()
        .ok_or_else(|| Error::invalid_argument(format!("{} is not a JSON object", spec_path.display())))?
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(map) = annotations.as_object_mut() {
        map.insert(ANNOTATION.into(), config_path.display().to_string().into());
    }
    write_file(&spec_path, &serde_json::to_string(&spec)?, 0o644)
}

/// The barrier socket of the container in `bundle`.
fn socket_path(bundle: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bundle.as_os_str().as_encoded_bytes());
    Path::new(SOCKET_DIR).join(format!("criu-{}.sock", &hex::encode(digest)[..24]))
}

/// Whether the container in `bundle` was given the hook (older containers were not).
pub fn installed(bundle: &Path) -> bool {
    bundle.join(CONFIG_FILE).is_file() && bundle.join(SCRIPT_FILE).is_file()
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    std::fs::write(path, contents).map_err(Error::io(format!("write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("chmod {}", path.display())))
}

/// Entry point of hook mode: report ready and wait for the shim's word. Exit status 0 lets CRIU
/// go on; anything else makes CRIU fail this dump.
pub fn main() -> i32 {
    if std::env::var("CRTOOLS_SCRIPT_ACTION").as_deref() != Ok("pre-dump") {
        return 0;
    }
    let Some(socket) = std::env::args().nth(2) else { return 0 };
    // No listener: this dump is not part of a pod checkpoint.
    let Ok(mut stream) = UnixStream::connect(&socket) else { return 0 };
    if stream.set_read_timeout(Some(HOOK_TIMEOUT)).is_err() || stream.write_all(b"ready\n").is_err() {
        return 1;
    }
    let mut answer = String::new();
    match BufReader::new(stream).read_line(&mut answer) {
        Ok(_) if answer.trim() == "go" => 0,
        _ => 1,
    }
}

/// The shim's end of one container's barrier.
pub struct Barrier {
    listener: UnixListener,
    path: PathBuf,
}

impl Barrier {
    pub fn listen(bundle: &Path) -> Result<Barrier> {
        let path = socket_path(bundle);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(SOCKET_DIR)
            .map_err(Error::io(format!("create {SOCKET_DIR}")))?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(Error::io(format!("listen on {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("chmod hook socket"))?;
        Ok(Barrier { listener, path })
    }

    /// Waits for the hook to report ready; returns the connection to answer on.
    pub async fn ready(&self) -> Result<AsyncUnixStream> {
        let (stream, _) = self.listener.accept().await.map_err(Error::io("accept CRIU hook"))?;
        let mut line = String::new();
        let mut reader = AsyncBufReader::new(stream);
        reader.read_line(&mut line).await.map_err(Error::io("read CRIU hook"))?;
        if line.trim() != "ready" {
            return Err(Error::Protocol(format!("CRIU hook said {line:?}")));
        }
        Ok(reader.into_inner())
    }

    pub async fn answer(mut stream: AsyncUnixStream, go: bool) -> Result<()> {
        stream.write_all(if go { b"go\n" } else { b"abort\n" }).await.map_err(Error::io("answer CRIU hook"))
    }
}

impl Drop for Barrier {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_adds_the_annotation_once_and_keeps_a_users_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1.2.0","annotations":{"a":"b"}}"#).unwrap();
        install(dir.path()).unwrap();
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["annotations"]["a"], "b");
        assert_eq!(spec["annotations"][ANNOTATION], dir.path().join(CONFIG_FILE).display().to_string());
        assert!(installed(dir.path()));
        let script = std::fs::read_to_string(dir.path().join(SCRIPT_FILE)).unwrap();
        assert!(script.contains("pre-dump") && script.contains(HOOK_ARG));

        let user = tempfile::tempdir().unwrap();
        std::fs::write(user.path().join("config.json"), r#"{"annotations":{"org.criu.config":""}}"#).unwrap();
        install(user.path()).unwrap();
        assert!(!installed(user.path()), "a user's org.criu.config (even empty) wins");
    }

    #[tokio::test]
    async fn barrier_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = Barrier::listen(dir.path()).unwrap();
        let socket = socket_path(dir.path());
        let hook = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.write_all(b"ready\n").unwrap();
            let mut answer = String::new();
            BufReader::new(s).read_line(&mut answer).unwrap();
            answer
        });
        let stream = barrier.ready().await.unwrap();
        Barrier::answer(stream, true).await.unwrap();
        assert_eq!(hook.join().unwrap().trim(), "go");
    }
}
