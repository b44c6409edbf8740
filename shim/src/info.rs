//! `-info` and `-v`: what the shim tells containerd (and people) about itself.
//!
//! `-info` answers containerd's runtime introspection (`ctr plugins inspect-runtime`, the CRI's
//! runtime-handler features) the way containerd-shim-runc-v2 does: name, version, the runc
//! options it was given echoed back, and runc's own `runc features` as the OCI `Features`. The
//! CRI turns recursive read-only mounts and user namespaces on or off per handler from those
//! features, so without them a podcr pod silently loses `rro`. One deliberate difference: podcr
//! refuses pods with a user namespace (pod::convert), so `"user"` is taken out of the namespaces
//! it reports; advertising it would have the CRI offer `hostUsers: false` pods that then fail.

use std::{
    io::ErrorKind,
    process::{Command, Stdio},
};

use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use protobuf::well_known_types::any::Any;
use tracing::debug;

use crate::{
    error::{Error, Result},
    runtime_options,
};

/// The runtime type containerd knows podcr by.
pub const RUNTIME_NAME: &str = "io.containerd.podcr.v1";
/// containerd's `typeurl` name for runtime-spec's `features.Features` (JSON inside the Any).
pub const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The shim's version, and the commit when the build recorded one (`PODCR_REVISION` at build
/// time; scripts/release.sh sets it).
pub fn version() -> RuntimeVersion {
    RuntimeVersion {
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: option_env!("PODCR_REVISION").unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// What `-v` prints, in runc.v2's layout.
pub fn version_text(binary: &str) -> String {
    let v = version();
    format!("{binary}:\n  Version:  {}\n  Revision: {}\n", v.version, v.revision)
}

/// The `-info` answer for the options containerd piped in (`stdin`).
pub fn runtime_info(stdin: &[u8]) -> Result<RuntimeInfo> {
    let options = runtime_options::for_info(stdin)?;
    let binary = options
        .as_ref()
        .map(|o| o.options.binary_name.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "runc".to_string());
    let mut info = RuntimeInfo {
        name: RUNTIME_NAME.into(),
        version: Some(version()).into(),
        options: options.map(|o| o.any).into(),
        // containerd PR 13971: with NRI enabled, its CRI restores a pod only through a shim
        // that honours the two-phase RestoreSandbox (see pod::sandbox_restore).
        annotations: [("io.containerd.pod-restore.staged".to_string(), "true".to_string())].into(),
        ..Default::default()
    };
    match runc_features(&binary)? {
        Some(json) => {
            info.features = Some(Any { type_url: FEATURES_TYPE.into(), value: json, ..Default::default() }).into();
        }
        // runc.v2 too answers without features when the runtime has no `features` verb.
        None => debug!(binary, "the OCI runtime reports no features"),
    }
    Ok(info)
}

/// `<binary> features`, as podcr may use it. A missing binary is an error (as in runc.v2: the
/// handler cannot work at all); a runtime without the verb, or with output that is no JSON
/// object, gives none.
fn runc_features(binary: &str) -> Result<Option<Vec<u8>>> {
    let out = match Command::new(binary).arg("features").stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::failed_precondition(format!("OCI runtime {binary:?} not found on PATH")))
        }
        Err(e) => return Err(Error::io(format!("run {binary} features"))(e)),
    };
    if !out.status.success() {
        debug!(binary, status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr), "features failed");
        return Ok(None);
    }
    let Ok(features) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Ok(None);
    };
    Ok(Some(serde_json::to_vec(&without_user_namespace(features))?))
}

/// Takes `"user"` out of `linux.namespaces` (see the module doc for why).
fn without_user_namespace(mut features: serde_json::Value) -> serde_json::Value {
    if let Some(ns) = features.pointer_mut("/linux/namespaces").and_then(|n| n.as_array_mut()) {
        ns.retain(|n| n.as_str() != Some("user"));
    }
    features
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use containerd_shim_protos::shim::oci::Options;
    use protobuf::Message;

    use super::*;

    /// A fake OCI runtime whose `features` prints `json`.
    fn fake_runtime(dir: &std::path::Path, json: &str) -> String {
        let path = dir.join("fake-runc");
        std::fs::write(&path, format!("#!/bin/sh\n[ \"$1\" = features ] || exit 2\ncat <<'EOF'\n{json}\nEOF\n"))
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn options_for(binary: &str) -> Vec<u8> {
        let o = Options { binary_name: binary.into(), ..Default::default() };
        Any {
            type_url: runtime_options::RUNC_OPTIONS_TYPE.into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    #[test]
    fn features_are_the_runtimes_minus_user_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let runc = fake_runtime(
            dir.path(),
            r#"{"ociVersionMax":"1.2.1","mountOptions":["rro","bind"],"linux":{"namespaces":["mount","user","network"]}}"#,
        );
        let info = runtime_info(&options_for(&runc)).unwrap();
        assert_eq!(info.name, RUNTIME_NAME);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.options.type_url, runtime_options::RUNC_OPTIONS_TYPE, "options are echoed back");
        assert_eq!(info.features.type_url, FEATURES_TYPE);
        let f: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(f["mountOptions"], serde_json::json!(["rro", "bind"]));
        assert_eq!(f["linux"]["namespaces"], serde_json::json!(["mount", "network"]));
    }

    #[test]
    fn a_runtime_without_features_gives_none_and_a_missing_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let runc = fake_runtime(dir.path(), "not json");
        assert!(runtime_info(&options_for(&runc)).unwrap().features.is_none());
        let err = runtime_info(&options_for("/nonexistent/runc")).unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
    }
}
