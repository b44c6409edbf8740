//! `podcr`: the command line of the podcr runtime.
//!
//! - `podcr sandbox run|ls|rm`: shim sandboxes without the CRI (containerd 2.1's `ctr` cannot
//!   start them).
//! - `podcr checkpoint`: a whole pod at one instant, through the shim's Checkpoint service.
//! - `podcr restore`: a new pod from a checkpoint, playing the part containerd's CRI will play
//!   once pod restore (KEP-5823) lands there.
//! - `podcr key generate|trust`: the node's checkpoint signing key and the keys it trusts.
//!
//! Namespaces: `sandbox` commands default to containerd's `default` namespace, as `ctr` does;
//! `checkpoint` and `restore` default to `k8s.io`, where the CRI keeps its pods. `--namespace`
//! overrides both.

mod caller;
mod checkpoint;
mod containerd;
mod cri;
mod error;
mod key;
mod output;
mod restore;
mod sandbox;
mod shim;
mod transport;
mod zerofill;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

const CRI_NAMESPACE: &str = "k8s.io";
const DEFAULT_NAMESPACE: &str = "default";

#[derive(Parser, Debug)]
#[command(name = "podcr", version, about = "Pod sandboxes and pod checkpoint/restore for the podcr containerd runtime")]
struct Cli {
    /// containerd's gRPC socket (also serves the CRI).
    #[arg(long, global = true, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    /// containerd namespace [default: `default` for `sandbox`, `k8s.io` otherwise].
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// containerd's state directory [default: asked from the CRI, else /run/containerd].
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// Deadline of a checkpoint or restore, e.g. 90s, 5m, 1h. A checkpoint whose deadline
    /// cannot cover the dump is refused before the pod is frozen; one that runs late is
    /// discarded after the pod is thawed. Either way the pod keeps running.
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Log at debug level (or set RUST_LOG).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Shim sandboxes through containerd's sandbox API.
    #[command(subcommand, alias = "sb")]
    Sandbox(SandboxCommand),
    /// Checkpoint a whole pod into a directory; the pod keeps running unless --stop.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Restore a pod from a checkpoint directory or archive as a new CRI pod.
    Restore(restore::RestoreArgs),
    /// The node's checkpoint signing key and the public keys whose checkpoints it restores.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Create and start a sandbox with the podcr shim; prints its id.
    Run(RunArgs),
    /// List sandboxes.
    #[command(alias = "list")]
    Ls,
    /// Stop, shut down and delete sandboxes.
    #[command(alias = "remove")]
    Rm {
        /// Remove even if stopping fails.
        #[arg(long, short)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Runtime (shim) to run the sandbox with.
    #[arg(long, default_value = "io.containerd.podcr.v1")]
    runtime: String,
    /// Network namespace to put the pod in (default: the host's network).
    #[arg(long)]
    netns: Option<String>,
    /// Pod hostname (default: the pod name).
    #[arg(long)]
    hostname: Option<String>,
    /// Pod name in the pod config (default: the id).
    #[arg(long)]
    name: Option<String>,
    /// Pod namespace in the pod config (default: `default`).
    #[arg(long)]
    pod_namespace: Option<String>,
    id: String,
}

/// `90s`, `5m`, `1h`, `250ms`, or bare seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("the timeout must be positive".into());
    }
    Ok(d)
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// The state dir holds the shim addresses containerd 2.1 does not report over its API.
async fn state_dir(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.state {
        return s.clone();
    }
    if let Ok(cri) = cri::Cri::connect(&cli.address).await {
        if let Some(s) = cri.containerd_state_dir().await {
            return s;
        }
    }
    PathBuf::from(shim::DEFAULT_STATE)
}

async fn run(cli: Cli) -> Result<()> {
    let ns = |default: &str| cli.namespace.clone().unwrap_or_else(|| default.to_string());
    match &cli.command {
        Command::Sandbox(cmd) => {
            let cd = containerd::Containerd::connect(&cli.address, &ns(DEFAULT_NAMESPACE)).await?;
            match cmd {
                SandboxCommand::Run(a) => {
                    let opts = sandbox::RunOptions {
                        id: a.id.clone(),
                        runtime: a.runtime.clone(),
                        netns: a.netns.clone(),
                        hostname: a.hostname.clone(),
                        name: a.name.clone(),
                        pod_namespace: a.pod_namespace.clone(),
                    };
                    sandbox::run(&cd, &opts).await
                }
                SandboxCommand::Ls => sandbox::ls(&cd).await,
                SandboxCommand::Rm { force, ids } => sandbox::rm(&cd, ids, *force).await,
            }
        }
        Command::Checkpoint(args) => {
            let cd = containerd::Containerd::connect(&cli.address, &ns(CRI_NAMESPACE)).await?;
            let state = state_dir(&cli).await;
            checkpoint::run(&cd, &cli.address, &state, args, cli.timeout).await
        }
        Command::Key(cmd) => key::run(cmd),
        Command::Restore(args) => {
            let namespace = ns(CRI_NAMESPACE);
            if namespace != CRI_NAMESPACE {
                bail!("restore creates a CRI pod, which lives in containerd's {CRI_NAMESPACE} namespace");
            }
            let cd = containerd::Containerd::connect(&cli.address, &namespace).await?;
            let state = state_dir(&cli).await;
            restore::run(&cd, &cli.address, &state, args, cli.timeout).await
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.debug);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podcr: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "5x", "m", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn global_flags_after_subcommands() {
        let cli = Cli::try_parse_from(["podcr", "sandbox", "rm", "-f", "a", "b", "--namespace", "x"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("x"));
        assert!(matches!(cli.command, Command::Sandbox(SandboxCommand::Rm { force: true, ref ids }) if ids.len() == 2));
    }
}
