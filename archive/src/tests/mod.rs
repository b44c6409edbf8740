//! Round trips, hostile inputs, fuzzing and checkpointctl interop.

mod criu;
mod fuzz;
mod hostile;
mod roundtrip;
mod rootfs;
pub(crate) mod support;
