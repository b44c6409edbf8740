//! `start`: find or launch the shim server for this container's group and tell containerd
//! where it listens. Containers of one pod share a server (grouped by the sandbox id
//! annotation), like the runc v2 shim; with version 3 containerd then reuses the socket itself.
//! A new server goes into the shim cgroup the runtime options name (runc.v2's `ShimCgroup`) and
//! gets an OOM score just above containerd's, as runc.v2's does.

use std::{
    io::Read,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
};

use containerd_shim::Flags;

use crate::error::{Error, Result};

const GROUP_ANNOTATIONS: [&str; 2] = ["io.kubernetes.cri.sandbox-id", "io.containerd.runc.v2.group"];

/// The group key from the bundle's spec annotations, else the container id.
pub fn group_of(spec: Option<&serde_json::Value>, id: &str) -> String {
    spec.and_then(|s| s.get("annotations"))
        .and_then(|a| GROUP_ANNOTATIONS.iter().find_map(|k| a.get(*k)?.as_str()))
        .filter(|g| !g.is_empty())
        .unwrap_or(id)
        .to_string()
}

/// Runs the start action in the bundle (cwd) and returns the reply for stdout.
pub fn run(flags: &Flags) -> Result<String> {
    // containerd pipes the container's runtime options in.
    let input = crate::runtime_options::read_stdin()?;
    let options = crate::runtime_options::for_start(&input, &flags.id, &flags.namespace)?;
    let shim_cgroup = options.map(|o| o.options.shim_cgroup).filter(|c| !c.is_empty());

    let spec = std::fs::read("config.json").ok().and_then(|d| serde_json::from_slice(&d).ok());
    let group = group_of(spec.as_ref(), &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = address.trim_start_matches("unix://");

    if !alive(path) {
        if Path::new(path).exists() {
            // A dead server's socket; the new one must bind the same path.
            std::fs::remove_file(path).map_err(Error::io("remove stale socket"))?;
        }
        launch(flags, &address, shim_cgroup.as_deref())?;
        if !alive(path) {
            return Err(Error::Server(format!("did not come up on {address}")));
        }
    }
    std::fs::write("address", &address).map_err(Error::io("write address"))?;
    Ok(serde_json::json!({"version": 3, "address": address, "protocol": "ttrpc"}).to_string())
}

fn alive(path: &str) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Re-execs this binary as the server, confines it, and waits until it signals readiness by
/// closing stdout.
fn launch(flags: &Flags, address: &str, shim_cgroup: Option<&str>) -> Result<()> {
    let exe = std::env::current_exe().map_err(Error::io("current exe"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address]).args(["-socket", address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    // Its own process group, so signals meant for containerd's start command miss it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(Error::io("spawn shim server"))?;
    // Before it serves anything, so every process it starts later (the pod's holder, runc)
    // starts in the shim cgroup too. A server that cannot be put where containerd asked is
    // killed: running it elsewhere would escape the limits the node set for shims.
    if let Err(e) = confine(child.id(), shim_cgroup) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(address.trim_start_matches("unix://"));
        return Err(e);
    }
    if let Some(mut out) = child.stdout.take() {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
    }
    // The server lives on; if it already died, say so.
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(Error::Server(format!("exited: {status}")));
        }
    }
    Ok(())
}

fn confine(pid: u32, shim_cgroup: Option<&str>) -> Result<()> {
    if let Some(cg) = shim_cgroup {
        crate::cgroups::join(pid, cg).map_err(|e| Error::failed_precondition(format!("join shim cgroup {cg}: {e}")))?;
    }
    // containerd's score + 1: under memory pressure the kernel picks a shim before containerd.
    containerd_shim::cgroup::adjust_oom_score(pid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_prefers_sandbox_annotation() {
        let spec = serde_json::json!({"annotations": {"io.kubernetes.cri.sandbox-id": "sb"}});
        assert_eq!(group_of(Some(&spec), "c1"), "sb");
        let spec = serde_json::json!({"annotations": {"io.containerd.runc.v2.group": "g"}});
        assert_eq!(group_of(Some(&spec), "c1"), "g");
        assert_eq!(group_of(Some(&serde_json::json!({})), "c1"), "c1");
        assert_eq!(group_of(None, "c1"), "c1");
    }
}
