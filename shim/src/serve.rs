//! The shim server: one ttrpc server on the socket `start` chose, serving the Task service
//! (as v3 and v2) and the pod services, until the store's exit switch fires.

use std::{collections::HashMap, path::Path, sync::Arc};

use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use tracing::{info, warn};
use ttrpc::r#async::Server;

use crate::{
    error::{Error, Result},
    events::EventSink,
    reaper,
    task::{runc::default_root, service::TaskService, Containers},
};

const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";

pub async fn run(flags: &Flags) -> Result<()> {
    crate::logging::init(flags.debug);
    reaper::start()?;
    if flags.socket.is_empty() {
        return Err(Error::invalid_argument("serve needs -socket"));
    }
    let path = flags.socket.trim_start_matches("unix://").to_string();
    if let Some(dir) = Path::new(&path).parent() {
        // Root-only, as containerd's own shims make it: whoever can connect drives the pod.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .recursive(true)
            .create(dir)
            .map_err(Error::io("create socket dir"))?;
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(Error::io(format!("bind {path}")))?;
    // bind() honours the umask (usually leaving 0755); connecting needs write permission, so
    // 0600 keeps everyone but root off the shim's API.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(Error::io(format!("chmod {path}")))?;

    let events = match std::env::var("TTRPC_ADDRESS") {
        Ok(addr) => EventSink::remote(&addr, &flags.namespace).await?,
        Err(_) => {
            warn!("TTRPC_ADDRESS not set; events are dropped");
            EventSink::discard()
        }
    };
    let store = Containers::new(&flags.namespace, default_root(&flags.namespace), events).await?;
    let mut server = Server::new().add_listener(listener.into()).register_service(services(&store, &flags.address));
    server.start().await?;
    signal_ready();
    info!(socket = %flags.socket, pid = std::process::id(), "shim serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::io("listen for SIGTERM"))?;
    let token = store.exit_token();
    tokio::select! {
        _ = token.cancelled() => info!("exit requested"),
        _ = term.recv() => info!("SIGTERM"),
    }
    // Unlink first: a `start` for the next container must not find this dying server alive.
    let _ = std::fs::remove_file(&path);
    // Let the reply to the RPC that asked for the exit leave first.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let _ = server.shutdown().await;
    info!("shim exiting");
    Ok(())
}

/// Task under both names (v2 and v3 are the same wire format) plus the pod services.
fn services(store: &Containers, containerd_address: &str) -> HashMap<String, ttrpc::r#async::Service> {
    let task = Arc::new(TaskService { store: store.clone() });
    let mut all = HashMap::new();
    for name in [TASK_V3, TASK_V2] {
        for (_, svc) in create_task(task.clone()) {
            all.insert(name.to_string(), svc);
        }
    }
    all.extend(crate::pod::services(store, containerd_address));
    all
}

/// `start` waits for our stdout to close; point it at /dev/null once we listen.
fn signal_ready() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}
