//! Issue 17 item 5: a pod checkpoint leaves a pod-level event on containerd's event bus and
//! Prometheus metrics in the node's textfile directory (`[metrics] textfile_dir`, which the
//! harness points into the run), and the metrics file goes with the pod.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use containerd_client::services::v1::{events_client::EventsClient, PublishRequest, SubscribeRequest};
use containerd_client::tonic::Request;
use podcr_tests::{images, pods, wait_for, Containerd, Runtime, CRI_NAMESPACE};
use prost::Message;

const T: Duration = Duration::from_secs(120);

/// The fields of podcr's `podcr.events.v1.PodOperation` this test reads (protos/proto/events.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct PodOperation {
    #[prost(string, tag = "1")]
    sandbox_id: String,
    #[prost(string, tag = "2")]
    operation: String,
    #[prost(bool, tag = "3")]
    succeeded: bool,
    #[prost(string, tag = "5")]
    path: String,
    #[prost(uint64, tag = "8")]
    bytes: u64,
    #[prost(uint32, tag = "9")]
    containers: u32,
}

#[test]
fn a_pod_checkpoint_publishes_an_event_and_writes_metrics() -> Result<()> {
    let cd = Containerd::shared()?;
    let image = cd.import(CRI_NAMESPACE, &images::BUSYBOX)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut rs = rt.block_on(cd.cri_runtime())?;
    let name = format!("{}-observed", cd.prefix());
    let pod = rt.block_on(pods::run_pod(cd, &mut rs, Runtime::Podcr, &name, &image, &[("c", &["counter"])]))?;
    pods::wait_count(&pod.log("c"), 1, T)?;

    // Subscribed before the checkpoint, so its event cannot be missed. In a task of its own:
    // containerd answers a Subscribe only with its first event.
    let socket = cd.socket().to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    rt.spawn(async move {
        let run = async {
            let channel = containerd_client::connect(socket).await?;
            let req = SubscribeRequest { filters: vec!["topic~=\"^/podcr/\"".into()] };
            let mut stream = EventsClient::new(channel).subscribe(req).await?.into_inner();
            while let Some(envelope) = stream.message().await? {
                if tx.send(envelope).is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        };
        if let Err(e) = run.await {
            eprintln!("event subscription: {e:#}");
        }
    });
    // containerd does not acknowledge a subscription: publish probes until one comes back, so
    // the checkpoint's event cannot be published before anyone listens.
    let socket = cd.socket().to_path_buf();
    rt.block_on(async {
        let channel = containerd_client::connect(socket).await?;
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let mut req = Request::new(PublishRequest {
                topic: "/podcr/test-probe".into(),
                event: Some(prost_types::Any { type_url: "podcr.test.Probe".into(), value: vec![] }),
            });
            req.metadata_mut().insert("containerd-namespace", CRI_NAMESPACE.parse()?);
            EventsClient::new(channel.clone()).publish(req).await?;
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                ensure!(e.topic == "/podcr/test-probe", "an unexpected event first: {}", e.topic);
                break;
            }
            ensure!(tokio::time::Instant::now() < deadline, "the event subscription never came up");
        }
        // Probes published before the subscription answered may still be in flight.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}
        anyhow::Ok(())
    })?;

    let dir = tempfile::tempdir()?;
    let output = dir.path().join("ckpt");
    let out = pods::podcr(cd, ["checkpoint", &format!("podcr-test/{name}"), "-o", output.to_str().context("path")?])?;
    ensure!(out.success(), "{out:?}");

    let envelope = rt
        .block_on(async { tokio::time::timeout(T, rx.recv()).await })
        .context("no /podcr/ event within the wait")?
        .context("the event stream ended")?;
    ensure!(envelope.topic == "/podcr/pod/checkpoint", "topic {}", envelope.topic);
    ensure!(envelope.namespace == CRI_NAMESPACE, "namespace {}", envelope.namespace);
    let any = envelope.event.context("an event without payload")?;
    ensure!(any.type_url.ends_with("podcr.events.v1.PodOperation"), "type {}", any.type_url);
    let ev = PodOperation::decode(any.value.as_slice())?;
    ensure!(ev.sandbox_id == pod.id && ev.operation == "checkpoint" && ev.succeeded, "{ev:?}");
    ensure!(ev.path == output.display().to_string() && ev.containers == 1 && ev.bytes > 0, "{ev:?}");

    let file = cd.dir().join(podcr_tests::node_config::METRICS_DIR).join(format!("podcr-{}.prom", pod.id));
    let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    let labels = format!("sandbox_id=\"{}\"", pod.id);
    ensure!(text.contains(&format!("podcr_pod_checkpoints_total{{{labels},result=\"success\"}} 1\n")), "{text}");
    let bytes_line = text.lines().find(|l| l.starts_with("podcr_pod_checkpoint_bytes{")).context("no bytes gauge")?;
    ensure!(bytes_line.ends_with(&format!(" {}", ev.bytes)), "{bytes_line} vs the event's {}", ev.bytes);
    ensure!(text.contains("# TYPE podcr_pod_checkpoint_freeze_window_seconds gauge"), "{text}");

    rt.block_on(pods::remove_pod(&mut rs, &pod.id))?;
    wait_for("the pod's metrics file to go with its shim", T, || Ok((!file.exists()).then_some(())))?;
    Ok(())
}
