//! Compiles `client/proto/shale/raft/v1/raft.proto` without a system `protoc`: `protox` parses the
//! proto into a `FileDescriptorSet`, and `tonic-prost-build` generates the messages, client and server.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../client/proto");
    let proto_file = proto_root.join("shale/raft/v1/raft.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let fds = protox::compile([&proto_file], [&proto_root])?;
    tonic_prost_build::configure().build_client(true).build_server(true).bytes(".shale.raft.v1").compile_fds(fds)?;
    Ok(())
}
