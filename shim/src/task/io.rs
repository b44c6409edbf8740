//! A process's stdio. runc's container process never sees containerd's fifos: it gets pipes (or
//! a pty through runc's console socket) and the shim copies between those and the fifos. Pipes
//! matter for restore: CRIU re-attaches a restored process to runc's stdio via inherit-fd, so
//! the process must have been on plain pipes, not on fifos that are gone after a restart.

use std::{
    fs::File,
    io::IoSliceMut,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use containerd_shim::asynchronous::io::{IoTasks, Pty, Stdio};
use nix::{
    fcntl::{fcntl, FcntlArg, OFlag},
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::pipe2,
};
use tokio::{net::unix::pipe, task::JoinHandle};

use super::runc::ChildStdio;
use crate::runc_error::{Error, Result};

/// The shim's side of a running process's stdio.
#[derive(Clone, Default)]
pub struct ProcessIo {
    pub tasks: IoTasks,
    pub pty: Option<Pty>,
}

/// Stdio being set up around one runc call (create, exec or restore).
pub struct Pending {
    io: ProcessIo,
    stdio: Stdio,
    console: Option<(tempfile::TempDir, PathBuf, JoinHandle<Result<File>>)>,
}

/// Creates the pipes (copies start at once) or the console socket for `stdio`.
pub fn prepare(stdio: &Stdio) -> Result<(ChildStdio, Pending)> {
    let mut pending = Pending { io: ProcessIo::default(), stdio: stdio.clone(), console: None };
    let mut child = ChildStdio::default();
    if stdio.terminal {
        let dir = tempfile::Builder::new().prefix("podcr-pty").tempdir().map_err(Error::io("console dir"))?;
        let sock = dir.path().join("pty.sock");
        let listener = tokio::net::UnixListener::bind(&sock).map_err(Error::io("bind console socket"))?;
        let handle = tokio::spawn(receive_master(listener));
        pending.console = Some((dir, sock, handle));
        return Ok((child, pending));
    }
    if !stdio.stdin.is_empty() {
        let (r, w) = pipe_pair()?;
        let sender = pipe::Sender::from_owned_fd(nonblocking(w)?).map_err(Error::io("stdin pipe"))?;
        pending.io.tasks.copy_from_fifo(&stdio.stdin, sender)?;
        child.stdin = Some(r);
    }
    for (path, slot) in [(&stdio.stdout, &mut child.stdout), (&stdio.stderr, &mut child.stderr)] {
        if path.is_empty() {
            continue;
        }
        let (r, w) = pipe_pair()?;
        let receiver = pipe::Receiver::from_owned_fd(nonblocking(r)?).map_err(Error::io("output pipe"))?;
        pending.io.tasks.copy_to_fifo(receiver, path)?;
        *slot = Some(w);
    }
    Ok((child, pending))
}

impl Pending {
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|(_, p, _)| p.as_path())
    }

    /// After runc succeeded: picks up the terminal, if any, and starts its copies.
    pub async fn finish(self) -> Result<ProcessIo> {
        let Pending { mut io, stdio, console } = self;
        if let Some((_dir, _sock, handle)) = console {
            let wait = tokio::time::timeout(std::time::Duration::from_secs(10), handle);
            let master = wait
                .await
                .map_err(|_| Error::Protocol("runc never sent the console".into()))?
                .map_err(Error::join("console receiver"))??;
            let pty = Pty::new(master)?;
            if !stdio.stdout.is_empty() {
                io.tasks.copy_to_fifo(pty.clone(), &stdio.stdout)?;
            }
            if !stdio.stdin.is_empty() {
                io.tasks.copy_from_fifo(&stdio.stdin, pty.clone())?;
            }
            io.pty = Some(pty);
        }
        Ok(io)
    }

    /// After runc failed: releases the fifos.
    pub async fn abort(self) {
        if let Some((_, _, handle)) = &self.console {
            handle.abort();
        }
        self.io.tasks.abort().await;
    }
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(Error::nix("pipe"))
}

/// O_NONBLOCK on the shim's end only: each pipe end is its own open file description.
fn nonblocking(fd: OwnedFd) -> Result<OwnedFd> {
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL).map_err(Error::nix("F_GETFL"))?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(Error::nix("F_SETFL"))?;
    Ok(fd)
}

/// runc connects to the console socket and passes the pty master with SCM_RIGHTS.
async fn receive_master(listener: tokio::net::UnixListener) -> Result<File> {
    let (stream, _) = listener.accept().await.map_err(Error::io("accept console"))?;
    let stream = stream.into_std().map_err(Error::io("console stream"))?;
    stream.set_nonblocking(false).map_err(Error::io("console stream"))?;
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(Error::nix("receive console"))?;
        for cmsg in msg.cmsgs().map_err(Error::nix("console cmsg"))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we own it.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(Error::Protocol("console socket carried no descriptor".into()))
    })
    .await
    .map_err(Error::join("console receiver"))?
}

/// TIOCSWINSZ on the pty master.
pub fn resize(pty: &Pty, width: u32, height: u32) -> Result<()> {
    use std::os::fd::AsFd;
    let ws = libc::winsize {
        ws_row: u16::try_from(height).unwrap_or(u16::MAX),
        ws_col: u16::try_from(width).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(Error::io("resize pty")(std::io::Error::last_os_error()));
    }
    Ok(())
}
