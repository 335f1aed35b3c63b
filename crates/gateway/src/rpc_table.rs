//! Which HTTP path is which gRPC method, and how each one's messages are
//! translated: etcd's `google.api.http` bindings (rpc.proto, v3lock.proto,
//! v3election.proto), under `/v3` (and `/v3beta`, which lib.rs adds).

use crate::json_messages::{etcdserverpb as rpc, v3electionpb as election, v3lockpb as lock};

/// How many messages each side of an RPC carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RpcShape {
    Unary,
    ServerStreaming,
    BidiStreaming,
}

/// One RPC the gateway serves.
pub(crate) struct GatewayRpc {
    /// Paths under the `/v3` prefix (etcd binds some RPCs twice).
    pub http_paths: &'static [&'static str],
    pub grpc_path: &'static str,
    pub shape: RpcShape,
    /// One JSON request message to its protobuf encoding.
    pub request_to_protobuf: fn(&[u8]) -> Result<Vec<u8>, serde_json::Error>,
    /// Consecutive JSON request messages (a streamed request body): the
    /// protobuf encodings of the complete ones and how many bytes they took.
    pub stream_to_protobuf: fn(&[u8]) -> StreamedRequests,
    /// One protobuf response message to JSON.
    pub response_to_json: fn(&[u8]) -> Result<Vec<u8>, TranslationError>,
}

/// What a streamed request body held so far.
pub(crate) struct StreamedRequests {
    pub messages: Vec<Vec<u8>>,
    pub consumed: usize,
    /// A message that is not valid JSON for the request type (not merely
    /// incomplete): the stream cannot go on past it.
    pub malformed: Option<serde_json::Error>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TranslationError {
    #[error("the member answered a message that does not decode: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("the answer does not translate to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn request_to_protobuf<M>(json: &[u8]) -> Result<Vec<u8>, serde_json::Error>
where
    M: prost::Message + serde::de::DeserializeOwned + Default,
{
    // An empty body is the empty message, as in etcd's gateway.
    let message = if json.iter().all(u8::is_ascii_whitespace) {
        M::default()
    } else {
        serde_json::from_slice::<M>(json)?
    };
    Ok(message.encode_to_vec())
}

fn stream_to_protobuf<M>(json: &[u8]) -> StreamedRequests
where
    M: prost::Message + serde::de::DeserializeOwned,
{
    let mut parsed = StreamedRequests {
        messages: Vec::new(),
        consumed: 0,
        malformed: None,
    };
    let mut messages = serde_json::Deserializer::from_slice(json).into_iter::<M>();
    loop {
        match messages.next() {
            Some(Ok(message)) => {
                parsed.messages.push(message.encode_to_vec());
                parsed.consumed = messages.byte_offset();
            }
            Some(Err(error)) if error.is_eof() => break,
            Some(Err(error)) => {
                parsed.malformed = Some(error);
                break;
            }
            None => {
                parsed.consumed = json.len();
                break;
            }
        }
    }
    parsed
}

fn response_to_json<M>(protobuf: &[u8]) -> Result<Vec<u8>, TranslationError>
where
    M: prost::Message + serde::Serialize + Default,
{
    Ok(serde_json::to_vec(&M::decode(protobuf)?)?)
}

macro_rules! gateway_rpc {
    ($shape:ident, $grpc_path:literal, $request:ty => $response:ty, [$($http_path:literal),+]) => {
        GatewayRpc {
            http_paths: &[$($http_path),+],
            grpc_path: $grpc_path,
            shape: RpcShape::$shape,
            request_to_protobuf: request_to_protobuf::<$request>,
            stream_to_protobuf: stream_to_protobuf::<$request>,
            response_to_json: response_to_json::<$response>,
        }
    };
}

pub(crate) static GATEWAY_RPCS: &[GatewayRpc] = &[
    gateway_rpc!(Unary, "/etcdserverpb.KV/Range", rpc::RangeRequest => rpc::RangeResponse, ["/kv/range"]),
    gateway_rpc!(Unary, "/etcdserverpb.KV/Put", rpc::PutRequest => rpc::PutResponse, ["/kv/put"]),
    gateway_rpc!(Unary, "/etcdserverpb.KV/DeleteRange", rpc::DeleteRangeRequest => rpc::DeleteRangeResponse, ["/kv/deleterange"]),
    gateway_rpc!(Unary, "/etcdserverpb.KV/Txn", rpc::TxnRequest => rpc::TxnResponse, ["/kv/txn"]),
    gateway_rpc!(Unary, "/etcdserverpb.KV/Compact", rpc::CompactionRequest => rpc::CompactionResponse, ["/kv/compaction"]),
    gateway_rpc!(BidiStreaming, "/etcdserverpb.Watch/Watch", rpc::WatchRequest => rpc::WatchResponse, ["/watch"]),
    gateway_rpc!(Unary, "/etcdserverpb.Lease/LeaseGrant", rpc::LeaseGrantRequest => rpc::LeaseGrantResponse, ["/lease/grant"]),
    gateway_rpc!(Unary, "/etcdserverpb.Lease/LeaseRevoke", rpc::LeaseRevokeRequest => rpc::LeaseRevokeResponse, ["/lease/revoke", "/kv/lease/revoke"]),
    gateway_rpc!(BidiStreaming, "/etcdserverpb.Lease/LeaseKeepAlive", rpc::LeaseKeepAliveRequest => rpc::LeaseKeepAliveResponse, ["/lease/keepalive"]),
    gateway_rpc!(Unary, "/etcdserverpb.Lease/LeaseTimeToLive", rpc::LeaseTimeToLiveRequest => rpc::LeaseTimeToLiveResponse, ["/lease/timetolive", "/kv/lease/timetolive"]),
    gateway_rpc!(Unary, "/etcdserverpb.Lease/LeaseLeases", rpc::LeaseLeasesRequest => rpc::LeaseLeasesResponse, ["/lease/leases", "/kv/lease/leases"]),
    gateway_rpc!(Unary, "/etcdserverpb.Cluster/MemberAdd", rpc::MemberAddRequest => rpc::MemberAddResponse, ["/cluster/member/add"]),
    gateway_rpc!(Unary, "/etcdserverpb.Cluster/MemberRemove", rpc::MemberRemoveRequest => rpc::MemberRemoveResponse, ["/cluster/member/remove"]),
    gateway_rpc!(Unary, "/etcdserverpb.Cluster/MemberUpdate", rpc::MemberUpdateRequest => rpc::MemberUpdateResponse, ["/cluster/member/update"]),
    gateway_rpc!(Unary, "/etcdserverpb.Cluster/MemberList", rpc::MemberListRequest => rpc::MemberListResponse, ["/cluster/member/list"]),
    gateway_rpc!(Unary, "/etcdserverpb.Cluster/MemberPromote", rpc::MemberPromoteRequest => rpc::MemberPromoteResponse, ["/cluster/member/promote"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/Alarm", rpc::AlarmRequest => rpc::AlarmResponse, ["/maintenance/alarm"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/Status", rpc::StatusRequest => rpc::StatusResponse, ["/maintenance/status"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/Defragment", rpc::DefragmentRequest => rpc::DefragmentResponse, ["/maintenance/defragment"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/Hash", rpc::HashRequest => rpc::HashResponse, ["/maintenance/hash"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/HashKV", rpc::HashKvRequest => rpc::HashKvResponse, ["/maintenance/hashkv"]),
    gateway_rpc!(ServerStreaming, "/etcdserverpb.Maintenance/Snapshot", rpc::SnapshotRequest => rpc::SnapshotResponse, ["/maintenance/snapshot"]),
    gateway_rpc!(Unary, "/etcdserverpb.Maintenance/MoveLeader", rpc::MoveLeaderRequest => rpc::MoveLeaderResponse, ["/maintenance/transfer-leadership"]),
    gateway_rpc!(Unary, "/v3lockpb.Lock/Lock", lock::LockRequest => lock::LockResponse, ["/lock/lock"]),
    gateway_rpc!(Unary, "/v3lockpb.Lock/Unlock", lock::UnlockRequest => lock::UnlockResponse, ["/lock/unlock"]),
    gateway_rpc!(Unary, "/v3electionpb.Election/Campaign", election::CampaignRequest => election::CampaignResponse, ["/election/campaign"]),
    gateway_rpc!(Unary, "/v3electionpb.Election/Proclaim", election::ProclaimRequest => election::ProclaimResponse, ["/election/proclaim"]),
    gateway_rpc!(Unary, "/v3electionpb.Election/Leader", election::LeaderRequest => election::LeaderResponse, ["/election/leader"]),
    gateway_rpc!(ServerStreaming, "/v3electionpb.Election/Observe", election::LeaderRequest => election::LeaderResponse, ["/election/observe"]),
    gateway_rpc!(Unary, "/v3electionpb.Election/Resign", election::ResignRequest => election::ResignResponse, ["/election/resign"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_alive(protobuf: &[u8]) -> i64 {
        <rpc::LeaseKeepAliveRequest as prost::Message>::decode(protobuf)
            .expect("decodes")
            .id
    }

    #[test]
    fn a_streamed_body_yields_each_complete_message_and_keeps_the_incomplete_rest() {
        let body = br#"{"ID":"7"} {"ID":8}{"I"#;
        let parsed = stream_to_protobuf::<rpc::LeaseKeepAliveRequest>(body);
        assert!(parsed.malformed.is_none());
        let ids: Vec<i64> = parsed.messages.iter().map(|m| keep_alive(m)).collect();
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(&body[parsed.consumed..], br#"{"I"#);
        let rest = stream_to_protobuf::<rpc::LeaseKeepAliveRequest>(b"{\"ID\":9}\n");
        assert_eq!(rest.messages.len(), 1);
        assert_eq!(rest.consumed, 9, "trailing whitespace is consumed too");
    }

    #[test]
    fn a_malformed_streamed_message_stops_the_stream_after_the_good_ones() {
        let parsed = stream_to_protobuf::<rpc::LeaseKeepAliveRequest>(br#"{"ID":1}{"ID":"x"}{"ID":2}"#);
        assert_eq!(parsed.messages.len(), 1);
        assert!(parsed.malformed.is_some());
    }

    #[test]
    fn an_empty_body_is_the_empty_message_and_unknown_fields_are_ignored() {
        assert_eq!(
            request_to_protobuf::<rpc::RangeRequest>(b" \n").expect("empty"),
            Vec::<u8>::new()
        );
        let known = request_to_protobuf::<rpc::RangeRequest>(br#"{"key":"Zm9v","no_such_field":1}"#);
        assert_eq!(
            known.expect("decodes"),
            request_to_protobuf::<rpc::RangeRequest>(br#"{"key":"Zm9v"}"#).expect("decodes")
        );
    }
}
