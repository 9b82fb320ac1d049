//! Compiles the Raft transport's own `proto/shale/raft/v1/raft.proto` (package `shale.raft.v1`)
//! without a system `protoc`: `protox` parses the proto into a `FileDescriptorSet`, and
//! `tonic-prost-build` generates the messages, client and server. The client API's protos
//! (`client/proto/`) are not read here: the transport's wire types are the server's own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let proto_file = proto_root.join("shale/raft/v1/raft.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let fds = protox::compile([&proto_file], [&proto_root])?;
    // Received messages get room for large AppendEntries (`src/network/codec.rs`).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".shale.raft.v1")
        .codec_path("crate::network::codec::RaftCodec")
        .compile_fds(fds)?;
    Ok(())
}
