//! Generates the agent API's Rust code from `agent.proto`, with the protoc
//! that `protoc-bin-vendored` ships (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; a build script is one thread.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=agent.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs the agent does not implement yet answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // The client connects through its own hybrid-vsock connector.
        .build_transport(false)
        .compile_protos(&["agent.proto"], &["."])?;
    Ok(())
}
