//! An in-memory [`PodBackend`] for unit tests: it records every call in order and can be told to
//! fail a given step, so the controller's ordering and rollback rules are tested without runc.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;

use crate::{
    backend::{
        BackendIdentity, ContainerInfo, DumpOptions, DumpOutcome, ExitStatus, PodAnchor, PodBackend, PodCheckpoint,
        PodRestore, PodSpec, PreparedDumps, RestoreStage, RootfsCapture,
    },
    error::{Error, Result},
};

#[derive(Default)]
pub struct FakeBackend {
    pub calls: Mutex<Vec<String>>,
    pub containers: Mutex<Vec<ContainerInfo>>,
    pub frozen: Mutex<BTreeSet<String>>,
    pub staged: Mutex<BTreeMap<String, RestoreStage>>,
    /// Step names ("dump:<id>", "freeze", "capture:<id>", ...) that fail when reached.
    pub fail: Mutex<BTreeSet<String>>,
    /// How long `start_pod` takes (a slow anchor).
    pub start_delay: Mutex<Duration>,
    /// How long each dump takes, to exercise deadlines.
    pub dump_delay: Mutex<Duration>,
    /// Dumps get ready before the freeze (the barrier path).
    pub prepared: Mutex<bool>,
    /// What `dump_estimate` answers.
    pub estimate: Mutex<Duration>,
    /// The runtime name `identity` answers; `fake` when unset.
    pub runtime: Mutex<Option<String>>,
    anchor_exit: Mutex<Option<watch::Sender<Option<ExitStatus>>>>,
}

impl FakeBackend {
    pub fn with_containers(names: &[&str]) -> FakeBackend {
        let fake = FakeBackend::default();
        if let Ok(mut cs) = fake.containers.lock() {
            for (i, name) in names.iter().enumerate() {
                cs.push(ContainerInfo {
                    id: format!("id-{name}"),
                    name: name.to_string(),
                    pid: 1000 + i as u32,
                    running: true,
                    bundle: std::env::temp_dir(),
                    image: Some("docker.io/library/busybox:latest".into()),
                    created_at: Utc::now(),
                });
            }
        }
        fake
    }

    pub fn fail_at(&self, step: &str) {
        if let Ok(mut f) = self.fail.lock() {
            f.insert(step.to_string());
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn exit_anchor(&self, code: u32) {
        if let Ok(guard) = self.anchor_exit.lock() {
            if let Some(tx) = guard.as_ref() {
                let _ = tx.send(Some(ExitStatus { code, at: Utc::now() }));
            }
        }
    }

    fn record(&self, step: String) -> Result<()> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(step.clone());
        }
        if self.fail.lock().map(|f| f.contains(&step)).unwrap_or(false) {
            return Err(Error::runtime(step.clone(), "fake", format!("injected failure at {step}")));
        }
        Ok(())
    }
}

#[async_trait]
impl PodBackend for FakeBackend {
    async fn identity(&self) -> BackendIdentity {
        let runtime = self.runtime.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "fake".into());
        BackendIdentity {
            runtime,
            runtime_version: "1.0".into(),
            dumper: "fake-dumper".into(),
            dumper_version: "2.0".into(),
            cgroup_version: "1".into(),
        }
    }

    async fn create_pod(&self, _spec: &PodSpec) -> Result<()> {
        self.record("create_pod".into())
    }

    async fn start_pod(&self, _spec: &PodSpec) -> Result<PodAnchor> {
        self.record("start_pod".into())?;
        let delay = self.start_delay.lock().map(|d| *d).unwrap_or_default();
        tokio::time::sleep(delay).await;
        let (tx, rx) = watch::channel(None);
        if let Ok(mut g) = self.anchor_exit.lock() {
            *g = Some(tx);
        }
        Ok(PodAnchor { pid: 4242, exit: rx })
    }

    async fn stop_pod(&self, _spec: &PodSpec, _timeout: Duration) -> Result<()> {
        self.record("stop_pod".into())?;
        self.exit_anchor(137);
        Ok(())
    }

    async fn destroy_pod(&self, _spec: &PodSpec) -> Result<()> {
        self.record("destroy_pod".into())
    }

    async fn containers(&self) -> Result<Vec<ContainerInfo>> {
        Ok(self.containers.lock().map(|c| c.clone()).unwrap_or_default())
    }
}

#[async_trait]
impl PodCheckpoint for FakeBackend {
    async fn freeze(&self, ids: &[String]) -> Result<()> {
        self.record("freeze".into())?;
        if let Ok(mut f) = self.frozen.lock() {
            f.extend(ids.iter().cloned());
        }
        Ok(())
    }

    async fn thaw(&self, ids: &[String]) -> Result<()> {
        self.record("thaw".into())?;
        if let Ok(mut f) = self.frozen.lock() {
            for id in ids {
                f.remove(id);
            }
        }
        Ok(())
    }

    async fn dump_estimate(&self, _ids: &[String]) -> Duration {
        self.estimate.lock().map(|d| *d).unwrap_or_default()
    }

    async fn dump(&self, id: &str, opts: &DumpOptions) -> Result<DumpOutcome> {
        if let Some(barrier) = &opts.barrier {
            self.record(format!("ready:{id}"))?;
            let _ = barrier.ready.send(id.to_string());
            if !barrier.wait_go().await {
                return Err(Error::runtime("dump", id, "fake: given up at the barrier"));
            }
        }
        let delay = self.dump_delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.record(format!("dump:{id}"))?;
        if !self.frozen.lock().map(|f| f.contains(id)).unwrap_or(false) {
            return Err(Error::runtime("dump", id, "fake: dumped while not frozen"));
        }
        std::fs::write(opts.image_dir.join("pages-1.img"), format!("memory of {id}"))
            .map_err(Error::io("fake dump"))?;
        std::fs::write(opts.image_dir.join("inventory.img"), b"inv").map_err(Error::io("fake dump"))?;
        std::fs::write(opts.work_dir.join("dump.log"), b"fake criu log\n").map_err(Error::io("fake dump log"))?;
        Ok(DumpOutcome { wall: Duration::from_millis(1) })
    }

    async fn capture_rootfs(&self, id: &str, dest_dir: &Path) -> Result<RootfsCapture> {
        self.record(format!("capture:{id}"))?;
        let diff_tar = dest_dir.join(crate::archive::ROOTFS_DIFF_TAR);
        let file = std::fs::File::create(&diff_tar).map_err(Error::io("fake rootfs tar"))?;
        let mut builder = tar::Builder::new(file);
        let data = format!("written by {id}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "data/file.txt", data.as_bytes()).map_err(Error::io("fake rootfs tar"))?;
        builder.finish().map_err(Error::io("fake rootfs tar"))?;
        Ok(RootfsCapture { diff_tar, deleted: vec!["/etc/motd".into()], bytes: data.len() as u64 })
    }

    async fn kill(&self, id: &str) -> Result<()> {
        self.record(format!("kill:{id}"))
    }
}

#[async_trait]
impl PreparedDumps for FakeBackend {
    async fn prepared_dumps(&self, _ids: &[String]) -> bool {
        self.prepared.lock().map(|p| *p).unwrap_or(false)
    }
}

#[async_trait]
impl PodRestore for FakeBackend {
    async fn stage_restore(&self, id: &str, stage: RestoreStage) -> Result<()> {
        self.record(format!("stage:{id}"))?;
        if let Ok(mut s) = self.staged.lock() {
            s.insert(id.to_string(), stage);
        }
        Ok(())
    }

    async fn unstage_restore(&self, id: &str) -> Result<()> {
        self.record(format!("unstage:{id}"))?;
        if let Ok(mut s) = self.staged.lock() {
            s.remove(id);
        }
        Ok(())
    }
}
