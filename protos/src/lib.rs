//! Wire types podcr speaks.
//!
//! containerd's Task, Sandbox, events and types come from `containerd-shim-protos` (re-exported whole
//! as [`containerd`]). The pod Checkpoint service of containerd PR 13822, which no published crate
//! carries yet, is generated here from `proto/checkpoint.proto`.

pub use containerd_shim_protos as containerd;
pub use protobuf;
pub use ttrpc;

/// `containerd.runtime.sandbox.v1.Checkpoint` messages.
#[allow(warnings, clippy::all)]
pub mod checkpoint {
    include!(concat!(env!("OUT_DIR"), "/checkpoint/checkpoint.rs"));
}

/// The async ttrpc server and client of `containerd.runtime.sandbox.v1.Checkpoint`.
#[allow(warnings, clippy::all)]
pub mod checkpoint_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/checkpoint/checkpoint_ttrpc.rs"));
}

/// ttrpc service names containerd dials. containerd-shim-protos generates task v3; v2 is the same
/// wire format under another name and is what containerd 2.1 falls back to after a NotImplemented.
pub const TASK_V3_SERVICE: &str = "containerd.task.v3.Task";
pub const TASK_V2_SERVICE: &str = "containerd.task.v2.Task";
pub const SANDBOX_SERVICE: &str = "containerd.runtime.sandbox.v1.Sandbox";
pub const CHECKPOINT_SERVICE: &str = "containerd.runtime.sandbox.v1.Checkpoint";
