//! Pod checkpoint: options, and the orchestration that freezes the whole pod at one instant,
//! dumps every container in parallel and packages the result only after the pod is thawed.

pub mod criu_stats;
pub mod options;
pub mod orchestrate;
pub(crate) mod package;

pub use options::{CheckpointOptions, Compression};
pub use orchestrate::{ContainerSelection, PodCheckpointRequest, PodCheckpointStats};

#[cfg(test)]
mod tests;
