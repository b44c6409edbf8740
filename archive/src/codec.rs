//! Compression on both sides: an encoder chosen by the caller, a decoder chosen by magic bytes.

use std::io::{self, BufRead, BufReader, Read, Write};

use super::{fsutil::IO_BUF, layout::Compression};
use crate::error::{Error, Result};

/// zstd level 3 is zstd's default: about gzip -6 ratio at several times the speed.
const ZSTD_LEVEL: i32 = 3;
/// Largest run of zero bytes accepted after the end-of-archive marker (tar pads to its record
/// size, GNU tar to 10 KiB by default; other writers use larger blocking factors).
pub(super) const MAX_TRAILING_ZEROS: u64 = 1 << 20;
/// zstd window podcr writes with (2 MiB, level 3's own for large inputs) and the most a reader
/// accepts: a frame may otherwise ask for up to 2 GiB of window per decoder, and a restore
/// decodes several container archives at once.
pub const ZSTD_WINDOW_LOG: u32 = 21;

pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(inner: W, compression: Compression) -> Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::Plain(inner),
            // Level 6 is gzip's own default; gzip is for tools that lack zstd, not for speed.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default())),
            Compression::Zstd => {
                // Single-threaded on purpose: a pod's containers are compressed in parallel
                // already, and zstd's worker threads cost tens of MiB each in the shim.
                let mut enc = zstd::stream::write::Encoder::new(inner, ZSTD_LEVEL).map_err(Error::io("start zstd"))?;
                enc.window_log(ZSTD_WINDOW_LOG).map_err(Error::io("set the zstd window"))?;
                Encoder::Zstd(enc)
            }
        })
    }

    /// Writes the compression trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// A decompressing reader over a raw stream whose compression was found by its magic bytes.
pub enum Decoder<R: Read> {
    Plain(BufReader<R>),
    Gzip(flate2::bufread::GzDecoder<BufReader<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Decoder<R> {
    pub fn detect(raw: R) -> Result<(Compression, Decoder<R>)> {
        let mut buf = BufReader::with_capacity(IO_BUF, raw);
        let magic = buf.fill_buf().map_err(Error::io("read archive"))?;
        let c = Compression::detect(magic);
        let dec = match c {
            Compression::None => Decoder::Plain(buf),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::GzDecoder::new(buf)),
            Compression::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(buf).map_err(Error::io("start zstd"))?;
                dec.window_log_max(ZSTD_WINDOW_LOG).map_err(Error::io("limit the zstd window"))?;
                Decoder::Zstd(dec)
            }
        };
        Ok((c, dec))
    }

    /// Called after the tar end marker: the rest of the decompressed stream may only be zero
    /// padding, and the compressed stream must end with the decompressor (so a CRC mismatch or
    /// appended garbage is an error, not silently ignored). Returns the raw reader.
    pub fn finish(mut self) -> Result<BufReader<R>> {
        let mut rest = (&mut self).take(MAX_TRAILING_ZEROS + 1);
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        loop {
            let n = rest.read(&mut buf).map_err(|e| Error::Archive(format!("corrupt compressed stream: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if buf[..n].iter().any(|b| *b != 0) || total > MAX_TRAILING_ZEROS {
                return Err(Error::Archive("unexpected data after the end of the tar stream".into()));
            }
        }
        let mut raw = match self {
            Decoder::Plain(r) => return Ok(r),
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
        };
        let left = raw.fill_buf().map_err(Error::io("read archive"))?;
        if !left.is_empty() {
            return Err(Error::Archive("unexpected data after the end of the compressed stream".into()));
        }
        Ok(raw)
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Compression, payload: &[u8]) -> Result<Vec<u8>> {
        let mut e = Encoder::new(Vec::new(), c)?;
        e.write_all(payload).unwrap();
        let bytes = e.finish().unwrap();
        let (got, mut d) = Decoder::detect(&bytes[..])?;
        if !payload.is_empty() {
            assert_eq!(got, c);
        }
        let mut out = vec![0u8; payload.len()];
        d.read_exact(&mut out).unwrap();
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn encode_decode_all() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let payload = b"checkpoint data".repeat(1000);
            assert_eq!(roundtrip(c, &payload).unwrap(), payload);
        }
    }

    #[test]
    fn a_wider_zstd_window_than_podcr_writes_is_refused() {
        let payload = vec![1u8; 8 << 20];
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(ZSTD_WINDOW_LOG + 4).unwrap();
        e.include_contentsize(false).unwrap();
        e.write_all(&payload).unwrap();
        let bytes = e.finish().unwrap();
        let (_, mut d) = Decoder::detect(&bytes[..]).unwrap();
        let mut out = Vec::new();
        assert!(d.read_to_end(&mut out).is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut e = Encoder::new(Vec::new(), Compression::Gzip).unwrap();
        e.write_all(b"abc").unwrap();
        let mut bytes = e.finish().unwrap();
        bytes.extend_from_slice(b"junk");
        let (_, mut d) = Decoder::detect(&bytes[..]).unwrap();
        let mut out = [0u8; 3];
        d.read_exact(&mut out).unwrap();
        assert!(matches!(d.finish(), Err(Error::Archive(_))));
    }
}
