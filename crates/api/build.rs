// Generates the etcd v3 client API (with etcd's v3lock and v3election
// services), keel's peer API and keel's Raft storage records from proto/
// with a vendored protoc, so building needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let etcd_root = proto_root.join("etcd");
    let files = [
        etcd_root.join("mvccpb/kv.proto"),
        etcd_root.join("authpb/auth.proto"),
        etcd_root.join("etcdserverpb/rpc.proto"),
        etcd_root.join("v3lockpb/v3lock.proto"),
        etcd_root.join("v3electionpb/v3election.proto"),
        proto_root.join("keel/peer.proto"),
        proto_root.join("keel/raft_storage.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // The wire messages keep serde derives (the peer protocol carries
    // openraft's messages, which embed WriteBatch, as bincode). The storage
    // records get none: they are only ever encoded as protobuf. Their maps
    // are BTreeMaps, so a record's bytes do not depend on hash order.
    let serde_derive = "#[derive(serde::Serialize, serde::Deserialize)]";
    tonic_build::configure()
        .type_attribute(".etcdserverpb", serde_derive)
        .type_attribute(".mvccpb", serde_derive)
        .type_attribute(".authpb", serde_derive)
        .type_attribute(".keelpb", serde_derive)
        .btree_map([".keelstoragepb"])
        .compile_protos(&files, &[etcd_root, proto_root.join("keel")])?;
    Ok(())
}
