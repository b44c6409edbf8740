//! `delete`: containerd's clean-up after a shim is gone (or after every shutdown). It must be
//! idempotent and succeed when nothing is left: force-delete the runc container, unmount the
//! rootfs, and report a SIGKILL-like exit.

use std::{path::PathBuf, process::Command};

use containerd_shim::{api::DeleteResponse, Flags};
use protobuf::Message;
use tracing::warn;

use crate::{
    error::{Error, Result},
    task::runc::default_root,
};

/// Returns the `DeleteResponse` bytes for stdout.
pub fn run(flags: &Flags) -> Result<Vec<u8>> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(Error::io("cwd"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    // A shim killed mid-checkpoint left the pod frozen and a partial output: undo that first.
    // Only then log (to stderr, which containerd logs as "cleanup warnings"): a routine delete
    // stays quiet.
    if bundle.join(crate::pod::recovery::MARKER).exists() {
        crate::logging::init(flags.debug);
    }
    crate::pod::recovery::recover(&bundle);
    let root = default_root(&flags.namespace);
    // No reaper in this short-lived process, so a plain wait is right here.
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .arg("--log")
        .arg(bundle.join("log.json"))
        .args(["--log-format", "json", "delete", "--force", &flags.id])
        .output();
    match out {
        Ok(o) if !o.status.success() => {
            warn!(id = %flags.id, "runc delete: {}", String::from_utf8_lossy(&o.stderr).trim())
        }
        Err(e) => warn!(id = %flags.id, error = %e, "run runc delete"),
        Ok(_) => {}
    }
    let rootfs = bundle.join("rootfs");
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
        warn!(error = %e, "unmount rootfs");
    }
    let resp = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(std::time::SystemTime::now().into()).into(),
        ..Default::default()
    };
    Ok(resp.write_to_bytes()?)
}
