//! In-place restore of a pod the kubelet creates with `podcr.io/restore-from: <name>`.
//!
//! The kubelet knows nothing of the restore: it sends RunPodSandbox (the annotation rides in the
//! pod config), then CreateContainer/StartContainer per container. At CreateSandbox the name is
//! resolved under the node admin's checkpoint roots and the checkpoint opened through the
//! controller's verifying reader ([`podcr_sandbox_controller::restore::from_annotation`]); a bad
//! name, an unverifiable checkpoint or one of another namespace fails RunPodSandbox before any of
//! the pod exists. Then each Task.Create of a container whose name is in the checkpoint goes
//! through the controller's restore, exactly as a PR 13822 `Restore` would stage it, with the
//! OCI spec containerd generated from the kubelet's config as the request: the same policy, the
//! same extraction, and CRIU restores the processes at Task.Start. A refusal fails the create, so
//! StartContainer fails with the reason and the kubelet reports it (`kubectl describe`).
//!
//! Each container name is restored once per pod: once it ran restored, a later restart of that
//! container (the kubelet's restart policy) starts it fresh from its image, as for any container.
//! A failed or refused restore is not "once": the kubelet's retry tries the restore again.
//!
//! This hook also holds restores staged by the RPCs to the spec at Task.Create (the configs the
//! RPC carried are checked there; the spec is what runc will actually apply).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use podcr_sandbox_controller::{
    archive,
    backend::{PodBackend, PodSpec},
    node_config::NodeConfig,
    restore::{self, from_annotation, PodRestoreRequest, RestoreSelection},
    Error as PodError, Result as PodResult, SandboxController,
};
use tracing::info;

use crate::{
    error::{Error, Result},
    task::{Containers, RestoreHook},
};

/// The OCI annotation containerd's CRI puts the container's name in.
const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// Deadline of one container's extraction: Task.Create carries none of its own, and the kubelet
/// gives StartContainer minutes (its runtime request timeout).
const CONTAINER_RESTORE_DEADLINE: Duration = Duration::from_secs(600);

/// The restore a pod's annotation asked for.
#[derive(Debug, Clone)]
struct Planned {
    sandbox_id: String,
    checkpoint: PathBuf,
    names: BTreeSet<String>,
    pod_config: Option<serde_json::Value>,
    /// Names restored already, and which container id each one is being restored into.
    restored: BTreeSet<String>,
    in_flight: HashMap<String, String>,
}

pub struct AnnotationRestore<B: PodBackend> {
    controller: Arc<SandboxController<B>>,
    store: Containers,
    planned: Mutex<Option<Planned>>,
    /// One container's restore at a time: the controller refuses a second concurrent one.
    serial: tokio::sync::Mutex<()>,
}

impl<B: PodBackend> AnnotationRestore<B> {
    pub fn new(controller: Arc<SandboxController<B>>, store: Containers) -> Self {
        AnnotationRestore { controller, store, planned: Mutex::new(None), serial: tokio::sync::Mutex::new(()) }
    }

    fn planned(&self) -> std::sync::MutexGuard<'_, Option<Planned>> {
        self.planned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At CreateSandbox: resolves and opens the checkpoint the pod's annotation names, if any.
    pub async fn plan(&self, spec: &PodSpec) -> Result<()> {
        let Some(name) = spec.annotations.get(from_annotation::RESTORE_FROM).cloned() else {
            return Ok(());
        };
        let namespace = spec.namespace.clone();
        let ckpt = tokio::task::spawn_blocking(move || {
            let config = NodeConfig::load()?;
            let trust = podcr_sandbox_controller::archive::TrustPolicy::from_config(&config.signing)?;
            from_annotation::open(&name, &namespace, &config.restore, &trust)
        })
        .await
        .map_err(Error::join("checkpoint lookup task"))??;
        let names: BTreeSet<String> = from_annotation::container_names(&ckpt).into_iter().collect();
        info!(pod = %spec.id, checkpoint = %ckpt.dir.display(), ?names, "pod will be restored in place as its containers are created");
        *self.planned() = Some(Planned {
            sandbox_id: spec.id.clone(),
            checkpoint: ckpt.dir,
            names,
            pod_config: spec.raw_config.clone(),
            restored: BTreeSet::new(),
            in_flight: HashMap::new(),
        });
        Ok(())
    }

    /// Holds a restore the RPCs staged for `id` to the spec runc will apply.
    async fn check_staged(&self, id: &str, name: &str, spec: &serde_json::Value) -> PodResult<()> {
        let Some(staged) = self.store.staged_restore(id) else {
            return Ok(());
        };
        let Some(dir) = staged.work_path.clone() else {
            return Ok(());
        };
        let (name, spec) = (name.to_string(), spec.clone());
        let checked = tokio::task::spawn_blocking(move || -> podcr_sandbox_controller::Result<()> {
            let limits = archive::Limits::default();
            let read = |file: &str| -> podcr_sandbox_controller::Result<Option<serde_json::Value>> {
                let path = dir.join(file);
                if !path.exists() {
                    return Ok(None);
                }
                let data = archive::read_bounded_file(&path, limits.max_metadata_bytes)?;
                serde_json::from_slice(&data)
                    .map(Some)
                    .map_err(|source| podcr_sandbox_controller::Error::Json { path, source })
            };
            let ckpt_spec = read(archive::SPEC_DUMP)?.unwrap_or_default();
            let ckpt_config = read(archive::CONTAINER_CONFIG_DUMP)?;
            restore::check_request(&name, None, None, Some(&spec), None, ckpt_config.as_ref(), &ckpt_spec)
        })
        .await
        .map_err(PodError::backend)?;
        if let Err(e) = checked {
            // Nothing of the container exists yet: dropping the stage undoes the restore.
            self.store.unstage_restore(id);
            return Err(e);
        }
        Ok(())
    }
}

#[async_trait]
impl<B: PodBackend> RestoreHook for AnnotationRestore<B> {
    async fn before_create(&self, id: &str, spec: &serde_json::Value) -> PodResult<()> {
        let name = spec["annotations"][CRI_CONTAINER_NAME].as_str().unwrap_or(id).to_string();
        if self.store.staged_restore(id).is_some() {
            return self.check_staged(id, &name, spec).await;
        }
        let request = {
            let planned = self.planned();
            let Some(p) = planned.as_ref().filter(|p| p.names.contains(&name) && !p.restored.contains(&name)) else {
                return Ok(());
            };
            PodRestoreRequest {
                sandbox_id: p.sandbox_id.clone(),
                checkpoint_path: p.checkpoint.clone(),
                deadline: Some(tokio::time::Instant::now() + CONTAINER_RESTORE_DEADLINE),
                options: Default::default(),
                containers: vec![RestoreSelection {
                    id: id.to_string(),
                    name: name.clone(),
                    config: None,
                    spec: Some(spec.clone()),
                }],
                pod_config: p.pod_config.clone(),
            }
        };
        let _serial = self.serial.lock().await;
        info!(container = %id, %name, checkpoint = %request.checkpoint_path.display(), "restoring container from the pod's checkpoint");
        let controller = self.controller.clone();
        // Staged by the controller exactly as a Restore RPC stages it; Task.Create picks it up.
        // Detached, so that a cancelled Task.Create cannot cut the restore short mid-staging.
        tokio::spawn(async move { controller.restore(request).await }).await.map_err(PodError::backend)?.map_err(
            |e| match e {
                PodError::InvalidArgument(m) => {
                    PodError::InvalidArgument(format!("restore from the pod's checkpoint refused: {m}"))
                }
                other => other,
            },
        )?;
        if let Some(p) = self.planned().as_mut() {
            p.in_flight.insert(id.to_string(), name);
        }
        Ok(())
    }

    async fn restored(&self, id: &str) {
        if let Some(p) = self.planned().as_mut() {
            if let Some(name) = p.in_flight.remove(id) {
                info!(container = %id, %name, "container restored from the pod's checkpoint; later restarts start fresh");
                p.restored.insert(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use podcr_sandbox_controller::fake::FakeBackend;
    use serde_json::json;

    use super::*;
    use crate::{events::EventSink, task::RestoreArgs};

    async fn hook(dir: &std::path::Path) -> AnnotationRestore<FakeBackend> {
        crate::reaper::start().unwrap();
        let store = Containers::with_runc("ns", dir.join("root"), PathBuf::from("/bin/false"), EventSink::discard())
            .await
            .unwrap();
        let controller = Arc::new(SandboxController::new(Arc::new(FakeBackend::default())));
        AnnotationRestore::new(controller, store)
    }

    fn spec(args: &[&str]) -> serde_json::Value {
        json!({
            "annotations": {CRI_CONTAINER_NAME: "app"},
            "process": {"args": args, "cwd": "/", "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}, {"type": "ipc"}]}
        })
    }

    /// A restore an RPC staged is held to the spec containerd generated at Task.Create: one that
    /// disagrees is refused and unstaged, so the create fails and nothing is restored.
    #[tokio::test]
    async fn a_staged_restore_is_held_to_the_spec_at_create() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook(dir.path()).await;
        let work = dir.path().join("staged");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join(archive::SPEC_DUMP), serde_json::to_vec(&spec(&["/app", "serve"])).unwrap()).unwrap();
        let staged =
            RestoreArgs { image_path: work.join("checkpoint"), work_path: Some(work.clone()), ..Default::default() };

        h.store.stage_restore("c1", staged.clone());
        h.before_create("c1", &spec(&["/app", "serve"])).await.unwrap();
        assert_eq!(h.store.staged_restore("c1"), Some(staged.clone()), "an agreeing restore stays staged");

        h.store.stage_restore("c2", staged.clone());
        let err = h.before_create("c2", &spec(&["/bin/sh"])).await.unwrap_err();
        assert!(matches!(&err, PodError::InvalidArgument(m) if m.contains(": command:")), "{err}");
        assert_eq!(h.store.staged_restore("c2"), None, "a refused restore must be unstaged");

        let mut more = spec(&["/app", "serve"]);
        more["process"]["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_SYS_ADMIN"]);
        std::fs::write(work.join(archive::SPEC_DUMP), serde_json::to_vec(&more).unwrap()).unwrap();
        h.store.stage_restore("c3", staged);
        let err = h.before_create("c3", &spec(&["/app", "serve"])).await.unwrap_err();
        assert!(matches!(&err, PodError::InvalidArgument(m) if m.contains("CAP_SYS_ADMIN")), "{err}");
    }

    /// Without a staged restore or a restore-from annotation, a container is created as ever.
    #[tokio::test]
    async fn without_a_plan_nothing_is_staged() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook(dir.path()).await;
        h.before_create("c1", &spec(&["/app"])).await.unwrap();
        assert_eq!(h.store.staged_restore("c1"), None);
        h.restored("c1").await;
        // A pod without the annotation plans nothing either.
        let pod = PodSpec { id: "sb".into(), ..Default::default() };
        h.plan(&pod).await.unwrap();
        assert!(h.planned().is_none());
    }
}
