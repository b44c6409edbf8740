//! Store behaviour that needs no real runc: a shell script stands in for it and records calls.

use std::{os::unix::fs::PermissionsExt, path::Path};

use containerd_shim::asynchronous::io::Stdio;

use super::{lifecycle::CreateArgs, Containers, RestoreArgs, Status};
use crate::events::EventSink;

async fn store(dir: &Path) -> (Containers, tokio::sync::mpsc::Receiver<crate::events::Item>) {
    let fake = dir.join("runc");
    let calls = dir.join("calls");
    std::fs::write(&fake, format!("#!/bin/sh\necho \"$@\" >> {}\nexit 0\n", calls.display())).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (events, rx) = EventSink::channel();
    crate::reaper::start().unwrap();
    (Containers::with_runc("ns", dir.join("root"), fake, events).await.unwrap(), rx)
}

fn bundle(dir: &Path, id: &str) -> std::path::PathBuf {
    let b = dir.join(id);
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("config.json"), r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb"}}"#).unwrap();
    b
}

#[tokio::test]
async fn staged_restore_defers_runc_to_start_and_snapshot_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut events) = store(dir.path()).await;
    s.stage_restore("c1", RestoreArgs { image_path: "/img".into(), tcp_established: true, ..Default::default() });
    let args = CreateArgs {
        id: "c1".into(),
        bundle: bundle(dir.path(), "c1"),
        rootfs: vec![],
        stdio: Stdio::default(),
        checkpoint: None,
        criu_work_path: None,
    };
    assert_eq!(s.create(args).await.unwrap(), 0, "a restore has no pid until Start");
    assert!(!dir.path().join("calls").exists(), "runc create must not run for a restore");
    assert_eq!(s.unstage_restore("c1"), None, "Create consumes the staged restore");
    let snap = s.snapshot("c1").unwrap();
    assert_eq!(snap.status, Status::Created);
    assert_eq!(snap.annotations.get("io.kubernetes.cri.sandbox-id").map(String::as_str), Some("sb"));
    assert_eq!(events.recv().await.unwrap().0, "/tasks/create");

    s.delete("c1", "").await.unwrap();
    assert!(s.list().is_empty());
    assert_eq!(events.recv().await.unwrap().0, "/tasks/delete");
}

#[tokio::test]
async fn shutdown_waits_for_empty_store_and_no_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _events) = store(dir.path()).await;
    assert!(s.may_shutdown());
    s.set_sandboxed(true);
    assert!(!s.may_shutdown());
    s.set_sandboxed(false);
    let token = s.exit_token();
    s.request_exit();
    assert!(token.is_cancelled());
}

#[tokio::test]
async fn pause_records_state_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, mut events) = store(dir.path()).await;
    s.stage_restore("c2", RestoreArgs { image_path: "/img".into(), ..Default::default() });
    let args = CreateArgs {
        id: "c2".into(),
        bundle: bundle(dir.path(), "c2"),
        rootfs: vec![],
        stdio: Stdio::default(),
        checkpoint: None,
        criu_work_path: None,
    };
    s.create(args).await.unwrap();
    let _ = events.recv().await;
    s.pause("c2").await.unwrap();
    assert_eq!(s.snapshot("c2").unwrap().status, Status::Paused);
    assert_eq!(events.recv().await.unwrap().0, "/tasks/paused");
    s.resume("c2").await.unwrap();
    assert_eq!(events.recv().await.unwrap().0, "/tasks/resumed");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(calls.contains("pause c2") && calls.contains("resume c2"), "{calls}");
    assert!(calls.contains("--log-format json"), "{calls}");
}

/// Two Creates of one id race: one runs `runc create`, the other is refused at once, before it
/// mounts or unmounts anything of the bundle they share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_create_of_one_id_is_refused_before_it_touches_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    // Only for the reaper it starts; this test needs a runc of its own.
    let _ = store(dir.path()).await;
    // `runc create` that takes a while and writes a pid file, so the first Create is mid-way.
    let calls = dir.path().join("calls");
    let slow = dir.path().join("slow-runc");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ncase \" $* \" in *\" create \"*)\n  sleep 0.5\n  while [ $# -gt 0 ]; do [ \"$1\" = --pid-file ] && echo 999999 > \"$2\"; shift; done;;\nesac\nexit 0\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (events, _rx) = EventSink::channel();
    let s2 = Containers::with_runc("ns", dir.path().join("root"), slow, events).await.unwrap();
    let args = || CreateArgs {
        id: "c1".into(),
        bundle: dir.path().join("c1"),
        rootfs: vec![],
        stdio: Stdio::default(),
        checkpoint: None,
        criu_work_path: None,
    };
    bundle(dir.path(), "c1");
    let (first, second) = tokio::join!(s2.create(args()), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s2.create(args()).await
    });
    assert_eq!(first.unwrap(), 999999);
    let err = second.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let creates = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "create"))
        .count();
    assert_eq!(creates, 1, "the refused Create must not run runc");
    assert_eq!(s2.list().len(), 1);
}
