//! Compiles the .proto files under `proto/` with protox (a Rust protobuf compiler: no protoc
//! needed) and generates prost messages plus tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/csi/v1/csi.proto", "proto/ferrite/node/v1/node.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // protox resolves google/protobuf/*.proto from its bundled well-known types.
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
