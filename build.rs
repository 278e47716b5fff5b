//! Compiles `proto/im_message_wrap.proto` with a vendored `protoc`, so a fresh machine needs no
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // prost-build reads PROTOC; setting it here keeps the vendored binary local to this build.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/im_message_wrap.proto");
    prost_build::Config::new().btree_map(["."]).compile_protos(
        &["proto/im_message_wrap.proto"],
        &["proto", include.to_str().unwrap_or(".")],
    )?;
    Ok(())
}
