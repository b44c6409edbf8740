//! `podcr`: the command line of the podcr runtime.
//!
//! - `podcr sandbox run|ls|rm`: shim sandboxes without the CRI (containerd 2.1's `ctr` cannot
//!   start them).
//! - `podcr checkpoint`: a whole pod at one instant, through the shim's Checkpoint service.
//! - `podcr restore`: a new pod from a checkpoint, playing the part containerd's CRI will play
//!   once pod restore (KEP-5823) lands there.
//! - `podcr key generate|trust`: the node's checkpoint signing key and the keys it trusts.
//!
//! - `podcr version`, `podcr check`: what is installed, and whether this node is ready.
//! - `podcr completion SHELL`, `podcr man DIR`: shell completion and man pages.
//!
//! Namespaces: `sandbox` commands default to containerd's `default` namespace, as `ctr` does;
//! `checkpoint` and `restore` default to `k8s.io`, where the CRI keeps its pods. `--namespace`
//! (or `$CONTAINERD_NAMESPACE`) overrides both. Exit codes: see [`error::exit`].

mod caller;
mod check;
mod checkpoint;
mod containerd;
mod cri;
mod endpoint;
mod error;
mod key;
mod output;
mod restore;
mod sandbox;
mod shim;
mod transport;
mod version;
mod zerofill;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::{exit, UsageError};

const CRI_NAMESPACE: &str = "k8s.io";
const DEFAULT_NAMESPACE: &str = "default";

const EXIT_CODES: &str = "Exit codes: 0 done; 1 the operation failed (or a check did); 2 bad arguments or local input \
(checked before connecting); 3 containerd or the CRI unreachable, or no answer within --call-timeout; \
4 no such pod or sandbox.";

#[derive(Parser, Debug)]
#[command(name = "podcr", version, about = "Pod sandboxes and pod checkpoint/restore for the podcr containerd runtime", after_help = EXIT_CODES)]
struct Cli {
    /// containerd's socket: unix:///path or a path (also serves the CRI).
    #[arg(long, short = 'a', global = true, env = "CONTAINERD_ADDRESS", default_value = endpoint::DEFAULT_CONTAINERD)]
    address: String,
    /// The CRI's socket, when not containerd's: unix:///path or a path.
    #[arg(long, short = 'r', global = true, env = "CONTAINER_RUNTIME_ENDPOINT")]
    runtime_endpoint: Option<String>,
    /// containerd namespace [default: `default` for `sandbox`, `k8s.io` otherwise].
    #[arg(long, short = 'n', global = true, env = "CONTAINERD_NAMESPACE")]
    namespace: Option<String>,
    /// Deadline of each call to containerd and the CRI, connecting included: a daemon that
    /// does not answer makes podcr fail (exit 3) instead of waiting for ever.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    call_timeout: Duration,
    /// containerd's state directory [default: asked from the CRI, else /run/containerd].
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// Deadline of a checkpoint or restore, e.g. 90s, 5m, 1h. A checkpoint whose deadline
    /// cannot cover the dump is refused before the pod is frozen; one that runs late is
    /// discarded after the pod is thawed. Either way the pod keeps running.
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Log podcr's own debug messages on stderr (RUST_LOG takes a full filter).
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
    /// Versions of podcr, its shim (as containerd runs it), containerd, runc and CRIU.
    Version {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: output::Format,
    },
    /// Check that this node can run, checkpoint and restore podcr pods.
    Check {
        /// The CRI runtime handler podcr is registered under.
        #[arg(long, default_value = "podcr")]
        handler: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: output::Format,
    },
    /// Print a shell completion script (e.g. `podcr completion bash > /etc/bash_completion.d/podcr`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (podcr.1, podcr-checkpoint.1, ...) into a directory.
    Man { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Create and start a sandbox with the podcr shim; prints its id.
    Run(RunArgs),
    /// List sandboxes.
    #[command(alias = "list")]
    Ls {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: output::Format,
        /// Only the ids, one a line.
        #[arg(long, short)]
        quiet: bool,
    },
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
    // --debug is podcr's own: the gRPC, HTTP/2 and ttrpc crates' debug output is noise here.
    let default = if debug { "warn,podcr=debug,podcr_sandbox_controller=debug,podcr_archive=debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// The state dir holds the shim addresses containerd 2.1 does not report over its API.
async fn state_dir(cli: &Cli, ep: &endpoint::Endpoints) -> PathBuf {
    if let Some(s) = &cli.state {
        return s.clone();
    }
    if let Ok(cri) = cri::Cri::connect(&ep.cri).await {
        if let Some(s) = cri.containerd_state_dir().await {
            return s;
        }
    }
    PathBuf::from(shim::DEFAULT_STATE)
}

/// POD given as `namespace/name` means a CRI pod name in that Kubernetes namespace, as
/// `--pod-namespace` does (sandbox ids never contain a slash).
fn split_pod(pod: &mut String, pod_namespace: &mut Option<String>) -> Result<(), UsageError> {
    let Some((ns, name)) = pod.split_once('/') else { return Ok(()) };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(UsageError(format!(
            "pod {pod:?}: expected NAMESPACE/NAME, a pod name with --pod-namespace, or a sandbox id"
        )));
    }
    if pod_namespace.as_deref().is_some_and(|p| p != ns) {
        return Err(UsageError(format!(
            "pod {pod:?} names namespace {ns:?} but --pod-namespace says {:?}",
            pod_namespace.as_deref().unwrap_or_default()
        )));
    }
    *pod_namespace = Some(ns.to_string());
    *pod = name.to_string();
    Ok(())
}

/// Local input that can be checked without containerd: refused before connecting, so a typo
/// costs nothing and names itself.
fn check_local(command: &Command) -> Result<(), UsageError> {
    match command {
        Command::Checkpoint(a) => {
            // Without -o the output is a new, time-stamped directory under the checkpoint root.
            if let Some(meta) =
                a.output.as_deref().and_then(|out| std::fs::symlink_metadata(out).ok().map(|m| (out, m)))
            {
                let (out, meta) = meta;
                if !meta.is_dir() {
                    return Err(UsageError(format!("output {} exists and is not a directory", out.display())));
                }
                let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
                if !empty {
                    return Err(UsageError(format!("output directory {} is not empty", out.display())));
                }
            }
            if let Some(parent) = a.archive.as_deref().and_then(|p| p.parent()).filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(UsageError(format!("--archive: directory {} does not exist", parent.display())));
                }
            }
        }
        Command::Restore(a) if !a.checkpoint.exists() => {
            return Err(UsageError(format!("checkpoint {} does not exist", a.checkpoint.display())));
        }
        _ => {}
    }
    Ok(())
}

async fn run(mut cli: Cli) -> Result<()> {
    containerd::set_call_timeout(cli.call_timeout);
    containerd::set_work_timeout(cli.timeout);
    if let Command::Checkpoint(a) = &mut cli.command {
        split_pod(&mut a.pod, &mut a.pod_namespace)?;
    }
    check_local(&cli.command)?;
    let ep = endpoint::Endpoints::resolve(&cli.address, cli.runtime_endpoint.as_deref())?;
    let ns = |default: &str| cli.namespace.clone().unwrap_or_else(|| default.to_string());
    match &cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "podcr", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => write_man_pages(dir),
        Command::Version { output } => {
            let cd = containerd::Containerd::connect(&ep.containerd, &ns(DEFAULT_NAMESPACE)).await;
            let reachable = cd.as_ref().map_err(error::render);
            let (components, failure) = version::collect(reachable, RUNTIME, cli.call_timeout).await;
            version::print(&components, *output)?;
            // Like `ctr version`: the client's version is printed either way, but an unreachable
            // containerd is still a failure.
            cd.map(drop)?;
            failure.map_or(Ok(()), Err)
        }
        Command::Check { handler, output } => {
            let cd = containerd::Containerd::connect(&ep.containerd, &ns(CRI_NAMESPACE)).await;
            let cri = cri::Cri::connect(&ep.cri).await.ok();
            let checks =
                check::run_checks(cd.as_ref().map_err(error::render), cri.as_ref(), handler, RUNTIME, cli.call_timeout)
                    .await;
            match check::print(&checks, *output)? {
                0 => Ok(()),
                n => bail!("{n} of {} checks failed", checks.len()),
            }
        }
        Command::Sandbox(cmd) => {
            let cd = containerd::Containerd::connect(&ep.containerd, &ns(DEFAULT_NAMESPACE)).await?;
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
                SandboxCommand::Ls { output, quiet } => sandbox::ls(&cd, *output, *quiet).await,
                SandboxCommand::Rm { force, ids } => sandbox::rm(&cd, ids, *force).await,
            }
        }
        Command::Checkpoint(args) => {
            let cd = containerd::Containerd::connect(&ep.containerd, &ns(CRI_NAMESPACE)).await?;
            let state = state_dir(&cli, &ep).await;
            checkpoint::run(&cd, &ep.cri, &state, args, cli.timeout).await
        }
        Command::Key(cmd) => key::run(cmd),
        Command::Restore(args) => {
            let namespace = ns(CRI_NAMESPACE);
            if namespace != CRI_NAMESPACE {
                bail!("restore creates a CRI pod, which lives in containerd's {CRI_NAMESPACE} namespace");
            }
            let cd = containerd::Containerd::connect(&ep.containerd, &namespace).await?;
            let state = state_dir(&cli, &ep).await;
            restore::run(&cd, &ep.cri, &state, args, cli.timeout).await
        }
    }
}

/// The runtime type podcr's shim is registered as.
const RUNTIME: &str = "io.containerd.podcr.v1";

/// One man page per command and subcommand, named as `man` expects (podcr-sandbox-ls.1).
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| UsageError(format!("create {}: {e}", dir.display())))?;
    let mut cmd = Cli::command();
    cmd.build();
    write_page(dir, &cmd, "podcr")
}

fn write_page(dir: &std::path::Path, cmd: &clap::Command, name: &str) -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).title(name.to_string()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_page(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.debug);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::from(exit::OK),
        Err(e) => {
            // The whole cause chain on one line, once; then what to try, when that is not obvious.
            eprintln!("podcr: {}", error::render(&e));
            let code = error::exit_code(&e);
            if let Some(hint) = error::hint(code) {
                eprintln!("hint: {hint}");
            }
            std::process::ExitCode::from(code)
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
    fn pods_as_namespace_slash_name() {
        let (mut pod, mut ns) = ("web/app".to_string(), None);
        split_pod(&mut pod, &mut ns).unwrap();
        assert_eq!((pod.as_str(), ns.as_deref()), ("app", Some("web")));
        let (mut pod, mut ns) = ("abc123".to_string(), None);
        split_pod(&mut pod, &mut ns).unwrap();
        assert_eq!((pod.as_str(), ns), ("abc123", None));
        for bad in ["/app", "web/", "a/b/c"] {
            assert!(split_pod(&mut bad.to_string(), &mut None).is_err(), "{bad}");
        }
        assert!(split_pod(&mut "web/app".to_string(), &mut Some("other".into())).is_err());
        assert!(split_pod(&mut "web/app".to_string(), &mut Some("web".into())).is_ok());
    }

    #[test]
    fn environment_names_the_sockets_and_namespace() {
        // clap reads the variables at parse time; a flag still wins over them.
        let cli = Cli::try_parse_from(["podcr", "-a", "unix:///x.sock", "sandbox", "ls", "-q"]).unwrap();
        assert_eq!(cli.address, "unix:///x.sock");
        assert!(matches!(cli.command, Command::Sandbox(SandboxCommand::Ls { quiet: true, .. })));
        let cli = Cli::try_parse_from(["podcr", "sandbox", "ls", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Sandbox(SandboxCommand::Ls { output: output::Format::Json, .. })));
    }

    #[test]
    fn global_flags_after_subcommands() {
        let cli = Cli::try_parse_from(["podcr", "sandbox", "rm", "-f", "a", "b", "--namespace", "x"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("x"));
        assert!(matches!(cli.command, Command::Sandbox(SandboxCommand::Rm { force: true, ref ids }) if ids.len() == 2));
    }
}
