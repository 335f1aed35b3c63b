// Generates the etcd v3 client API and keel's peer API from proto/ with a
// vendored protoc, so building needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let etcd_root = proto_root.join("etcd");
    let files = [
        etcd_root.join("mvccpb/kv.proto"),
        etcd_root.join("etcdserverpb/rpc.proto"),
        proto_root.join("keel/peer.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(&files, &[etcd_root, proto_root.join("keel")])?;
    Ok(())
}
