//! Generates the Checkpoint service (containerd PR 13822) from `proto/checkpoint.proto`.
//! containerd's own services come from `containerd-shim-protos`, which generates them the same way.

use std::{env, error::Error, fs, path::PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/checkpoint.proto");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("checkpoint");
    fs::create_dir_all(&out)?;
    Codegen::new()
        .inputs(["proto/checkpoint.proto"])
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
