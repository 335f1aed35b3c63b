//! The bench's Watch client stub: etcd's `Watch` call with its responses
//! decoded only as far as the watch scenarios count them (ids, flags, each
//! event's key), so the watchers' own process spends little per event and
//! the servers' delivery, not the client's decoding, is what saturates.
//! Values and the rest of each event are skipped by the decoder, never
//! copied. Both systems are read through this same stub.

use bytes::Bytes;
use keel_api::etcdserverpb::WatchRequest;
use tonic::codec::{ProstCodec, Streaming};
use tonic::transport::Channel;

/// A `WatchResponse` (etcd's rpc.proto field numbers) without its header
/// and with [`CountedEvent`]s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountedWatchResponse {
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<CountedEvent>,
}

/// An `mvccpb.Event` with only its key-value's key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountedEvent {
    #[prost(message, optional, tag = "2")]
    pub kv: Option<CountedKeyValue>,
}

/// An `mvccpb.KeyValue` with only its key (a slice of the received bytes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountedKeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
}

/// Opens etcd's bidirectional `Watch` call on `channel`, sending `requests`.
pub async fn watch(
    channel: Channel,
    requests: impl tokio_stream::Stream<Item = WatchRequest> + Send + 'static,
) -> Result<Streaming<CountedWatchResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("the connection is not ready: {error}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let codec = ProstCodec::<WatchRequest, CountedWatchResponse>::default();
    let response = grpc.streaming(tonic::Request::new(requests), path, codec).await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::etcdserverpb::{ResponseHeader, WatchResponse};
    use keel_api::mvccpb::{Event, KeyValue};
    use prost::Message;

    #[test]
    fn a_watch_response_decodes_to_its_ids_flags_and_keys() {
        let full = WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 4,
            canceled: true,
            compact_revision: 3,
            cancel_reason: "why".into(),
            events: vec![Event {
                r#type: 1,
                kv: Some(KeyValue {
                    key: b"/k/1".to_vec(),
                    value: vec![7; 256],
                    mod_revision: 9,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        let counted = CountedWatchResponse::decode(full.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            (
                counted.watch_id,
                counted.canceled,
                counted.compact_revision,
                counted.cancel_reason.as_str()
            ),
            (4, true, 3, "why")
        );
        let keys: Vec<&[u8]> = counted
            .events
            .iter()
            .filter_map(|event| event.kv.as_ref().map(|kv| kv.key.as_ref()))
            .collect();
        assert_eq!(keys, vec![b"/k/1".as_slice()]);
    }
}
