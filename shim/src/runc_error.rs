//! The error type of the runc + CRIU backend: the containers, the reaper, the pod's holder,
//! freezer, files and CRIU hook.
//!
//! Requests this backend refuses for the same reasons any backend would (unknown id, wrong
//! state, bad input) are the controller's own errors, wrapped whole in [`Error::Pod`], so they
//! keep their errdefs meaning on the way to containerd without a near-copy of each variant here.
//! Everything else is what only a runc backend can fail at, with the context of the failure.

use podcr_sandbox_controller::Error as PodError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NotFound, AlreadyExists, FailedPrecondition, ...: see the module docs.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// runc (or CRIU through runc) failed; `msg` carries runc's own last error line.
    #[error("runc {op} {id}: {msg}")]
    Runtime { op: String, id: String, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Nix {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// The shim framework (mounts, the exit monitor) failed.
    #[error("containerd-shim: {0}")]
    Shim(#[from] containerd_shim::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A helper process broke its protocol with us: runc's console socket, the pod holder's
    /// ready line, the CRIU hook's answer.
    #[error("{0}")]
    Protocol(String),
    /// An exit the reaper should have seen but did not, or a pid file that holds no pid.
    #[error("{0}")]
    Process(String),
    /// A blocking task was cancelled or panicked.
    #[error("{context}: {source}")]
    Join {
        context: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Adapter for `map_err` on `std::io::Result`, keeping what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Adapter for `map_err` on `nix::Result`.
    pub fn nix(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let context = context.into();
        move |source| Error::Nix { context, source }
    }

    /// Adapter for `map_err` on a `spawn_blocking` handle.
    pub fn join(context: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Error {
        let context = context.into();
        move |source| Error::Join { context, source }
    }

    pub fn not_found(what: impl Into<String>) -> Error {
        Error::Pod(PodError::NotFound(what.into()))
    }

    pub fn already_exists(what: impl Into<String>) -> Error {
        Error::Pod(PodError::AlreadyExists(what.into()))
    }

    pub fn invalid_argument(what: impl Into<String>) -> Error {
        Error::Pod(PodError::InvalidArgument(what.into()))
    }

    pub fn failed_precondition(what: impl Into<String>) -> Error {
        Error::Pod(PodError::FailedPrecondition(what.into()))
    }
}

/// How the controller sees this backend's failures: its own errors come back unchanged, runc's
/// and I/O failures become their namesakes, the framework's errdefs keep their meaning, and the
/// rest travels whole as [`PodError::Backend`].
impl From<Error> for PodError {
    fn from(e: Error) -> Self {
        use containerd_shim::Error as S;
        match e {
            Error::Pod(e) => e,
            Error::Runtime { op, id, msg } => PodError::Runtime { op: format!("runc {op}"), id, msg },
            Error::Io { context, source } => PodError::Io { context, source },
            Error::Nix { context, source } => PodError::Io { context, source: source.into() },
            Error::Shim(S::NotFoundError(m)) => PodError::NotFound(m),
            Error::Shim(S::InvalidArgument(m)) => PodError::InvalidArgument(m),
            Error::Shim(S::FailedPreconditionError(m)) => PodError::FailedPrecondition(m),
            Error::Json(e) => PodError::InvalidArgument(format!("json: {e}")),
            other => PodError::backend(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_errors_come_back_unchanged() {
        let e = PodError::from(Error::not_found("c1"));
        assert!(matches!(e, PodError::NotFound(m) if m == "c1"));
        let e = PodError::from(Error::failed_precondition("x"));
        assert!(matches!(e, PodError::FailedPrecondition(m) if m == "x"));
    }

    #[test]
    fn runc_and_os_failures_become_their_namesakes() {
        let e = PodError::from(Error::Runtime { op: "start".into(), id: "c1".into(), msg: "boom".into() });
        assert!(matches!(e, PodError::Runtime { op, id, msg } if op == "runc start" && id == "c1" && msg == "boom"));
        let e = PodError::from(Error::nix("open")(nix::Error::ENOENT));
        match e {
            PodError::Io { context, source } => {
                assert_eq!(context, "open");
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("not Io: {other:?}"),
        }
        let e = PodError::from(Error::Shim(containerd_shim::Error::NotFoundError("m".into())));
        assert!(matches!(e, PodError::NotFound(m) if m == "m"));
    }

    #[test]
    fn the_rest_keeps_its_message_and_source() {
        let e = PodError::from(Error::Protocol("holder said nope".into()));
        assert!(matches!(&e, PodError::Backend(_)));
        assert_eq!(e.to_string(), "holder said nope");
    }
}
