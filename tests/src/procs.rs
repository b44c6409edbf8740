//! Reading the process table from /proc: finding the shims a containerd instance started, zombies, and
//! whether a pid is still alive. Processes are only ever signalled by pid, and only ones this run started.

use std::path::Path;

use anyhow::Result;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The one-letter state from /proc/<pid>/stat: R, S, D, Z (zombie), T, ...
    pub state: char,
    /// The kernel's short name (/proc/<pid>/stat field 2, at most 15 bytes); kept for zombies too.
    pub comm: String,
    /// argv, split on NUL. Empty for zombies and kernel threads.
    pub argv: Vec<String>,
}

impl Proc {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// The value following `flag` in argv, e.g. `-namespace` of a shim.
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        self.argv.iter().position(|a| a == flag).and_then(|i| self.argv.get(i + 1)).map(String::as_str)
    }
}

/// One process, or `None` if it is gone.
pub fn proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain spaces or ')': fields resume after the last ')'.
    let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default();
    Some(Proc { pid, ppid, state, comm, argv })
}

/// Every process on the host.
pub fn all() -> Result<Vec<Proc>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        if let Some(pid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            if let Some(p) = proc(pid) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    proc(pid).is_some_and(|p| !p.is_zombie())
}

/// Shim processes started by the containerd listening on `socket`. containerd passes its socket as
/// `-address`, so this never matches another containerd's shims.
pub fn shims_of(socket: &Path) -> Result<Vec<Proc>> {
    let sock = socket.to_string_lossy();
    Ok(all()?
        .into_iter()
        .filter(|p| {
            p.argv.first().is_some_and(|a| a.contains("containerd-shim")) && p.arg_after("-address") == Some(&sock)
        })
        .collect())
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
