//! The one error type of the sandbox controller. Variants are named after the containerd errdefs
//! they become on the wire (the shim's `error.rs` holds that mapping), so callers can tell a bad
//! request from a broken runtime.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A checkpoint archive that is malformed, hostile or does not match its manifest.
    #[error("invalid checkpoint archive: {0}")]
    Archive(String),
    /// A checkpoint whose signature is missing, forged or made with a key this node does not
    /// trust (containerd's `ErrPermissionDenied` on the wire).
    #[error("untrusted checkpoint: {0}")]
    Untrusted(String),
    /// The OCI runtime or CRIU failed; `msg` carries their own words (runc's log, CRIU's log tail).
    #[error("{op} {id}: {msg}")]
    Runtime { op: String, id: String, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A backend's own failure that has no errdefs namesake (a runtime's bookkeeping, a
    /// protocol with a helper process, ...), kept whole with its source chain. Errors that do
    /// have a namesake are converted to it by the backend, so containerd still sees their code.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Wraps an I/O error with what was being done, e.g. `Error::io("create output dir")(e)`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Wraps a backend's own error (see [`Error::Backend`]).
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Backend(Box::new(e))
    }

    pub fn runtime(op: impl Into<String>, id: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Runtime { op: op.into(), id: id.into(), msg: msg.into() }
    }

    /// The same error with `from` replaced by `to` in its words: a checkpoint works through its
    /// output directory's descriptor path, the caller knows the directory by its own.
    pub fn reworded(self, from: &str, to: &str) -> Error {
        let r = |m: String| m.replace(from, to);
        match self {
            Error::NotFound(m) => Error::NotFound(r(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(r(m)),
            Error::InvalidArgument(m) => Error::InvalidArgument(r(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(r(m)),
            Error::Unimplemented(m) => Error::Unimplemented(r(m)),
            Error::DeadlineExceeded(m) => Error::DeadlineExceeded(r(m)),
            Error::Archive(m) => Error::Archive(r(m)),
            Error::Untrusted(m) => Error::Untrusted(r(m)),
            Error::Runtime { op, id, msg } => Error::Runtime { op, id, msg: r(msg) },
            Error::Io { context, source } => Error::Io { context: r(context), source },
            Error::Json { path, source } => Error::Json { path: PathBuf::from(r(path.display().to_string())), source },
            // A backend's own error keeps its words: it is not about the output directory.
            e @ Error::Backend(_) => e,
        }
    }
}

/// Each archive error becomes its namesake, so a hostile archive still reaches containerd as
/// `Archive`, a bad path as `InvalidArgument`, and so on.
impl From<podcr_archive::Error> for Error {
    fn from(e: podcr_archive::Error) -> Self {
        use podcr_archive::Error as A;
        match e {
            A::AlreadyExists(m) => Error::AlreadyExists(m),
            A::InvalidArgument(m) => Error::InvalidArgument(m),
            A::FailedPrecondition(m) => Error::FailedPrecondition(m),
            A::Archive(m) => Error::Archive(m),
            A::Untrusted(m) => Error::Untrusted(m),
            A::Io { context, source } => Error::Io { context, source },
            A::Json { path, source } => Error::Json { path, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive's errors keep their meaning (and so their errdefs code) in the controller.
    #[test]
    fn archive_errors_become_their_namesakes() {
        use podcr_archive::Error as A;
        let io = || std::io::Error::other("x");
        let json = || serde_json::from_str::<u8>("x").unwrap_err();
        assert!(matches!(Error::from(A::AlreadyExists("a".into())), Error::AlreadyExists(m) if m == "a"));
        assert!(matches!(Error::from(A::InvalidArgument("a".into())), Error::InvalidArgument(m) if m == "a"));
        assert!(matches!(Error::from(A::FailedPrecondition("a".into())), Error::FailedPrecondition(m) if m == "a"));
        assert!(matches!(Error::from(A::Archive("a".into())), Error::Archive(m) if m == "a"));
        assert!(matches!(Error::from(A::Untrusted("a".into())), Error::Untrusted(m) if m == "a"));
        assert!(matches!(Error::from(A::io("c")(io())), Error::Io { context, .. } if context == "c"));
        assert!(
            matches!(Error::from(A::Json { path: "p".into(), source: json() }), Error::Json { path, .. } if path.as_os_str() == "p")
        );
    }
}

#[cfg(test)]
mod reworded_tests {
    use super::*;

    #[test]
    fn reworded_replaces_the_descriptor_path_everywhere() {
        let e = Error::AlreadyExists("/proc/1/fd/7/app.tar exists".into()).reworded("/proc/1/fd/7", "/out");
        assert!(matches!(e, Error::AlreadyExists(ref m) if m == "/out/app.tar exists"), "{e}");
        let e = Error::io("create /proc/1/fd/7/x")(std::io::Error::other("boom")).reworded("/proc/1/fd/7", "/out");
        assert_eq!(e.to_string(), "create /out/x: boom");
    }
}
