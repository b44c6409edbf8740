//! The on-disk format of a pod checkpoint, its writer and its hardened reader.
//!
//! A pod checkpoint is a directory (the CRI `output_path`, owned by the caller):
//!
//! ```text
//! pod.options                 checkpointctl CheckpointedPodOptions: containers + org.criu.checkpoint.* annotations
//! pod.dump                    the PodSandboxConfig as snake_case JSON
//! <container-name>.tar[.gz|.zst]  one containerd-style container checkpoint per container
//! podcr.manifest.json         size + SHA-256 of every other file; written last, so it marks completeness
//! ```
//!
//! Each container archive is what `checkpointctl show`/`inspect` read as a containerd container
//! checkpoint: `checkpoint/` (explicit directory entry, then CRIU's images), `config.dump`,
//! `spec.dump` (with the `io.kubernetes.cri.*` name annotations), `status.dump`, `stats-dump`,
//! `dump.log`, `rootfs-diff.tar`, `deleted.files`, `bind.mounts` (CRI-O's layout), and
//! `podcr.container.manifest.json` last with the digest of every other file entry.
//!
//! Writing streams every byte once and hashes it on the way. Reading never trusts the input:
//! see [`extract_container_archive`], [`verify_pod_dir`], [`unpack_pod_archive`] and
//! [`apply_rootfs_diff`] for what is refused. All functions are synchronous; async callers run
//! them with `spawn_blocking`.

mod cancel;
mod capture;
mod codec;
pub mod error;
mod fsutil;
mod layout;
mod limits;
mod metadata;
mod outdir;
mod pack;
mod peek;
mod pod;
mod reader;
mod rootfs;
pub mod signing;
pub mod signing_config;
mod targuard;
mod tarout;
mod untar;
mod writer;

#[cfg(test)]
mod tests;

pub use cancel::{Cancel, CANCELLED};
pub use capture::{capture_overlay_upperdir, RootfsCaptureStats};
pub use error::{Error, Result};
pub use fsutil::read_bounded as read_bounded_file;
pub use fsutil::{check_free_inodes, check_free_space};
pub use layout::*;
pub use limits::Limits;
pub use metadata::*;
pub use outdir::OutputDir;
pub use pack::{pack_pod_dir, unpack_pod_archive};
pub use peek::{read_container_metadata, ContainerMetadata};
pub use pod::{open_pod_dir, verify_pod_dir, PodCheckpoint};
pub use reader::{
    extract_container_archive, extract_container_archive_verified, extract_container_archive_verified_until,
    ExtractedContainer,
};
pub use rootfs::{apply_rootfs_diff, check_deleted_path, delete_rootfs_paths, Privileged, RootfsApplyStats};
pub use signing::{Signer, TrustPolicy};
pub use writer::{
    finish_pod_manifest, write_container_archive, write_container_archive_until, write_pod_files, ArchiveStats,
    PodManifestInfo,
};
