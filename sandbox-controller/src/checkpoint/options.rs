//! The option keys a pod checkpoint accepts, named as checkpointctl's proposal names them
//! (`leave-running`, `tcp-established`, ...). The CRI says unknown keys are an InvalidArgument:
//! a typo must not silently produce a checkpoint the user did not ask for.
//!
//! The defaults are the CRI's: cri-api says a pod checkpoint never ends the pod (the runtime
//! resumes every container before it returns), and the kubelet sends an empty options map. So
//! the pod keeps running unless the caller sends `leave-running=false`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub use crate::archive::Compression;

/// Parses the `compression` option value.
pub fn parse_compression(value: &str) -> Result<Compression> {
    match value {
        "none" | "" => Ok(Compression::None),
        "gzip" | "gz" => Ok(Compression::Gzip),
        "zstd" | "zst" => Ok(Compression::Zstd),
        other => Err(Error::InvalidArgument(format!("option compression={other}: expected one of none, gzip, zstd"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Keep the pod running after the checkpoint (the default); `leave-running=false` stops its
    /// containers once every one of them is dumped.
    pub leave_running: bool,
    /// Dump established TCP connections (CRIU `--tcp-established`).
    pub tcp_established: bool,
    /// Dump file locks (CRIU `--file-locks`).
    pub file_locks: bool,
    pub compression: Compression,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            leave_running: true,
            tcp_established: false,
            file_locks: false,
            compression: Compression::None,
        }
    }
}

pub const OPTION_KEYS: &[&str] = &["leave-running", "tcp-established", "file-locks", "compression"];

impl CheckpointOptions {
    pub fn parse(options: &BTreeMap<String, String>) -> Result<CheckpointOptions> {
        let mut out = CheckpointOptions::default();
        for (key, value) in options {
            match key.as_str() {
                "leave-running" => out.leave_running = parse_bool(key, value)?,
                "tcp-established" => out.tcp_established = parse_bool(key, value)?,
                "file-locks" => out.file_locks = parse_bool(key, value)?,
                "compression" => out.compression = parse_compression(value)?,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown checkpoint option {other:?} (supported: {})",
                        OPTION_KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(out)
    }
}

pub fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        other => Err(Error::InvalidArgument(format!("option {key}={other}: expected true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_leave_the_pod_running_uncompressed() {
        let o = CheckpointOptions::parse(&BTreeMap::new()).unwrap();
        assert_eq!(o, CheckpointOptions::default());
        assert!(o.leave_running, "the CRI's empty options map must not stop the pod");
        assert!(!o.tcp_established && !o.file_locks);
        assert_eq!(o.compression, Compression::None);
    }

    #[test]
    fn only_an_explicit_false_stops_the_pod() {
        assert!(!CheckpointOptions::parse(&map(&[("leave-running", "false")])).unwrap().leave_running);
        assert!(CheckpointOptions::parse(&map(&[("leave-running", "true")])).unwrap().leave_running);
        // A bare key (as `--flag` style callers send it) means true, never "stop".
        assert!(CheckpointOptions::parse(&map(&[("leave-running", "")])).unwrap().leave_running);
    }

    #[test]
    fn known_keys_parse() {
        let o = CheckpointOptions::parse(&map(&[
            ("leave-running", "yes"),
            ("tcp-established", "1"),
            ("file-locks", "off"),
            ("compression", "zstd"),
        ]))
        .unwrap();
        assert!(o.leave_running && o.tcp_established && !o.file_locks);
        assert_eq!(o.compression, Compression::Zstd);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_invalid_arguments() {
        for bad in
            [map(&[("leaveRunning", "true")]), map(&[("leave-running", "maybe")]), map(&[("compression", "lz4")])]
        {
            assert!(matches!(CheckpointOptions::parse(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }
}
