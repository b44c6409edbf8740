//! The pod's anchor process (a pause-like "holder").
//!
//! containerd 2.1's CRI builds every container's namespace paths from the sandbox pid
//! (`/proc/<pid>/ns/{net,ipc,uts,pid}`), so a pod needs a live process that sits in the pod's
//! network namespace and owns its IPC, UTS and (with `shareProcessNamespace`) PID namespaces.
//! Instead of an image and runc, the shim re-executes itself in this mode: the holder is then a
//! direct child of the shim, inside the shim's process tree, and costs one small process.
//!
//! The holder runs before any thread exists (`main` dispatches here first), which `setns` and
//! `unshare` of these namespaces require. It reports readiness on stdout ("ready <pid>") so the
//! shim learns the pid to publish — with a private PID namespace that is the forked PID 1, not the
//! holder itself.

use std::{
    ffi::OsString,
    fs::{self, File},
    io::Write,
    os::fd::AsFd,
    path::PathBuf,
};

use nix::{
    sched::{setns, unshare, CloneFlags},
    sys::{
        signal::{signal, SigHandler, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{fork, pause, sethostname, ForkResult, Pid},
};

/// argv[1] that makes the shim binary run as the holder instead of as a shim.
pub const HOLDER_ARG: &str = "__podcr-holder";

/// What the holder sets up; the shim passes it as flags (see [`HolderConfig::to_args`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderConfig {
    /// Network namespace to join; `None` keeps the host's.
    pub netns: Option<PathBuf>,
    /// New UTS namespace with this hostname; `None` shares the host's (hostNetwork pods).
    pub hostname: Option<String>,
    /// New IPC namespace (false for hostIPC pods).
    pub new_ipc: bool,
    /// New PID namespace whose PID 1 is the reported pid (`shareProcessNamespace`).
    pub new_pid: bool,
    /// Namespaced sysctls to write once inside the pod's namespaces.
    pub sysctls: Vec<(String, String)>,
}

impl HolderConfig {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![HOLDER_ARG.into()];
        if let Some(netns) = &self.netns {
            args.push("--netns".into());
            args.push(netns.into());
        }
        if let Some(hostname) = &self.hostname {
            args.push("--hostname".into());
            args.push(hostname.into());
        }
        if self.new_ipc {
            args.push("--new-ipc".into());
        }
        if self.new_pid {
            args.push("--new-pid".into());
        }
        for (key, value) in &self.sysctls {
            args.push("--sysctl".into());
            args.push(format!("{key}={value}").into());
        }
        args
    }

    fn parse(args: &[String]) -> Result<HolderConfig, String> {
        let mut cfg = HolderConfig::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--netns" => cfg.netns = Some(PathBuf::from(value()?)),
                "--hostname" => cfg.hostname = Some(value()?),
                "--new-ipc" => cfg.new_ipc = true,
                "--new-pid" => cfg.new_pid = true,
                "--sysctl" => {
                    let kv = value()?;
                    let (k, v) = kv.split_once('=').ok_or_else(|| format!("bad sysctl {kv}"))?;
                    cfg.sysctls.push((k.to_string(), v.to_string()));
                }
                other => return Err(format!("unknown holder flag {other}")),
            }
        }
        Ok(cfg)
    }
}

/// Entry point of the holder mode. Returns the process exit code.
pub fn main() -> i32 {
    // The holder exists for its shim: if the shim dies (SIGKILL, crash), so does the holder,
    // instead of pinning the pod's namespaces forever as an orphan. The shim spawns it from a
    // runtime worker thread, which lives as long as the shim.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let args: Vec<String> = std::env::args().skip(2).collect();
    let result = HolderConfig::parse(&args).and_then(|cfg| enter_namespaces(&cfg).map(|()| cfg));
    let cfg = match result {
        Ok(cfg) => cfg,
        Err(e) => {
            // The shim reads stdout until "ready"; anything else is the reason it failed.
            println!("error {e}");
            return 1;
        }
    };
    if cfg.new_pid {
        return run_with_pid_namespace();
    }
    report_ready(std::process::id());
    hold()
}

fn enter_namespaces(cfg: &HolderConfig) -> Result<(), String> {
    if let Some(netns) = &cfg.netns {
        let file = File::open(netns).map_err(|e| format!("open netns {}: {e}", netns.display()))?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("join netns {}: {e}", netns.display()))?;
    }
    let mut flags = CloneFlags::empty();
    if cfg.new_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if cfg.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
    }
    if let Some(hostname) = &cfg.hostname {
        sethostname(hostname).map_err(|e| format!("set hostname {hostname}: {e}"))?;
    }
    for (key, value) in &cfg.sysctls {
        write_sysctl(key, value)?;
    }
    Ok(())
}

/// Writes one sysctl through /proc/sys, which shows the namespaces this process is in now.
fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    if key.contains("..") || key.starts_with('/') || key.starts_with('.') {
        return Err(format!("invalid sysctl name {key}"));
    }
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(|e| format!("write sysctl {key}={value}: {e}"))
}

fn report_ready(pid: u32) {
    let mut out = std::io::stdout().lock();
    // If the shim went away there is nobody to tell; the holder still holds the namespaces.
    let _ = writeln!(out, "ready {pid}");
    let _ = out.flush();
}

/// A new PID namespace applies to children only, so fork: the child is PID 1 of the pod and
/// the pid the shim reports; the parent stays to mirror its exit status.
fn run_with_pid_namespace() -> i32 {
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        println!("error unshare pid namespace: {e}");
        return 1;
    }
    // SAFETY: the process is single-threaded here (main dispatches to the holder before any
    // runtime starts), so fork is safe.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: as above; the pod's PID 1 goes with the holder that mirrors it.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            hold()
        }
        Ok(ForkResult::Parent { child }) => {
            report_ready(child.as_raw() as u32);
            wait_child(child)
        }
        Err(e) => {
            println!("error fork pid-namespace init: {e}");
            1
        }
    }
}

fn wait_child(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn on_child(_: libc::c_int) {
    // Reap every exited child: as PID 1 of a shared PID namespace the holder inherits orphans.
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Sleeps until told to stop, reaping orphans; stopping is a clean exit 0, like pause.
fn hold() -> i32 {
    // SAFETY: the handlers only call async-signal-safe functions (_exit, waitpid).
    unsafe {
        let _ = signal(Signal::SIGTERM, SigHandler::Handler(on_term));
        let _ = signal(Signal::SIGINT, SigHandler::Handler(on_term));
        let _ = signal(Signal::SIGCHLD, SigHandler::Handler(on_child));
    }
    // Stdout is a pipe to the shim; close it so the shim's reader sees EOF after "ready".
    // SAFETY: closing fd 1 which this process owns; nothing writes to it afterwards.
    unsafe { libc::close(1) };
    loop {
        pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let cfg = HolderConfig {
            netns: Some("/var/run/netns/cni-1".into()),
            hostname: Some("pod-a".into()),
            new_ipc: true,
            new_pid: true,
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())],
        };
        let args: Vec<String> = cfg.to_args().into_iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(HolderConfig::parse(&args).unwrap(), cfg);
    }

    #[test]
    fn rejects_unknown_flags_and_bad_sysctls() {
        assert!(HolderConfig::parse(&["--bogus".into()]).is_err());
        assert!(HolderConfig::parse(&["--sysctl".into(), "novalue".into()]).is_err());
        assert!(write_sysctl("../../etc/passwd", "x").is_err());
    }
}
