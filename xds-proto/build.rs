//! Compiles Istio's CA service with protox (a pure-Rust protobuf compiler), so building Ferry
//! needs no system `protoc`, and embeds Envoy's descriptor set in the lean form the JSON mapping
//! reads.

use std::path::PathBuf;

use prost::Message;

/// The checked-in descriptor set (see `descriptors/update.sh`).
const DESCRIPTORS: &str = "descriptors/envoy-types-0.7.7.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["istio/v1/auth/ca.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    lean_descriptors()
}

/// Writes Envoy's descriptor set without what the JSON mapping never reads: `source_code_info`
/// (every comment and source position, most of the set) and custom options (validation rules,
/// annotations; `prost-types` keeps the standard options, such as `map_entry` and
/// `allow_alias`, which do matter). A pool decoded from the lean set is several times smaller.
fn lean_descriptors() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={DESCRIPTORS}");
    let mut set = prost_types::FileDescriptorSet::decode(std::fs::read(DESCRIPTORS)?.as_slice())?;
    for file in &mut set.file {
        file.source_code_info = None;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy-descriptors.bin");
    std::fs::write(out, set.encode_to_vec())?;
    Ok(())
}
