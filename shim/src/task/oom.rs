//! OOM notifications: a container's memory cgroup is watched from start to exit, and every OOM
//! kill is published as `/tasks/oom`. containerd's CRI turns that event into the container's
//! `OOMKilled` reason, which is how Kubernetes users learn why a container died.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`
//! (the kernel also signals it when the cgroup goes away, which ends the watch).
//! cgroup v2: inotify on `memory.events`, publishing when its `oom_kill` count grows.

use std::{
    fs::{self, File},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use containerd_shim_protos::{events::task::TaskOOM, topics};
use nix::sys::{
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::{
    cgroups::{self, ControllerCgroup},
    events::EventSink,
    runc_error::{Error, Result},
};

/// Starts watching the memory cgroup of `pid` (a container's init) for OOM kills.
pub fn watch(pid: u32, container_id: &str, events: &EventSink) -> Result<()> {
    let id = container_id.to_string();
    let events = events.clone();
    match cgroups::of_pid(pid, "memory", "memory.events")? {
        ControllerCgroup::V1(dir) => {
            let efd = register_v1(&dir)?;
            tokio::spawn(async move { watch_v1(efd, dir, id, events).await });
        }
        ControllerCgroup::V2(dir) => {
            let inotify =
                Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(Error::nix("inotify_init"))?;
            inotify
                .add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
                .map_err(Error::nix("inotify_add_watch memory.events"))?;
            tokio::spawn(async move { watch_v2(inotify, dir, id, events).await });
        }
    }
    Ok(())
}

fn register_v1(dir: &Path) -> Result<EventFd> {
    let control = File::open(dir.join("memory.oom_control"))
        .map_err(Error::io(format!("open {}/memory.oom_control", dir.display())))?;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(Error::nix("eventfd"))?;
    let registration = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
    fs::write(dir.join("cgroup.event_control"), registration)
        .map_err(Error::io(format!("register OOM eventfd for {}", dir.display())))?;
    // The kernel keeps its own reference to memory.oom_control once registered.
    Ok(efd)
}

async fn watch_v1(efd: EventFd, dir: PathBuf, id: String, events: EventSink) {
    // SAFETY: the fd is taken out of the EventFd, which is forgotten, so it is owned once.
    let owned = unsafe { OwnedFd::from_raw_fd(efd.as_fd().as_raw_fd()) };
    std::mem::forget(efd);
    // SAFETY: `owned` owns its fd and moves into the AsyncFd, so the fd stays open and the same
    // for the AsyncFd's whole life.
    let Ok(fd) = (unsafe { AsyncFd::register(owned) }) else { return };
    loop {
        let Ok(mut ready) = fd.readable().await else { return };
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(fd.get_ref(), &mut buf);
        ready.clear_ready();
        if matches!(n, Err(nix::errno::Errno::EAGAIN)) {
            continue;
        }
        // The eventfd also fires when the cgroup is removed: that is the container's end.
        if !dir.join("memory.oom_control").exists() {
            debug!(container = %id, "memory cgroup gone; OOM watch ends");
            return;
        }
        warn!(container = %id, "OOM kill in the container's memory cgroup");
        events.send(topics::TASK_OOM_EVENT_TOPIC, TaskOOM { container_id: id.clone(), ..Default::default() });
    }
}

fn oom_kills(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join("memory.events")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// nix's Inotify exposes only `AsFd`; tokio's reactor wants `AsRawFd`.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

async fn watch_v2(inotify: Inotify, dir: PathBuf, id: String, events: EventSink) {
    let mut seen = oom_kills(&dir).unwrap_or(0);
    // SAFETY: the Inotify owns its fd and moves into the AsyncFd (see watch_v1).
    let Ok(fd) = (unsafe { AsyncFd::register(InotifyFd(inotify)) }) else { return };
    loop {
        let Ok(mut ready) = fd.readable().await else { return };
        let _ = fd.get_ref().0.read_events();
        ready.clear_ready();
        let Some(now) = oom_kills(&dir) else {
            debug!(container = %id, "memory cgroup gone; OOM watch ends");
            return;
        };
        if now > seen {
            seen = now;
            warn!(container = %id, "OOM kill in the container's memory cgroup");
            events.send(topics::TASK_OOM_EVENT_TOPIC, TaskOOM { container_id: id.clone(), ..Default::default() });
        }
    }
}
