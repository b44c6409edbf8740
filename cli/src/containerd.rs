//! containerd's gRPC API over its unix socket: the sandbox store and controller, and the
//! container store. Every call carries the namespace in the `containerd-namespace` header,
//! which is how containerd scopes all of its objects.

use std::{path::Path, sync::OnceLock, time::Duration};

use anyhow::{Context, Result};
use containerd_client::{
    services::v1::{
        containers_client::ContainersClient,
        introspection_client::IntrospectionClient,
        sandbox::{
            controller_client::ControllerClient, store_client::StoreClient, ControllerCreateRequest,
            ControllerShutdownRequest, ControllerStartRequest, ControllerStartResponse, ControllerStatusRequest,
            ControllerStatusResponse, ControllerStopRequest, StoreCreateRequest, StoreDeleteRequest, StoreGetRequest,
            StoreListRequest,
        },
        version_client::VersionClient,
        Container, ListContainersRequest, PluginInfoRequest,
    },
    tonic::{
        metadata::MetadataValue,
        transport::{Channel, Endpoint, Uri},
        Code, Request,
    },
    types::{RuntimeInfo, RuntimeRequest, Sandbox},
};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::UnixStream;

use crate::error::Unreachable;
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

/// How long one containerd or CRI call may take, connection included (`--call-timeout`).
/// One value per process, set by `main` before the first call; the long work (a checkpoint, a
/// restore) runs in the shim under its own deadline, so every call here is short.
static CALL_TIMEOUT: OnceLock<Duration> = OnceLock::new();
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn set_call_timeout(timeout: Duration) {
    let _ = CALL_TIMEOUT.set(timeout);
}

pub fn call_timeout() -> Duration {
    CALL_TIMEOUT.get().copied().unwrap_or(DEFAULT_CALL_TIMEOUT)
}

/// The deadline of the calls that do a pod's real work through the CRI (RunPodSandbox, and
/// StartContainer, which runs CRIU's restore): the operation's `--timeout`, never less than the
/// call timeout. Connecting still has to happen within the call timeout.
static WORK_TIMEOUT: OnceLock<Duration> = OnceLock::new();

pub fn set_work_timeout(timeout: Duration) {
    let _ = WORK_TIMEOUT.set(timeout);
}

pub fn work_timeout() -> Duration {
    WORK_TIMEOUT.get().copied().unwrap_or(DEFAULT_CALL_TIMEOUT).max(call_timeout())
}

/// Opens a gRPC channel over a unix socket, with the call timeout on connecting (a socket that
/// accepts and never answers the HTTP/2 handshake included) and on every request made on it.
/// tonic needs a URI; the connector ignores it.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    unix_channel_with(socket, call_timeout()).await
}

/// [`unix_channel`] whose requests may take `request_timeout` (connecting: the call timeout).
pub async fn unix_channel_with(socket: &Path, request_timeout: Duration) -> Result<Channel> {
    let timeout = call_timeout();
    let path = socket.to_path_buf();
    let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(timeout).timeout(request_timeout);
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    }));
    let unreachable = |reason: String| Unreachable { path: socket.display().to_string(), reason };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => {
            let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
            Err(unreachable(reason).into())
        }
        Err(_) => Err(unreachable(format!("no answer within {}", humantime(timeout))).into()),
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd> {
        let channel = unix_channel(socket).await?;
        let header =
            namespace.parse().with_context(|| format!("namespace {namespace:?} is not a valid header value"))?;
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
        let req =
            ControllerStatusRequest { sandbox_id: id.to_string(), verbose: false, sandboxer: sandboxer.to_string() };
        let resp = self.controller().status(self.req(req)).await.with_context(|| format!("status of sandbox {id}"))?;
        Ok(resp.into_inner())
    }

    pub async fn controller_stop(&self, id: &str, sandboxer: &str) -> Result<()> {
        let req =
            ControllerStopRequest { sandbox_id: id.to_string(), timeout_secs: 0, sandboxer: sandboxer.to_string() };
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

    /// containerd's version and commit.
    pub async fn version(&self) -> Result<(String, String)> {
        let resp = VersionClient::new(self.channel.clone()).version(()).await.context("containerd Version")?;
        let v = resp.into_inner();
        Ok((v.version, v.revision))
    }

    /// What a runtime's shim answers to `-info`, asked through containerd (so it is the shim
    /// binary containerd itself would start, found on containerd's PATH).
    pub async fn runtime_info(&self, runtime: &str) -> Result<RuntimeInfo> {
        let options = Any {
            type_url: "containerd.types.RuntimeRequest".into(),
            value: RuntimeRequest { runtime_path: runtime.into(), options: None }.encode_to_vec(),
        };
        let req =
            PluginInfoRequest { r#type: "io.containerd.runtime.v2".into(), id: "task".into(), options: Some(options) };
        let resp = IntrospectionClient::new(self.channel.clone())
            .plugin_info(self.req(req))
            .await
            .with_context(|| format!("containerd PluginInfo of runtime {runtime}"))?;
        let extra =
            resp.into_inner().extra.with_context(|| format!("containerd returned no runtime info for {runtime}"))?;
        RuntimeInfo::decode(extra.value.as_slice()).context("decode RuntimeInfo")
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
