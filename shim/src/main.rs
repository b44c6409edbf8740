//! containerd-shim-podcr-v1: dispatches to the holder mode, `-v`, `-info`, `start`, `delete` or the
//! server. Everything else lives in the library.

use std::{ffi::OsString, io::Write, process::ExitCode};

use anyhow::{bail, Context};
use podcr_shim::pod::{criu_hook, holder};
use protobuf::Message;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The pod's anchor process: no runtime, no flags, nothing else first.
    if args.get(1).is_some_and(|a| a == holder::HOLDER_ARG) {
        std::process::exit(holder::main());
    }
    // CRIU's action script during a pod checkpoint (see pod::criu_hook): quick, no runtime.
    if args.get(1).is_some_and(|a| a == criu_hook::HOOK_ARG) {
        std::process::exit(criu_hook::main());
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-podcr-v1: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[OsString]) -> anyhow::Result<()> {
    let flags = containerd_shim::parse(&args[1..]).context("parse flags")?;
    let mut stdout = std::io::stdout();
    if flags.version {
        stdout.write_all(podcr_shim::info::version_text("containerd-shim-podcr-v1").as_bytes())?;
        return Ok(stdout.flush()?);
    }
    if flags.info {
        // containerd pipes the handler's runtime options in (empty when it has none).
        let options = podcr_shim::runtime_options::read_stdin()?;
        let info = podcr_shim::info::runtime_info(&options).context("runtime info")?;
        stdout.write_all(&info.write_to_bytes()?)?;
        return Ok(stdout.flush()?);
    }
    match flags.action.as_str() {
        "start" => {
            let reply = podcr_shim::start::run(&flags).context("start")?;
            stdout.write_all(reply.as_bytes())?;
        }
        "delete" => {
            let reply = podcr_shim::delete::run(&flags).context("delete")?;
            stdout.write_all(&reply)?;
        }
        "" | "serve" => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(podcr_shim::serve::run(&flags)).context("serve")?;
        }
        other => bail!("unknown action {other:?}"),
    }
    Ok(stdout.flush()?)
}
