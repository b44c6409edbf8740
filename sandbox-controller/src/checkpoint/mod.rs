//! Pod checkpoint: options, and the orchestration that freezes the whole pod at one instant,
//! dumps every container in parallel and packages the result only after the pod is thawed.

pub mod options;

pub use options::{CheckpointOptions, Compression};
