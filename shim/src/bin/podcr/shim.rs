//! The shim's Checkpoint ttrpc service (containerd PR 13822), dialled directly: containerd 2.1
//! has no API that forwards to it yet.

use std::time::Duration;

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

/// Where the pod's shim listens, as containerd knows it.
pub async fn address_of(cd: &Containerd, sandbox_id: &str) -> Result<String> {
    let status = cd.controller_status(sandbox_id, SHIM_SANDBOXER).await?;
    anyhow::ensure!(
        !status.address.is_empty(),
        "containerd knows no shim address for sandbox {sandbox_id} (is it running?)"
    );
    ttrpc_address(&status.address)
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
    }
}
