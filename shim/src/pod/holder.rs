//! The pod's anchor process (a pause-like "holder"). (Stub until filled in.)

/// argv[1] that makes the shim binary run as the holder instead of as a shim.
pub const HOLDER_ARG: &str = "__podcr-holder";

/// Entry point of the holder mode; `main` calls it before anything else when argv[1] is
/// [`HOLDER_ARG`]. Returns the process exit code.
pub fn main() -> i32 {
    0
}
