//! Generates podcr's own services: the pod Checkpoint service (containerd PR 13822) from
//! `proto/checkpoint.proto` and the Sandbox service with the RPCs no published crate has yet
//! (UpdateSandbox, PR 13971's CheckpointSandbox/RestoreSandbox) from `proto/sandbox.proto`.
//! containerd's Task service comes from `containerd-shim-protos`, generated the same way.

use std::{env, error::Error, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    generate("checkpoint", &["proto/checkpoint.proto"])?;
    generate("events", &["proto/events.proto"])?;
    let sandbox =
        ["proto/sandbox.proto", "proto/types/mount.proto", "proto/types/platform.proto", "proto/types/metrics.proto"];
    generate("sandbox", &sandbox)
}

fn generate(name: &str, inputs: &[&str]) -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?).join(name);
    fs::create_dir_all(&out)?;
    Codegen::new()
        .inputs(inputs)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false).generate_accessors(true))
        .customize(Customize { async_all: true, ..Default::default() })
        .out_dir(&out)
        .run()?;
    // Generated files carry inner attributes (`#![...]`, `//!`) that cannot be include!()d.
    for entry in fs::read_dir(&out)? {
        let path = entry?.path();
        let text = fs::read_to_string(&path)?;
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("#!") && !l.starts_with("//!")).collect();
        fs::write(&path, kept.join("\n"))?;
    }
    Ok(())
}
