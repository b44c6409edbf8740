//! Task events to containerd. RPC handlers only push onto a bounded queue; one background task
//! forwards to containerd's ttrpc event service through `RemotePublisher` (which retries), so a
//! slow or restarting containerd never blocks an RPC. A containerd that stops reading altogether
//! cannot grow the shim without bound either: past [`QUEUE_SIZE`] events are dropped with an
//! error in the log, as rust-extensions' own publisher gives up on a full queue.

use containerd_shim::{asynchronous::publisher::RemotePublisher, Context};
use protobuf::MessageDyn;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{error, warn};

pub type Item = (&'static str, Box<dyn MessageDyn + Send>);

/// Events waiting for containerd; rust-extensions' `RemotePublisher` queue holds as many.
pub const QUEUE_SIZE: usize = 1024;

/// Cheap-to-clone handle to the event queue.
#[derive(Clone)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Item>>,
}

impl EventSink {
    /// Forwards queued events to containerd at `ttrpc_address` in `namespace`.
    pub async fn remote(ttrpc_address: &str, namespace: &str) -> crate::error::Result<Self> {
        let publisher = RemotePublisher::new(ttrpc_address).await?;
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE_SIZE);
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
    pub fn channel() -> (Self, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(QUEUE_SIZE);
        (Self { tx: Some(tx) }, rx)
    }

    /// Queues `ev` without waiting; see the module docs for a full queue.
    pub fn send(&self, topic: &'static str, ev: impl MessageDyn) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send((topic, Box::new(ev))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                error!(topic, queued = QUEUE_SIZE, "containerd is not taking events; dropped one")
            }
            Err(TrySendError::Closed(_)) => warn!(topic, "event queue closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::events::task::TaskStart;

    use super::*;

    /// Nobody reads: sending never blocks, and the queue stops at its bound, keeping the oldest.
    #[test]
    fn a_stalled_reader_cannot_grow_the_queue() {
        let (sink, mut rx) = EventSink::channel();
        for pid in 0..(QUEUE_SIZE as u32 + 10) {
            sink.send("/tasks/start", TaskStart { pid, ..Default::default() });
        }
        let mut got = Vec::new();
        while let Ok((_, ev)) = rx.try_recv() {
            let ev: &dyn MessageDyn = &*ev;
            got.push(ev.downcast_ref::<TaskStart>().expect("a TaskStart").pid);
        }
        assert_eq!(got.len(), QUEUE_SIZE);
        assert_eq!(got.first(), Some(&0));
        assert_eq!(got.last(), Some(&(QUEUE_SIZE as u32 - 1)));
    }
}
