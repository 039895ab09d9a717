//! Generates the protobuf types of `proto/eventstream.proto` with protox (a pure-Rust protobuf
//! compiler), so a fresh machine needs nothing but cargo: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/eventstream.proto");
    let descriptors = protox::compile(["proto/eventstream.proto"], ["proto"])?;
    // Byte fields as `Bytes`, so payloads are shared with the engine instead of copied.
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
