//! The pod controller: one pod per shim, its life cycle, and the entry points for checkpoint and
//! restore. Methods take and return domain types only, so the shim's ttrpc adaptors stay thin
//! and unit tests call these directly with a fake backend.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::{
    backend::{ExitStatus, PodBackend, PodSpec},
    error::{Error, Result},
    state::PodState,
};

/// What `SandboxStatus` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    pub id: String,
    pub pid: u32,
    pub state: PodState,
    pub created_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
}

/// What `StartSandbox` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodInstance {
    pub pid: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Pod {
    spec: PodSpec,
    state: PodState,
    pid: u32,
    created_at: DateTime<Utc>,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    /// A Start is bringing the anchor up (without the pod lock held; see `start`).
    starting: bool,
}

/// One pod and the backend that runs it.
pub struct SandboxController<B: PodBackend> {
    pub(crate) backend: Arc<B>,
    pod: Mutex<Option<Pod>>,
    /// Held for the whole of a checkpoint or restore: a second request on the same pod is refused
    /// rather than interleaved with the first (two freezes of one pod can never be half-done).
    pub(crate) exclusive: Mutex<()>,
    /// `[signing]` for checkpoints and restores; `None` reads the node configuration at each
    /// one, so a rotated key or a newly trusted one needs no shim restart.
    signing: Option<crate::node_config::SigningConfig>,
}

impl<B: PodBackend> SandboxController<B> {
    pub fn new(backend: Arc<B>) -> Self {
        SandboxController { backend, pod: Mutex::new(None), exclusive: Mutex::new(()), signing: None }
    }

    /// Uses `signing` instead of the node configuration's `[signing]` (tests, embedders).
    pub fn with_signing(mut self, signing: crate::node_config::SigningConfig) -> Self {
        self.signing = Some(signing);
        self
    }

    /// The `[signing]` in force for one checkpoint or restore.
    pub(crate) fn signing_config(&self) -> Result<crate::node_config::SigningConfig> {
        match &self.signing {
            Some(c) => Ok(c.clone()),
            None => Ok(crate::node_config::NodeConfig::load()?.signing),
        }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    pub async fn create(&self, spec: PodSpec) -> Result<()> {
        let mut pod = self.pod.lock().await;
        if let Some(existing) = pod.as_ref() {
            return Err(Error::AlreadyExists(format!(
                "this shim already serves pod {}; one pod per shim",
                existing.spec.id
            )));
        }
        if spec.id.is_empty() {
            return Err(Error::InvalidArgument("sandbox id is empty".into()));
        }
        if let Err(e) = self.backend.create_pod(&spec).await {
            // Leave nothing half-made: whatever create_pod managed before failing goes again.
            if let Err(cleanup) = self.backend.destroy_pod(&spec).await {
                warn!(pod = %spec.id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e);
        }
        info!(pod = %spec.id, "pod created");
        *pod =
            Some(Pod { spec, state: PodState::Created, pid: 0, created_at: Utc::now(), exit: None, starting: false });
        Ok(())
    }

    /// Brings the pod's anchor up. That can take seconds, so the pod lock is not held meanwhile:
    /// Status, Wait and Stop keep answering, and a second Start is refused. A Stop or Shutdown
    /// that lands meanwhile wins, and the anchor just started is stopped again.
    pub async fn start(&self, id: &str) -> Result<PodInstance> {
        let spec = {
            let mut guard = self.pod.lock().await;
            let pod = Self::pod_mut(&mut guard, id)?;
            pod.state.start()?;
            if pod.starting {
                return Err(Error::FailedPrecondition(format!("pod {id} is already starting")));
            }
            pod.starting = true;
            pod.spec.clone()
        };
        let started = self.backend.start_pod(&spec).await;
        let mut guard = self.pod.lock().await;
        let pod = Self::pod_mut(&mut guard, id)?;
        pod.starting = false;
        let anchor = started?;
        let next = match pod.state.start() {
            Ok(next) => next,
            Err(e) => {
                drop(guard);
                if let Err(stop) = self.backend.stop_pod(&spec, Duration::ZERO).await {
                    warn!(pod = %id, error = %stop, "stop an anchor started during a stop");
                }
                return Err(e);
            }
        };
        pod.pid = anchor.pid;
        pod.exit = Some(anchor.exit);
        pod.state = next;
        pod.created_at = Utc::now();
        info!(pod = %id, pid = anchor.pid, "pod ready");
        Ok(PodInstance { pid: pod.pid, created_at: pod.created_at })
    }

    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let spec = {
            let mut guard = self.pod.lock().await;
            let pod = Self::pod_mut(&mut guard, id)?;
            if pod.state == PodState::ShutDown {
                return Ok(());
            }
            pod.state = pod.state.stop()?;
            pod.spec.clone()
        };
        self.backend.stop_pod(&spec, timeout).await
    }

    /// Blocks until the pod's anchor process has exited (the pod is gone).
    pub async fn wait(&self, id: &str) -> Result<ExitStatus> {
        let exit = {
            let mut guard = self.pod.lock().await;
            let pod = Self::pod_mut(&mut guard, id)?;
            pod.exit.clone()
        };
        let Some(mut exit) = exit else {
            // Never started: nothing to wait for but the pod's removal; report it as exited now.
            return Ok(ExitStatus { code: 0, at: Utc::now() });
        };
        loop {
            if let Some(status) = *exit.borrow_and_update() {
                return Ok(status);
            }
            if exit.changed().await.is_err() {
                // The sender is gone without a status: the backend lost track of the anchor.
                return Ok(ExitStatus { code: 255, at: Utc::now() });
            }
        }
    }

    pub async fn status(&self, id: &str) -> Result<PodStatus> {
        let mut guard = self.pod.lock().await;
        let pod = Self::pod_mut(&mut guard, id)?;
        let exited = pod.exit.as_ref().and_then(|rx| *rx.borrow());
        if exited.is_some() && pod.state == PodState::Ready {
            // The anchor died on its own: the pod can no longer run containers.
            pod.state = PodState::Stopped;
        }
        Ok(PodStatus {
            id: pod.spec.id.clone(),
            pid: pod.pid,
            state: pod.state,
            created_at: Some(pod.created_at),
            exited_at: exited.map(|e| e.at),
        })
    }

    /// Stops the pod if needed and releases everything it holds. Idempotent.
    pub async fn shutdown(&self, id: &str) -> Result<()> {
        let spec = {
            let mut guard = self.pod.lock().await;
            let pod = Self::pod_mut(&mut guard, id)?;
            if pod.state == PodState::ShutDown {
                return Ok(());
            }
            pod.spec.clone()
        };
        self.backend.stop_pod(&spec, Duration::ZERO).await?;
        self.backend.destroy_pod(&spec).await?;
        let mut guard = self.pod.lock().await;
        if let Some(pod) = guard.as_mut() {
            pod.state = pod.state.shutdown()?;
        }
        info!(pod = %id, "pod shut down");
        Ok(())
    }

    /// The pod's spec and state, for checkpoint and restore.
    pub async fn snapshot(&self, id: &str) -> Result<(PodSpec, PodState)> {
        let mut guard = self.pod.lock().await;
        let pod = Self::pod_mut(&mut guard, id)?;
        Ok((pod.spec.clone(), pod.state))
    }

    /// The id of the pod this shim serves, if any.
    pub async fn pod_id(&self) -> Option<String> {
        self.pod.lock().await.as_ref().map(|p| p.spec.id.clone())
    }

    fn pod_mut<'a>(guard: &'a mut Option<Pod>, id: &str) -> Result<&'a mut Pod> {
        match guard.as_mut() {
            Some(pod) if pod.spec.id == id => Ok(pod),
            Some(pod) => Err(Error::NotFound(format!("sandbox {id}: this shim serves {}", pod.spec.id))),
            None => Err(Error::NotFound(format!("sandbox {id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBackend;

    async fn created(fake: &Arc<FakeBackend>) -> (SandboxController<FakeBackend>, tempfile::TempDir) {
        let ctl = SandboxController::new(fake.clone());
        let bundle = tempfile::tempdir().unwrap();
        ctl.create(PodSpec { id: "pod1".into(), bundle: bundle.path().to_path_buf(), ..Default::default() })
            .await
            .unwrap();
        (ctl, bundle)
    }

    /// A slow anchor start must not block Status (the CRI polls it) or let a second Start in.
    #[tokio::test]
    async fn status_answers_while_the_anchor_starts_and_a_second_start_is_refused() {
        let fake = Arc::new(FakeBackend::default());
        *fake.start_delay.lock().unwrap() = Duration::from_secs(2);
        let (ctl, _bundle) = created(&fake).await;
        let (started, during) = tokio::join!(ctl.start("pod1"), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let status = tokio::time::timeout(Duration::from_millis(500), ctl.status("pod1")).await;
            let second = tokio::time::timeout(Duration::from_millis(500), ctl.start("pod1")).await;
            (status, second)
        });
        let (status, second) = during;
        let status = status.expect("Status blocked behind a starting anchor").unwrap();
        assert_eq!(status.state, PodState::Created);
        let second = second.expect("a second Start blocked behind the first");
        assert!(matches!(&second, Err(Error::FailedPrecondition(m)) if m.contains("already starting")), "{second:?}");
        started.unwrap();
        assert_eq!(ctl.status("pod1").await.unwrap().state, PodState::Ready);
    }

    /// A Stop that lands while the anchor starts wins: the new anchor is stopped again.
    #[tokio::test]
    async fn a_stop_during_start_wins() {
        let fake = Arc::new(FakeBackend::default());
        *fake.start_delay.lock().unwrap() = Duration::from_millis(500);
        let (ctl, _bundle) = created(&fake).await;
        let (started, stopped) = tokio::join!(ctl.start("pod1"), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctl.stop("pod1", Duration::ZERO).await
        });
        stopped.unwrap();
        assert!(matches!(started, Err(Error::FailedPrecondition(_))), "{started:?}");
        let calls = fake.calls();
        assert_eq!(calls.iter().filter(|c| *c == "stop_pod").count(), 2, "{calls:?}");
        assert_eq!(ctl.status("pod1").await.unwrap().state, PodState::Stopped);
    }
}
