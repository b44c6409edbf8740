//! The runtime-agnostic half of podcr: what a pod is, how its life cycle moves, how a whole pod is
//! checkpointed at one instant and brought back, and what a checkpoint looks like on disk.
//!
//! Nothing here speaks ttrpc or knows containerd's wire types: the shim converts requests into
//! these types and back. The runtime-specific work (namespaces, runc, CRIU) sits behind
//! [`backend::PodBackend`], so another runtime can reuse the state machine, the checkpoint
//! orchestration and the archive format unchanged.

pub mod backend;
pub mod checkpoint;
pub mod controller;
pub mod error;
/// An in-memory `PodBackend` for tests, here and (feature `fake`) in the shim's adaptor tests.
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod node_config;
pub mod restore;
pub mod state;

pub use controller::SandboxController;
pub use error::{Error, Result};
/// The checkpoint archive format lives in its own crate; re-exported so `archive::...` paths
/// keep working for the controller and its users.
pub use podcr_archive as archive;
