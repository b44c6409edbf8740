//! The cgroup v2 code paths against a real cgroup2 hierarchy, on any host that can mount one:
//! this project's test machine is cgroup v1 (hybrid), so a private `mount -t cgroup2` on a
//! temporary directory stands in for a v2 node's /sys/fs/cgroup. Needs root; without root, or
//! where the kernel refuses the mount, each test prints a SKIP line and returns.
//!
//! What it covers: the v2 freezer (`cgroup.freeze`, waiting on `cgroup.events`) freezing and
//! thawing real processes in two cgroups at once; v2 path resolution from `/proc/<pid>/cgroup`;
//! the pod cgroup and the shim cgroup joined on a v2 hierarchy.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    cgroups::{self, ControllerCgroup},
    pod::{
        cgroup::PodCgroup,
        freezer::{freeze_all, thaw_all, Freezer},
    },
};

/// A private cgroup2 mount with one test cgroup in it, and the processes the test started.
/// Dropping it kills the processes, removes every cgroup made below the test cgroup, and
/// unmounts.
struct Cgroup2 {
    mount: tempfile::TempDir,
    /// `<mount>/podcr-unit-<pid>-<name>`.
    root: PathBuf,
    children: Vec<Child>,
}

impl Cgroup2 {
    fn new(name: &str) -> Option<Cgroup2> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: cgroup2 test {name}: needs root");
            return None;
        }
        let mount = tempfile::tempdir().ok()?;
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC;
        if let Err(e) = nix::mount::mount(Some("cgroup2"), mount.path(), Some("cgroup2"), flags, None::<&str>) {
            eprintln!("SKIP: cgroup2 test {name}: the kernel refuses a cgroup2 mount here: {e}");
            return None;
        }
        let root = mount.path().join(format!("podcr-unit-{}-{name}", std::process::id()));
        std::fs::create_dir(&root).ok()?;
        Some(Cgroup2 { mount, root, children: Vec::new() })
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A `sleep` moved into `dir`.
    fn spawn_in(&mut self, dir: &Path) -> u32 {
        let child = Command::new("sleep").arg("600").stdin(Stdio::null()).spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        pid
    }

    /// The relative path of a cgroup as `/proc/<pid>/cgroup` shows it.
    fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(self.mount.path()).unwrap().display())
    }
}

fn events_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.freeze"), "0");
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deepest first: a cgroup is removed only once it has no children.
        let mut dirs = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = nix::mount::umount2(self.mount.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn the_v2_freezer_freezes_two_cgroups_at_once_and_thaws_them() {
    let Some(mut cg) = Cgroup2::new("freeze") else {
        return;
    };
    let (c1, c2) = (cg.mkdir("pod/c1"), cg.mkdir("pod/c2"));
    let (p1, p2) = (cg.spawn_in(&c1), cg.spawn_in(&c2));
    let freezers = [Freezer::V2(c1.clone()), Freezer::V2(c2.clone())];
    assert_eq!(freezers[0].pids(), [p1]);

    freeze_all(&freezers).unwrap();
    // The kernel's word, not ours: both report frozen in cgroup.events.
    assert!(events_frozen(&c1) && events_frozen(&c2), "not frozen after freeze_all");
    assert!(freezers.iter().all(|f| f.is_frozen().unwrap()));
    for pid in [p1, p2] {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "a frozen process is still there");
    }

    thaw_all(&freezers).unwrap();
    assert!(!events_frozen(&c1) && !events_frozen(&c2), "still frozen after thaw_all");
}

#[test]
fn a_freeze_that_cannot_complete_is_undone() {
    let Some(mut cg) = Cgroup2::new("undo") else {
        return;
    };
    let c1 = cg.mkdir("pod/c1");
    cg.spawn_in(&c1);
    // The second freezer's cgroup vanished (a container that exited): the first must be thawed.
    let freezers = [Freezer::V2(c1.clone()), Freezer::V2(cg.root.join("pod/gone"))];
    assert!(freeze_all(&freezers).is_err());
    assert!(!events_frozen(&c1), "a failed freeze left a cgroup frozen");
}

#[test]
fn v2_paths_resolve_from_proc_cgroup() {
    let Some(mut cg) = Cgroup2::new("paths") else {
        return;
    };
    let c1 = cg.mkdir("pod/c1");
    let pid = cg.spawn_in(&c1);
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // The unified line, as a pure v2 host shows it (this hybrid host adds v1 lines, which win).
    let unified: String = text.lines().filter(|l| l.starts_with("0::")).map(|l| format!("{l}\n")).collect();
    assert_eq!(unified.trim(), format!("0::{}", cg.rel(&c1)), "{text}");
    assert_eq!(
        cgroups::parse(&unified, cg.mount.path(), "freezer", "cgroup.freeze"),
        Some(ControllerCgroup::V2(c1.clone()))
    );
    // A controller not enabled in the hierarchy has no interface file there: not found, not a
    // wrong path.
    assert_eq!(cgroups::parse(&unified, cg.mount.path(), "nosuchcontroller", "nosuch.events"), None);
}

#[test]
fn the_pod_and_shim_cgroups_join_a_v2_hierarchy() {
    let Some(mut cg) = Cgroup2::new("join") else {
        return;
    };
    let home = cg.mkdir("home");
    let pid = cg.spawn_in(&home);
    let parent = format!("{}/kubepods/pod-1", cg.rel(&cg.root));
    let pod = PodCgroup::join_under(cg.mount.path(), &parent, pid).unwrap();
    let dir = cg.root.join("kubepods/pod-1");
    assert_eq!(pod.dirs(), std::slice::from_ref(&dir));
    assert_eq!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim(), pid.to_string());

    let shims = cg.mkdir("shims");
    cgroups::join_in(&[cg.mount.path().to_path_buf()], pid, &cg.rel(&shims)).unwrap();
    assert_eq!(std::fs::read_to_string(shims.join("cgroup.procs")).unwrap().trim(), pid.to_string());
    pod.remove();
    assert!(!cg.root.join("kubepods").exists(), "the pod cgroup's directories were not removed");
}
