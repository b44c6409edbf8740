//! Reads CRIU's `stats-dump` image, so the caller learns where each container's frozen time went.
//!
//! The file is a CRIU image: two little-endian u32 magics (image service, stats), a u32 length,
//! then one protobuf `StatsEntry { DumpStatsEntry dump = 1; ... }`. Only the dump timings and page
//! counts are read; unknown fields are skipped, so newer CRIU versions still parse. The input
//! is bounded: a stats image is a few dozen bytes, anything large is refused.

use std::path::Path;

use crate::error::{Error, Result};

const MAX_STATS_IMAGE: u64 = 64 * 1024;
const HEADER_LEN: usize = 12;

/// CRIU's dump statistics; times in microseconds, as CRIU records them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CriuDumpStats {
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_written: u64,
}

pub fn read_dump_stats(path: &Path) -> Result<CriuDumpStats> {
    let len = std::fs::metadata(path).map_err(Error::io(format!("stat {}", path.display())))?.len();
    if len > MAX_STATS_IMAGE {
        return Err(Error::Archive(format!("{}: {len} bytes is too large for a stats image", path.display())));
    }
    let data = std::fs::read(path).map_err(Error::io(format!("read {}", path.display())))?;
    parse_dump_stats(&data).map_err(|e| Error::Archive(format!("{}: {e}", path.display())))
}

pub fn parse_dump_stats(data: &[u8]) -> Result<CriuDumpStats, String> {
    if data.len() < HEADER_LEN {
        return Err("shorter than a CRIU image header".into());
    }
    let size = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let body = data.get(HEADER_LEN..HEADER_LEN + size).ok_or("entry runs past the end of the file")?;
    let mut stats = CriuDumpStats::default();
    let mut outer = Fields::new(body);
    while let Some((field, value)) = outer.next_field()? {
        if let (1, Value::Bytes(dump)) = (field, value) {
            let mut inner = Fields::new(dump);
            while let Some((field, value)) = inner.next_field()? {
                let Value::Varint(v) = value else { continue };
                match field {
                    1 => stats.freezing_time_us = v,
                    2 => stats.frozen_time_us = v,
                    3 => stats.memdump_time_us = v,
                    4 => stats.memwrite_time_us = v,
                    5 => stats.pages_scanned = v,
                    7 => stats.pages_written = v,
                    _ => {}
                }
            }
        }
    }
    Ok(stats)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// A minimal protobuf field walker: enough for CRIU's flat stats messages.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { data, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let out = self.data.get(self.pos..end).ok_or("field runs past the end")?;
        self.pos = end;
        Ok(out)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn image(dump_fields: &[(u64, u64)]) -> Vec<u8> {
        let mut dump = Vec::new();
        for (field, value) in dump_fields {
            varint(field << 3, &mut dump);
            varint(*value, &mut dump);
        }
        let mut entry = vec![0x0a];
        varint(dump.len() as u64, &mut entry);
        entry.extend(dump);
        let mut out = Vec::new();
        out.extend(0x5510_5940u32.to_le_bytes());
        out.extend(0x5709_3306u32.to_le_bytes());
        out.extend((entry.len() as u32).to_le_bytes());
        out.extend(entry);
        out
    }

    #[test]
    fn parses_dump_timings() {
        let data = image(&[(1, 1200), (2, 45_000), (3, 3000), (4, 9000), (5, 70_000), (6, 0), (7, 65_536), (8, 12)]);
        let s = parse_dump_stats(&data).unwrap();
        assert_eq!(s.freezing_time_us, 1200);
        assert_eq!(s.frozen_time_us, 45_000);
        assert_eq!(s.memdump_time_us, 3000);
        assert_eq!(s.memwrite_time_us, 9000);
        assert_eq!(s.pages_scanned, 70_000);
        assert_eq!(s.pages_written, 65_536);
    }

    // Property tests (issue 8 item 2): stats-dump comes from the dump directory, i.e. from CRIU
    // or whatever else wrote there; any bytes must give Ok or Err, never a panic or a hang.
    // Bounded by PROPTEST_CASES (default 256 per property), well under a second.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { failure_persistence: None, ..Default::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_dump_stats(&data);
        }

        #[test]
        fn mutated_images_never_panic(
            fields in proptest::collection::vec((1u64..20, proptest::prelude::any::<u64>()), 0..12),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..6),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
        ) {
            let mut data = image(&fields);
            for (at, x) in &flips {
                let i = at % data.len();
                data[i] ^= x;
            }
            if let Some(c) = cut {
                data.truncate(c % (data.len() + 1));
            }
            let _ = parse_dump_stats(&data);
        }

        #[test]
        fn well_formed_images_parse_exactly(values in proptest::collection::vec(proptest::prelude::any::<u64>(), 7)) {
            let fields: Vec<(u64, u64)> = (1..=7u64).zip(values.iter().copied()).collect();
            let s = parse_dump_stats(&image(&fields)).unwrap();
            proptest::prop_assert_eq!(
                (s.freezing_time_us, s.frozen_time_us, s.memdump_time_us, s.memwrite_time_us, s.pages_scanned, s.pages_written),
                (values[0], values[1], values[2], values[3], values[4], values[6])
            );
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let data = image(&[(1, 5), (2, 6)]);
        for cut in 0..data.len() {
            let _ = parse_dump_stats(&data[..cut]);
        }
        assert!(parse_dump_stats(&[0xff; 40]).is_err());
        assert!(parse_dump_stats(&[]).is_err());
    }
}
