//! Wire types podcr speaks.
//!
//! containerd's Task service, events and types come from `containerd-shim-protos` (re-exported
//! whole as [`containerd`]). Generated here, because no published crate carries them yet: the pod
//! Checkpoint service of containerd PR 13822 (`proto/checkpoint.proto`) and the Sandbox service
//! with `UpdateSandbox` (containerd 2.4) and PR 13971's `CheckpointSandbox`/`RestoreSandbox`
//! (`proto/sandbox.proto`).

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

/// podcr's pod-level events on containerd's event bus (`proto/events.proto`).
#[allow(warnings, clippy::all)]
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/events/events.rs"));
}

/// ttrpc service names containerd dials. containerd-shim-protos generates task v3; v2 is the same
/// wire format under another name and is what containerd 2.1 falls back to after a NotImplemented.
pub const TASK_V3_SERVICE: &str = "containerd.task.v3.Task";
pub const TASK_V2_SERVICE: &str = "containerd.task.v2.Task";
pub const SANDBOX_SERVICE: &str = "containerd.runtime.sandbox.v1.Sandbox";
pub const CHECKPOINT_SERVICE: &str = "containerd.runtime.sandbox.v1.Checkpoint";

/// containerd.types messages the Sandbox service uses (generated here, so the Sandbox service
/// below is self-contained).
#[allow(warnings, clippy::all)]
pub mod mount {
    include!(concat!(env!("OUT_DIR"), "/sandbox/mount.rs"));
}
#[allow(warnings, clippy::all)]
pub mod platform {
    include!(concat!(env!("OUT_DIR"), "/sandbox/platform.rs"));
}
#[allow(warnings, clippy::all)]
pub mod metrics {
    include!(concat!(env!("OUT_DIR"), "/sandbox/metrics.rs"));
}

/// `containerd.runtime.sandbox.v1.Sandbox` messages: containerd 2.1's nine RPCs, UpdateSandbox
/// (containerd 2.4) and CheckpointSandbox/RestoreSandbox (containerd PR 13971).
#[allow(warnings, clippy::all)]
pub mod sandbox {
    include!(concat!(env!("OUT_DIR"), "/sandbox/sandbox.rs"));
}

/// The async ttrpc server and client of podcr's `containerd.runtime.sandbox.v1.Sandbox`.
#[allow(warnings, clippy::all)]
pub mod sandbox_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/sandbox/sandbox_ttrpc.rs"));
}
