//! One process of a container (the init process, or an exec), with its own small lock: pid,
//! exit and stdio change independently of the container and never wait on runc.

use std::{
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use containerd_shim::asynchronous::io::Stdio;
use tokio::sync::watch;

use super::io::ProcessIo;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Default)]
struct State {
    pid: u32,
    started: bool,
    io: ProcessIo,
}

pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: Stdio,
    /// The OCI `Process` JSON of an exec, handed to `runc exec --process`.
    pub spec: Option<Vec<u8>>,
    state: Mutex<State>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: Stdio, spec: Option<Vec<u8>>) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            state: Mutex::new(State::default()),
            exit: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the process record: the data stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn started(&self) -> bool {
        self.lock().started
    }

    pub fn set_started(&self, pid: u32, io: ProcessIo) {
        let mut s = self.lock();
        s.pid = pid;
        s.started = true;
        s.io = io;
    }

    /// Records a pid and io before the process is started (runc create).
    pub fn set_created(&self, pid: u32, io: ProcessIo) {
        let mut s = self.lock();
        s.pid = pid;
        s.io = io;
    }

    pub fn io(&self) -> ProcessIo {
        self.lock().io.clone()
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn set_exited(&self, status: u32) -> Exit {
        let exit = Exit { status, at: SystemTime::now() };
        self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit);
                true
            } else {
                false
            }
        });
        self.exit().unwrap_or(exit)
    }

    /// Resolves once the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` lives: the sender is ours.
                return Exit { status: 255, at: SystemTime::now() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_sees_first_exit_only() {
        let p = std::sync::Arc::new(Process::new("", Stdio::default(), None));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        p.set_exited(3);
        p.set_exited(9);
        assert_eq!(waiter.await.unwrap().status, 3);
        assert_eq!(p.exit().unwrap().status, 3);
    }
}
