//! Checkpoints made into weapons, and output directories made into traps (issue 14), against
//! the real stack: containerd, the podcr shim, runc and CRIU.
//!
//! Each restore case takes one real checkpoint of a small pod, makes it hostile the way an
//! attacker would (every manifest recomputed and, where the case is not about the signature,
//! signed again with a key the node trusts: a compromised or buggy trusted node), and runs
//! `podcr restore` on it. Every case asserts: refused with a message that names the problem; no
//! sandbox, container, task, mount, shim or process left (the fault tests' inventory); the CLI's
//! scratch directory empty; a canary file untouched; and the CLI's peak memory and bytes
//! written within [`MAX_CLI_RSS`] and [`MAX_CLI_WRITTEN`]. Peak memory is the peak charge of a
//! memory cgroup the CLI runs alone in (its anonymous memory and the page cache it dirties, so
//! at least its VmHWM: `ru_maxrss` cannot be used, since Linux carries the forking test
//! process's RSS over the exec); bytes written are `ru_oublock` from `wait4` (counted when
//! pages are dirtied). The claimed sizes
//! (3 GiB names and PAX headers, a 16 GiB entry) are claims in headers of small files, as an
//! attacker's would be: the readers must refuse at the header, before any of it is allocated.
//! In every case but one the CLI refuses before a pod exists, so no shim reads these bytes; the
//! one (a long name inside a container's rootfs diff, which only the shim reads) also bounds the
//! shim's peak memory: the largest VmHWM of any new shim process, sampled while the restore runs
//! (VmHWM never decreases, so a sample after a large allocation sees it), within
//! [`MAX_SHIM_HWM`].
//!
//! The output directory cases checkpoint real pods: a symlink planted while the checkpoint runs,
//! two pods into one directory at once, and directories another user owns or may write.

use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{ensure, Context, Result};
use podcr_tests::{
    cmd::Output,
    faults::{self, Inventory},
    images,
    pods::{self, Cri},
    Containerd, Runtime, CRI_NAMESPACE,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OnceCell};

const T: Duration = Duration::from_secs(60);
const POD_NS: &str = "podcr-test";
const COUNTER: &[&str] = &["/usr/local/bin/counter", "/count", "100"];
/// Memory that takes CRIU a few seconds to dump: the window for the output directory races.
const HOG_256: &[&str] = &["/usr/local/bin/memhog", "256", "/memhog"];
/// The CLI's peak RSS on any hostile restore. A legitimate restore of the base checkpoint stays
/// far below; the measurements were 4 GiB and 10 GiB.
const MAX_CLI_RSS: u64 = 128 << 20;
/// What the CLI may write (dirtied pages) on any hostile restore: the manifest and signature it
/// unpacks before refusing, and its own logs. The measurement was 3 GiB.
const MAX_CLI_WRITTEN: u64 = 16 << 20;
/// A new pod's shim's VmHWM while it refuses a hostile rootfs diff: its own runtime and buffers.
const MAX_SHIM_HWM: u64 = 256 << 20;
const GIB: u64 = 1 << 30;

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A `podcr` run with what the kernel accounted to it.
struct Measured {
    out: Output,
    max_rss: u64,
    written: u64,
}

/// A memory cgroup for one process, removed when dropped: v1's `max_usage_in_bytes` or v2's
/// `memory.peak` is the process's peak charge.
struct MemCgroup {
    dir: PathBuf,
    peak_file: &'static str,
}

impl MemCgroup {
    fn new(case: &str) -> Result<MemCgroup> {
        let (root, peak_file) = if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            ("/sys/fs/cgroup/memory", "memory.max_usage_in_bytes")
        } else {
            ("/sys/fs/cgroup", "memory.peak")
        };
        let dir = Path::new(root).join(format!("podcr-hostile-{}-{case}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("create memory cgroup {}", dir.display()))?;
        let cg = MemCgroup { dir, peak_file };
        ensure!(cg.dir.join(peak_file).exists(), "{} has no {peak_file}: cannot measure peak memory", cg.dir.display());
        Ok(cg)
    }

    fn peak(&self) -> Result<u64> {
        let text = std::fs::read_to_string(self.dir.join(self.peak_file))?;
        Ok(text.trim().parse()?)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs `podcr ARGS` (as `faults::podcr` does: the run's config, `TMPDIR=tmp`) in a memory cgroup
/// of its own, and reaps it with `wait4` for its block writes.
fn podcr_measured(cd: &Containerd, tmp: &Path, case: &str, args: Vec<String>) -> Result<Measured> {
    let mut cmd = faults::podcr_command(cd, tmp, &args)?;
    let (stdout, stderr) = (tmp.join("..").join("stdout"), tmp.join("..").join("stderr"));
    cmd.stdout(std::fs::File::create(&stdout)?).stderr(std::fs::File::create(&stderr)?);
    let cg = MemCgroup::new(case)?;
    let procs = std::ffi::CString::new(cg.dir.join("cgroup.procs").as_os_str().as_encoded_bytes())?;
    // SAFETY: between fork and exec only async-signal-safe calls: open, write, close on a path
    // prepared before the fork. Joining the cgroup there charges the new program from its start.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
            libc::close(fd);
            if n != 2 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn podcr")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; pid is our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(rc == pid, "wait4 podcr: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let out = Output {
        cmdline: format!("podcr {}", args.join(" ")),
        code,
        stdout: std::fs::read_to_string(&stdout)?,
        stderr: std::fs::read_to_string(&stderr)?,
    };
    Ok(Measured { out, max_rss: cg.peak()?, written: usage.ru_oublock as u64 * 512 })
}

/// A file no case may change: its bytes and mtime before and after.
struct Canary {
    path: PathBuf,
    data: Vec<u8>,
    mtime: SystemTime,
}

impl Canary {
    fn new(dir: &Path) -> Result<Canary> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("canary");
        let data = b"podcr canary: nothing may write here\n".to_vec();
        if !path.exists() {
            std::fs::write(&path, &data)?;
        }
        let mtime = std::fs::metadata(&path)?.modified()?;
        Ok(Canary { path, data, mtime })
    }

    fn check(&self) -> Result<()> {
        ensure!(std::fs::read(&self.path)? == self.data, "the canary's content changed");
        ensure!(std::fs::metadata(&self.path)?.modified()? == self.mtime, "the canary was written");
        let dir = self.path.parent().context("canary dir")?;
        ensure!(
            pods::dir_entries(dir)? == ["canary"],
            "something appeared next to the canary: {:?}",
            pods::dir_entries(dir)?
        );
        Ok(())
    }
}

/// One real checkpoint of a one-container pod, zstd-compressed, made once.
struct Base {
    dir: PathBuf,
    image: String,
}

static BASE: OnceCell<Base> = OnceCell::const_new();

async fn base(cd: &'static Containerd) -> Result<&'static Base> {
    BASE.get_or_try_init(|| async {
        let image = blocking(move || cd.import(CRI_NAMESPACE, &images::BUSYBOX)).await?;
        let mut rs = cd.cri_runtime().await?;
        let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, "hostile-base", &image, &[("app", COUNTER)]).await?;
        let log = pod.log("app");
        blocking(move || pods::wait_count(&log, 3, T).map(|_| ())).await?;
        let dir = cd.dir().join("hostile-base-ckpt");
        let mut args =
            strings(&["checkpoint", "--pod-namespace", POD_NS, "hostile-base", "--compression", "zstd", "-o"]);
        args.push(dir.display().to_string());
        let out = blocking(move || pods::podcr(cd, args)).await?;
        pods::ensure_success("podcr checkpoint (base)", &out)?;
        pods::remove_pod(&mut rs, &pod.id).await?;
        Ok(Base { dir, image })
    })
    .await
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A copy of the base checkpoint to make hostile.
fn copy_base(cd: &Containerd, base: &Base, case: &str) -> Result<PathBuf> {
    let dir = cd.dir().join(format!("hostile-{case}"));
    faults::copy_dir(&base.dir, &dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Replaces the container archive `app.tar.zst` with `data` and recomputes the pod manifest,
/// which [`faults::edit_manifest`] signs again with a trusted key.
fn replace_archive(dir: &Path, data: &[u8], unpacked_entries: u64) -> Result<()> {
    let name = "app.tar.zst";
    std::fs::write(dir.join(name), data)?;
    let (sha, size) = (sha256_hex(data), data.len() as u64);
    faults::edit_manifest(dir, |m| {
        m["files"][name] = serde_json::json!({"sha256": sha, "size": size});
        if let Some(cs) = m["containers"].as_array_mut() {
            for c in cs {
                c["unpacked"] = serde_json::json!({"bytes": 64u64 << 20, "entries": unpacked_entries});
            }
        }
    })
}

/// A raw tar header (GNU) with `name` in place, the given type and claimed size.
fn header(name: &[u8], kind: tar::EntryType, claimed: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o600);
    h.set_size(claimed);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// The head of a transport archive as podcr packs it: the base checkpoint's signed manifest and
/// its signature, so that whatever entry follows is read under a valid signature.
fn signed_head(base: &Base) -> Result<Vec<u8>> {
    let mut tar = Vec::new();
    for name in ["podcr.manifest.json", "podcr.manifest.sig"] {
        let data = std::fs::read(base.dir.join(name))?;
        tar.extend(header(name.as_bytes(), tar::EntryType::Regular, data.len() as u64));
        tar.extend(&data);
        tar.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    Ok(tar)
}

fn zstd(data: &[u8]) -> Result<Vec<u8>> {
    Ok(zstd::stream::encode_all(data, 3)?)
}

/// `podcr restore SOURCE` must be refused, with `expect` in its message, leaving nothing, and
/// within the CLI bounds. Returns what the CLI used.
async fn refused(cd: &'static Containerd, case: &str, source: &Path, expect: &[&str]) -> Result<Measured> {
    let mut rs: Cri = cd.cri_runtime().await?;
    let tmp = cd.dir().join("hostile-tmp").join(case).join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let canary = Canary::new(&cd.dir().join("hostile-canary"))?;
    let before = Inventory::take(cd, &mut rs, &tmp).await?;
    let name = format!("hostile-{case}");
    let args = vec!["restore".to_string(), source.display().to_string(), "--name".into(), name.clone()];
    let m = {
        let (tmp, args, case) = (tmp.clone(), args.clone(), case.to_string());
        blocking(move || podcr_measured(cd, &tmp, &case, args)).await?
    };
    eprintln!(
        "{case}: exit {}, peak memory {} KiB, wrote {} KiB: {}",
        m.out.code,
        m.max_rss >> 10,
        m.written >> 10,
        m.out.stderr.trim()
    );
    ensure!(!m.out.success(), "{case}: the hostile checkpoint was restored: {:?}", m.out);
    for e in expect {
        ensure!(m.out.stderr.contains(e), "{case}: the refusal does not say {e:?}:\n{}", m.out.stderr);
    }
    ensure!(
        m.max_rss <= MAX_CLI_RSS,
        "{case}: the CLI peaked at {} MiB (bound {} MiB)",
        m.max_rss >> 20,
        MAX_CLI_RSS >> 20
    );
    ensure!(
        m.written <= MAX_CLI_WRITTEN,
        "{case}: the CLI wrote {} KiB (bound {} KiB)",
        m.written >> 10,
        MAX_CLI_WRITTEN >> 10
    );
    faults::wait_nothing_added(cd, &mut rs, &tmp, &before)
        .await
        .with_context(|| format!("{case}: after the refusal"))?;
    ensure!(pods::find_pod(&mut rs, &name).await?.is_none(), "{case}: a pod was left");
    ensure!(pods::dir_entries(&tmp)?.is_empty(), "{case}: the CLI left {:?} in its TMPDIR", pods::dir_entries(&tmp)?);
    canary.check().with_context(|| format!("{case}: canary"))?;
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_is_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "forged")?;
    // The manifest edited (its own digests still consistent), the node's signature kept.
    let path = dir.join("podcr.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    m["sandbox_id"] = serde_json::json!("forged");
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    refused(cd, "forged", &dir, &["untrusted checkpoint", "modified or forged"]).await?;
    // And a signature of the right manifest with bytes flipped.
    let dir = copy_base(cd, base, "forged-bytes")?;
    let sig_path = dir.join("podcr.manifest.sig");
    let mut sig: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig_path)?)?;
    let s = sig["signature"].as_str().context("signature")?.to_string();
    let rest = s.get(1..).unwrap_or_default();
    let flipped = format!("{}{rest}", if s.starts_with('0') { '1' } else { '0' });
    sig["signature"] = serde_json::json!(flipped);
    std::fs::write(&sig_path, serde_json::to_vec(&sig)?)?;
    refused(cd, "forged-bytes", &dir, &["modified or forged"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_signed_by_an_unknown_key_is_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "unknown-key")?;
    let stranger = podcr_archive::signing::generate();
    let manifest = std::fs::read(dir.join("podcr.manifest.json"))?;
    std::fs::write(dir.join("podcr.manifest.sig"), stranger.sign(&manifest)?)?;
    refused(cd, "unknown-key", &dir, &["does not trust", stranger.key_id()]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_checkpoint_is_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "unsigned")?;
    std::fs::remove_file(dir.join("podcr.manifest.sig"))?;
    refused(cd, "unsigned", &dir, &["not signed"]).await?;
    // The same as a transport archive: refused at its first entries.
    let archive = cd.dir().join("hostile-unsigned.tar");
    let out = blocking({
        let (dir, archive) = (dir.clone(), archive.clone());
        move || Ok(podcr_archive::pack_pod_dir(&dir, &archive, podcr_archive::Compression::None)?)
    })
    .await?;
    ensure!(out.entries > 2, "packed {} entries", out.entries);
    refused(cd, "unsigned-archive", &archive, &["not signed"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bounded readers

/// The measurement: a container archive whose first entry is a GNU long name claiming
/// 3 GiB made the CLI peak at 10 GiB and write 3 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_gib_gnu_long_name_is_refused_at_its_header() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "long-name")?;
    let mut tar = header(b"././@LongLink", tar::EntryType::GNULongName, 3 * GIB);
    tar.extend(std::iter::repeat_n(b'a', 110 << 10));
    let data = zstd(&tar)?;
    replace_archive(&dir, &data, 10)?;
    refused(cd, "long-name", &dir, &["GNU long name", "3221225472"]).await?;
    Ok(())
}

/// A transport archive (manifest and signature first, as podcr packs it) whose next entry is a
/// PAX extension header claiming 3 GiB: the issue measured a 4 GiB peak and then a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pax_header_bomb_is_refused_at_its_header() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let mut tar = signed_head(base)?;
    tar.extend(header(b"PaxHeaders/pod.dump", tar::EntryType::XHeader, 3 * GIB));
    tar.extend(std::iter::repeat_n(b'9', 110 << 10));
    let archive = cd.dir().join("hostile-pax.tar.zst");
    std::fs::write(&archive, zstd(&tar)?)?;
    refused(cd, "pax", &archive, &["PAX extension header", "3221225472"]).await?;
    Ok(())
}

/// A transport archive whose `pod.dump` entry claims 16 GiB where the signed manifest says a
/// few KiB: refused at the header, before a byte of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_gib_entry_the_manifest_calls_small_is_refused_at_its_header() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let mut tar = signed_head(base)?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(base.dir.join("podcr.manifest.json"))?)?;
    let small = manifest["files"]["pod.dump"]["size"].as_u64().context("pod.dump size")?;
    ensure!(small < 64 << 10, "pod.dump is {small} bytes");
    tar.extend(header(b"pod.dump", tar::EntryType::Regular, 16 * GIB));
    tar.extend(std::iter::repeat_n(b'{', 110 << 10));
    let archive = cd.dir().join("hostile-16g.tar.zst");
    std::fs::write(&archive, zstd(&tar)?)?;
    refused(cd, "16g", &archive, &["17179869184", "signed manifest says"]).await?;
    Ok(())
}

/// The same inside a container archive: its CRIU memory image claims 16 GiB where the signed
/// manifest says the whole archive unpacks to 4 KiB. The reader is held to that at the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_gib_memory_image_in_a_4_kib_container_archive_is_refused_at_its_header() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "16g-image")?;
    let mut tar = header(b"checkpoint/", tar::EntryType::Directory, 0);
    tar.extend(header(b"checkpoint/pages-1.img", tar::EntryType::Regular, 16 * GIB));
    tar.extend(std::iter::repeat_n(0u8, 110 << 10));
    let data = zstd(&tar)?;
    replace_archive(&dir, &data, 10)?;
    faults::edit_manifest(&dir, |m| {
        if let Some(cs) = m["containers"].as_array_mut() {
            for c in cs {
                c["unpacked"] = serde_json::json!({"bytes": 4096, "entries": 10});
            }
        }
    })?;
    refused(cd, "16g-image", &dir, &["17179869184", "more than the limit of 4096"]).await?;
    Ok(())
}

/// One entry 50,000 directories deep (a 100 KB path in a GNU long name): refused before the
/// name is read, so no directory of it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_nested_directories_are_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "nested")?;
    let path = format!("checkpoint/{}f", "d/".repeat(50_000));
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut dir_header(), "checkpoint/", std::io::empty())?;
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o600);
    b.append_data(&mut h, &path, &b"x"[..])?;
    let data = zstd(&b.into_inner()?)?;
    replace_archive(&dir, &data, 10)?;
    refused(cd, "nested", &dir, &["GNU long name"]).await?;
    Ok(())
}

fn dir_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    h
}

/// 120,000 empty files (every one a valid entry) in one container archive whose signed
/// manifest claims that many: more than the reader's entry cap, refused at the first entry past
/// it, and by the CLI, which writes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inode_flood_is_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "inodes")?;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1)?;
    enc.write_all(&header(b"checkpoint/", tar::EntryType::Directory, 0))?;
    for i in 0..120_000u32 {
        enc.write_all(&header(format!("checkpoint/f{i}").as_bytes(), tar::EntryType::Regular, 0))?;
    }
    enc.write_all(&[0u8; 1024])?;
    let data = enc.finish()?;
    replace_archive(&dir, &data, 120_002)?;
    refused(cd, "inodes", &dir, &["more than 100000 entries"]).await?;
    Ok(())
}

/// A pod of 64 containers whose archives each ask for zstd's largest default-accepted window
/// (128 MiB, 8 GiB across the pod): refused, since podcr reads only the 2 MiB window it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_containers_with_maximal_zstd_windows_are_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "windows")?;
    let app = std::fs::read(dir.join("app.tar.zst"))?;
    let plain = zstd::stream::decode_all(&app[..])?;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1)?;
    enc.window_log(27)?;
    enc.include_contentsize(false)?;
    enc.write_all(&plain)?;
    let wide = enc.finish()?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("podcr.manifest.json"))?)?;
    let template = manifest["containers"][0].clone();
    std::fs::remove_file(dir.join("app.tar.zst"))?;
    let mut containers = Vec::new();
    let mut archives = serde_json::Map::new();
    for i in 0..64 {
        let name = format!("c{i:02}");
        let archive = format!("{name}.tar.zst");
        std::fs::write(dir.join(&archive), &wide)?;
        let mut c = template.clone();
        c["name"] = serde_json::json!(name);
        c["id"] = serde_json::json!(format!("{}-{i}", template["id"].as_str().unwrap_or("c")));
        c["archive"] = serde_json::json!(archive);
        containers.push(c);
        archives.insert(name, serde_json::json!(archive));
    }
    let opts_path = dir.join("pod.options");
    let mut opts: serde_json::Value = serde_json::from_slice(&std::fs::read(&opts_path)?)?;
    opts["containers"] = serde_json::Value::Object(archives.clone());
    let opts_bytes = serde_json::to_vec_pretty(&opts)?;
    std::fs::write(&opts_path, &opts_bytes)?;
    let (wide_sha, wide_size) = (sha256_hex(&wide), wide.len() as u64);
    let (opts_sha, opts_size) = (sha256_hex(&opts_bytes), opts_bytes.len() as u64);
    faults::edit_manifest(&dir, |m| {
        m["containers"] = serde_json::Value::Array(containers);
        if let Some(files) = m["files"].as_object_mut() {
            files.remove("app.tar.zst");
            for a in archives.values() {
                files.insert(
                    a.as_str().unwrap_or_default().to_string(),
                    serde_json::json!({"sha256": wide_sha, "size": wide_size}),
                );
            }
            files.insert("pod.options".into(), serde_json::json!({"sha256": opts_sha, "size": opts_size}));
        }
    })?;
    refused(cd, "windows", &dir, &["Frame requires too much memory"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The output directory

fn checkpoint_args(pod: &str, out: &Path) -> Vec<String> {
    let mut v = strings(&["checkpoint", "--pod-namespace", POD_NS, pod, "-o"]);
    v.push(out.display().to_string());
    v
}

/// A pod that takes CRIU a few seconds to dump, running.
async fn hog_pod(cd: &'static Containerd, rs: &mut Cri, name: &str) -> Result<pods::Pod> {
    let image = base(cd).await?.image.clone();
    let pod = pods::run_pod(cd, rs, Runtime::Podcr, name, &image, &[("hog", HOG_256)]).await?;
    let log = pod.log("hog");
    blocking(move || {
        podcr_tests::wait_until("the hog to fill its memory", T, || Ok(!faults::values(&log, "ok").is_empty()))
    })
    .await?;
    Ok(pod)
}

async fn ensure_running(rs: &mut Cri, pod: &pods::Pod, what: &str) -> Result<()> {
    ensure!(pods::all_running(rs, &pod.id).await?, "{what}: the pod is not running");
    let log = pod.log("hog");
    let from = faults::values(&log, "ok").last().copied().unwrap_or(0);
    blocking(move || faults::wait_value_advances(&log, "ok", from, T))
        .await
        .with_context(|| format!("{what}: the pod is frozen"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_the_output_directory_is_never_followed() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let mut rs = cd.cri_runtime().await?;
    let pod = hog_pod(cd, &mut rs, "hostile-plant").await?;
    let canary = Canary::new(&cd.dir().join("hostile-canary"))?;
    let out = cd.dir().join("hostile-plant-out");
    std::fs::create_dir(&out)?;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700))?;
    let run = faults::spawn_podcr(cd, &cd.dir().join("hostile-tmp/plant"), checkpoint_args("hostile-plant", &out))?;
    // Once the checkpoint has opened the directory and started staging, plant symlinks to the
    // canary under the names it will write.
    let staging = out.join(".podcr-staging");
    blocking(move || podcr_tests::wait_until("the checkpoint to start staging", T, || Ok(staging.exists()))).await?;
    for name in ["hog.tar", "hog.tar.zst", "hog.tar.gz", "pod.options", "pod.dump", "podcr.manifest.json"] {
        std::os::unix::fs::symlink(&canary.path, out.join(name))?;
    }
    let done = blocking(move || run.wait(Duration::from_secs(300))).await?;
    eprintln!("planted symlinks: exit {}: {}", done.code, done.stderr.trim());
    ensure!(!done.success(), "the checkpoint succeeded over planted symlinks");
    ensure!(
        done.stderr.contains(&format!("{}/", out.display())) && !done.stderr.contains("/proc/"),
        "the refusal does not name the output directory as the caller knows it:\n{}",
        done.stderr
    );
    ensure!(done.stderr.contains("exists"), "the refusal does not say a file was in the way:\n{}", done.stderr);
    canary.check()?;
    ensure!(pods::dir_entries(&out)?.is_empty(), "left in the output: {:?}", pods::dir_entries(&out)?);
    ensure_running(&mut rs, &pod, "after the planted symlinks").await?;

    // The directory itself swapped for a symlink mid-checkpoint: the checkpoint goes on into the
    // directory it opened, and nothing reaches the symlink's target.
    let out2 = cd.dir().join("hostile-swap-out");
    let moved = cd.dir().join("hostile-swap-moved");
    let trap = cd.dir().join("hostile-canary-dir");
    std::fs::create_dir_all(&trap)?;
    std::fs::create_dir(&out2)?;
    let run = faults::spawn_podcr(cd, &cd.dir().join("hostile-tmp/swap"), checkpoint_args("hostile-plant", &out2))?;
    let staging = out2.join(".podcr-staging");
    blocking(move || podcr_tests::wait_until("the checkpoint to start staging", T, || Ok(staging.exists()))).await?;
    std::fs::rename(&out2, &moved)?;
    std::os::unix::fs::symlink(&trap, &out2)?;
    let done = blocking(move || run.wait(Duration::from_secs(300))).await?;
    eprintln!("swapped directory: exit {}: {}", done.code, done.stderr.trim());
    ensure!(
        pods::dir_entries(&trap)?.is_empty(),
        "the checkpoint wrote through the swapped-in symlink: {:?}",
        pods::dir_entries(&trap)?
    );
    if done.success() {
        faults::verify_checkpoint_dir(&moved).context("the checkpoint in the directory it opened")?;
    }
    ensure_running(&mut rs, &pod, "after the swapped directory").await?;
    pods::remove_pod(&mut rs, &pod.id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_checkpointed_into_one_directory_at_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let mut rs = cd.cri_runtime().await?;
    let a = hog_pod(cd, &mut rs, "hostile-two-a").await?;
    let b = hog_pod(cd, &mut rs, "hostile-two-b").await?;
    let out = cd.dir().join("hostile-two-out");
    std::fs::create_dir(&out)?;
    // Both start at once: before, both passed the emptiness check and one pod's images could
    // land in the other's checkpoint.
    let ra = faults::spawn_podcr(cd, &cd.dir().join("hostile-tmp/two-a"), checkpoint_args("hostile-two-a", &out))?;
    let rb = faults::spawn_podcr(cd, &cd.dir().join("hostile-tmp/two-b"), checkpoint_args("hostile-two-b", &out))?;
    let da = blocking(move || ra.wait(Duration::from_secs(300))).await?;
    let db = blocking(move || rb.wait(Duration::from_secs(300))).await?;
    eprintln!("pod a: exit {} {}\npod b: exit {} {}", da.code, da.stderr.trim(), db.code, db.stderr.trim());
    ensure!(da.success() != db.success(), "want exactly one checkpoint to succeed: a {}, b {}", da.code, db.code);
    let (winner, loser) = if da.success() { ("hostile-two-a", &db) } else { ("hostile-two-b", &da) };
    ensure!(
        loser.stderr.contains("in use by another checkpoint") || loser.stderr.contains("not empty"),
        "the refused checkpoint does not say why:\n{}",
        loser.stderr
    );
    faults::verify_checkpoint_dir(&out)?;
    let opts: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("pod.options"))?)?;
    ensure!(
        opts["annotations"]["org.criu.checkpoint.pod.name"] == winner,
        "the checkpoint is not (only) {winner}'s: {opts}"
    );
    ensure!(
        pods::dir_entries(&out)?.iter().filter(|f| f.contains(".tar")).count() == 1,
        "{:?}",
        pods::dir_entries(&out)?
    );
    ensure_running(&mut rs, &a, "pod a").await?;
    ensure_running(&mut rs, &b, "pod b").await?;
    pods::remove_pod(&mut rs, &a.id).await?;
    pods::remove_pod(&mut rs, &b.id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_directories_others_own_or_may_write_are_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let mut rs = cd.cri_runtime().await?;
    let image = base(cd).await?.image.clone();
    let pod = pods::run_pod(cd, &mut rs, Runtime::Podcr, "hostile-owner", &image, &[("app", COUNTER)]).await?;
    let log = pod.log("app");
    {
        let l = log.clone();
        blocking(move || pods::wait_count(&l, 3, T).map(|_| ())).await?;
    }
    let nobody = nix::unistd::Uid::from_raw(65534);
    type Make = Box<dyn Fn(&Path) -> Result<()>>;
    let cases: Vec<(&str, Make, &str)> = vec![
        ("owned", Box::new(move |d: &Path| Ok(nix::unistd::chown(d, Some(nobody), None)?)), "owned by uid 65534"),
        (
            "world-writable",
            Box::new(|d: &Path| Ok(std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))?)),
            "writable",
        ),
        (
            "group-writable",
            Box::new(|d: &Path| Ok(std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o770))?)),
            "writable",
        ),
        (
            "parent-owned",
            Box::new(move |d: &Path| Ok(nix::unistd::chown(d.parent().context("parent")?, Some(nobody), None)?)),
            "ancestor",
        ),
    ];
    for (case, make, expect) in cases {
        let parent = cd.dir().join(format!("hostile-owner-{case}"));
        let out = parent.join("out");
        std::fs::create_dir_all(&out)?;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700))?;
        make(&out)?;
        let o = faults::podcr(cd, &cd.dir().join("hostile-tmp").join(case), checkpoint_args("hostile-owner", &out))?;
        eprintln!("{case}: exit {}: {}", o.code, o.stderr.trim());
        ensure!(!o.success(), "{case}: the checkpoint went into a directory another user controls");
        ensure!(o.stderr.contains(expect), "{case}: the refusal does not say {expect:?}:\n{}", o.stderr);
        ensure!(pods::dir_entries(&out)?.is_empty(), "{case}: written: {:?}", pods::dir_entries(&out)?);
        let from = pods::last_count(&log).unwrap_or(0);
        let l = log.clone();
        blocking(move || pods::wait_count(&l, from + 2, T).map(|_| ()))
            .await
            .with_context(|| format!("{case}: the pod stopped counting"))?;
    }
    pods::remove_pod(&mut rs, &pod.id).await?;
    Ok(())
}

/// Samples the VmHWM of every shim of `cd` that did not exist when this started, until
/// [`ShimSampler::finish`]: the largest seen.
struct ShimSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl ShimSampler {
    fn start(cd: &Containerd) -> Result<ShimSampler> {
        let socket = cd.socket().to_path_buf();
        let before: std::collections::HashSet<u32> =
            podcr_tests::procs::shims_of(&socket)?.iter().map(|p| p.pid).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut seen) = (0u64, std::collections::HashSet::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for p in podcr_tests::procs::shims_of(&socket).unwrap_or_default() {
                    if before.contains(&p.pid) {
                        continue;
                    }
                    // Only after the exec: before it, the process is containerd's fork.
                    let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid)).unwrap_or_default();
                    if !exe.to_string_lossy().contains("containerd-shim-podcr-v1") {
                        continue;
                    }
                    if let Some(h) = vm_hwm(p.pid) {
                        peak = peak.max(h);
                        seen.insert(p.pid);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (peak, seen.len())
        });
        Ok(ShimSampler { stop, thread })
    }

    fn finish(self) -> Result<(u64, usize)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the shim sampler panicked"))
    }
}

/// The base container archive rebuilt with `rootfs-diff.tar` replaced by `diff` and its
/// container manifest recomputed: an archive as a trusted node would write it.
fn with_rootfs_diff(archive: &[u8], diff: &[u8]) -> Result<(Vec<u8>, u64, u64)> {
    let plain = zstd::stream::decode_all(archive)?;
    let mut entries: Vec<(String, tar::EntryType, Vec<u8>)> = Vec::new();
    for e in tar::Archive::new(&plain[..]).entries()? {
        let mut e = e?;
        let path = String::from_utf8(e.path_bytes().into_owned())?;
        let kind = e.header().entry_type();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data)?;
        entries.push((path, kind, data));
    }
    ensure!(entries.iter().any(|(p, _, _)| p == "rootfs-diff.tar"), "the base checkpoint has no rootfs diff");
    let mut files = serde_json::Map::new();
    let mut b = tar::Builder::new(Vec::new());
    let (mut bytes, mut count) = (0u64, 0u64);
    for (path, kind, data) in &mut entries {
        if path == "rootfs-diff.tar" {
            *data = diff.to_vec();
        }
        if path == "podcr.container.manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(data)?;
            m["files"] = serde_json::Value::Object(files.clone());
            *data = serde_json::to_vec_pretty(&m)?;
        } else if *kind == tar::EntryType::Regular {
            files.insert(path.clone(), serde_json::json!({"sha256": sha256_hex(data), "size": data.len()}));
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory { 0o700 } else { 0o600 });
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path.as_str(), &data[..])?;
        bytes += data.len() as u64;
        count += 1;
    }
    Ok((zstd(&b.into_inner()?)?, bytes, count))
}

/// A container archive that passes every check the CLI makes (signed, hashed, well-formed),
/// whose rootfs diff starts with a GNU long name claiming 3 GiB: the shim reads it when it
/// creates the container, and must refuse it at the header with its memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_gib_long_name_in_a_rootfs_diff_is_refused_by_the_shim() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cd = Containerd::shared()?;
    let base = base(cd).await?;
    let dir = copy_base(cd, base, "diff-long-name")?;
    let mut diff = header(b"././@LongLink", tar::EntryType::GNULongName, 3 * GIB);
    diff.extend(std::iter::repeat_n(b'a', 110 << 10));
    let (archive, bytes, entries) = with_rootfs_diff(&std::fs::read(dir.join("app.tar.zst"))?, &diff)?;
    replace_archive(&dir, &archive, entries)?;
    let (sha, size) = (sha256_hex(&archive), archive.len() as u64);
    faults::edit_manifest(&dir, |m| {
        m["files"]["app.tar.zst"] = serde_json::json!({"sha256": sha, "size": size});
        if let Some(cs) = m["containers"].as_array_mut() {
            for c in cs {
                c["unpacked"] = serde_json::json!({"bytes": bytes, "entries": entries});
            }
        }
    })?;
    let sampler = ShimSampler::start(cd)?;
    let refusal = refused(cd, "diff-long-name", &dir, &["GNU long name"]).await;
    let (peak, shims) = sampler.finish()?;
    refusal?;
    eprintln!("diff-long-name: {shims} new shim processes, peak VmHWM {} KiB", peak >> 10);
    ensure!(shims > 0, "no shim read the checkpoint: the case did not reach the shim");
    ensure!(peak <= MAX_SHIM_HWM, "a shim peaked at {} MiB (bound {} MiB)", peak >> 20, MAX_SHIM_HWM >> 20);
    Ok(())
}
