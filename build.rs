//! Build script: compiles etcd 3.5's wire API (`proto/`) and Keel's own peer service
//! (`proto/keelpeer`) into Rust with prost + tonic,
//! generating both servers (what Keel serves) and clients (what tests and benches use).

use std::error::Error;
use std::path::PathBuf;

/// Every file is listed explicitly so that protoc sees imports by the same relative
/// path they are declared with, which keeps the generated `super::` paths consistent.
const PROTOS: &[&str] = &[
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
    "proto/grpc/health/v1/health.proto",
    "proto/keelpeer/peer.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut config = tonic_prost_build::Config::new();
    // A fresh machine has no system protoc; an explicit PROTOC still wins so that
    // packagers can pin their own compiler.
    if std::env::var_os("PROTOC").is_none() {
        let protoc: PathBuf = protoc_bin_vendored::protoc_bin_path()?;
        config.protoc_executable(protoc);
    }

    // The descriptor set feeds pbjson-build, which writes serde impls with the proto3 JSON mapping
    // (the HTTP gateway's wire format) beside each package's prost types.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("keel_descriptor.bin");
    config.file_descriptor_set_path(&descriptor_path);

    tonic_prost_build::configure().build_server(true).build_client(true).compile_with_config(
        config,
        PROTOS,
        &["proto"],
    )?;

    // etcd's grpc-gateway marshals with the original proto field names (`create_revision`, `peerURLs`)
    // and ignores fields it does not know.
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])?;
    Ok(())
}
