//! containerd's gRPC API over its unix socket: the sandbox store and controller, and the
//! container store. Every call carries the namespace in the `containerd-namespace` header,
//! which is how containerd scopes all of its objects.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_client::{
    services::v1::{
        containers_client::ContainersClient,
        sandbox::{
            controller_client::ControllerClient, store_client::StoreClient, ControllerCreateRequest,
            ControllerShutdownRequest, ControllerStartRequest, ControllerStartResponse, ControllerStatusRequest,
            ControllerStatusResponse, ControllerStopRequest, StoreCreateRequest, StoreDeleteRequest,
            StoreGetRequest, StoreListRequest,
        },
        Container, ListContainersRequest,
    },
    tonic::{metadata::MetadataValue, transport::Channel, Code, Request},
    types::Sandbox,
};
use prost_types::Any;

/// The sandbox controller that drives shim sandboxes (containerd's `shim` sandboxer plugin).
pub const SHIM_SANDBOXER: &str = "shim";

/// A connected containerd client bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    pub namespace_name: String,
}

/// Opens a gRPC channel over a unix socket. tonic needs a URI; the connector ignores it.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    containerd_client::connect(socket)
        .await
        .with_context(|| format!("connect to {}", socket.display()))
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd> {
        let channel = unix_channel(socket).await?;
        let header = namespace.parse().with_context(|| format!("namespace {namespace:?} is not a valid header value"))?;
        Ok(Containerd { channel, namespace: header, namespace_name: namespace.to_string() })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("containerd-namespace", self.namespace.clone());
        req
    }

    fn store(&self) -> StoreClient<Channel> {
        StoreClient::new(self.channel.clone())
    }

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub async fn store_create(&self, sandbox: Sandbox) -> Result<Sandbox> {
        let id = sandbox.sandbox_id.clone();
        let resp = self
            .store()
            .create(self.req(StoreCreateRequest { sandbox: Some(sandbox) }))
            .await
            .with_context(|| format!("create sandbox record {id}"))?;
        resp.into_inner().sandbox.with_context(|| format!("containerd returned no sandbox record for {id}"))
    }

    pub async fn store_get(&self, id: &str) -> Result<Option<Sandbox>> {
        match self.store().get(self.req(StoreGetRequest { sandbox_id: id.to_string() })).await {
            Ok(resp) => Ok(resp.into_inner().sandbox),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s).with_context(|| format!("get sandbox record {id}")),
        }
    }

    pub async fn store_list(&self) -> Result<Vec<Sandbox>> {
        let resp = self.store().list(self.req(StoreListRequest { filters: vec![] })).await.context("list sandboxes")?;
        Ok(resp.into_inner().list)
    }

    /// Deletes the record; a record already gone is not an error.
    pub async fn store_delete(&self, id: &str) -> Result<()> {
        match self.store().delete(self.req(StoreDeleteRequest { sandbox_id: id.to_string() })).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s).with_context(|| format!("delete sandbox record {id}")),
        }
    }

    /// Starts the shim and sends it CreateSandbox. containerd's shim controller picks the shim
    /// binary from `sandbox.runtime.name`, so the record goes along with the request.
    pub async fn controller_create(&self, sandbox: &Sandbox, options: Option<Any>, netns_path: &str) -> Result<()> {
        let req = ControllerCreateRequest {
            sandbox_id: sandbox.sandbox_id.clone(),
            rootfs: vec![],
            options,
            netns_path: netns_path.to_string(),
            annotations: Default::default(),
            sandbox: Some(sandbox.clone()),
            sandboxer: sandbox.sandboxer.clone(),
        };
        self.controller()
            .create(self.req(req))
            .await
            .with_context(|| format!("create sandbox {} in the {} sandboxer", sandbox.sandbox_id, sandbox.sandboxer))?;
        Ok(())
    }

    pub async fn controller_start(&self, id: &str, sandboxer: &str) -> Result<ControllerStartResponse> {
        let req = ControllerStartRequest { sandbox_id: id.to_string(), sandboxer: sandboxer.to_string() };
        let resp = self.controller().start(self.req(req)).await.with_context(|| format!("start sandbox {id}"))?;
        Ok(resp.into_inner())
    }

    pub async fn controller_status(&self, id: &str, sandboxer: &str) -> Result<ControllerStatusResponse> {
        let req = ControllerStatusRequest { sandbox_id: id.to_string(), verbose: false, sandboxer: sandboxer.to_string() };
        let resp = self.controller().status(self.req(req)).await.with_context(|| format!("status of sandbox {id}"))?;
        Ok(resp.into_inner())
    }

    pub async fn controller_stop(&self, id: &str, sandboxer: &str) -> Result<()> {
        let req = ControllerStopRequest { sandbox_id: id.to_string(), timeout_secs: 0, sandboxer: sandboxer.to_string() };
        self.controller().stop(self.req(req)).await.with_context(|| format!("stop sandbox {id}"))?;
        Ok(())
    }

    /// Shuts the shim down. NotFound means there is no shim any more, which is what we want.
    pub async fn controller_shutdown(&self, id: &str, sandboxer: &str) -> Result<()> {
        let req = ControllerShutdownRequest { sandbox_id: id.to_string(), sandboxer: sandboxer.to_string() };
        match self.controller().shutdown(self.req(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(s).with_context(|| format!("shut down sandbox {id}")),
        }
    }

    /// Containers that belong to a sandbox. Filtering happens here rather than with a
    /// containerd filter expression, because containerd 2.1 cannot filter on `sandbox`.
    pub async fn containers_in(&self, sandbox_id: &str) -> Result<Vec<Container>> {
        let resp = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .context("list containers")?;
        let mut list: Vec<Container> =
            resp.into_inner().containers.into_iter().filter(|c| c.sandbox == sandbox_id).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }
}
