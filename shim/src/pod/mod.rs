//! The pod side of the shim: the sandbox ttrpc service (with PR 13971's checkpoint RPCs), the
//! Checkpoint service (PR 13822), the anchor
//! ("holder") process, the pod's shared files, the freezer, and the runc backend of the sandbox
//! controller. The Task side ([`crate::task`]) owns the containers; this side drives them through
//! the same [`Containers`] handle.

mod anchor;
pub mod backend;
pub(crate) mod cgroup;
mod checkpoint_service;
pub mod convert;
pub mod criu_hook;
pub mod dump_estimate;
mod files;
pub mod freezer;
pub mod holder;
pub mod image_rootfs;
pub mod observe;
pub mod recovery;
pub mod restore_from;
mod sandbox_restore;
mod sandbox_service;

use std::{collections::HashMap, sync::Arc};

use podcr_protos::checkpoint_ttrpc::create_checkpoint;
use podcr_sandbox_controller::SandboxController;
use ttrpc::r#async::Service;

pub use self::{
    checkpoint_service::CheckpointService, sandbox_restore::SandboxRestore, sandbox_service::SandboxService,
};
use crate::task::Containers;

/// Extra ttrpc services the pod side serves on the shim socket, next to the Task service: the
/// Sandbox API (with PR 13971's CheckpointSandbox/RestoreSandbox) and PR 13822's pod Checkpoint
/// service, both over one controller for the shim's one pod. `containerd_address` is containerd's
/// gRPC socket (the shim's `-address`), which a 13971 restore needs for the tasks' rootfs.
pub fn services(store: &Containers, containerd_address: &str) -> HashMap<String, Service> {
    store.set_rootfs_hook(Arc::new(apply_checkpointed_rootfs));
    let backend = Arc::new(backend::RuncPodBackend::new(store.clone()));
    let controller = Arc::new(SandboxController::new(backend));
    let exit_store = store.clone();
    let images = image_rootfs::ImageRootfs::new(containerd_address, store.namespace());
    let observer = Arc::new(observe::Observer::from_node_config(store.events().clone()));
    let restore = SandboxRestore::new(controller.clone(), store.clone(), images, observer.clone());
    let annotation = Arc::new(restore_from::AnnotationRestore::new(controller.clone(), store.clone()));
    store.set_restore_hook(annotation.clone());
    let sandbox =
        SandboxService::new(controller.clone(), Arc::new(move || exit_store.request_exit()), restore, annotation);
    let mut all = podcr_protos::sandbox_ttrpc::create_sandbox(Arc::new(sandbox));
    all.extend(create_checkpoint(Arc::new(CheckpointService::new(controller, observer))));
    all
}

/// Puts a checkpointed container's writable layer back before CRIU restores its processes:
/// files deleted before the checkpoint are deleted again, new and changed files are unpacked,
/// never writing through a symlink of the new rootfs (see `archive::apply_rootfs_diff`).
fn apply_checkpointed_rootfs(
    rootfs: &std::path::Path,
    args: &crate::task::RestoreArgs,
) -> crate::runc_error::Result<()> {
    use podcr_sandbox_controller::{archive, node_config::NodeConfig, Error as PodError};
    let Some(diff) = &args.rootfs_diff else { return Ok(()) };
    // Read per restore: `[rootfs] keep_privileged` decides whether setuid/setgid bits and file
    // capabilities from the checkpoint are restored (by default they are dropped and logged).
    let privileged = NodeConfig::load()?.rootfs.privileged();
    let stats = archive::apply_rootfs_diff(diff, rootfs, &args.deleted, &archive::Limits::default(), privileged)
        .map_err(PodError::from)?;
    if !stats.stripped.is_empty() {
        tracing::warn!(
            count = stats.stripped.len(),
            "restored rootfs without the setuid/setgid bits and file capabilities of its diff"
        );
    }
    Ok(())
}
