//! A real `criu dump` of a trivial process, packaged by the writer, read by checkpointctl
//! (`inspect --stats --ps-tree` needs real images and the top-level `stats-dump`) and by our
//! own reader. Where criu cannot run (not root, no criu) it fails, or says SKIP when allowed
//! (see `support::prerequisite`).

use std::process::{Command, Stdio};

use super::support::*;
use crate::*;

#[test]
fn real_criu_dump_is_readable_by_checkpointctl() {
    let criu_ok = Command::new("criu").arg("check").output().map(|o| o.status.success()).unwrap_or(false);
    let test = "real_criu_dump_is_readable_by_checkpointctl";
    if !prerequisite(test, nix::unistd::geteuid().is_root(), "not root (CRIU needs it)")
        || !prerequisite(test, criu_ok, "`criu check` fails or criu is not installed")
        || !prerequisite(test, std::path::Path::new("/usr/bin/checkpointctl").exists(), "no /usr/bin/checkpointctl")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let images = staging.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&images).unwrap();
    // Its own session, so CRIU needs no --shell-job; stdio on /dev/null so no tty is involved.
    let mut child = Command::new("setsid")
        .args(["sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // Give setsid time to exec sleep, so the dump sees the final process image.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = Command::new("criu")
        .args(["dump", "-t", &pid, "-v4", "-o", "dump.log", "-D"])
        .arg(&images)
        .arg("-W")
        .arg(&staging)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(staging.join("dump.log")).unwrap_or_default();
    assert!(out.status.success(), "criu dump failed: {}\n{}", String::from_utf8_lossy(&out.stderr), log);
    // CRIU puts stats-dump next to the images; checkpointctl wants it at the archive's top.
    // CRIU writes stats-dump into its work dir (-W, runc's --work-path), which is exactly where
    // the writer expects it: the staging dir's top level.
    assert!(staging.join(STATS_DUMP).exists() && !images.join(STATS_DUMP).exists());
    let dest = tmp.path().join("sleep.tar.zst");
    let stats = write_container_archive(&staging, &meta("sleep"), &dest, Compression::Zstd).unwrap();

    let out = Command::new("checkpointctl").args(["inspect", "--stats", "--ps-tree"]).arg(&dest).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "inspect: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CRIU dump statistics"), "{text}");
    assert!(text.contains("sleep"), "{text}");
    assert!(text.contains("containerd"), "{text}");

    let x =
        extract_container_archive_verified(&dest, &stats.digest(), &tmp.path().join("x"), &Limits::default()).unwrap();
    assert!(x.image_dir().join("inventory.img").exists());
    assert!(x.dir.join(STATS_DUMP).exists());
}
