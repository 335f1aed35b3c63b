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
