//! The runc command line. Built by hand rather than with the `runc` crate because podcr needs
//! `checkpoint`/`restore` (stubs there) and one reaper-aware spawn path for every verb. Every
//! failure carries runc's own last error line from `--log <bundle>/log.json`.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use tokio::process::Command;

use crate::{
    reaper::{self, Io, Output},
    runc_error::{Error, Result},
};

/// Oldest runc podcr runs containers with: 1.3.3 fixed the container-escape bugs of
/// CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881 (masked paths and /dev/console mounts
/// redirected through symlinks a container image controls).
pub const MIN_VERSION: (u64, u64, u64) = (1, 3, 3);

/// `runc --version`'s first line, e.g. `runc version 1.3.6` (or `1.4.0-rc.1`), as numbers.
pub fn parse_version(out: &str) -> Option<(u64, u64, u64)> {
    let v = out.lines().next()?.strip_prefix("runc version ")?.trim();
    let core = v.split(['-', '+', ' ']).next()?;
    let mut it = core.split('.').map(|n| n.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Refuses a runc older than [`MIN_VERSION`], with what to do about it.
pub async fn check_version(binary: &Path) -> std::result::Result<(), String> {
    let mut cmd = Command::new(binary);
    cmd.arg("--version");
    let out =
        reaper::run(cmd, Io::Capture(None)).await.map_err(|e| format!("run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (a, b, c) = MIN_VERSION;
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(()),
        Some((x, y, z)) => Err(format!(
            "runc {x}.{y}.{z} is older than {a}.{b}.{c}, which fixes CVE-2025-31133, CVE-2025-52565 and CVE-2025-52881: upgrade runc"
        )),
        None => Err(format!("cannot read the version of {}: {:?}", binary.display(), text.lines().next().unwrap_or(""))),
    }
}

/// Where containerd's runc shim keeps runc state; sharing it keeps `runc list` familiar.
pub fn default_root(namespace: &str) -> PathBuf {
    Path::new("/run/containerd/runc").join(namespace)
}

/// Descriptors a container process inherits from runc; `None` is /dev/null.
#[derive(Default)]
pub struct ChildStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// CRIU flags shared by checkpoint and restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CriuFlags {
    pub tcp_established: bool,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
}

impl CriuFlags {
    fn push(&self, args: &mut Vec<String>) {
        for (on, flag) in [
            (self.tcp_established, "--tcp-established"),
            (self.file_locks, "--file-locks"),
            (self.ext_unix_sk, "--ext-unix-sk"),
            (self.shell_job, "--shell-job"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
    }
}

/// Where CRIU's images for a restore are and how they were dumped.
pub struct CriuImages<'a> {
    pub image: &'a Path,
    pub work: Option<&'a Path>,
    pub flags: &'a CriuFlags,
}

#[derive(Clone, Debug)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    /// `<bundle>/log.json`.
    pub log: PathBuf,
}

impl Runc {
    pub fn new(root: impl Into<PathBuf>, bundle: &Path) -> Self {
        Self { binary: "runc".into(), root: root.into(), log: bundle.join("log.json") }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&self.log);
        cmd.args(["--log-format", "json"]).args(args);
        cmd
    }

    /// Runs one verb; a non-zero exit becomes [`Error::Runtime`] with runc's message.
    async fn call(&self, op: &str, id: &str, args: Vec<String>, io: Io) -> Result<Output> {
        let mark = tokio::fs::metadata(&self.log).await.map(|m| m.len()).unwrap_or(0);
        let out = reaper::run(self.command(&args), io).await?;
        if out.status == 0 {
            return Ok(out);
        }
        let msg = match last_error(&self.log, mark).await {
            Some(msg) => msg,
            None if !out.stderr.is_empty() => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            None => format!("exit status {}", out.status),
        };
        Err(Error::Runtime { op: op.into(), id: id.into(), msg })
    }

    async fn call_with(&self, op: &str, id: &str, args: Vec<String>, stdio: ChildStdio) -> Result<Output> {
        let mut cmd = self.command(&args);
        cmd.stdin(stdio.stdin.map(std::process::Stdio::from).unwrap_or_else(std::process::Stdio::null));
        cmd.stdout(stdio.stdout.map(std::process::Stdio::from).unwrap_or_else(std::process::Stdio::null));
        cmd.stderr(stdio.stderr.map(std::process::Stdio::from).unwrap_or_else(std::process::Stdio::null));
        let mark = tokio::fs::metadata(&self.log).await.map(|m| m.len()).unwrap_or(0);
        let out = reaper::run(cmd, Io::Preset).await?;
        if out.status == 0 {
            return Ok(out);
        }
        let msg = last_error(&self.log, mark).await.unwrap_or_else(|| format!("exit status {}", out.status));
        Err(Error::Runtime { op: op.into(), id: id.into(), msg })
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let mut args = vec!["create".into(), "--bundle".into(), path(bundle), "--pid-file".into(), path(pid_file)];
        if let Some(c) = console {
            args.extend(["--console-socket".into(), path(c)]);
        }
        args.push(id.into());
        self.call_with("create", id, args, stdio).await.map(drop)
    }

    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        images: &CriuImages<'_>,
        console: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let mut args = vec![
            "restore".into(),
            "--detach".into(),
            "--bundle".into(),
            path(bundle),
            "--pid-file".into(),
            path(pid_file),
            "--image-path".into(),
            path(images.image),
        ];
        if let Some(w) = images.work {
            args.extend(["--work-path".into(), path(w)]);
        }
        images.flags.push(&mut args);
        if let Some(c) = console {
            args.extend(["--console-socket".into(), path(c)]);
        }
        args.push(id.into());
        self.call_with("restore", id, args, stdio).await.map(drop)
    }

    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<()> {
        let mut args = vec![
            "exec".into(),
            "--detach".into(),
            "--process".into(),
            path(process_json),
            "--pid-file".into(),
            path(pid_file),
        ];
        if let Some(c) = console {
            args.extend(["--console-socket".into(), path(c)]);
        }
        args.push(id.into());
        self.call_with("exec", id, args, stdio).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.call("start", id, vec!["start".into(), id.into()], Io::Capture(None)).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut args = vec!["kill".to_string()];
        if all {
            args.push("--all".into());
        }
        args.extend([id.to_string(), signal.to_string()]);
        self.call("kill", id, args, Io::Capture(None)).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete".to_string()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.call("delete", id, args, Io::Capture(None)).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.call("pause", id, vec!["pause".into(), id.into()], Io::Capture(None)).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.call("resume", id, vec!["resume".into(), id.into()], Io::Capture(None)).await.map(drop)
    }

    pub async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let args = vec!["ps".into(), "--format".into(), "json".into(), id.into()];
        let out = self.call("ps", id, args, Io::Capture(None)).await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out.stdout)?;
        Ok(pids.unwrap_or_default())
    }

    /// `resources` is the OCI LinuxResources JSON containerd sent.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<()> {
        let args = vec!["update".into(), "--resources".into(), "-".into(), id.into()];
        self.call("update", id, args, Io::Capture(Some(resources))).await.map(drop)
    }

    pub async fn checkpoint(
        &self,
        id: &str,
        image: &Path,
        work: &Path,
        leave_running: bool,
        flags: &CriuFlags,
    ) -> Result<()> {
        let mut args = vec!["checkpoint".into(), "--image-path".into(), path(image), "--work-path".into(), path(work)];
        if leave_running {
            args.push("--leave-running".into());
        }
        flags.push(&mut args);
        args.push(id.into());
        self.call("checkpoint", id, args, Io::Capture(None)).await.map(drop)
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The message of the last `"level":"error"` line runc wrote after byte `from` of its log.
async fn last_error(log: &Path, from: u64) -> Option<String> {
    let data = tokio::fs::read(log).await.ok()?;
    let start = usize::try_from(from).ok().filter(|&s| s <= data.len()).unwrap_or(0);
    let text = String::from_utf8_lossy(&data[start..]);
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("level")?.as_str()? == "error").then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn last_error_reads_only_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"old\"}\n").unwrap();
        let mark = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_error(&log, 0).await.as_deref(), Some("old"));
        assert_eq!(last_error(&log, mark).await, None);
        let mut s = std::fs::read_to_string(&log).unwrap();
        s.push_str("{\"level\":\"error\",\"msg\":\"new\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n");
        std::fs::write(&log, s).unwrap();
        assert_eq!(last_error(&log, mark).await.as_deref(), Some("new"));
    }

    #[test]
    fn criu_flags_render() {
        let mut args = vec![];
        CriuFlags { tcp_established: true, file_locks: true, ..Default::default() }.push(&mut args);
        assert_eq!(args, ["--tcp-established", "--file-locks"]);
    }
}
