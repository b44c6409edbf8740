//! Running external commands (ctr, umoci, gcc, ip) with a deadline, and under a pseudo-terminal.
//!
//! Every command gets a timeout: a hung shim must fail the one test that hit it, not stall the suite.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Default deadline for one external command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command left behind.
#[derive(Clone)]
pub struct Output {
    /// The command line, for error messages.
    pub cmdline: String,
    /// Exit code; `128 + signal` when the command was killed by a signal (the shell convention).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Fails with the whole output when the command did not exit 0.
    pub fn ok(self) -> Result<Output> {
        if self.code != 0 {
            bail!("command failed: {self:?}");
        }
        Ok(self)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn exit_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs `cmd` to completion (stdin closed), capturing stdout and stderr; kills it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = cmdline(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{line}`"))?;
    Running::new(child, line).wait(timeout)
}

/// Shorthand: `run` with the default timeout, then require exit 0.
pub fn run_ok<I, S>(program: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(program).args(args), DEFAULT_TIMEOUT)?.ok()
}

/// A spawned command whose output is being collected in the background. Dropping it kills the process
/// (it is always our own child, so killing it by its handle is safe).
pub struct Running {
    child: Child,
    line: String,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<String>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

impl Running {
    /// Takes a child spawned with piped stdout/stderr and starts collecting both.
    pub fn new(mut child: Child, line: String) -> Running {
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        Running { child, line, out, err }
    }

    /// Spawns `cmd` in the background with stdin closed and stdout/stderr collected.
    pub fn spawn(cmd: &mut Command) -> Result<Running> {
        let line = cmdline(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn `{line}`"))?;
        Ok(Running::new(child, line))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(code)` once the process has exited.
    pub fn try_code(&mut self) -> Result<Option<i32>> {
        Ok(self.child.try_wait()?.map(exit_code))
    }

    /// Waits for the exit (killing the process after `timeout`) and returns everything it printed.
    pub fn wait(mut self, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let partial = self.collect(-1);
                bail!("timed out after {timeout:?}: {partial:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(self.collect(exit_code(status)))
    }

    fn collect(&mut self, code: i32) -> Output {
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        Output { cmdline: self.line.clone(), code, stdout: join(self.out.take()), stderr: join(self.err.take()) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` with stdin, stdout and stderr on the slave side of a fresh pseudo-terminal that is also its
/// controlling terminal, as an interactive shell would. `ctr ... --tty` refuses to run without one
/// ("provided file is not a console"), and CI has no terminal at all. Returns everything written to the
/// terminal (stdout and stderr are one stream on a tty) as `stdout`.
pub fn run_in_pty(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = cmdline(cmd);
    let pty = nix::pty::openpty(None, None).context("openpty")?;
    let slave_fd = pty.slave.as_raw_fd();
    let dup = |fd: &OwnedFd| -> Result<Stdio> { Ok(Stdio::from(fd.try_clone()?)) };
    cmd.stdin(dup(&pty.slave)?).stdout(dup(&pty.slave)?).stderr(dup(&pty.slave)?);
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn().with_context(|| format!("spawn `{line}` in a pty"));
    // Close our copies of the slave (the Command holds three) so reading the master sees EIO once the
    // child's side is gone.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    drop(pty.slave);
    let mut child = spawned?;
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Linux reports EIO on the master once every slave fd is closed: that is the normal end.
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?} in a pty: `{line}`");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A grandchild could keep the slave open forever; don't let that hang the test.
    let out_deadline = Instant::now() + Duration::from_secs(5);
    while !reader.is_finished() && Instant::now() < out_deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stdout = if reader.is_finished() { reader.join().unwrap_or_default() } else { String::new() };
    Ok(Output { cmdline: line, code: exit_code(status), stdout, stderr: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_exit_code_and_both_streams() {
        let out = run(Command::new("sh").args(["-c", "echo o; echo e >&2; exit 3"]), DEFAULT_TIMEOUT).unwrap();
        assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (3, "o\n", "e\n"));
    }

    #[test]
    fn run_kills_at_the_deadline() {
        let started = Instant::now();
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(format!("{err}").contains("timed out"), "{err}");
    }

    #[test]
    fn pty_gives_a_controlling_terminal() {
        let out =
            run_in_pty(Command::new("sh").args(["-c", "tty; exec 3</dev/tty && echo ctty; exit 4"]), DEFAULT_TIMEOUT)
                .unwrap();
        assert_eq!(out.code, 4);
        assert!(out.stdout.contains("/dev/pts/") && out.stdout.contains("ctty"), "{out:?}");
    }
}
