//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates tonic code.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "ghost/router/v1/patch.proto",
    "ghost/router/v1/router.proto",
    "ghost/router/v1/gateway_state.proto",
    "ghost/executor/v1/executor.proto",
    "ghost/summarizer/v1/summarizer.proto",
    "ghost/alerter/v1/alerter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // tonic-reflection serves this descriptor set.
    std::fs::write(out_dir.join("ghost_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
