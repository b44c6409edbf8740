//! What the user sees: tables on stdout, progress on stderr.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use podcr_protos::checkpoint::CheckpointStats;
use prost_types::Timestamp;

/// How results are printed on stdout (`-o/--output` on `sandbox ls`, `--format` elsewhere).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header, for people.
    #[default]
    Table,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SandboxRow {
    pub id: String,
    pub runtime: String,
    pub sandboxer: String,
    pub created: String,
    pub state: String,
    pub pid: Option<u32>,
}

/// Left-aligned columns, two spaces apart, header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn sandbox_table(rows: &[SandboxRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.runtime.clone(),
                r.sandboxer.clone(),
                r.created.clone(),
                r.state.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["ID", "RUNTIME", "SANDBOXER", "CREATED", "STATE", "PID"], &rows)
}

pub fn format_timestamp(t: &Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The first line of an error chain's innermost cause: enough for a table cell.
pub fn short_error(e: &anyhow::Error) -> String {
    e.root_cause().to_string().lines().next().unwrap_or_default().to_string()
}

/// Microseconds as a human duration: `850µs`, `12.3ms`, `4.56s`.
pub fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A checkpoint's result for scripts (`podcr checkpoint --format json`): what was written where,
/// and the shim's figures with their units in the names.
pub fn checkpoint_json(
    sandbox_id: &str,
    output: &std::path::Path,
    archive: Option<&std::path::Path>,
    elapsed: Duration,
    stats: Option<&CheckpointStats>,
) -> serde_json::Value {
    let stats = stats.map(|s| {
        serde_json::json!({
            "freeze_window_us": s.freeze_window_us,
            "write_us": s.write_us,
            "total_us": s.total_us,
            "total_bytes": s.total_bytes,
            "containers": s.containers.iter().map(|c| serde_json::json!({
                "id": c.id,
                "name": c.name,
                "criu_freezing_time_us": c.criu_freezing_time_us,
                "criu_frozen_time_us": c.criu_frozen_time_us,
                "criu_memdump_time_us": c.criu_memdump_time_us,
                "criu_memwrite_time_us": c.criu_memwrite_time_us,
                "pages_written": c.pages_written,
                "dump_wall_us": c.dump_wall_us,
                "rootfs_diff_bytes": c.rootfs_diff_bytes,
                "archive_bytes": c.archive_bytes,
            })).collect::<Vec<_>>(),
        })
    });
    serde_json::json!({
        "sandbox_id": sandbox_id,
        "output": output,
        "archive": archive,
        "elapsed_us": u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "stats": stats,
    })
}

/// The pod totals, then one row per container.
pub fn stats_report(stats: &CheckpointStats) -> String {
    let mut out = format!(
        "freeze window {}   write {}   total {}   size {}\n\n",
        micros(stats.freeze_window_us),
        micros(stats.write_us),
        micros(stats.total_us),
        bytes(stats.total_bytes)
    );
    let rows: Vec<Vec<String>> = stats
        .containers
        .iter()
        .map(|c| {
            vec![
                if c.name.is_empty() { c.id.clone() } else { c.name.clone() },
                micros(c.criu_frozen_time_us),
                micros(c.criu_memdump_time_us),
                c.pages_written.to_string(),
                micros(c.dump_wall_us),
                bytes(c.rootfs_diff_bytes),
                bytes(c.archive_bytes),
                // Last, so parsers of the earlier columns (the bench's) keep their positions.
                micros(c.criu_memwrite_time_us),
            ]
        })
        .collect();
    out.push_str(&table(
        &["CONTAINER", "CRIU FROZEN", "MEMDUMP", "PAGES", "DUMP WALL", "ROOTFS DIFF", "ARCHIVE", "MEMWRITE"],
        &rows,
    ));
    out
}

/// Elapsed-time ticker on stderr while a long RPC runs; silent when stderr is not a terminal.
pub struct Progress {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Progress {
    pub fn start(what: &str) -> Progress {
        let started = Instant::now();
        if !std::io::stderr().is_terminal() {
            return Progress { stop: None, task: None, started };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let what = what.to_string();
        let task = tokio::spawn(async move {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            for frame in FRAMES.iter().cycle() {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {
                        eprint!("\r{frame} {what} {:.1}s ", started.elapsed().as_secs_f64());
                        let _ = std::io::stderr().flush();
                    }
                }
            }
            eprint!("\r\x1b[K");
        });
        Progress { stop: Some(tx), task: Some(task), started }
    }

    /// Stops the ticker and returns how long it ran.
    pub async fn finish(mut self) -> Duration {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use podcr_protos::checkpoint::ContainerCheckpointStats;

    use super::*;

    #[test]
    fn units() {
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(12_345), "12.3ms");
        assert_eq!(micros(4_560_000), "4.56s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
        let rows = [SandboxRow { id: "p".into(), runtime: "r".into(), sandboxer: "shim".into(), ..Default::default() }];
        let t = sandbox_table(&rows);
        assert!(t.starts_with("ID  RUNTIME  SANDBOXER  CREATED  STATE  PID\n"), "{t}");
        assert!(t.ends_with("-\n"));
        assert_eq!(format_timestamp(&Timestamp { seconds: 0, nanos: 0 }), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn stats_report_lists_containers() {
        let mut s = CheckpointStats::new();
        s.freeze_window_us = 120_000;
        s.total_us = 2_500_000;
        s.total_bytes = 2048;
        let mut c = ContainerCheckpointStats::new();
        c.id = "c1".into();
        c.criu_frozen_time_us = 90_000;
        c.pages_written = 42;
        s.containers.push(c);
        let r = stats_report(&s);
        assert!(r.starts_with("freeze window 120.0ms   write 0µs   total 2.50s   size 2.0 KiB\n"), "{r}");
        assert!(r.contains("c1         90.0ms"), "{r}");
        assert!(r.contains(" 42 "), "{r}");
    }
}
