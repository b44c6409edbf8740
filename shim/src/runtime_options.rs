//! The runtime options containerd pipes to the shim's `start` and `-info` actions: the same
//! `containerd.runc.v1.Options` runc.v2 reads, so a handler configured for runc (shim cgroup, runc
//! binary) means the same for podcr.
//!
//! containerd up to 2.2 writes the options as a bare protobuf `Any`; 2.3+ wraps them in a
//! `BootstrapParams` message (its `extensions`) for `start`. Both are read here. Options of another
//! type (a handler with a `ConfigPath` options table gets `runtimeoptions.v1.Options`) carry
//! nothing podcr uses and are ignored; bytes that are no protobuf at all are an error.

use std::io::{IsTerminal, Read};

use containerd_shim::bootstrap::{any_is, BootstrapParams};
use containerd_shim_protos::shim::oci::Options;
use protobuf::{well_known_types::any::Any, Message};

use crate::error::{Error, Result};

/// containerd's `typeurl` name for runc's options.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// What containerd sent, if it was runc's options: the `Any` as received (echoed back by `-info`,
/// as runc.v2 does) and its decoded content.
#[derive(Debug, Clone, PartialEq)]
pub struct RuncOptions {
    pub any: Any,
    pub options: Options,
}

/// What containerd piped in, capped as containerd caps it; nothing when run by hand from a
/// terminal (which would otherwise wait for input).
pub fn read_stdin() -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    stdin.lock().take(10 << 20).read_to_end(&mut input).map_err(Error::io("read runtime options from stdin"))?;
    Ok(input)
}

/// Reads `-info`'s stdin: nothing, or a bare `Any`.
pub fn for_info(input: &[u8]) -> Result<Option<RuncOptions>> {
    if input.is_empty() {
        return Ok(None);
    }
    let any = Any::parse_from_bytes(input)
        .map_err(|e| Error::invalid_argument(format!("runtime options on stdin are not a protobuf Any: {e}")))?;
    decode(any)
}

/// Reads `start`'s stdin: nothing, a bare `Any` (containerd up to 2.2), or `BootstrapParams` for
/// this shim instance (2.3+), whose extensions may hold the options.
pub fn for_start(input: &[u8], id: &str, namespace: &str) -> Result<Option<RuncOptions>> {
    if input.is_empty() {
        return Ok(None);
    }
    // An `Any` also decodes as BootstrapParams (type URL and value land in the first two string
    // fields), so only a message naming this very instance counts as bootstrap params.
    if let Ok(params) = BootstrapParams::parse_from_bytes(input) {
        if params.instance_id == id && params.namespace == namespace {
            let found = params.extensions.iter().filter_map(|e| e.value.as_ref()).find(|a| any_is::<Options>(a));
            return found.cloned().map(decode).transpose().map(Option::flatten);
        }
    }
    for_info(input)
}

fn decode(any: Any) -> Result<Option<RuncOptions>> {
    if !any_is::<Options>(&any) {
        return Ok(None);
    }
    let options = Options::parse_from_bytes(&any.value)
        .map_err(|e| Error::invalid_argument(format!("{RUNC_OPTIONS_TYPE} on stdin does not decode: {e}")))?;
    Ok(Some(RuncOptions { any, options }))
}

#[cfg(test)]
mod tests {
    use containerd_shim::bootstrap::Extension;

    use super::*;

    fn runc_any(shim_cgroup: &str) -> Any {
        let options = Options { shim_cgroup: shim_cgroup.into(), binary_name: "crun".into(), ..Default::default() };
        Any { type_url: RUNC_OPTIONS_TYPE.into(), value: options.write_to_bytes().unwrap(), ..Default::default() }
    }

    #[test]
    fn nothing_is_no_options() {
        assert_eq!(for_info(b"").unwrap(), None);
        assert_eq!(for_start(b"", "c1", "ns").unwrap(), None);
    }

    #[test]
    fn a_bare_any_is_read_for_both_actions() {
        let bytes = runc_any("/shims").write_to_bytes().unwrap();
        let got = for_info(&bytes).unwrap().unwrap();
        assert_eq!(got.options.shim_cgroup, "/shims");
        assert_eq!(got.options.binary_name, "crun");
        assert_eq!(got.any.type_url, RUNC_OPTIONS_TYPE);
        let got = for_start(&bytes, "c1", "ns").unwrap().unwrap();
        assert_eq!(got.options.shim_cgroup, "/shims");
    }

    #[test]
    fn bootstrap_params_for_this_instance_carry_them_in_extensions() {
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "ns".into(),
            extensions: vec![Extension { value: Some(runc_any("/k8s-shims")).into(), ..Default::default() }],
            ..Default::default()
        };
        let bytes = params.write_to_bytes().unwrap();
        assert_eq!(for_start(&bytes, "c1", "ns").unwrap().unwrap().options.shim_cgroup, "/k8s-shims");
        let none = BootstrapParams { instance_id: "c1".into(), namespace: "ns".into(), ..Default::default() };
        assert_eq!(for_start(&none.write_to_bytes().unwrap(), "c1", "ns").unwrap(), None);
    }

    #[test]
    fn other_option_types_are_ignored_and_garbage_is_an_error() {
        let other =
            Any { type_url: "runtimeoptions.v1.Options".into(), value: vec![10, 1, b'x'], ..Default::default() };
        assert_eq!(for_info(&other.write_to_bytes().unwrap()).unwrap(), None);
        let err = for_info(&[0xff, 0xff, 0xff]).unwrap_err().to_string();
        assert!(err.contains("not a protobuf Any"), "{err}");
    }
}
