//! The end-to-end demo behind scripts/demo.sh: start a private containerd with podcr registered, run a
//! busybox container under `io.containerd.podcr.v1`, show what it printed, and clean everything up.
//! It will grow into "checkpoint and restore a pod".

use std::process::ExitCode;

use anyhow::{ensure, Result};
use podcr_tests::{images, Containerd, Runtime};

fn step(msg: &str) {
    println!("==> {msg}");
}

fn demo() -> Result<()> {
    step("starting a private containerd (own root, state, socket and CNI network)");
    let cd = Containerd::start()?;
    println!("    socket {}", cd.socket().display());
    let ns = cd.namespace("demo");
    step("building and importing the busybox test image");
    let image = ns.import(&images::BUSYBOX)?;
    println!("    {image}");
    step(&format!(
        "ctr run --runtime {} {image} demo ...",
        Runtime::Podcr.runtime_type()
    ));
    let out = ns.ctr().run([
        "run",
        "--rm",
        "--runtime",
        Runtime::Podcr.runtime_type(),
        &image,
        "demo",
        "sh",
        "-c",
        "echo \"hello from $(hostname) under podcr\"; uname -sr; exit 7",
    ])?;
    for line in out.stdout.lines() {
        println!("    | {line}");
    }
    ensure!(
        out.code == 7,
        "unexpected result: {out:?}\ncontainerd log:\n{}",
        cd.log_tail(30)
    );
    println!("    exit status {} (as asked)", out.code);
    step("cleaning up");
    drop(ns);
    cd.stop()?;
    Ok(())
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => {
            println!("==> done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
