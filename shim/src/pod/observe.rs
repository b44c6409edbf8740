//! What a pod checkpoint or restore leaves for operators, besides the shim's log: one pod-level
//! event on containerd's event bus (`ctr events` shows `/podcr/pod/checkpoint` and
//! `/podcr/pod/restore`), and Prometheus metrics in a text file for node_exporter's textfile
//! collector (`[metrics] textfile_dir` in the node configuration).
//!
//! The shim serves one pod, so the file is per pod (`podcr-<sandbox id>.prom`): counters of this
//! shim's life and the figures of the last operation. It is rewritten whole (temporary file, then
//! rename, so the collector never reads half a file) and removed when the shim exits.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use podcr_protos::events::PodOperation;
use podcr_sandbox_controller::checkpoint::PodCheckpointStats;
use tracing::warn;

use crate::events::EventSink;

pub const CHECKPOINT_TOPIC: &str = "/podcr/pod/checkpoint";
pub const RESTORE_TOPIC: &str = "/podcr/pod/restore";

/// The figures of the metrics file.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    sandbox_id: String,
    checkpoints_ok: u64,
    checkpoints_failed: u64,
    restores_ok: u64,
    restores_failed: u64,
    last_checkpoint: Option<(Duration, Duration, u64)>,
    last_restore: Option<Duration>,
}

pub struct Observer {
    events: EventSink,
    textfile_dir: Option<PathBuf>,
    figures: Mutex<Figures>,
}

/// A finished operation, as both outputs describe it.
pub struct Outcome<'a> {
    pub sandbox_id: &'a str,
    pub path: &'a Path,
    pub elapsed: Duration,
    pub containers: usize,
    pub error: Option<String>,
}

impl Observer {
    pub fn new(events: EventSink, textfile_dir: Option<PathBuf>) -> Observer {
        Observer { events, textfile_dir, figures: Mutex::default() }
    }

    /// From the node configuration; a configuration that does not load means no metrics file
    /// (the shim logs why) rather than no checkpoints.
    pub fn from_node_config(events: EventSink) -> Observer {
        let dir = match podcr_sandbox_controller::node_config::NodeConfig::load() {
            Ok(c) => c.metrics.textfile_dir,
            Err(e) => {
                warn!(error = %e, "node configuration unreadable: no metrics file");
                None
            }
        };
        Observer::new(events, dir)
    }

    pub fn checkpointed(&self, o: &Outcome<'_>, stats: Option<&PodCheckpointStats>) {
        let mut ev = event(o, "checkpoint");
        if let Some(s) = stats {
            ev.freeze_window_us = u64::try_from(s.freeze_window.as_micros()).unwrap_or(u64::MAX);
            ev.bytes = s.total_bytes;
        }
        self.events.send(CHECKPOINT_TOPIC, ev);
        self.update(o.sandbox_id, |f| match (&o.error, stats) {
            (None, Some(s)) => {
                f.checkpoints_ok += 1;
                f.last_checkpoint = Some((o.elapsed, s.freeze_window, s.total_bytes));
            }
            _ => f.checkpoints_failed += 1,
        });
    }

    pub fn restored(&self, o: &Outcome<'_>) {
        self.events.send(RESTORE_TOPIC, event(o, "restore"));
        self.update(o.sandbox_id, |f| match &o.error {
            None => {
                f.restores_ok += 1;
                f.last_restore = Some(o.elapsed);
            }
            Some(_) => f.restores_failed += 1,
        });
    }

    fn update(&self, sandbox_id: &str, change: impl FnOnce(&mut Figures)) {
        let Some(dir) = &self.textfile_dir else {
            return;
        };
        let text = {
            let mut f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
            f.sandbox_id = sandbox_id.to_string();
            change(&mut f);
            render(&f)
        };
        if let Err(e) = write_atomically(&file_for(dir, sandbox_id), &text) {
            warn!(dir = %dir.display(), error = %e, "cannot write the metrics file");
        }
    }
}

fn event(o: &Outcome<'_>, operation: &str) -> PodOperation {
    PodOperation {
        sandbox_id: o.sandbox_id.to_string(),
        operation: operation.to_string(),
        succeeded: o.error.is_none(),
        error: o.error.clone().unwrap_or_default(),
        path: o.path.to_string_lossy().into_owned(),
        duration_us: u64::try_from(o.elapsed.as_micros()).unwrap_or(u64::MAX),
        containers: u32::try_from(o.containers).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

/// `<dir>/podcr-<sandbox id>.prom`; node_exporter reads every `*.prom` in the directory.
pub fn file_for(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(format!("podcr-{sandbox_id}.prom"))
}

/// Removes this shim's metrics file (the pod is gone, so are its series).
pub fn remove_file(sandbox_id: &str) {
    let Ok(config) = podcr_sandbox_controller::node_config::NodeConfig::load() else {
        return;
    };
    if let Some(dir) = config.metrics.textfile_dir {
        let _ = std::fs::remove_file(file_for(&dir, sandbox_id));
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The Prometheus text exposition of `f`.
fn render(f: &Figures) -> String {
    let l = format!("sandbox_id=\"{}\"", f.sandbox_id.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (extra, value) in samples {
            let labels = if extra.is_empty() { l.clone() } else { format!("{l},{extra}") };
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    metric(
        "podcr_pod_checkpoints_total",
        "counter",
        "Pod checkpoints this pod's shim finished, by result.",
        &[
            ("result=\"success\"", f.checkpoints_ok.to_string()),
            ("result=\"failure\"", f.checkpoints_failed.to_string()),
        ],
    );
    metric(
        "podcr_pod_restores_total",
        "counter",
        "Pod restores into this pod, by result.",
        &[("result=\"success\"", f.restores_ok.to_string()), ("result=\"failure\"", f.restores_failed.to_string())],
    );
    if let Some((total, freeze, bytes)) = f.last_checkpoint {
        metric(
            "podcr_pod_checkpoint_duration_seconds",
            "gauge",
            "Duration of the last successful pod checkpoint.",
            &[("", secs(total))],
        );
        metric(
            "podcr_pod_checkpoint_freeze_window_seconds",
            "gauge",
            "First container frozen to last thawed, in the last successful pod checkpoint.",
            &[("", secs(freeze))],
        );
        metric(
            "podcr_pod_checkpoint_bytes",
            "gauge",
            "Bytes written by the last successful pod checkpoint.",
            &[("", bytes.to_string())],
        );
    }
    if let Some(total) = f.last_restore {
        metric(
            "podcr_pod_restore_duration_seconds",
            "gauge",
            "Duration of the last successful pod restore.",
            &[("", secs(total))],
        );
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> PodCheckpointStats {
        PodCheckpointStats { freeze_window: Duration::from_millis(40), total_bytes: 4096, ..Default::default() }
    }

    #[test]
    fn events_carry_the_outcome_and_the_file_counts_results() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, mut rx) = EventSink::channel();
        let obs = Observer::new(sink, Some(dir.path().to_path_buf()));
        let ok = Outcome {
            sandbox_id: "sb1",
            path: Path::new("/ck"),
            elapsed: Duration::from_millis(1500),
            containers: 2,
            error: None,
        };
        obs.checkpointed(&ok, Some(&stats()));
        let failed = Outcome { error: Some("criu failed".into()), ..ok };
        obs.checkpointed(&failed, None);
        obs.restored(&Outcome { error: None, ..failed });

        let next = |rx: &mut tokio::sync::mpsc::Receiver<_>| {
            let (topic, ev): (&str, Box<dyn protobuf::MessageDyn + Send>) = rx.try_recv().unwrap();
            let ev: Box<dyn protobuf::MessageDyn> = ev;
            (topic, ev.downcast_box::<PodOperation>().unwrap())
        };
        let (topic, ev) = next(&mut rx);
        assert_eq!(topic, CHECKPOINT_TOPIC);
        assert!(ev.succeeded && ev.bytes == 4096 && ev.freeze_window_us == 40_000 && ev.containers == 2);
        let (_, ev) = next(&mut rx);
        assert!(!ev.succeeded && ev.error == "criu failed");
        assert_eq!(next(&mut rx).0, RESTORE_TOPIC);

        let text = std::fs::read_to_string(file_for(dir.path(), "sb1")).unwrap();
        assert!(text.contains("podcr_pod_checkpoints_total{sandbox_id=\"sb1\",result=\"success\"} 1\n"), "{text}");
        assert!(text.contains("podcr_pod_checkpoints_total{sandbox_id=\"sb1\",result=\"failure\"} 1\n"), "{text}");
        assert!(text.contains("podcr_pod_checkpoint_duration_seconds{sandbox_id=\"sb1\"} 1.500000\n"), "{text}");
        assert!(text.contains("podcr_pod_checkpoint_bytes{sandbox_id=\"sb1\"} 4096\n"), "{text}");
        assert!(text.contains("podcr_pod_restores_total{sandbox_id=\"sb1\",result=\"success\"} 1\n"), "{text}");
        assert!(!dir.path().join("podcr-sb1.prom.tmp").exists());
    }

    #[test]
    fn without_a_directory_only_events_are_sent() {
        let (sink, mut rx) = EventSink::channel();
        let obs = Observer::new(sink, None);
        obs.restored(&Outcome {
            sandbox_id: "x",
            path: Path::new("/c"),
            elapsed: Duration::ZERO,
            containers: 1,
            error: None,
        });
        assert_eq!(rx.try_recv().unwrap().0, RESTORE_TOPIC);
    }
}
