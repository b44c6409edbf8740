//! containerd-shim-podcr-v1: containerd's shim v2 sandbox runtime over runc, with pod-level
//! checkpoint/restore. The binary's `main.rs` only dispatches to these modules; `podcr` (the CLI in
//! `bin/podcr`) reuses the wire clients from here.

pub mod pod;
