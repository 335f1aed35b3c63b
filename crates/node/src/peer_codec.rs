//! The encoding of openraft messages on keel's peer protocol: bincode of
//! openraft's own serde types inside a `keelpb.RaftPayload`. Both the sending
//! side (`network`) and the receiving side (the server's peer service) use
//! these functions, so the two can never disagree.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message either side of the peer protocol accepts.
pub const MAX_PEER_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("peer payload codec: {0}")]
pub struct PeerCodecError(#[from] bincode::Error);

pub fn encode_payload<T: Serialize>(value: &T) -> Result<keel_api::keelpb::RaftPayload, PeerCodecError> {
    Ok(keel_api::keelpb::RaftPayload {
        data: bincode::serialize(value)?,
    })
}

pub fn decode_payload<T: DeserializeOwned>(
    payload: &keel_api::keelpb::RaftPayload,
) -> Result<T, PeerCodecError> {
    Ok(bincode::deserialize(&payload.data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::etcdserverpb::{compare, Compare, PutRequest};

    /// PutRequest as the builds before `serde_bytes` serialized it: its
    /// `bytes` fields as plain sequences of u8, in field order.
    #[derive(Serialize)]
    struct PutRequestWithByteSequences {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    /// compare::TargetUnion up to its `bytes` member, likewise (bincode
    /// names a variant by its index).
    #[derive(Serialize)]
    #[allow(dead_code)]
    enum TargetUnionWithByteSequences {
        Version(i64),
        CreateRevision(i64),
        ModRevision(i64),
        Value(Vec<u8>),
    }

    #[test]
    fn byte_fields_encode_as_the_byte_sequences_earlier_members_send_and_decode_back() {
        let put = PutRequest {
            key: b"key".to_vec(),
            value: vec![0, 1, 2, 255],
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        };
        let earlier = PutRequestWithByteSequences {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: put.lease,
            prev_kv: put.prev_kv,
            ignore_value: put.ignore_value,
            ignore_lease: put.ignore_lease,
        };
        let encoded = encode_payload(&put).expect("encode");
        assert_eq!(encoded.data, bincode::serialize(&earlier).expect("encode"));
        assert_eq!(decode_payload::<PutRequest>(&encoded).expect("decode"), put);

        let target = compare::TargetUnion::Value(b"v".to_vec());
        let encoded = encode_payload(&target).expect("encode");
        let earlier = TargetUnionWithByteSequences::Value(b"v".to_vec());
        assert_eq!(encoded.data, bincode::serialize(&earlier).expect("encode"));
        let compare = Compare {
            target_union: Some(target),
            ..Default::default()
        };
        let round_trip: Compare = decode_payload(&encode_payload(&compare).expect("encode")).expect("decode");
        assert_eq!(round_trip, compare);
    }
}
