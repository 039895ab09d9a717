//! Generates the protobuf types with protox (a pure-Rust protobuf compiler), so a fresh machine
//! needs nothing but cargo: no system `protoc`. Also writes the compiled descriptors, which the
//! server embeds to answer gRPC reflection.

use prost::Message;

const PROTOS: [&str; 4] = [
    "eventstream.proto",
    "grpc/health/v1/health.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/reflection/v1alpha/reflection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), descriptors.encode_to_vec())?;
    // Byte fields as `Bytes`, so payloads are shared with the engine instead of copied.
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
