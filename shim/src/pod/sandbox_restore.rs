//! containerd PR 13971's pod checkpoint/restore: `CheckpointSandbox` and `RestoreSandbox` on the
//! Sandbox service, a thin adaptor over the same controller calls as the PR 13822 Checkpoint
//! service ([`super::checkpoint_service`]). The controller knows neither wire.
//!
//! The two designs differ in who creates what on restore. Under 13822 containerd creates the pod
//! and its containers and the shim only stages each container's restore. Under 13971 containerd
//! starts a shim for the new pod and sends one `RestoreSandbox` in place of `CreateSandbox` +
//! `StartSandbox` + every task `Create`; the shim must answer with the pod started and every task
//! in CREATED state, which containerd then adopts (`AdoptRestoredTask` checks the state and never
//! sends `Create`). So here the shim creates and starts the pod, stages each container's restore
//! exactly as 13822 does, and creates each task itself from the request's bundle and stdio, with
//! a rootfs from the container's image ([`super::image_rootfs`]). CRIU then restores the processes
//! at the task's `Start` (the CRI's `StartContainer`), as for 13822: until then the task is
//! CREATED and nothing of it has run, as the CRI's RestorePod contract asks.
//!
//! With NRI enabled containerd splits the call into two phases (option
//! `io.containerd.pod-restore.phase` = `prepare`: the pod only; `complete`: the tasks), and that
//! key is containerd's own, so it is consumed here and not passed on as a restore option.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use containerd_shim::asynchronous::io::Stdio;
use podcr_protos::sandbox::{
    CheckpointSandboxRequest, CheckpointSandboxResponse, RestoreSandboxRequest, RestoreSandboxResponse,
    RestoredSandboxTask,
};
use podcr_sandbox_controller::{
    backend::PodBackend,
    checkpoint::orchestrate::{ContainerSelection, PodCheckpointRequest},
    restore::{PodRestoreRequest, RestoreSelection},
    SandboxController,
};
use tracing::{info, warn};

use super::{
    checkpoint_service::{detached, observed_checkpoint, options},
    convert,
    files::PodFiles,
    image_rootfs::ImageRootfs,
    observe::Observer,
};
use crate::{
    error::Error,
    task::{lifecycle::CreateArgs, Containers},
};

/// containerd's restore phase option (PR 13971 `sandbox.RestorePhaseOption`).
pub const RESTORE_PHASE_OPTION: &str = "io.containerd.pod-restore.phase";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// One call: the pod and its tasks.
    Whole,
    /// NRI's first call: the pod only.
    Prepare,
    /// NRI's second call: the tasks of the pod the first call made.
    Complete,
}

fn phase(options: &mut std::collections::BTreeMap<String, String>) -> Result<Phase, Error> {
    match options.remove(RESTORE_PHASE_OPTION).as_deref() {
        None => Ok(Phase::Whole),
        Some("prepare") => Ok(Phase::Prepare),
        Some("complete") => Ok(Phase::Complete),
        Some(other) => {
            Err(Error::invalid_argument(format!("{RESTORE_PHASE_OPTION}={other:?}: expected prepare or complete")))
        }
    }
}

/// Checks the task list: non-empty, keys and ids present and unique (exactly one result per
/// container name follows from it).
fn check_unique<'a>(what: &str, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<(), Error> {
    let (mut keys, mut ids) = (BTreeSet::new(), BTreeSet::new());
    for (key, id) in pairs {
        if key.is_empty() || id.is_empty() {
            return Err(Error::invalid_argument(format!("{what}: every task needs a checkpoint_key and a task_id")));
        }
        if !keys.insert(key) {
            return Err(Error::invalid_argument(format!("{what}: checkpoint_key {key:?} given twice")));
        }
        if !ids.insert(id) {
            return Err(Error::invalid_argument(format!("{what}: task_id {id:?} given twice")));
        }
    }
    if keys.is_empty() {
        return Err(Error::invalid_argument(format!("{what}: no tasks given")));
    }
    Ok(())
}

pub struct SandboxRestore<B: PodBackend> {
    controller: Arc<SandboxController<B>>,
    store: Containers,
    images: ImageRootfs,
    observer: Arc<Observer>,
}

impl<B: PodBackend> SandboxRestore<B> {
    pub fn new(
        controller: Arc<SandboxController<B>>,
        store: Containers,
        images: ImageRootfs,
        observer: Arc<Observer>,
    ) -> Self {
        SandboxRestore { controller, store, images, observer }
    }

    pub async fn checkpoint(
        &self,
        deadline: Option<tokio::time::Instant>,
        req: CheckpointSandboxRequest,
    ) -> Result<CheckpointSandboxResponse, Error> {
        info!(sandbox = %req.sandbox_id, output = %req.output_path, tasks = req.tasks.len(), "checkpoint sandbox (PR 13971)");
        check_unique("CheckpointSandbox", req.tasks.iter().map(|t| (t.checkpoint_key.as_str(), t.task_id.as_str())))?;
        // 13971 sends no CRI configs: the controller records what the pod's own create request
        // and the containers' bundles hold.
        let request = PodCheckpointRequest {
            sandbox_id: req.sandbox_id.clone(),
            output_path: PathBuf::from(&req.output_path),
            deadline,
            options: options(&req.options),
            containers: req
                .tasks
                .iter()
                .map(|t| ContainerSelection {
                    id: t.task_id.clone(),
                    name: Some(t.checkpoint_key.clone()),
                    ..Default::default()
                })
                .collect(),
            // Whatever else a checkpoint carries (the pod's own config, a signer) is the
            // controller's default, as for a request with nothing more to say.
            ..Default::default()
        };
        observed_checkpoint(&self.controller, &self.observer, request, req.tasks.len()).await?;
        Ok(CheckpointSandboxResponse::new())
    }

    pub async fn restore(
        &self,
        deadline: Option<tokio::time::Instant>,
        req: RestoreSandboxRequest,
    ) -> Result<RestoreSandboxResponse, Error> {
        let mut opts = options(&req.options);
        let phase = phase(&mut opts)?;
        info!(sandbox = %req.sandbox_id, checkpoint = %req.checkpoint_path, ?phase, tasks = req.tasks.len(), "restore sandbox (PR 13971)");
        if phase != Phase::Prepare {
            check_unique("RestoreSandbox", req.tasks.iter().map(|t| (t.checkpoint_key.as_str(), t.task_id.as_str())))?;
        }
        // Options are checked by the controller's restore, but that runs after the pod exists:
        // refuse unknown keys before anything is made.
        if let Some(key) = opts.keys().next() {
            return Err(Error::invalid_argument(format!("unknown restore option {key:?} (none are supported)")));
        }

        // The pod: created and started here unless a prepare call already did.
        let (pid, created_at) = if phase == Phase::Complete {
            let status = self.controller.status(&req.sandbox_id).await.map_err(Error::from)?;
            (status.pid, status.created_at.unwrap_or_else(chrono::Utc::now))
        } else {
            let config = convert::pod_config(req.sandbox_options.as_ref())?;
            let spec = convert::pod_spec(&req.sandbox_id, &req.bundle_path, &req.netns_path, config.as_ref())?;
            self.controller.create(spec).await.map_err(Error::from)?;
            match self.controller.start(&req.sandbox_id).await {
                Ok(instance) => (instance.pid, instance.created_at),
                Err(e) => {
                    self.discard_pod(&req.sandbox_id).await;
                    return Err(e.into());
                }
            }
        };
        let mut resp = RestoreSandboxResponse::new();
        resp.pid = pid;
        resp.created_at = Some(convert::timestamp(created_at)).into();
        if phase == Phase::Prepare {
            return Ok(resp);
        }

        match self.restore_tasks(&req, opts, deadline).await {
            Ok(tasks) => {
                resp.tasks = tasks;
                Ok(resp)
            }
            Err(e) => {
                // A failed restore leaves no half-made pod: containerd discards the shim too,
                // but this shim must not keep a started pod it was never told to keep.
                if phase == Phase::Whole {
                    self.discard_pod(&req.sandbox_id).await;
                }
                Err(e)
            }
        }
    }

    /// Stages every container's restore with the controller, then creates each task (CREATED).
    async fn restore_tasks(
        &self,
        req: &RestoreSandboxRequest,
        opts: std::collections::BTreeMap<String, String>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<RestoredSandboxTask>, Error> {
        // 13971 carries no CRI container configs; each task's bundle holds the OCI spec the CRI
        // generated from it, which is what runc will apply.
        let bundles: Vec<PathBuf> = req.tasks.iter().map(|t| PathBuf::from(&t.bundle)).collect();
        let specs = tokio::task::spawn_blocking(move || bundles.iter().map(|b| read_spec(b)).collect::<Vec<_>>())
            .await
            .map_err(Error::join("read task specs"))?;
        let request = PodRestoreRequest {
            sandbox_id: req.sandbox_id.clone(),
            checkpoint_path: PathBuf::from(&req.checkpoint_path),
            deadline,
            options: opts,
            containers: req
                .tasks
                .iter()
                .zip(specs)
                .map(|(t, spec)| RestoreSelection {
                    id: t.task_id.clone(),
                    name: t.checkpoint_key.clone(),
                    config: None,
                    spec,
                })
                .collect(),
            pod_config: convert::cri_any_json::<k8s_cri::v1::PodSandboxConfig>(
                req.sandbox_options.as_ref(),
                convert::POD_SANDBOX_CONFIG_TYPE,
            )?,
        };
        let controller = self.controller.clone();
        let staged = detached(async move { controller.restore(request).await }).await?;

        let mut created: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for task in &req.tasks {
            let result = async {
                let (pod_bundle, sandbox, task_bundle, key) = (
                    PathBuf::from(&req.bundle_path),
                    req.sandbox_id.clone(),
                    PathBuf::from(&task.bundle),
                    task.checkpoint_key.clone(),
                );
                tokio::task::spawn_blocking(move || add_pod_file_mounts(&pod_bundle, &sandbox, &task_bundle, &key))
                    .await
                    .map_err(Error::join("pod file mounts task"))??;
                let rootfs = self.images.prepare(&task.task_id, &req.sandbox_id).await?;
                self.store
                    .create(CreateArgs {
                        id: task.task_id.clone(),
                        bundle: PathBuf::from(&task.bundle),
                        rootfs,
                        stdio: Stdio::new(&task.stdin, &task.stdout, &task.stderr, task.terminal),
                        checkpoint: None,
                        criu_work_path: None,
                    })
                    .await
                    .map_err(Error::from)
            }
            .await;
            if let Err(e) = result {
                warn!(task = %task.task_id, error = %e, "restored task not created; rolling back");
                for id in &created {
                    if let Err(d) = self.store.delete(id, "").await {
                        warn!(task = %id, error = %d, "delete a restored task after a failed restore");
                    }
                }
                for s in staged.iter().filter(|s| !created.contains(&s.id)) {
                    if let Err(u) = self.controller.backend().unstage_restore(&s.id).await {
                        warn!(task = %s.id, error = %u, "unstage after a failed restore");
                    }
                }
                return Err(e);
            }
            created.push(task.task_id.clone());
            let mut t = RestoredSandboxTask::new();
            t.checkpoint_key = task.checkpoint_key.clone();
            t.task_id = task.task_id.clone();
            out.push(t);
        }
        info!(sandbox = %req.sandbox_id, tasks = out.len(), "sandbox restored; tasks CREATED");
        Ok(out)
    }

    async fn discard_pod(&self, id: &str) {
        if let Err(e) = self.controller.shutdown(id).await {
            warn!(sandbox = %id, error = %e, "shut the pod down after a failed restore");
        }
    }
}

/// A task bundle's OCI spec, when it has one to read.
fn read_spec(bundle: &Path) -> Option<serde_json::Value> {
    let data = std::fs::read(bundle.join("config.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The pod files the CRI bind-mounts into every container (see [`super::files`]).
const POD_FILE_MOUNTS: &[&str] = &["/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"];

/// Gives a restored task's spec the pod-file bind mounts its checkpointed container had.
///
/// containerd's CRI bind-mounts the pod's hostname, hosts, resolv.conf and /dev/shm only if they
/// exist when it generates a container's spec. Under PR 13971 (without NRI) it generates the
/// restored containers' specs before `RestoreSandbox` has created the pod, so they lack those
/// mounts, and CRIU cannot restore a process whose mount it finds no mapping for ("mnt: No
/// mapping for ..."). The shim made the files just now: each mount the container's `spec.dump`
/// in the checkpoint had, and the new spec lacks, is added with the same options and this pod's
/// file as its source. A spec that has them already (the NRI, two-phase flow) is left alone.
fn add_pod_file_mounts(pod_bundle: &Path, sandbox_id: &str, task_bundle: &Path, key: &str) -> Result<(), Error> {
    let staged =
        pod_bundle.join("work").join(podcr_sandbox_controller::restore::RESTORE_DIR).join(key).join("spec.dump");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&staged).map_err(Error::io(format!("read {}", staged.display())))?)?;
    let config_path = task_bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(Error::io(format!("read {}", config_path.display())))?,
    )?;
    let files = PodFiles::for_bundle(pod_bundle, sandbox_id)?;
    let source = |dest: &str| match dest {
        "/dev/shm" => files.shm(),
        other => files.root_dir.join(other.trim_start_matches("/etc/")),
    };
    if !spec["mounts"].is_array() {
        spec["mounts"] = serde_json::Value::Array(Vec::new());
    }
    let mut added = Vec::new();
    for dest in POD_FILE_MOUNTS {
        let Some(mount) = original["mounts"].as_array().and_then(|m| m.iter().find(|m| m["destination"] == *dest))
        else {
            continue;
        };
        if !source(dest).exists() {
            continue;
        }
        let Some(mounts) = spec["mounts"].as_array_mut() else {
            continue;
        };
        // Without the pod's shm the CRI gives /dev/shm a private tmpfs: a bind in the checkpoint
        // must come back as a bind, or CRIU finds no external mount to map it to.
        let existing = mounts.iter().position(|m| m["destination"] == *dest);
        if existing.is_some_and(|i| mounts[i]["type"] == mount["type"]) {
            continue;
        }
        let mut mount = mount.clone();
        mount["source"] = serde_json::Value::String(source(dest).to_string_lossy().into_owned());
        match existing {
            Some(i) => mounts[i] = mount,
            None => mounts.push(mount),
        }
        added.push(*dest);
    }
    if added.is_empty() {
        return Ok(());
    }
    let tmp = task_bundle.join("config.json.podcr-tmp");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?).map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &config_path).map_err(Error::io(format!("replace {}", config_path.display())))?;
    info!(bundle = %task_bundle.display(), ?added, "pod file mounts added to a restored task's spec");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_phase_option_is_consumed_and_checked() {
        let mut m = BTreeMap::from([(RESTORE_PHASE_OPTION.to_string(), "prepare".to_string())]);
        assert_eq!(phase(&mut m).ok(), Some(Phase::Prepare));
        assert!(m.is_empty());
        let mut m = BTreeMap::new();
        assert_eq!(phase(&mut m).ok(), Some(Phase::Whole));
        let mut m = BTreeMap::from([(RESTORE_PHASE_OPTION.to_string(), "later".to_string())]);
        assert!(matches!(phase(&mut m), Err(Error::Pod(podcr_sandbox_controller::Error::InvalidArgument(_)))));
    }

    #[test]
    fn tasks_must_be_unique_and_named() {
        assert!(check_unique("x", [("a", "1"), ("b", "2")].into_iter()).is_ok());
        for bad in [vec![], vec![("a", "1"), ("a", "2")], vec![("a", "1"), ("b", "1")], vec![("", "1")]] {
            assert!(matches!(
                check_unique("x", bad.into_iter()),
                Err(Error::Pod(podcr_sandbox_controller::Error::InvalidArgument(_)))
            ));
        }
    }

    mod service {
        use podcr_protos::sandbox::{SandboxCheckpointTask, SandboxRestoreTask};
        use podcr_sandbox_controller::fake::FakeBackend;

        use super::*;
        use crate::events::EventSink;

        async fn restorer(dir: &Path) -> SandboxRestore<FakeBackend> {
            crate::reaper::start().unwrap();
            let store =
                Containers::with_runc("ns", dir.join("root"), PathBuf::from("/bin/false"), EventSink::discard())
                    .await
                    .unwrap();
            // These tests never reach the signature: trust nothing signed, allow nothing unsigned.
            let signing = podcr_sandbox_controller::node_config::SigningConfig {
                key: dir.join("no.key"),
                trusted_dir: dir.join("no-trusted.d"),
                allow_unsigned: false,
            };
            let controller = Arc::new(SandboxController::new(Arc::new(FakeBackend::default())).with_signing(signing));
            SandboxRestore::new(
                controller,
                store,
                ImageRootfs::new("", "ns"),
                Arc::new(Observer::new(crate::events::EventSink::discard(), None)),
            )
        }

        fn restore_req(dir: &Path, options: &[(&str, &str)], keys: &[(&str, &str)]) -> RestoreSandboxRequest {
            let mut req = RestoreSandboxRequest::new();
            req.sandbox_id = "sb".into();
            req.bundle_path = dir.join("bundle").display().to_string();
            req.checkpoint_path = dir.join("ckpt").display().to_string();
            req.options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            req.tasks = keys
                .iter()
                .map(|(key, id)| {
                    let mut t = SandboxRestoreTask::new();
                    t.checkpoint_key = key.to_string();
                    t.task_id = id.to_string();
                    t
                })
                .collect();
            req
        }

        fn soon() -> Option<tokio::time::Instant> {
            Some(tokio::time::Instant::now() + std::time::Duration::from_secs(30))
        }

        #[tokio::test]
        async fn unknown_options_and_duplicate_names_are_refused_before_a_pod_exists() {
            let dir = tempfile::tempdir().unwrap();
            let r = restorer(dir.path()).await;
            let bad = [
                restore_req(dir.path(), &[("no-such-option", "1")], &[("app", "c1")]),
                restore_req(dir.path(), &[], &[("app", "c1"), ("app", "c2")]),
                restore_req(dir.path(), &[], &[]),
                restore_req(dir.path(), &[(RESTORE_PHASE_OPTION, "later")], &[("app", "c1")]),
            ];
            for req in bad {
                let err = r.restore(soon(), req.clone()).await.unwrap_err();
                assert!(
                    matches!(err, Error::Pod(podcr_sandbox_controller::Error::InvalidArgument(_))),
                    "{req:?}: {err:?}"
                );
                assert_eq!(r.controller.pod_id().await, None, "a refused restore left a pod");
            }
            let mut ck = CheckpointSandboxRequest::new();
            ck.sandbox_id = "sb".into();
            ck.tasks = vec![SandboxCheckpointTask::new()];
            assert!(matches!(
                r.checkpoint(soon(), ck).await,
                Err(Error::Pod(podcr_sandbox_controller::Error::InvalidArgument(_)))
            ));
        }

        #[tokio::test]
        async fn the_prepare_phase_starts_the_pod_and_returns_no_tasks() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
            let r = restorer(dir.path()).await;
            let resp = r
                .restore(soon(), restore_req(dir.path(), &[(RESTORE_PHASE_OPTION, "prepare")], &[("app", "c1")]))
                .await
                .unwrap();
            assert_eq!(resp.pid, 4242, "the pod's anchor pid");
            assert!(resp.created_at.is_some(), "containerd refuses a restore without a creation time");
            assert!(resp.tasks.is_empty(), "containerd refuses task records from a prepare call");
            assert_eq!(r.controller.pod_id().await.as_deref(), Some("sb"));
        }
    }
}
