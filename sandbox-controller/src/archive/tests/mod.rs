//! Round trips, hostile inputs, fuzzing and checkpointctl interop.
