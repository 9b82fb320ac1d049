//! Compiles the client API protos (`proto/shale/api/**`) with `protox` (pure Rust, no system
//! `protoc`) and generates prost messages plus tonic clients and servers. (The Raft transport's
//! proto is `shale-raft`'s own, in `raft/proto/`.)

use std::path::{Path, PathBuf};

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let api = root.join("shale/api");
    println!("cargo:rerun-if-changed={}", api.display());
    let mut files = Vec::new();
    collect_protos(&api, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    // Each message is encoded into room reserved for its exact length (`src/codec.rs`).
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .codec_path("crate::codec::SizedProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
