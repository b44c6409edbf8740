//! Child reaping. The shim is a subreaper, so container processes re-parent to it and it alone
//! collects every exit status: one SIGCHLD loop calls `waitpid(-1)` and hands each exit to
//! containerd-shim's monitor. Anything the shim runs (runc, and CRIU through runc) must go
//! through [`run`], which subscribes to the monitor *before* spawning, so the loop cannot steal
//! an exit status that the caller is waiting for.

use std::process::Stdio;

use containerd_shim::monitor::{monitor_notify_by_pid, monitor_subscribe, monitor_unsubscribe, Subject, Topic};
use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::{io::AsyncReadExt, process::Command, signal::unix::SignalKind};
use tracing::{debug, warn};

use crate::runc_error::{Error, Result};

/// Makes this process the subreaper of its descendants and starts the SIGCHLD loop.
pub fn start() -> Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::io("set child subreaper")(std::io::Error::last_os_error()));
    }
    let mut sigchld = tokio::signal::unix::signal(SignalKind::child()).map_err(Error::io("listen for SIGCHLD"))?;
    tokio::spawn(async move {
        // Reap once up front: a child may have exited before the handler existed.
        loop {
            reap_all().await;
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(())
}

async fn reap_all() {
    loop {
        let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            // The shell convention: 128 + signal, which is what containerd reports too.
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "waitpid failed");
                return;
            }
        };
        debug!(pid = pid.as_raw(), code, "reaped");
        if let Err(e) = monitor_notify_by_pid(pid.as_raw(), code).await {
            warn!(error = %e, "forward exit to monitor");
        }
    }
}

/// What a finished command left behind.
#[derive(Debug, Default)]
pub struct Output {
    pub pid: u32,
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How [`run`] wires the child's stdio.
pub enum Io {
    /// stdin from the given bytes (if any), stdout/stderr captured.
    Capture(Option<Vec<u8>>),
    /// The caller has already set the command's stdio (e.g. to a container's pipes).
    Preset,
}

/// Runs `cmd` to completion with its exit status taken from the reaper, never from `wait()`:
/// the SIGCHLD loop reaps every child, so tokio's own wait would race it and lose.
pub async fn run(mut cmd: Command, io: Io) -> Result<Output> {
    let input = match io {
        Io::Capture(input) => {
            cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            input
        }
        Io::Preset => None,
    };
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    let spawned = cmd.spawn();
    // The parent's copies of descriptors handed to the child must close now, or a pipe
    // to a container process would never see EOF.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = monitor_unsubscribe(sub.id).await;
            return Err(Error::io("spawn")(e));
        }
    };
    let pid = child.id().unwrap_or_default();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let (Some(mut w), Some(data)) = (stdin, input) {
            use tokio::io::AsyncWriteExt;
            // A child that exits without reading its input is not our error to report.
            let _ = w.write_all(&data).await;
        }
    };
    let read_out = read_all(stdout);
    let read_err = read_all(stderr);
    let wait = async {
        while let Some(ev) = sub.rx.recv().await {
            if matches!(ev.subject, Subject::Pid(p) if p as u32 == pid) {
                return Some(ev.exit_code);
            }
        }
        None
    };
    let ((), out, err, status) = tokio::join!(feed, read_out, read_err, wait);
    let _ = monitor_unsubscribe(sub.id).await;
    // Already reaped by the loop; tokio's orphan queue just gets ECHILD for it and lets go.
    drop(child);
    let status = status.ok_or_else(|| Error::Process(format!("lost exit status of pid {pid}")))?;
    Ok(Output { pid, status, stdout: out, stderr: err })
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_gets_status_and_output_through_the_reaper() {
        // The test process is not a subreaper, but its direct children still reach waitpid(-1).
        start().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "read x; echo out-$x; echo err >&2; exit 7"]);
        let out = run(cmd, Io::Capture(Some(b"hi\n".to_vec()))).await.unwrap();
        assert_eq!(out.status, 7);
        assert_eq!(out.stdout, b"out-hi\n");
        assert_eq!(out.stderr, b"err\n");
    }
}
