//! Shim logs go to the `log` fifo in the bundle, which containerd opens before it starts the
//! shim and copies into its own log. Without the fifo (run by hand) they go to stderr.

use std::{fs::OpenOptions, os::unix::fs::OpenOptionsExt, sync::Mutex};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `debug` is the shim's `-debug` flag.
pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // O_NONBLOCK only for the open (which must not wait for a reader); writes then block, so
    // no line is dropped while containerd drains the fifo.
    let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open("log");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let installed = match fifo {
        Ok(file) => {
            clear_nonblocking(&file);
            builder.with_writer(Mutex::new(file)).try_init()
        }
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A subscriber already installed (tests) is fine.
    drop(installed);
}

fn clear_nonblocking(file: &std::fs::File) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(bits) = fcntl(file, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(bits) & !OFlag::O_NONBLOCK;
        let _ = fcntl(file, FcntlArg::F_SETFL(flags));
    }
}
