//! Stopping an archive write or extraction at the next chunk.
//!
//! Archives are written and extracted on blocking threads, which a deadline cannot interrupt:
//! dropping the future that awaits them leaves the thread writing, so files could appear after
//! the caller cleaned up. Instead the caller cancels a token, every chunk read or written checks
//! it, the thread fails with [`CANCELLED`], and the caller joins the thread before it cleans up.

use std::io::{self, Read, Write};

pub use tokio_util::sync::CancellationToken as Cancel;

/// The error text a cancelled read or write fails with.
pub const CANCELLED: &str = "cancelled";

fn cancelled() -> io::Error {
    io::Error::other(CANCELLED)
}

/// A reader that fails once `cancel` is cancelled; checked on every read call, i.e. per chunk.
pub(crate) struct CancelRead<R> {
    inner: R,
    cancel: Cancel,
}

impl<R> CancelRead<R> {
    pub(crate) fn new(inner: R, cancel: Cancel) -> Self {
        CancelRead { inner, cancel }
    }
}

impl<R: Read> Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled());
        }
        self.inner.read(buf)
    }
}

/// A writer that fails once `cancel` is cancelled; checked on every write call.
pub(crate) struct CancelWrite<W> {
    inner: W,
    cancel: Cancel,
}

impl<W> CancelWrite<W> {
    pub(crate) fn new(inner: W, cancel: Cancel) -> Self {
        CancelWrite { inner, cancel }
    }
}

impl<W: Write> Write for CancelWrite<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_stop_once_cancelled() {
        let cancel = Cancel::new();
        let mut r = CancelRead::new(&b"abcdef"[..], cancel.clone());
        let mut w = CancelWrite::new(Vec::new(), cancel.clone());
        let mut buf = [0u8; 3];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        w.write_all(&buf).unwrap();
        cancel.cancel();
        assert_eq!(r.read(&mut buf).unwrap_err().to_string(), CANCELLED);
        assert_eq!(w.write(&buf).unwrap_err().to_string(), CANCELLED);
        assert_eq!(w.inner, b"abc");
    }
}

#[cfg(test)]
mod archive_tests {
    use crate::{tests::support, *};

    #[test]
    fn a_cancelled_archive_write_or_extraction_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = support::staging(tmp.path());
        let dest = tmp.path().join("app.tar");
        let cancel = Cancel::new();
        cancel.cancel();
        let err = write_container_archive_until(&staging, &support::meta("app"), &dest, Compression::None, &cancel)
            .unwrap_err();
        assert!(err.to_string().contains(CANCELLED), "{err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["staging"], "the writer left files behind");

        let stats = write_container_archive(&staging, &support::meta("app"), &dest, Compression::None).unwrap();
        let x = tmp.path().join("x");
        let err = extract_container_archive_verified_until(&dest, &stats.digest(), &x, &Limits::default(), &cancel)
            .unwrap_err();
        assert!(err.to_string().contains(CANCELLED), "{err}");
        assert!(!x.exists(), "a cancelled extraction left its directory");
    }
}
