//! Starting and watching the holder process (see `holder.rs`) from inside the running shim.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use chrono::Utc;
use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use nix::{sys::signal::Signal, unistd::Pid};
use podcr_sandbox_controller::backend::ExitStatus;
use tokio::sync::watch;
use tracing::{info, warn};

use super::holder::HolderConfig;
use crate::runc_error::{Error, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running holder: `pid` is the one containers join (PID 1 of the pod's PID namespace when it
/// has one), `holder_pid` the shim's direct child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub holder_pid: u32,
}

impl Holder {
    /// Starts the holder and returns once it reports its namespaces are in place.
    pub async fn spawn(cfg: &HolderConfig) -> Result<(Holder, watch::Receiver<Option<ExitStatus>>)> {
        // Subscribe before spawning: the shim's reaper takes every exit status with waitpid(-1),
        // and an exit that happens before the subscription would be lost.
        let mut exits = monitor_subscribe(Topic::Pid).await?;
        let exe = std::env::current_exe().map_err(Error::io("find the shim executable"))?;
        // std's Command, not tokio's: tokio reaps dropped children itself and would race the
        // shim's reaper for the holder's exit status.
        let mut child = Command::new(exe)
            .args(cfg.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("spawn the pod holder"))?;
        let holder_pid = child.id();
        let stdout = child.stdout.take().ok_or_else(|| Error::Protocol("holder stdout missing".into()))?;
        let line = tokio::time::timeout(
            READY_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        )
        .await;
        let line = match line {
            Ok(Ok(Ok(line))) => line,
            other => {
                kill(holder_pid, Signal::SIGKILL);
                let _ = monitor_unsubscribe(exits.id).await;
                return Err(Error::Protocol(format!("pod holder did not report ready: {other:?}")));
            }
        };
        let pid = match line.trim().strip_prefix("ready ").map(str::parse::<u32>) {
            Some(Ok(pid)) => pid,
            _ => {
                kill(holder_pid, Signal::SIGKILL);
                let _ = monitor_unsubscribe(exits.id).await;
                let reason = line.trim().strip_prefix("error ").unwrap_or(line.trim()).to_string();
                return Err(Error::failed_precondition(format!("pod holder failed: {reason}")));
            }
        };
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(event) = exits.rx.recv().await {
                if let Subject::Pid(p) = event.subject {
                    if p as u32 == holder_pid {
                        info!(holder_pid, code = event.exit_code, "pod holder exited");
                        let _ = tx.send(Some(ExitStatus { code: event.exit_code as u32, at: Utc::now() }));
                        break;
                    }
                }
            }
            let _ = monitor_unsubscribe(exits.id).await;
        });
        Ok((Holder { pid, holder_pid }, rx))
    }

    /// Ends the holder; the namespaces it held go when the last container leaves them.
    pub fn kill(&self) {
        kill(self.pid, Signal::SIGKILL);
        if self.holder_pid != self.pid {
            kill(self.holder_pid, Signal::SIGKILL);
        }
    }
}

fn kill(pid: u32, signal: Signal) {
    if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal) {
        if e != nix::errno::Errno::ESRCH {
            warn!(pid, error = %e, "signal pod holder");
        }
    }
}
