//! The pod's life cycle as an explicit state machine. Every transition is a method; an illegal one
//! returns `FailedPrecondition` naming both states, so containerd sees why a call was refused.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// CreateSandbox succeeded: namespaces and files exist, no anchor process yet.
    Created,
    /// StartSandbox succeeded: the anchor process holds the pod's namespaces.
    Ready,
    /// StopSandbox ran, or the anchor died: containers are gone, resources may remain.
    Stopped,
    /// ShutdownSandbox ran: everything is released and the shim is about to exit.
    ShutDown,
}

impl PodState {
    /// The CRI enum name containerd maps `SandboxStatusResponse.state` through.
    pub fn cri_name(self) -> &'static str {
        match self {
            PodState::Ready => "SANDBOX_READY",
            _ => "SANDBOX_NOTREADY",
        }
    }

    fn to(self, next: PodState, allowed: bool) -> Result<PodState> {
        if allowed {
            Ok(next)
        } else {
            Err(Error::FailedPrecondition(format!("invalid pod state transition: {self:?} => {next:?}")))
        }
    }

    pub fn start(self) -> Result<PodState> {
        self.to(PodState::Ready, self == PodState::Created)
    }

    /// Stop is idempotent: containerd's CRI stops a pod again before removing it.
    pub fn stop(self) -> Result<PodState> {
        self.to(PodState::Stopped, self != PodState::ShutDown)
    }

    pub fn shutdown(self) -> Result<PodState> {
        Ok(PodState::ShutDown)
    }

    /// Checkpoint needs running containers to dump.
    pub fn check_checkpointable(self) -> Result<()> {
        match self {
            PodState::Ready => Ok(()),
            other => Err(Error::FailedPrecondition(format!("pod is {other:?}, not ready: nothing to checkpoint"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_life_cycle() {
        let s = PodState::Created.start().unwrap();
        assert_eq!(s, PodState::Ready);
        assert_eq!(s.cri_name(), "SANDBOX_READY");
        let s = s.stop().unwrap().stop().unwrap();
        assert_eq!(s, PodState::Stopped);
        assert_eq!(s.cri_name(), "SANDBOX_NOTREADY");
        assert_eq!(s.shutdown().unwrap(), PodState::ShutDown);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        assert!(matches!(PodState::Ready.start(), Err(Error::FailedPrecondition(_))));
        assert!(matches!(PodState::Stopped.start(), Err(Error::FailedPrecondition(_))));
        assert!(matches!(PodState::ShutDown.stop(), Err(Error::FailedPrecondition(_))));
        assert!(PodState::Created.check_checkpointable().is_err());
        assert!(PodState::Ready.check_checkpointable().is_ok());
    }
}
