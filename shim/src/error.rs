//! The shim crate's one error type, and the single place where it becomes a ttrpc status.
//!
//! Variants are named after the containerd errdefs they map to, so that containerd's client sees
//! `NotFound` / `AlreadyExists` / `FailedPrecondition` and reacts as it does for the runc shim
//! (e.g. `ctr task rm` of a gone task, `Connect` on reload).

use podcr_sandbox_controller::Error as PodError;
use ttrpc::{Code, Error as TtrpcError};

use crate::runc_error::Error as RuncError;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod logic's errors, named after their errdefs (NotFound, FailedPrecondition, ...).
    /// Requests the shim refuses itself use these too, so each code has one variant.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The runc backend's own failures (its refusals are [`RuncError::Pod`] and keep their code).
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("containerd-shim: {0}")]
    Shim(#[from] containerd_shim::Error),
    /// A request's `Any` payload did not decode as the message its type URL names.
    #[error("protobuf: {0}")]
    Protobuf(#[from] protobuf::Error),
    /// A request's JSON payload (a CRI config, a restored task's spec) did not decode.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] TtrpcError),
    /// containerd's own API (reached for image rootfs on a RestoreSandbox) failed; NotFound
    /// there is reported as [`PodError::NotFound`] instead.
    #[error("containerd {what}: {message}")]
    Containerd { what: String, message: String },
    /// The `serve` process `start` launched never listened, or died.
    #[error("shim server: {0}")]
    Server(String),
    /// A task that ran detached from its RPC (so that a cancelled call cannot cut it short)
    /// was cancelled or panicked.
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

    /// Adapter for `map_err` on a spawned task's handle.
    pub fn join(context: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Error {
        let context = context.into();
        move |source| Error::Join { context, source }
    }

    pub fn not_found(what: impl Into<String>) -> Error {
        Error::Pod(PodError::NotFound(what.into()))
    }

    pub fn invalid_argument(what: impl Into<String>) -> Error {
        Error::Pod(PodError::InvalidArgument(what.into()))
    }

    pub fn failed_precondition(what: impl Into<String>) -> Error {
        Error::Pod(PodError::FailedPrecondition(what.into()))
    }

    pub fn unimplemented(what: impl Into<String>) -> Error {
        Error::Pod(PodError::Unimplemented(what.into()))
    }

    fn code(&self) -> Code {
        match self {
            Error::Pod(e) | Error::Runc(RuncError::Pod(e)) => pod_code(e),
            Error::Shim(e) | Error::Runc(RuncError::Shim(e)) => shim_code(e),
            Error::Protobuf(_) | Error::Json(_) | Error::Runc(RuncError::Json(_)) => Code::INVALID_ARGUMENT,
            Error::Runc(_)
            | Error::Io { .. }
            | Error::Ttrpc(_)
            | Error::Containerd { .. }
            | Error::Server(_)
            | Error::Join { .. } => Code::UNKNOWN,
        }
    }
}

fn pod_code(e: &PodError) -> Code {
    match e {
        PodError::NotFound(_) => Code::NOT_FOUND,
        PodError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        // A hostile or broken archive is bad input, not a broken runtime.
        PodError::InvalidArgument(_) | PodError::Archive(_) => Code::INVALID_ARGUMENT,
        PodError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        PodError::Unimplemented(_) => Code::UNIMPLEMENTED,
        PodError::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
        // A checkpoint this node does not trust (unsigned, forged, unknown key).
        PodError::Untrusted(_) => Code::PERMISSION_DENIED,
        PodError::Runtime { .. } | PodError::Io { .. } | PodError::Json { .. } | PodError::Backend(_) => Code::UNKNOWN,
    }
}

fn shim_code(e: &containerd_shim::Error) -> Code {
    match e {
        containerd_shim::Error::NotFoundError(_) => Code::NOT_FOUND,
        containerd_shim::Error::FailedPreconditionError(_) => Code::FAILED_PRECONDITION,
        containerd_shim::Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        _ => Code::UNKNOWN,
    }
}

impl From<Error> for TtrpcError {
    fn from(e: Error) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Lets the Task service return the runc store's errors with `?`.
impl From<RuncError> for TtrpcError {
    fn from(e: RuncError) -> Self {
        Error::Runc(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: Error) -> Code {
        match TtrpcError::from(e) {
            TtrpcError::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn not_found() {
        assert_eq!(code_of(Error::not_found("c1")), Code::NOT_FOUND);
        assert_eq!(code_of(Error::Runc(RuncError::not_found("c1"))), Code::NOT_FOUND);
        let shim = containerd_shim::Error::NotFoundError("x".into());
        assert_eq!(code_of(Error::Shim(shim)), Code::NOT_FOUND);
    }

    #[test]
    fn already_exists() {
        assert_eq!(code_of(Error::Pod(PodError::AlreadyExists("c1".into()))), Code::ALREADY_EXISTS);
        assert_eq!(code_of(Error::Runc(RuncError::already_exists("c1"))), Code::ALREADY_EXISTS);
    }

    #[test]
    fn invalid_argument() {
        assert_eq!(code_of(Error::invalid_argument("x")), Code::INVALID_ARGUMENT);
        assert_eq!(code_of(Error::Pod(PodError::Archive("x".into()))), Code::INVALID_ARGUMENT);
        let json = serde_json::from_str::<u32>("nope").unwrap_err();
        assert_eq!(code_of(Error::Runc(RuncError::Json(json))), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn failed_precondition() {
        assert_eq!(code_of(Error::failed_precondition("x")), Code::FAILED_PRECONDITION);
        assert_eq!(code_of(Error::Runc(RuncError::failed_precondition("x"))), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn unimplemented() {
        assert_eq!(code_of(Error::unimplemented("x")), Code::UNIMPLEMENTED);
    }

    #[test]
    fn permission_denied() {
        assert_eq!(code_of(Error::Pod(PodError::Untrusted("x".into()))), Code::PERMISSION_DENIED);
    }

    #[test]
    fn deadline_exceeded() {
        assert_eq!(code_of(Error::Pod(PodError::DeadlineExceeded("x".into()))), Code::DEADLINE_EXCEEDED);
    }

    /// A backend error that went through the controller (and back) keeps its code.
    #[test]
    fn backend_errors_through_the_controller_keep_their_code() {
        let e = PodError::from(RuncError::not_found("c1"));
        assert_eq!(code_of(Error::Pod(e)), Code::NOT_FOUND);
        let e = PodError::from(RuncError::Protocol("x".into()));
        assert_eq!(code_of(Error::Pod(e)), Code::UNKNOWN);
    }

    #[test]
    fn runtime_keeps_runc_message() {
        let e = Error::Runc(RuncError::Runtime { op: "start".into(), id: "c1".into(), msg: "boom".into() });
        match TtrpcError::from(e) {
            TtrpcError::RpcStatus(s) => {
                assert_eq!(s.code(), Code::UNKNOWN);
                assert!(s.message().contains("boom"));
            }
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn io_is_unknown() {
        let e = Error::io("open")(std::io::Error::other("x"));
        assert_eq!(code_of(e), Code::UNKNOWN);
    }
}
