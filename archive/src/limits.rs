//! Bounds applied while reading a checkpoint. A checkpoint may come from another node or a
//! registry, so every size the reader allocates or writes is capped before it is trusted.

/// Caps on what a reader accepts. The defaults follow containerd's pod checkpoint reader
/// (manifest ≤ 16 MiB, config ≤ 4 MiB, ≤ 100,000 entries, ≤ 1024 containers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON metadata file held in memory: `config.dump`, `spec.dump`, `status.dump`,
    /// `deleted.files`, `bind.mounts`, `pod.options`, `pod.dump`.
    pub max_metadata_bytes: u64,
    /// Largest manifest (`podcr.manifest.json`, `podcr.container.manifest.json`).
    pub max_manifest_bytes: u64,
    /// Most entries in a container archive or a pod transport archive.
    pub max_entries: u64,
    /// Most entries in a `rootfs-diff.tar` (a writable layer can hold many small files).
    pub max_rootfs_entries: u64,
    /// Most bytes written by one extraction (sum of the entry sizes).
    pub max_total_bytes: u64,
    /// Most containers in one pod checkpoint.
    pub max_containers: usize,
    /// Longest entry path, in bytes.
    pub max_path_len: usize,
    /// Deepest entry path, in components (a rootfs diff of 50,000 nested directories would
    /// otherwise cost as many open descriptors per walk).
    pub max_depth: usize,
    /// Free space an extraction must leave on the target file system, beyond what the signed
    /// manifest says it will write: a restore must not fill the node's disk.
    pub min_free_bytes: u64,
    /// Most container archives extracted at once (each holds a decompressor and buffers).
    pub max_parallel: usize,
}

const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_metadata_bytes: 4 * MIB,
            max_manifest_bytes: 16 * MIB,
            max_entries: 100_000,
            max_rootfs_entries: 1_000_000,
            max_total_bytes: 1024 * 1024 * MIB, // 1 TiB
            max_containers: 1024,
            max_path_len: 4096,
            max_depth: 256,
            min_free_bytes: 256 * MIB,
            max_parallel: 4,
        }
    }
}

impl Limits {
    /// These limits narrowed to what the signed manifest says a container archive unpacks to
    /// (`None`: an older checkpoint that does not say, so the limits stay as they are).
    pub fn within(self, unpacked: Option<super::metadata::Unpacked>) -> Limits {
        match unpacked {
            Some(u) => Limits {
                max_total_bytes: self.max_total_bytes.min(u.bytes),
                max_entries: self.max_entries.min(u.entries),
                ..self
            },
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Unpacked;

    #[test]
    fn the_signed_sizes_only_narrow() {
        let d = Limits::default();
        let l = d.within(Some(Unpacked { bytes: 10, entries: 3 }));
        assert_eq!((l.max_total_bytes, l.max_entries), (10, 3));
        let l = d.within(Some(Unpacked { bytes: u64::MAX, entries: u64::MAX }));
        assert_eq!(l, d);
        assert_eq!(d.within(None), d);
    }
}
