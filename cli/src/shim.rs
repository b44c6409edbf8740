//! The shim's Checkpoint ttrpc service (containerd PR 13822), dialled directly: containerd 2.1
//! has no API that forwards to it yet.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use podcr_protos::{
    checkpoint::{CheckpointRequest, CheckpointResponse, RestoreRequest, RestoreResponse},
    checkpoint_ttrpc::CheckpointClient,
};

use crate::containerd::{Containerd, SHIM_SANDBOXER};

/// containerd reports shim endpoints as `ttrpc+unix:///run/containerd/s/<hash>`; the ttrpc
/// crate wants `unix:///...`. A bare path is accepted too.
pub fn ttrpc_address(address: &str) -> Result<String> {
    let addr = address.strip_prefix("ttrpc+").unwrap_or(address);
    if addr.starts_with("unix://") {
        return Ok(addr.to_string());
    }
    if addr.starts_with('/') {
        return Ok(format!("unix://{addr}"));
    }
    anyhow::bail!("unsupported shim address {address:?} (podcr speaks ttrpc over unix sockets)")
}

/// containerd's default state directory.
pub const DEFAULT_STATE: &str = "/run/containerd";
/// Where containerd's shim sandbox controller keeps each sandbox's bootstrap files.
const SHIM_CONTROLLER_DIR: &str = "io.containerd.sandbox.controller.v1.shim";

/// Where the pod's shim listens. containerd 2.1's Controller/Status leaves `address` empty
/// (later versions fill it in), so fall back to the `address` file containerd writes into the
/// sandbox's bootstrap directory under its state dir.
pub async fn address_of(cd: &Containerd, sandbox_id: &str, state_dir: &Path) -> Result<String> {
    let status = cd.controller_status(sandbox_id, SHIM_SANDBOXER).await?;
    if !status.address.is_empty() {
        return ttrpc_address(&status.address);
    }
    let file = address_file(state_dir, &cd.namespace_name, sandbox_id)?;
    let raw = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "containerd reports no shim address for sandbox {sandbox_id} and {} is unreadable (wrong --state?)",
            file.display()
        )
    })?;
    ttrpc_address(raw.trim())
}

/// `<state>/io.containerd.sandbox.controller.v1.shim/<namespace>/<id>/address`, refusing ids and
/// namespaces that would leave that directory.
pub fn address_file(state_dir: &Path, namespace: &str, sandbox_id: &str) -> Result<PathBuf> {
    for part in [namespace, sandbox_id] {
        anyhow::ensure!(
            !part.is_empty() && part != "." && part != ".." && !part.contains('/'),
            "invalid namespace or sandbox id {part:?}"
        );
    }
    Ok(state_dir.join(SHIM_CONTROLLER_DIR).join(namespace).join(sandbox_id).join("address"))
}

pub struct Shim {
    client: CheckpointClient,
    address: String,
}

/// The ttrpc deadline in nanoseconds, as the context carries it.
fn nanos(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX)
}

impl Shim {
    pub async fn connect(address: &str) -> Result<Shim> {
        let client = ttrpc::asynchronous::Client::connect(address)
            .await
            .with_context(|| format!("connect to the shim at {address}"))?;
        Ok(Shim { client: CheckpointClient::new(client), address: address.to_string() })
    }

    pub async fn checkpoint(&self, req: &CheckpointRequest, timeout: Duration) -> Result<CheckpointResponse> {
        self.client
            .checkpoint(ttrpc::context::with_timeout(nanos(timeout)), req)
            .await
            .map_err(explain)
            .with_context(|| format!("Checkpoint of pod {} (shim {})", req.sandbox_id, self.address))
    }

    pub async fn restore(&self, req: &RestoreRequest, timeout: Duration) -> Result<RestoreResponse> {
        self.client
            .restore(ttrpc::context::with_timeout(nanos(timeout)), req)
            .await
            .map_err(explain)
            .with_context(|| format!("Restore into pod {} (shim {})", req.sandbox_id, self.address))
    }
}

/// ttrpc's status errors print as a debug dump; show the code and message instead.
fn explain(e: ttrpc::Error) -> anyhow::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let code = format!("{:?}", s.code());
            if code == "NOT_FOUND" && s.message().contains("service") {
                anyhow::anyhow!("the shim does not serve the Checkpoint service: {}", s.message())
            } else {
                anyhow::anyhow!("{code}: {}", s.message())
            }
        }
        other => anyhow::anyhow!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(ttrpc_address("ttrpc+unix:///run/containerd/s/ab").unwrap(), "unix:///run/containerd/s/ab");
        assert_eq!(ttrpc_address("unix:///x").unwrap(), "unix:///x");
        assert_eq!(ttrpc_address("/run/x.sock").unwrap(), "unix:///run/x.sock");
        assert!(ttrpc_address("grpc+vsock://3:1024").is_err());
        assert_eq!(nanos(Duration::from_secs(2)), 2_000_000_000);
        assert_eq!(
            address_file(Path::new("/run/containerd"), "k8s.io", "abc").unwrap(),
            Path::new("/run/containerd/io.containerd.sandbox.controller.v1.shim/k8s.io/abc/address")
        );
        assert!(address_file(Path::new("/s"), "default", "../x").is_err());
        assert!(address_file(Path::new("/s"), "..", "x").is_err());
    }
}
