//! Round trips, hostile inputs, fuzzing and checkpointctl interop.

mod criu;
mod fuzz;
mod hostile;
mod rootfs;
mod roundtrip;
pub(crate) mod support;
