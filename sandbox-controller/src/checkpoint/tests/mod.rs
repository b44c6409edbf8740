//! Controller-level checkpoint and restore tests over the fake backend: the ordering rules
//! (freeze before any dump, thaw on every path, kill while frozen) and the CRI contract (errors
//! leave `output_path` empty, bad requests touch nothing).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::orchestrate::{ContainerSelection, PodCheckpointRequest};
use crate::{
    archive::{self, Limits},
    backend::PodSpec,
    error::Error,
    fake::FakeBackend,
    restore::{PodRestoreRequest, RestoreSelection},
    SandboxController,
};

/// A `[signing]` whose key and trusted directory live in `dir` (made on first use).
fn signing(dir: &std::path::Path) -> crate::node_config::SigningConfig {
    let keys = dir.join("keys");
    let trusted = dir.join("trusted.d");
    if !keys.exists() {
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&trusted).unwrap();
        let (_, _, public) = archive::signing::write_new_keypair(&keys).unwrap();
        std::fs::copy(public, trusted.join("node.pub")).unwrap();
    }
    crate::node_config::SigningConfig {
        key: keys.join(archive::signing::KEY_FILE),
        trusted_dir: trusted,
        allow_unsigned: false,
    }
}

/// What a restore on the test node trusts: checkpoints made by [`ready_pod`]'s controllers.
fn trust() -> archive::TrustPolicy {
    archive::TrustPolicy::from_config(&signing(&keys_dir())).unwrap()
}

/// One key pair for the whole test binary, as a node has one.
fn keys_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_path_buf();
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        signing(&dir);
    });
    dir
}

async fn ready_pod(names: &[&str]) -> (Arc<FakeBackend>, SandboxController<FakeBackend>, tempfile::TempDir) {
    let fake = Arc::new(FakeBackend::with_containers(names));
    let ctl = SandboxController::new(fake.clone()).with_signing(signing(&keys_dir()));
    let bundle = tempfile::tempdir().unwrap();
    let spec = PodSpec {
        id: "pod1".into(),
        bundle: bundle.path().to_path_buf(),
        name: "web".into(),
        namespace: "default".into(),
        raw_config: Some(serde_json::json!({"metadata": {"name": "web", "namespace": "default"}})),
        ..Default::default()
    };
    ctl.create(spec).await.unwrap();
    ctl.start("pod1").await.unwrap();
    // The fake's containers need real bundles with a config.json for spec.dump.
    for c in fake.containers.lock().unwrap().iter_mut() {
        let dir = bundle.path().join(&c.id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"ociVersion":"1.2.0","annotations":{}}"#).unwrap();
        c.bundle = dir;
    }
    (fake, ctl, bundle)
}

/// A request naming every container of the fake pod, as the CRI names its `container_ids`.
fn request(fake: &FakeBackend, out: &std::path::Path, options: &[(&str, &str)]) -> PodCheckpointRequest {
    PodCheckpointRequest {
        sandbox_id: "pod1".into(),
        containers: fake
            .containers
            .lock()
            .unwrap()
            .iter()
            .map(|c| ContainerSelection { id: c.id.clone(), ..Default::default() })
            .collect(),
        output_path: out.to_path_buf(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn index_of(calls: &[String], step: &str) -> usize {
    calls.iter().position(|c| c == step).unwrap_or_else(|| panic!("{step} not in {calls:?}"))
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn leave_running_checkpoint_freezes_once_dumps_all_and_thaws() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    let out = tempfile::tempdir().unwrap();
    let stats = ctl
        .checkpoint(request(&fake, out.path(), &[("leave-running", "true"), ("compression", "zstd")]))
        .await
        .unwrap();

    let calls = fake.calls();
    let freeze = index_of(&calls, "freeze");
    let thaw = index_of(&calls, "thaw");
    for step in ["dump:id-app", "dump:id-sidecar", "capture:id-app", "capture:id-sidecar"] {
        let i = index_of(&calls, step);
        assert!(freeze < i && i < thaw, "{step} outside the frozen window: {calls:?}");
    }
    assert_eq!(calls.iter().filter(|c| *c == "freeze").count(), 1, "one freeze for the whole pod");
    assert!(!calls.iter().any(|c| c.starts_with("kill:")), "leave-running must not stop containers");
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert_eq!(stats.containers.len(), 2);
    assert!(stats.total_bytes > 0);

    assert_eq!(
        dir_entries(out.path()),
        ["app.tar.zst", "pod.dump", "pod.options", "podcr.manifest.json", "podcr.manifest.sig", "sidecar.tar.zst"]
    );
    let ckpt = archive::verify_pod_dir(out.path(), &Limits::default(), &trust()).unwrap();
    assert!(ckpt.signer.is_some(), "the node's key must sign the checkpoint");
    assert_eq!(ckpt.manifest.containers.len(), 2);
    assert_eq!(ckpt.pod_config["metadata"]["name"], "web");
}

#[tokio::test]
async fn the_default_checkpoint_leaves_the_pod_running() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    let out = tempfile::tempdir().unwrap();
    ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap();
    let calls = fake.calls();
    assert!(!calls.iter().any(|c| c.starts_with("kill:")), "the CRI's empty options must not stop the pod: {calls:?}");
    assert!(fake.frozen.lock().unwrap().is_empty());
    archive::verify_pod_dir(out.path(), &Limits::default(), &trust()).unwrap();
}

#[tokio::test]
async fn leave_running_false_stops_containers_while_still_frozen() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    let out = tempfile::tempdir().unwrap();
    ctl.checkpoint(request(&fake, out.path(), &[("leave-running", "false")])).await.unwrap();
    let calls = fake.calls();
    assert!(index_of(&calls, "dump:id-app") < index_of(&calls, "kill:id-app"));
    assert!(index_of(&calls, "kill:id-app") < index_of(&calls, "thaw"), "kill must be queued before thaw: {calls:?}");
}

#[tokio::test]
async fn one_failed_dump_thaws_everything_and_leaves_output_empty() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    fake.fail_at("dump:id-sidecar");
    let out = tempfile::tempdir().unwrap();
    let err = ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap_err();
    assert!(err.to_string().contains("sidecar"), "error must name the container: {err}");
    let calls = fake.calls();
    assert!(calls.contains(&"thaw".to_string()));
    assert!(!calls.iter().any(|c| c.starts_with("kill:")), "a failed checkpoint must not stop anything");
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(dir_entries(out.path()).is_empty(), "partial files left: {:?}", dir_entries(out.path()));
}

/// A deadline that passes while the pod is frozen and dumped never abandons the dump (that
/// would leave CRIU running on a thawed pod): the dump ends, then the pod is thawed, the output
/// removed, and the answer is a late DeadlineExceeded.
async fn deadline_during_dump_lets_the_dump_finish_then_thaws_and_cleans_up(prepared: bool) {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    *fake.prepared.lock().unwrap() = prepared;
    *fake.dump_delay.lock().unwrap() = Duration::from_millis(400);
    let out = tempfile::tempdir().unwrap();
    let mut req = request(&fake, out.path(), &[("leave-running", "false")]);
    req.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(100));
    let started = std::time::Instant::now();
    let err = ctl.checkpoint(req).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(400), "answered before the dump ended");
    let calls = fake.calls();
    let thaw = index_of(&calls, "thaw");
    for id in ["id-app", "id-sidecar"] {
        assert!(index_of(&calls, &format!("dump:{id}")) < thaw, "thawed before {id}'s dump ended: {calls:?}");
    }
    assert!(!calls.iter().any(|c| c.starts_with("kill:")), "a late checkpoint must not stop the pod: {calls:?}");
    assert!(fake.frozen.lock().unwrap().is_empty());
    assert!(dir_entries(out.path()).is_empty(), "{:?}", dir_entries(out.path()));
    // The pod is free again: a second checkpoint runs.
    let again = tempfile::tempdir().unwrap();
    *fake.dump_delay.lock().unwrap() = Duration::ZERO;
    ctl.checkpoint(request(&fake, again.path(), &[])).await.unwrap();
}

#[tokio::test]
async fn deadline_during_dump_behind_the_barrier() {
    deadline_during_dump_lets_the_dump_finish_then_thaws_and_cleans_up(true).await;
}

#[tokio::test]
async fn deadline_during_dump_frozen_first() {
    deadline_during_dump_lets_the_dump_finish_then_thaws_and_cleans_up(false).await;
}

#[tokio::test]
async fn too_little_time_for_the_estimated_dump_freezes_nothing() {
    for prepared in [true, false] {
        let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
        *fake.prepared.lock().unwrap() = prepared;
        *fake.estimate.lock().unwrap() = Duration::from_secs(60);
        let out = tempfile::tempdir().unwrap();
        let err = ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap_err();
        assert!(matches!(&err, Error::DeadlineExceeded(m) if m.contains("nothing was frozen")), "{err}");
        let calls = fake.calls();
        assert!(!calls.iter().any(|c| c == "freeze" || c.starts_with("dump:") || c.starts_with("kill:")), "{calls:?}");
        assert!(dir_entries(out.path()).is_empty());
        // Time enough for the estimate: the same pod checkpoints.
        *fake.estimate.lock().unwrap() = Duration::from_secs(1);
        ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap();
    }
}

#[tokio::test]
async fn the_containers_are_exactly_the_requested_running_ones() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    let out = tempfile::tempdir().unwrap();
    let mut none = request(&fake, out.path(), &[]);
    none.containers.clear();
    assert!(matches!(ctl.checkpoint(none).await, Err(Error::InvalidArgument(_))));
    let mut twice = request(&fake, out.path(), &[]);
    twice.containers.push(twice.containers[0].clone());
    assert!(matches!(ctl.checkpoint(twice).await, Err(Error::InvalidArgument(_))));

    let mut one = request(&fake, out.path(), &[]);
    one.containers.retain(|c| c.id == "id-app");
    let stats = ctl.checkpoint(one).await.unwrap();
    assert_eq!(stats.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app"]);
    assert!(!fake.calls().iter().any(|c| c.ends_with("id-sidecar")), "{:?}", fake.calls());

    fake.containers.lock().unwrap()[1].running = false;
    let out2 = tempfile::tempdir().unwrap();
    let err = ctl.checkpoint(request(&fake, out2.path(), &[])).await.unwrap_err();
    assert!(matches!(&err, Error::FailedPrecondition(m) if m.contains("sidecar")), "{err}");
    assert!(dir_entries(out2.path()).is_empty());
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_frozen() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    let out = tempfile::tempdir().unwrap();

    let mut no_deadline = request(&fake, out.path(), &[]);
    no_deadline.deadline = None;
    assert!(matches!(ctl.checkpoint(no_deadline).await, Err(Error::InvalidArgument(_))));
    assert!(matches!(
        ctl.checkpoint(request(&fake, out.path(), &[("leaveRunning", "true")])).await,
        Err(Error::InvalidArgument(_))
    ));

    std::fs::write(out.path().join("keep-me"), b"user data").unwrap();
    assert!(matches!(ctl.checkpoint(request(&fake, out.path(), &[])).await, Err(Error::InvalidArgument(_))));
    assert_eq!(std::fs::read(out.path().join("keep-me")).unwrap(), b"user data");

    let missing = out.path().join("does-not-exist");
    assert!(ctl.checkpoint(request(&fake, &missing, &[])).await.is_err());
    assert!(!missing.exists());

    let mut unknown = request(&fake, tempfile::tempdir().unwrap().path(), &[]);
    unknown.containers = vec![ContainerSelection { id: "nope".into(), ..Default::default() }];
    assert!(ctl.checkpoint(unknown).await.is_err());

    assert!(!fake.calls().iter().any(|c| c == "freeze"), "nothing may be frozen: {:?}", fake.calls());
}

#[tokio::test]
async fn a_second_checkpoint_of_the_same_pod_is_refused_while_one_runs() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    *fake.dump_delay.lock().unwrap() = Duration::from_millis(300);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = tokio::join!(ctl.checkpoint(request(&fake, a.path(), &[("leave-running", "true")])), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctl.checkpoint(request(&fake, b.path(), &[("leave-running", "true")])).await
    });
    assert!(first.is_ok());
    assert!(matches!(second, Err(Error::FailedPrecondition(_))), "{second:?}");
    assert!(dir_entries(b.path()).is_empty());
}

#[tokio::test]
async fn restore_stages_each_container_from_a_verified_checkpoint() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    let out = tempfile::tempdir().unwrap();
    ctl.checkpoint(request(&fake, out.path(), &[("leave-running", "true"), ("tcp-established", "true")]))
        .await
        .unwrap();

    let (fake2, ctl2, _b2) = ready_pod(&[]).await;
    let restored = ctl2.restore(restore_app_from(out.path())).await.unwrap();
    assert_eq!(restored[0].original_id, "id-app");
    let staged = fake2.staged.lock().unwrap();
    let stage = staged.get("new-app").unwrap();
    assert!(stage.tcp_established, "restore must use the dump's TCP mode");
    assert!(stage.image_dir.join("pages-1.img").is_file());
    assert_eq!(std::fs::read_to_string(stage.image_dir.join("pages-1.img")).unwrap(), "memory of id-app");
    assert_eq!(stage.deleted, vec!["/etc/motd".to_string()]);
}

/// Restores the checkpoint's `app` into a new container `new-app` of pod1, with 30 s to go.
fn restore_app_from(checkpoint: &std::path::Path) -> PodRestoreRequest {
    PodRestoreRequest {
        sandbox_id: "pod1".into(),
        checkpoint_path: checkpoint.to_path_buf(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        containers: vec![RestoreSelection { id: "new-app".into(), name: "app".into(), ..Default::default() }],
        ..Default::default()
    }
}

/// The backend's identity is what the checkpoint records, and a backend of another runtime
/// refuses to restore it before anything is staged.
#[tokio::test]
async fn a_checkpoint_records_its_backend_and_restores_only_on_that_runtime() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    let out = tempfile::tempdir().unwrap();
    ctl.checkpoint(request(&fake, out.path(), &[("leave-running", "true")])).await.unwrap();
    let ckpt = archive::open_pod_dir(out.path(), &Limits::default(), &trust()).unwrap();
    assert_eq!(ckpt.manifest.runtime, "fake");
    let annotation = |k: &str| ckpt.options.annotations.get(k).cloned().unwrap_or_default();
    assert_eq!(annotation(archive::annotations::RUNTIME_NAME), "fake");
    assert_eq!(annotation(archive::annotations::RUNTIME_VERSION), "1.0");
    assert_eq!(annotation(archive::annotations::CRIU_VERSION), "2.0");

    let (fake2, ctl2, _b2) = ready_pod(&[]).await;
    *fake2.runtime.lock().unwrap() = Some("runc".into());
    let err = ctl2.restore(restore_app_from(out.path())).await.unwrap_err();
    assert!(matches!(&err, Error::FailedPrecondition(m) if m.contains("\"fake\"")), "{err}");
    assert!(fake2.staged.lock().unwrap().is_empty());
}

#[tokio::test]
async fn restore_holds_the_checkpoint_to_the_callers_configs() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(&fake, out.path(), &[("leave-running", "true")]);
    let privileged = serde_json::json!({"command": ["/app"], "linux": {"security_context": {"privileged": true}}});
    req.containers[0].config = Some(privileged.clone());
    ctl.checkpoint(req).await.unwrap();

    let (fake2, ctl2, bundle2) = ready_pod(&[]).await;
    let restore = |config: serde_json::Value| PodRestoreRequest {
        sandbox_id: "pod1".into(),
        checkpoint_path: out.path().to_path_buf(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        containers: vec![RestoreSelection {
            id: "new-app".into(),
            name: "app".into(),
            config: Some(config),
            spec: None,
        }],
        ..Default::default()
    };
    for (config, field) in [
        (serde_json::json!({"command": ["/app"]}), "privileged"),
        (serde_json::json!({"command": ["/other"], "linux": {"security_context": {"privileged": true}}}), "command"),
    ] {
        let err = ctl2.restore(restore(config)).await.unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains(&format!(": {field}:"))), "{err}");
        assert!(fake2.staged.lock().unwrap().is_empty(), "a refused restore staged something");
        let staging = bundle2.path().join(crate::restore::RESTORE_DIR);
        assert!(!staging.join("app").exists(), "a refused restore left its extraction");
    }
    ctl2.restore(restore(privileged)).await.unwrap();
    assert!(fake2.staged.lock().unwrap().contains_key("new-app"));
}

#[tokio::test]
async fn a_tampered_checkpoint_is_refused_and_nothing_is_staged() {
    let (fake, ctl, _b) = ready_pod(&["app"]).await;
    let out = tempfile::tempdir().unwrap();
    ctl.checkpoint(request(&fake, out.path(), &[("leave-running", "true")])).await.unwrap();
    let archive = out.path().join("app.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();

    let (fake2, ctl2, bundle2) = ready_pod(&[]).await;
    let err = ctl2.restore(restore_app_from(out.path())).await.unwrap_err();
    assert!(matches!(err, Error::Archive(_)), "{err}");
    assert!(fake2.staged.lock().unwrap().is_empty());
    assert!(!bundle2.path().join(crate::restore::RESTORE_DIR).exists(), "staging must be removed");
}

#[tokio::test]
async fn prepared_dumps_are_all_ready_before_the_pod_is_frozen() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    *fake.prepared.lock().unwrap() = true;
    let out = tempfile::tempdir().unwrap();
    let stats = ctl.checkpoint(request(&fake, out.path(), &[("leave-running", "true")])).await.unwrap();
    let calls = fake.calls();
    let freeze = index_of(&calls, "freeze");
    for id in ["id-app", "id-sidecar"] {
        assert!(index_of(&calls, &format!("ready:{id}")) < freeze, "{id} not ready before the freeze: {calls:?}");
        let dump = index_of(&calls, &format!("dump:{id}"));
        let capture = index_of(&calls, &format!("capture:{id}"));
        assert!(freeze < dump && freeze < capture, "{id} dumped or captured before the freeze: {calls:?}");
        assert!(dump < index_of(&calls, "thaw"));
    }
    assert_eq!(stats.containers.len(), 2);
    archive::verify_pod_dir(out.path(), &Limits::default(), &trust()).unwrap();
}

#[tokio::test]
async fn a_dump_failing_before_the_barrier_freezes_nothing_and_leaves_nothing() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    *fake.prepared.lock().unwrap() = true;
    fake.fail_at("ready:id-sidecar");
    let out = tempfile::tempdir().unwrap();
    let err = ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap_err();
    assert!(err.to_string().contains("sidecar"), "{err}");
    let calls = fake.calls();
    assert!(
        !calls.iter().any(|c| c == "freeze" || c.starts_with("kill:")),
        "nothing may be frozen or stopped: {calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("dump:") || c.starts_with("capture:")), "{calls:?}");
    assert!(dir_entries(out.path()).is_empty());
}

#[tokio::test]
async fn a_deadline_before_every_dump_is_ready_says_so_and_freezes_nothing() {
    let (fake, ctl, _b) = ready_pod(&["app", "sidecar"]).await;
    *fake.prepared.lock().unwrap() = true;
    let out = tempfile::tempdir().unwrap();
    let mut req = request(&fake, out.path(), &[]);
    req.deadline = Some(tokio::time::Instant::now());
    let err = ctl.checkpoint(req).await.unwrap_err();
    // Not the aborted dumps' own errors: the reason is the deadline.
    assert!(matches!(&err, Error::DeadlineExceeded(m) if m.contains("nothing was frozen")), "{err}");
    assert!(!fake.calls().iter().any(|c| c == "freeze"), "{:?}", fake.calls());
    assert!(dir_entries(out.path()).is_empty());
}

#[tokio::test]
async fn a_node_without_its_key_refuses_before_freezing() {
    let (fake, ctl, _bundle) = ready_pod(&["app"]).await;
    let nokey = tempfile::tempdir().unwrap();
    let ctl = ctl.with_signing(crate::node_config::SigningConfig {
        key: nokey.path().join("signing.key"),
        trusted_dir: nokey.path().join("trusted.d"),
        allow_unsigned: false,
    });
    let out = tempfile::tempdir().unwrap();
    let err = ctl.checkpoint(request(&fake, out.path(), &[])).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(ref m) if m.contains("podcr key generate")), "{err}");
    assert!(!fake.calls().iter().any(|c| c == "freeze"), "nothing may be frozen without a key");
    assert!(dir_entries(out.path()).is_empty());
}

/// A backend that only runs pods: the core trait and three empty capability impls. A checkpoint
/// of its pod is refused as Unimplemented and leaves nothing behind; the pod keeps running.
mod minimal {
    use async_trait::async_trait;
    use chrono::Utc;
    use tokio::sync::watch;

    use super::*;
    use crate::backend::{
        BackendIdentity, ContainerInfo, PodAnchor, PodBackend, PodCheckpoint, PodRestore, PreparedDumps,
    };

    struct RunOnly;

    #[async_trait]
    impl PodBackend for RunOnly {
        async fn create_pod(&self, _spec: &PodSpec) -> crate::Result<()> {
            Ok(())
        }
        async fn start_pod(&self, _spec: &PodSpec) -> crate::Result<PodAnchor> {
            // The sender is dropped: the anchor never reports an exit.
            Ok(PodAnchor { pid: 1, exit: watch::channel(None).1 })
        }
        async fn stop_pod(&self, _spec: &PodSpec, _timeout: Duration) -> crate::Result<()> {
            Ok(())
        }
        async fn destroy_pod(&self, _spec: &PodSpec) -> crate::Result<()> {
            Ok(())
        }
        async fn containers(&self) -> crate::Result<Vec<ContainerInfo>> {
            Ok(vec![ContainerInfo {
                id: "c1".into(),
                name: "app".into(),
                pid: 2,
                running: true,
                bundle: std::env::temp_dir(),
                image: None,
                created_at: Utc::now(),
            }])
        }
        async fn identity(&self) -> BackendIdentity {
            BackendIdentity { runtime: "run-only".into(), ..Default::default() }
        }
    }
    impl PodCheckpoint for RunOnly {}
    impl PreparedDumps for RunOnly {}
    impl PodRestore for RunOnly {}

    #[tokio::test]
    async fn a_backend_without_checkpoint_refuses_it_and_leaves_nothing() {
        let ctl = SandboxController::new(Arc::new(RunOnly)).with_signing(signing(&keys_dir()));
        let bundle = tempfile::tempdir().unwrap();
        ctl.create(PodSpec { id: "pod1".into(), bundle: bundle.path().to_path_buf(), ..Default::default() })
            .await
            .unwrap();
        ctl.start("pod1").await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let req = PodCheckpointRequest {
            sandbox_id: "pod1".into(),
            containers: vec![ContainerSelection { id: "c1".into(), ..Default::default() }],
            output_path: out.path().to_path_buf(),
            deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
            ..Default::default()
        };
        let err = ctl.checkpoint(req).await.unwrap_err();
        assert!(matches!(&err, Error::Unimplemented(m) if m.contains("freeze")), "{err}");
        assert!(dir_entries(out.path()).is_empty(), "{:?}", dir_entries(out.path()));
        let restore = ctl
            .restore(PodRestoreRequest {
                sandbox_id: "pod1".into(),
                checkpoint_path: out.path().to_path_buf(),
                containers: vec![RestoreSelection { id: "c2".into(), name: "app".into(), ..Default::default() }],
                ..Default::default()
            })
            .await;
        assert!(restore.is_err(), "a restore from nothing must fail");
    }
}
