// Generates the etcd v3 messages a second time, for JSON only: prost types
// with pbjson's proto3 JSON mapping (64-bit integers as strings, bytes as
// base64, enums by name, proto field names as etcd's gateway prints them).
// keel-api's types keep their serde derives for the peer protocol, so the
// JSON mapping cannot live on them.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let etcd_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/etcd");
    let files = [
        etcd_root.join("mvccpb/kv.proto"),
        etcd_root.join("authpb/auth.proto"),
        etcd_root.join("etcdserverpb/rpc.proto"),
        etcd_root.join("v3lockpb/v3lock.proto"),
        etcd_root.join("v3electionpb/v3election.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("etcd_descriptor.bin");
    tonic_build::configure()
        .build_server(false)
        .build_client(false)
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&files, &[etcd_root])?;
    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
