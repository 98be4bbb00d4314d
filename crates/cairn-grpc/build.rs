//! Compiles `proto/` into the server side of the `KurrentDB` client protocol.
//!
//! protox parses the files in Rust (no system `protoc`); tonic-build turns the descriptor set
//! into prost messages and tonic server traits. The Google well-known types come with protox.

use std::path::PathBuf;

const PROTOS: [&str; 2] =
    ["event_store/client/streams.proto", "event_store/client/server_features.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_build::configure().build_client(false).build_server(true).compile_fds(fds)?;
    Ok(())
}
