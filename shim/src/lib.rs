//! containerd-shim-podcr-v1: containerd's shim v2 sandbox runtime over runc, with pod-level
//! checkpoint/restore. The binary's `main.rs` only dispatches to these modules. The `podcr` CLI is
//! its own crate (`cli/`) and uses nothing from here.
//!
//! - [`start`], [`delete`], [`serve`]: the shim actions containerd runs.
//! - [`task`]: the containers and the Task service; [`task::Containers`] is the handle the pod
//!   side drives.
//! - [`info`]: `-info` and `-v`; [`runtime_options`]: the runc options containerd pipes in.
//! - [`reaper`], [`events`], [`logging`], [`error`]: the plumbing they share.

pub mod cgroups;
pub mod delete;
pub mod error;
pub mod events;
pub mod info;
pub mod logging;
pub mod pod;
pub mod reaper;
pub mod runc_error;
pub mod runtime_options;
pub mod serve;
pub mod start;
pub mod task;

#[cfg(test)]
mod cgroup2_tests;
