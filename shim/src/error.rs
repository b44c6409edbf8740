//! The shim crate's one error type, and the single place where it becomes a ttrpc status.
//!
//! Variants are named after the containerd errdefs they map to, so that containerd's client sees
//! `NotFound` / `AlreadyExists` / `FailedPrecondition` and reacts as it does for the runc shim
//! (e.g. `ctr task rm` of a gone task, `Connect` on reload).

use ttrpc::{Code, Error as TtrpcError};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("not implemented: {0}")]
    Unimplemented(String),
    /// A checkpoint this node does not trust (unsigned, forged, unknown key).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller's deadline ran out; the work was undone (a pod checkpoint thaws and cleans up).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
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
    #[error("containerd-shim: {0}")]
    Shim(#[from] containerd_shim::Error),
    #[error("protobuf: {0}")]
    Protobuf(#[from] protobuf::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
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

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) | Error::Json(_) | Error::Protobuf(_) => {
                Code::INVALID_ARGUMENT
            }
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::PermissionDenied(_) => Code::PERMISSION_DENIED,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::Shim(containerd_shim::Error::NotFoundError(_)) => Code::NOT_FOUND,
            Error::Shim(containerd_shim::Error::FailedPreconditionError(_)) => {
                Code::FAILED_PRECONDITION
            }
            Error::Shim(containerd_shim::Error::InvalidArgument(_)) => Code::INVALID_ARGUMENT,
            Error::Runtime { .. }
            | Error::Io { .. }
            | Error::Nix { .. }
            | Error::Shim(_)
            | Error::Other(_) => Code::UNKNOWN,
        }
    }
}

impl From<Error> for TtrpcError {
    fn from(e: Error) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
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
        assert_eq!(code_of(Error::NotFound("c1".into())), Code::NOT_FOUND);
        let shim = containerd_shim::Error::NotFoundError("x".into());
        assert_eq!(code_of(Error::Shim(shim)), Code::NOT_FOUND);
    }

    #[test]
    fn already_exists() {
        assert_eq!(code_of(Error::AlreadyExists("c1".into())), Code::ALREADY_EXISTS);
    }

    #[test]
    fn invalid_argument() {
        assert_eq!(code_of(Error::InvalidArgument("x".into())), Code::INVALID_ARGUMENT);
        let json = serde_json::from_str::<u32>("nope").unwrap_err();
        assert_eq!(code_of(Error::Json(json)), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn failed_precondition() {
        assert_eq!(code_of(Error::FailedPrecondition("x".into())), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn unimplemented() {
        assert_eq!(code_of(Error::Unimplemented("x".into())), Code::UNIMPLEMENTED);
        assert_eq!(code_of(Error::PermissionDenied("x".into())), Code::PERMISSION_DENIED);
    }

    #[test]
    fn deadline_exceeded() {
        assert_eq!(code_of(Error::DeadlineExceeded("x".into())), Code::DEADLINE_EXCEEDED);
    }

    #[test]
    fn runtime_keeps_runc_message() {
        let e = Error::Runtime { op: "start".into(), id: "c1".into(), msg: "boom".into() };
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
