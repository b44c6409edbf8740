//! Round trips, hostile inputs, fuzzing and checkpointctl interop.

mod hostile;
mod roundtrip;
mod rootfs;
mod support;
