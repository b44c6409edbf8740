//! Task events to containerd. RPC handlers only push onto an unbounded queue; one background task
//! forwards to containerd's ttrpc event service through `RemotePublisher` (which retries), so a
//! slow or restarting containerd never blocks an RPC.

use containerd_shim::{asynchronous::publisher::RemotePublisher, Context};
use protobuf::MessageDyn;
use tokio::sync::mpsc;
use tracing::warn;

type Item = (&'static str, Box<dyn MessageDyn + Send>);

/// Cheap-to-clone handle to the event queue.
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::UnboundedSender<Item>>,
}

impl EventSink {
    /// Forwards queued events to containerd at `ttrpc_address` in `namespace`.
    pub async fn remote(ttrpc_address: &str, namespace: &str) -> crate::error::Result<Self> {
        let publisher = RemotePublisher::new(ttrpc_address).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            while let Some((topic, ev)) = rx.recv().await {
                let ev: Box<dyn MessageDyn> = ev;
                if let Err(e) = publisher.publish(Context::default(), topic, &namespace, ev).await {
                    warn!(topic, error = %e, "publish event");
                }
            }
        });
        Ok(Self { tx: Some(tx) })
    }

    /// A sink that drops everything (no containerd to talk to).
    pub fn discard() -> Self {
        Self { tx: None }
    }

    /// A sink whose events the caller reads (unit tests).
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx: Some(tx) }, rx)
    }

    pub fn send(&self, topic: &'static str, ev: impl MessageDyn) {
        if let Some(tx) = &self.tx {
            if tx.send((topic, Box::new(ev))).is_err() {
                warn!(topic, "event queue closed");
            }
        }
    }
}
