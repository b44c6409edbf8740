//! How long CRIU will hold a pod frozen, estimated before the pod is frozen.
//!
//! The controller freezes a pod only if its deadline leaves this much time, because once CRIU
//! runs it is never stopped (see `checkpoint::orchestrate`). Most of a dump is copying the
//! processes' private memory, so the estimate is a fixed cost plus the containers' anonymous
//! and shared memory at a throughput deliberately below what this runtime measures (the
//! benchmark's 1-2 x 1 GiB dumps run at 1.6-2 GiB/s into the page cache): a disk that is slower
//! or busy must not turn a checkpoint that was allowed to start into a frozen pod past its
//! deadline. Operators with slower or faster storage set `PODCR_DUMP_MIB_PER_SEC` in the
//! shim's environment (containerd passes its own on); 0 turns the estimate off.

use std::time::Duration;

use crate::cgroups::{self, ControllerCgroup};

/// The environment variable that overrides the assumed dump throughput, in MiB/s.
pub const RATE_ENV: &str = "PODCR_DUMP_MIB_PER_SEC";
const DEFAULT_MIB_PER_SEC: u64 = 512;
/// CRIU's cost that does not grow with memory: seizing the tasks, the parasite, files, sockets.
const FIXED: Duration = Duration::from_millis(300);
const MIB: u64 = 1024 * 1024;

/// The estimate for dumping the containers whose init processes are `pids`, in parallel (they
/// share the same disk and cores, so their memory adds up).
pub fn for_pids(pids: &[u32]) -> Duration {
    let rate = rate_from(std::env::var(RATE_ENV).ok().as_deref());
    let Some(rate) = rate else {
        return Duration::ZERO;
    };
    let bytes: u64 = pids.iter().map(|pid| dumped_bytes(*pid)).sum();
    FIXED + Duration::from_secs_f64(bytes as f64 / (rate * MIB) as f64)
}

/// The throughput to assume; `None` turns the estimate off.
fn rate_from(value: Option<&str>) -> Option<u64> {
    match value.map(str::trim) {
        None | Some("") => Some(DEFAULT_MIB_PER_SEC),
        Some(v) => match v.parse::<u64>() {
            Ok(0) => None,
            Ok(rate) => Some(rate),
            Err(_) => {
                tracing::warn!(value = v, "{RATE_ENV} is not a whole number of MiB/s; using {DEFAULT_MIB_PER_SEC}");
                Some(DEFAULT_MIB_PER_SEC)
            }
        },
    }
}

/// The memory CRIU copies for the container of `pid`: anonymous (incl. swapped-in) and shmem
/// pages of its cgroup. Unknown counts as 0: the fixed cost still applies.
fn dumped_bytes(pid: u32) -> u64 {
    let Ok(cgroup) = cgroups::of_pid(pid, "memory", "memory.stat") else {
        return 0;
    };
    let (dir, keys): (_, &[&str]) = match &cgroup {
        ControllerCgroup::V1(dir) => (dir, &["total_rss", "total_shmem"]),
        ControllerCgroup::V2(dir) => (dir, &["anon", "shmem"]),
    };
    std::fs::read_to_string(dir.join("memory.stat")).map(|stat| sum_stat(&stat, keys)).unwrap_or(0)
}

fn sum_stat(stat: &str, keys: &[&str]) -> u64 {
    stat.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| keys.contains(k))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_keys_are_summed_and_others_ignored() {
        let v1 = "cache 4096\nrss 100\ntotal_cache 8192\ntotal_rss 1048576\ntotal_shmem 4096\ntotal_rss_huge 0\n";
        assert_eq!(sum_stat(v1, &["total_rss", "total_shmem"]), 1_052_672);
        assert_eq!(sum_stat("anon 10\nfile 99\nshmem 5\n", &["anon", "shmem"]), 15);
    }

    #[test]
    fn the_rate_defaults_and_zero_turns_it_off() {
        assert_eq!(rate_from(None), Some(DEFAULT_MIB_PER_SEC));
        assert_eq!(rate_from(Some("2048")), Some(2048));
        assert_eq!(rate_from(Some("0")), None);
        assert_eq!(rate_from(Some("fast")), Some(DEFAULT_MIB_PER_SEC));
    }
}
