//! Helpers for the fault-injection tests (tests/tests/faults.rs): finding a pod's shim, CRIU and
//! freezers from /proc and /sys, a before/after inventory of everything a pod brings with it
//! (to prove a failed restore left nothing), editing a real checkpoint, and a tmpfs mount that
//! is unmounted on drop.

use std::{
    collections::BTreeSet,
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use k8s_cri::v1::{ListContainersRequest, ListPodSandboxRequest};
use sha2::{Digest, Sha256};

use crate::{
    cleanup,
    cmd::{Output, Running},
    pods::Cri,
    procs::{self, Proc},
    Containerd, CRI_NAMESPACE,
};

/// `podcr --address <cd> ARGS` with `TMPDIR=tmp`: the CLI's scratch and unpack directories then
/// land where a test can check that they are gone.
pub fn podcr_command<I, S>(cd: &Containerd, tmp: &Path, args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::fs::create_dir_all(tmp)?;
    let mut cmd = Command::new(crate::target_profile_dir()?.join("podcr"));
    cmd.arg("--address").arg(cd.socket()).args(args).env("TMPDIR", tmp).env("PODCR_CONFIG", cd.node_config());
    Ok(cmd)
}

pub fn podcr<I, S>(cd: &Containerd, tmp: &Path, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    crate::cmd::run(&mut podcr_command(cd, tmp, args)?, Duration::from_secs(180))
}

/// The same, in the background.
pub fn spawn_podcr<I, S>(cd: &Containerd, tmp: &Path, args: I) -> Result<Running>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Running::spawn(&mut podcr_command(cd, tmp, args)?)
}

/// The shim serving sandbox `sandbox_id` (its `-id` is the sandbox id: the sandbox is created first).
pub fn shim_of(cd: &Containerd, sandbox_id: &str) -> Result<Option<Proc>> {
    Ok(procs::shims_of(cd.socket())?.into_iter().find(|p| p.arg_after("-id") == Some(sandbox_id)))
}

/// Every live descendant of `root`.
pub fn descendants(root: u32) -> Result<Vec<Proc>> {
    let all = procs::all()?;
    let mut out: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent && !p.is_zombie()) {
            frontier.push(p.pid);
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The pod's cgroup in the v1 freezer hierarchy (see `Containerd::pod_config`).
pub fn pod_freezer_dir(cd: &Containerd, pod_name: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/freezer").join(format!("{}-pods", cd.prefix())).join(pod_name)
}

/// `freezer.state` of every container cgroup below the pod's (the pod cgroup itself excluded).
pub fn freezer_states(cd: &Containerd, pod_name: &str) -> Result<Vec<(PathBuf, String)>> {
    let root = pod_freezer_dir(cd, pod_name);
    anyhow::ensure!(root.is_dir(), "no freezer cgroup {} (not cgroup v1?)", root.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root)? {
        let dir = e?.path();
        if dir.is_dir() {
            let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
            out.push((dir, state.trim().to_string()));
        }
    }
    Ok(out)
}

/// Pids in the pod's cgroups (containers; the holder lives in the shim's cgroup).
pub fn pod_pids(cd: &Containerd, pod_name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![pod_freezer_dir(cd, pod_name)];
    while let Some(dir) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    pids
}

/// A CRIU ptrace-attached to a process of the pod: it is dumping that container right now.
pub fn criu_dumping(cd: &Containerd, pod_name: &str) -> Option<Proc> {
    criu_tracing(pod_pids(cd, pod_name))
}

/// A CRIU dumping one container of the pod (its cgroup is named after the container id).
pub fn criu_dumping_container(cd: &Containerd, pod_name: &str, container_id: &str) -> Option<Proc> {
    let procs = std::fs::read_to_string(pod_freezer_dir(cd, pod_name).join(container_id).join("cgroup.procs")).ok()?;
    criu_tracing(procs.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn criu_tracing(pids: Vec<u32>) -> Option<Proc> {
    pids.into_iter().find_map(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let tracer: u32 = status.lines().find_map(|l| l.strip_prefix("TracerPid:"))?.trim().parse().ok()?;
        procs::proc(tracer).filter(|p| tracer != 0 && p.comm == "criu")
    })
}

/// Every `WORD N` value a program printed, in order, from a CRI log (`counter` prints `count N`,
/// `memhog` prints `ok N`).
pub fn values(log: &Path, word: &str) -> Vec<u64> {
    let marker = format!(" stdout F {word} ");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(marker.as_str()).and_then(|(_, n)| n.trim().parse().ok()))
        .collect()
}

/// Waits until `word N` in `log` goes past `from` by 3: the program runs.
pub fn wait_value_advances(log: &Path, word: &str, from: u64, timeout: Duration) -> Result<u64> {
    crate::wait_for(&format!("{word} > {} in {}", from + 2, log.display()), timeout, || {
        Ok(values(log, word).last().copied().filter(|v| *v > from + 2))
    })
}

/// Everything a CRI pod of one containerd brings with it, to compare before and after an
/// operation that must leave nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub items: BTreeSet<String>,
}

impl Inventory {
    /// `tmp`: a directory whose entries count too (the CLI's TMPDIR).
    pub async fn take(cd: &Containerd, rs: &mut Cri, tmp: &Path) -> Result<Inventory> {
        let mut items = BTreeSet::new();
        for p in rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items {
            items.insert(format!("CRI sandbox {} ({:?})", p.id, p.metadata.map(|m| m.name)));
        }
        for c in rs.list_containers(ListContainersRequest { filter: None }).await?.into_inner().containers {
            items.insert(format!("CRI container {} ({:?})", c.id, c.metadata.map(|m| m.name)));
        }
        let ctr = cd.ctr(CRI_NAMESPACE);
        for c in ctr.containers()? {
            items.insert(format!("containerd container {c}"));
        }
        for t in ctr.tasks()? {
            items.insert(format!("task {} pid {}", t.id, t.pid));
        }
        let sandboxes = ctr.ok(["sandboxes", "ls", "-q"]).unwrap_or_default();
        for s in sandboxes.lines().filter(|l| !l.is_empty()) {
            items.insert(format!("containerd sandbox {s}"));
        }
        for m in cleanup::mounts_under(cd.dir())? {
            items.insert(format!("mount {}", m.display()));
        }
        for dir in [cd.state().join("netns"), tmp.to_path_buf()] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    items.insert(format!("file {}", e.path().display()));
                }
            }
        }
        for s in procs::shims_of(cd.socket())? {
            items.insert(format!("shim pid {}", s.pid));
            for d in descendants(s.pid)? {
                items.insert(format!("process {} {:?} under shim {}", d.pid, d.comm, s.pid));
            }
        }
        Ok(Inventory { items })
    }

    /// What `later` has that this one has not.
    pub fn added(&self, later: &Inventory) -> Vec<String> {
        later.items.difference(&self.items).cloned().collect()
    }
}

/// Waits (removal is partly asynchronous: a shim exits after its pod is removed) until nothing
/// is in the inventory that was not there before.
pub async fn wait_nothing_added(cd: &Containerd, rs: &mut Cri, tmp: &Path, before: &Inventory) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = Inventory::take(cd, rs, tmp).await?;
        let added = before.added(&now);
        if added.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("left behind: {added:#?}");
        }
        tokio::time::sleep(crate::wait::POLL).await;
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks a checkpoint directory the way restore does before trusting it: every file the
/// manifest lists has its size and SHA-256, and nothing else is there.
pub fn verify_checkpoint_dir(dir: &Path) -> Result<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("podcr.manifest.json"))?)?;
    let files = manifest["files"].as_object().context("manifest has no files")?;
    // The harness's node signs every checkpoint: the signature must be there.
    anyhow::ensure!(dir.join("podcr.manifest.sig").is_file(), "the checkpoint is not signed");
    let mut seen = BTreeSet::from(["podcr.manifest.json".to_string(), "podcr.manifest.sig".to_string()]);
    for (name, digest) in files {
        let data = std::fs::read(dir.join(name)).with_context(|| format!("read {name}"))?;
        anyhow::ensure!(Some(data.len() as u64) == digest["size"].as_u64(), "{name}: size differs from the manifest");
        anyhow::ensure!(
            Some(sha256_hex(&data).as_str()) == digest["sha256"].as_str(),
            "{name}: sha256 differs from the manifest"
        );
        seen.insert(name.clone());
    }
    let present: BTreeSet<String> = crate::pods::dir_entries(dir)?.into_iter().collect();
    anyhow::ensure!(present == seen, "files not in the manifest: {:?}", present.difference(&seen).collect::<Vec<_>>());
    Ok(manifest)
}

/// Rewrites fields of `podcr.manifest.json` (which is not itself hashed) and signs it again with
/// the run's key: the edited checkpoint passes the signature and integrity checks, as one made
/// by a trusted but buggy or compromised node would.
pub fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> Result<()> {
    let path = dir.join("podcr.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    crate::node_config::resign(dir)
}

/// Copies a checkpoint directory (plain files only).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// Where each entry's data lies in an uncompressed ustar archive: (path, offset, size). Parsed by
/// hand (512-byte headers, octal sizes) to stay free of a tar library; podcr writes no long names.
fn tar_layout(tar: &Path) -> Result<Vec<(String, u64, u64)>> {
    let data = std::fs::read(tar)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 512 <= data.len() {
        let h = &data[pos..pos + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| String::from_utf8_lossy(&h[r]).trim_end_matches('\0').to_string();
        let size = u64::from_str_radix(field(124..136).trim(), 8).context("tar size field")?;
        let (prefix, name) = (field(345..500), field(0..100));
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        anyhow::ensure!(h[156] != b'x' && h[156] != b'L', "pax/GNU long-name entries are not handled");
        out.push((path, (pos + 512) as u64, size));
        pos += 512 + (size as usize).div_ceil(512) * 512;
    }
    Ok(out)
}

/// Replaces the content of `member` in the uncompressed container archive `<dir>/<archive>` with
/// `content` (same length) and fixes both the container manifest and the pod manifest, so that
/// every checksum verifies and only what is *inside* the member is wrong: the archive passes
/// podcr's checks and the damage reaches CRIU.
pub fn rewrite_member_rehashed(
    dir: &Path,
    archive: &str,
    member: &str,
    content: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<()> {
    let tar_path = dir.join(archive);
    let layout = tar_layout(&tar_path)?;
    let (_, off, size) =
        layout.iter().find(|(p, _, _)| p == member).with_context(|| format!("{member} not in {archive}"))?.clone();
    let (_, moff, msize) =
        layout.iter().find(|(p, _, _)| p == "podcr.container.manifest.json").context("no container manifest")?.clone();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&tar_path)?;
    let mut read = |off: u64, size: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    };
    let old = read(off, size)?;
    let manifest = read(moff, msize)?;
    let new = content(&old);
    anyhow::ensure!(new.len() == old.len(), "the new content must keep the size");
    // The digests are fixed-length hex strings: replacing one keeps every offset.
    let manifest = String::from_utf8(manifest)?.replace(&sha256_hex(&old), &sha256_hex(&new));
    anyhow::ensure!(manifest.len() as u64 == msize, "manifest length changed");
    f.seek(SeekFrom::Start(off))?;
    f.write_all(&new)?;
    f.seek(SeekFrom::Start(moff))?;
    f.write_all(manifest.as_bytes())?;
    f.sync_all()?;
    drop(f);
    let whole = std::fs::read(&tar_path)?;
    edit_manifest(dir, |m| m["files"][archive]["sha256"] = serde_json::json!(sha256_hex(&whole)))
}

/// Edits a JSON document of a plain (uncompressed) container archive, `member` of `archive` in
/// checkpoint `dir`, to any length: the archive is rewritten entry by entry, the member's digest
/// in the container manifest and the archive's in the pod manifest are fixed, so the edited
/// checkpoint passes every integrity check (as one edited by someone with write access would).
pub fn edit_member_json(
    dir: &Path,
    archive: &str,
    member: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<()> {
    let tar_path = dir.join(archive);
    let mut entries: Vec<(tar::Header, String, Vec<u8>)> = Vec::new();
    {
        let mut ar = tar::Archive::new(std::fs::File::open(&tar_path)?);
        for e in ar.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            entries.push((e.header().clone(), path, data));
        }
    }
    let (old, new) = {
        let entry =
            entries.iter_mut().find(|(_, p, _)| p == member).with_context(|| format!("{member} not in {archive}"))?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&entry.2).with_context(|| format!("{member} is not JSON"))?;
        edit(&mut doc);
        let new = serde_json::to_vec(&doc)?;
        (std::mem::replace(&mut entry.2, new.clone()), new)
    };
    let manifest =
        entries.iter_mut().find(|(_, p, _)| p == "podcr.container.manifest.json").context("no container manifest")?;
    let mut m: serde_json::Value = serde_json::from_slice(&manifest.2)?;
    anyhow::ensure!(m["files"][member]["sha256"] == sha256_hex(&old), "the container manifest does not list {member}");
    m["files"][member] = serde_json::json!({"sha256": sha256_hex(&new), "size": new.len()});
    manifest.2 = serde_json::to_vec(&m)?;
    let tmp = dir.join(format!(".{archive}.edit"));
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tmp)?);
        for (mut h, path, data) in entries {
            h.set_size(data.len() as u64);
            b.append_data(&mut h, &path, data.as_slice())?;
        }
        b.into_inner()?.sync_all()?;
    }
    std::fs::rename(&tmp, &tar_path)?;
    let whole = std::fs::read(&tar_path)?;
    edit_manifest(dir, |m| m["files"][archive] = serde_json::json!({"sha256": sha256_hex(&whole), "size": whole.len()}))
}

/// Edits a JSON file of the pod directory (`pod.dump`, `pod.options`) and fixes its digest in
/// the pod manifest.
pub fn edit_pod_json(dir: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Result<()> {
    let path = dir.join(file);
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    edit(&mut doc);
    let data = serde_json::to_vec(&doc)?;
    std::fs::write(&path, &data)?;
    edit_manifest(dir, |m| m["files"][file] = serde_json::json!({"sha256": sha256_hex(&data), "size": data.len()}))
}

/// A tmpfs of `size` (e.g. "2m") on a new directory `dir`, unmounted and removed on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let opts = format!("size={size},mode=0700");
        nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
            .with_context(|| format!("mount tmpfs on {}", dir.display()))?;
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("podcr-tests: unmount {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One raw ustar header + data, written by hand: tar libraries refuse `..` and absolute names,
/// which is the point here.
fn raw_tar_entry(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8], link: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len().min(99)].copy_from_slice(&name[..name.len().min(99)]);
    h[100..107].copy_from_slice(b"0000600");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len().min(99)].copy_from_slice(&link[..link.len().min(99)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A pod archive (the `podcr checkpoint --archive` form) with one hostile entry after a valid
/// one. `kind` is the ustar type flag (b'0' file, b'2' symlink, b'1' hard link, b'3' char device).
pub fn hostile_pod_archive(dest: &Path, entry: &[u8], kind: u8, link: &[u8]) -> Result<()> {
    let mut out = Vec::new();
    raw_tar_entry(&mut out, b"pod.options", b'0', b"{\"version\":1,\"containers\":{}}", b"");
    raw_tar_entry(&mut out, entry, kind, b"pwned\n", link);
    out.extend_from_slice(&[0u8; 1024]);
    std::fs::write(dest, out)?;
    Ok(())
}
