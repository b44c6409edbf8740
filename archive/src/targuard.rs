//! A guard between a (decompressed) tar stream and the tar parser, enforcing bounds the parser
//! cannot: it reads a GNU long name (`L`/`K`) or a PAX extension header (`x`/`g`) whole into
//! memory, however large its header says it is, before anyone sees the entry. A 25 MB archive
//! whose first entry claims a 3 GiB long name would make the reader allocate 3 GiB.
//!
//! The guard follows the 512-byte header blocks as the bytes stream past, with the tar crate's
//! own rules for where the next header is (octal or base-256 sizes, a PAX `size` record
//! overriding the next entry's size), and fails the read that would hand over an extension
//! header's data when that header claims more than its cap, or any entry that claims more than
//! the caller's bound, before the parser allocates or writes anything for it. It also caps the
//! total bytes read, so a decompression bomb ends at the bound rather than at the disk's end.
//! Anything it cannot follow exactly (sparse entries, a malformed size) is refused: the guard
//! and the parser must never disagree about where an entry starts.

use std::io::{self, Read};

const BLOCK: u64 = 512;

/// What the guard allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardCaps {
    /// Largest GNU long name or long link name (a path plus its NUL).
    pub max_long_name: u64,
    /// Largest PAX extension header.
    pub max_pax: u64,
    /// Largest size any one entry may claim.
    pub max_entry: u64,
    /// Most bytes read through the guard in all.
    pub max_stream: u64,
}

impl GuardCaps {
    /// Caps for podcr's own archives and rootfs diffs: paths up to `max_path_len`, PAX headers
    /// up to 64 KiB (paths plus xattrs such as `security.capability` and ACLs).
    pub fn new(max_path_len: usize, max_entry: u64, max_stream: u64) -> GuardCaps {
        GuardCaps { max_long_name: max_path_len as u64 + 1, max_pax: 64 * 1024, max_entry, max_stream }
    }
}

impl GuardCaps {
    /// Caps for a strict extraction under `limits`: every entry and the whole stream bounded by
    /// `max_total_bytes` plus the headers, padding and end-of-archive zeros of `max_entries`.
    pub fn for_limits(limits: &super::limits::Limits) -> GuardCaps {
        let overhead = limits
            .max_entries
            .saturating_add(8)
            .saturating_mul(4 * BLOCK)
            .saturating_add(super::codec::MAX_TRAILING_ZEROS + 64 * 1024);
        GuardCaps::new(limits.max_path_len, limits.max_total_bytes, limits.max_total_bytes.saturating_add(overhead))
    }
}

pub struct TarGuard<R> {
    inner: R,
    caps: GuardCaps,
    pos: u64,
    next_header: u64,
    header: [u8; BLOCK as usize],
    filled: usize,
    /// A PAX local header's data being collected: (data start, length, bytes so far).
    pax: Option<(u64, u64, Vec<u8>)>,
    /// The `size` record of the last PAX local header, for the next real entry.
    pax_size: Option<u64>,
    /// After the end-of-archive block nothing is parsed; the caller bounds the padding.
    ended: bool,
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A tar numeric field as the tar crate reads it: base-256 when the high bit is set, else octal
/// text with spaces and NULs trimmed.
fn numeric(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        // The tar crate reads the last 8 bytes of a 12-byte base-256 field.
        let tail = &field[field.len().saturating_sub(8)..];
        return Ok(tail.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)));
    }
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).map_err(|_| refuse("tar size field is not text".into()))?;
    u64::from_str_radix(text.trim(), 8).map_err(|_| refuse(format!("tar size field {text:?} is not a number")))
}

/// The `size` record of PAX extension data (`"<len> key=value\n"` records). Stricter than the
/// tar crate, which ignores the size of a header with any malformed record: here a malformed
/// record, a newline inside a value or a second `size` is refused, so both always agree.
fn pax_size(data: &[u8]) -> io::Result<Option<u64>> {
    let mut rest = data;
    let mut size = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ').ok_or_else(|| refuse("malformed PAX record".into()))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|l| *l > sp + 1 && *l <= rest.len())
            .ok_or_else(|| refuse("malformed PAX record length".into()))?;
        let record = &rest[sp + 1..len];
        let body = record.strip_suffix(b"\n").ok_or_else(|| refuse("PAX record does not end with a newline".into()))?;
        if body.contains(&b'\n') || !body.contains(&b'=') {
            return Err(refuse("malformed PAX record".into()));
        }
        if let Some(v) = body.strip_prefix(b"size=") {
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| refuse("PAX size record is not a number".into()))?;
            if size.replace(n).is_some() {
                return Err(refuse("two PAX size records".into()));
            }
        }
        rest = &rest[len..];
    }
    Ok(size)
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R, caps: GuardCaps) -> TarGuard<R> {
        TarGuard {
            inner,
            caps,
            pos: 0,
            next_header: 0,
            header: [0; BLOCK as usize],
            filled: 0,
            pax: None,
            pax_size: None,
            ended: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        let kind = h[156];
        let size = numeric(&h[124..136])?;
        let data_start = self.next_header + BLOCK;
        let data_len = match kind {
            b'L' | b'K' => {
                if size > self.caps.max_long_name {
                    return Err(refuse(format!(
                        "a GNU long name entry claims {size} bytes, more than the limit of {}",
                        self.caps.max_long_name
                    )));
                }
                size
            }
            b'x' | b'g' => {
                if size > self.caps.max_pax {
                    return Err(refuse(format!(
                        "a PAX extension header claims {size} bytes, more than the limit of {}",
                        self.caps.max_pax
                    )));
                }
                if kind == b'x' {
                    self.pax = Some((data_start, size, Vec::with_capacity(size as usize)));
                }
                size
            }
            b'S' => return Err(refuse("sparse entries are not allowed".into())),
            _ => {
                let size = self.pax_size.take().unwrap_or(size);
                if size > self.caps.max_entry {
                    return Err(refuse(format!(
                        "an entry claims {size} bytes, more than the limit of {}",
                        self.caps.max_entry
                    )));
                }
                size
            }
        };
        self.next_header = data_start
            .checked_add(data_len.div_ceil(BLOCK) * BLOCK)
            .ok_or_else(|| refuse("tar entry size overflows".into()))?;
        Ok(())
    }

    /// Follows the headers through `chunk`, which starts at stream offset `self.pos`.
    fn track(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut off = 0usize;
        while off < chunk.len() && !self.ended {
            let at = self.pos + off as u64;
            if at < self.next_header {
                let upto = (self.next_header - at).min((chunk.len() - off) as u64) as usize;
                if let Some((start, len, buf)) = &mut self.pax {
                    let (s, e) = (at.max(*start), (at + upto as u64).min(*start + *len));
                    if s < e {
                        buf.extend_from_slice(&chunk[off + (s - at) as usize..off + (e - at) as usize]);
                    }
                    if buf.len() as u64 == *len {
                        let size = pax_size(buf)?;
                        self.pax = None;
                        self.pax_size = size;
                    }
                }
                off += upto;
                continue;
            }
            let take = (BLOCK as usize - self.filled).min(chunk.len() - off);
            self.header[self.filled..self.filled + take].copy_from_slice(&chunk[off..off + take]);
            self.filled += take;
            off += take;
            if self.filled == BLOCK as usize {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.pos + n as u64 > self.caps.max_stream {
            return Err(refuse(format!("the archive holds more than {} bytes", self.caps.max_stream)));
        }
        self.track(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], kind: u8, size_field: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[124..124 + size_field.len()].copy_from_slice(size_field);
        h[156] = kind;
        h
    }

    fn drain(data: &[u8], caps: GuardCaps) -> io::Result<u64> {
        // Small reads, so headers and PAX data straddle read boundaries.
        let mut g = TarGuard::new(data, caps);
        let mut total = 0u64;
        let mut buf = [0u8; 100];
        loop {
            let n = g.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    fn caps() -> GuardCaps {
        GuardCaps::new(4096, 1 << 20, 1 << 30)
    }

    #[test]
    fn a_huge_long_name_is_refused_at_its_header() {
        // 3 GiB claimed in octal, and in base-256.
        let data = header(b"././@LongLink", b'L', b"30000000000\0");
        let err = drain(&data, caps()).unwrap_err();
        assert!(err.to_string().contains("long name"), "{err}");
        let b256 = [0x80u8, 0, 0, 0, 0, 0, 0, 0, 0xC0, 0, 0, 0];
        let data = header(b"././@LongLink", b'L', &b256);
        assert!(drain(&data, caps()).is_err());
    }

    #[test]
    fn a_pax_bomb_and_a_pax_size_override_are_caught() {
        let data = header(b"pax", b'x', b"30000000000\0");
        assert!(drain(&data, caps()).unwrap_err().to_string().contains("PAX"));
        // A PAX size of 2 MiB for a file whose header says 0: over the 1 MiB entry bound.
        let rec = b"19 size=2097152000\n";
        let mut data = header(b"pax", b'x', format!("{:011o}\0", rec.len()).as_bytes());
        let mut block = rec.to_vec();
        block.resize(512, 0);
        data.extend(block);
        data.extend(header(b"f", b'0', b"00000000000\0"));
        assert!(drain(&data, caps()).unwrap_err().to_string().contains("entry claims"));
    }

    #[test]
    fn follows_a_real_archive() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(100) + "file";
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        h.set_mode(0o600);
        b.append_data(&mut h, &long, &[7u8; 1000][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_pax_extensions([("path", b"pax/name".as_slice())]).unwrap();
        b.append_data(&mut h, "short", &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let mut ar = tar::Archive::new(TarGuard::new(&data[..], caps()));
        let names: Vec<String> =
            ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, vec![long, "pax/name".to_string()]);
        assert!(drain(&data, GuardCaps { max_stream: 1024, ..caps() }).is_err());
        assert!(drain(&data, GuardCaps { max_entry: 999, ..caps() }).is_err());
    }
}
