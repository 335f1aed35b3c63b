// Generates the etcd v3 client API (with etcd's v3lock and v3election
// services), keel's peer API and keel's Raft storage records from proto/
// with a vendored protoc, so building needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", &protoc);
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
    let includes = [etcd_root, proto_root.join("keel")];
    // The wire messages keep serde derives (the peer protocol carries
    // openraft's messages, which embed WriteBatch, as bincode). The storage
    // records get none: they are only ever encoded as protobuf. Their maps
    // are BTreeMaps, so a record's bytes do not depend on hash order.
    const SERDE_PACKAGES: [&str; 4] = ["etcdserverpb", "mvccpb", "authpb", "keelpb"];
    let mut config = tonic_build::configure();
    for package in SERDE_PACKAGES {
        config = config.type_attribute(
            format!(".{package}"),
            "#[derive(serde::Serialize, serde::Deserialize)]",
        );
    }
    // Their `bytes` fields go through serde as byte strings, not as
    // sequences of u8: one copy instead of a call per byte. bincode writes
    // both as the same bytes (a u64 length, then the bytes), so members of
    // either build understand each other.
    for field in bytes_fields(&protoc, &files, &includes, &SERDE_PACKAGES)? {
        config = config.field_attribute(field, "#[serde(with = \"serde_bytes\")]");
    }
    // Every generated service and client encodes through keel's codec
    // (`src/reserving_codec.rs`): prost's bytes, written without regrowing
    // tonic's buffer.
    config
        .codec_path("crate::reserving_codec::ReservingProstCodec")
        .btree_map([".keelstoragepb"])
        .compile_protos(&files, &includes)?;
    Ok(())
}

/// The full names (`.package.Message.field`, nested messages and oneof
/// members as `.package.Message.oneof.field` included) of
/// every singular `bytes` field of the messages in `packages`, read from
/// protoc's descriptors of `files`.
fn bytes_fields(
    protoc: &std::path::Path,
    files: &[std::path::PathBuf],
    includes: &[std::path::PathBuf],
    packages: &[&str],
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    let descriptor_path = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("serde_bytes_fields.desc");
    let mut protoc_run = std::process::Command::new(protoc);
    protoc_run
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", descriptor_path.display()));
    for include in includes {
        protoc_run.arg(format!("-I{}", include.display()));
    }
    let status = protoc_run.args(files).status()?;
    if !status.success() {
        return Err(format!("protoc --descriptor_set_out failed: {status}").into());
    }
    let descriptors = prost_types::FileDescriptorSet::decode(std::fs::read(&descriptor_path)?.as_slice())?;
    fn collect(prefix: &str, message: &prost_types::DescriptorProto, found: &mut Vec<String>) {
        let name = format!("{prefix}.{}", message.name());
        for field in &message.field {
            if field.r#type() != Type::Bytes || field.label() == Label::Repeated {
                continue;
            }
            // prost names a oneof's member after the oneof, not the message.
            let oneof = field
                .oneof_index
                .filter(|_| !field.proto3_optional())
                .and_then(|index| message.oneof_decl.get(usize::try_from(index).ok()?));
            match oneof {
                Some(oneof) => found.push(format!("{name}.{}.{}", oneof.name(), field.name())),
                None => found.push(format!("{name}.{}", field.name())),
            }
        }
        for nested in &message.nested_type {
            collect(&name, nested, found);
        }
    }
    let mut found = Vec::new();
    for file in descriptors
        .file
        .iter()
        .filter(|file| packages.contains(&file.package()))
    {
        for message in &file.message_type {
            collect(&format!(".{}", file.package()), message, &mut found);
        }
    }
    Ok(found)
}
