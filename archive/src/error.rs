//! The one error type of the archive crate. Its variants are the subset of the controller's
//! (`podcr_sandbox_controller::Error`) that reading and writing a checkpoint can produce, under the
//! same names, so the controller's `From` maps each one to its namesake and the errdefs code
//! containerd sees stays what it was: a hostile archive is `Archive`, a bad caller path
//! `InvalidArgument`, a rootfs that cannot be captured `FailedPrecondition`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A checkpoint whose signature is missing, forged or made by a key this node does not
    /// trust.
    #[error("untrusted checkpoint: {0}")]
    Untrusted(String),
    /// A checkpoint archive that is malformed, hostile or does not match its manifest.
    #[error("invalid checkpoint archive: {0}")]
    Archive(String),
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
}

impl Error {
    /// Wraps an I/O error with what was being done, e.g. `Error::io("create output dir")(e)`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
