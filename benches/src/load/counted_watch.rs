//! The bench's Watch client stub: etcd's `Watch` call with its responses
//! decoded only as far as the watch scenarios count them (ids, flags, each
//! event's key), so the watchers' own process spends little per event and
//! the servers' delivery, not the client's decoding, is what saturates.
//! Values and the rest of each event are skipped by the decoder, never
//! copied. Both systems are read through this same stub.

use bytes::{Buf, Bytes};
use keel_api::etcdserverpb::WatchRequest;
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;
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

/// An `mvccpb.Event` with only its key-value's key: the key-value is read
/// as far as its key (etcd and keel encode it first) and the rest of it
/// skipped in one step, not field by field.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct CountedEvent {
    pub key: Option<Bytes>,
}

/// `Event.kv`'s field number, and `KeyValue.key`'s key byte (field 1,
/// length-delimited).
const EVENT_KV_FIELD: u32 = 2;
const KEY_VALUE_KEY_TAG: u8 = 0x0a;

impl prost::Message for CountedEvent {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        if let Some(key) = &self.key {
            let kv_len = 1 + encoding::encoded_len_varint(key.len() as u64) + key.len();
            encoding::encode_key(EVENT_KV_FIELD, WireType::LengthDelimited, buf);
            encoding::encode_varint(kv_len as u64, buf);
            encoding::bytes::encode(1, key, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != EVENT_KV_FIELD || wire_type != WireType::LengthDelimited {
            return encoding::skip_field(wire_type, tag, buf, ctx);
        }
        let kv_len = encoding::decode_varint(buf)? as usize;
        if kv_len > buf.remaining() {
            return Err(DecodeError::new("a key-value overruns its event"));
        }
        let after_kv = buf.remaining() - kv_len;
        if kv_len > 0 && buf.chunk().first() == Some(&KEY_VALUE_KEY_TAG) {
            buf.advance(1);
            let key_len = encoding::decode_varint(buf)? as usize;
            if key_len > buf.remaining().saturating_sub(after_kv) {
                return Err(DecodeError::new("a key overruns its key-value"));
            }
            self.key = Some(buf.copy_to_bytes(key_len));
        }
        let rest = buf.remaining().saturating_sub(after_kv);
        buf.advance(rest);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.key.as_ref().map_or(0, |key| {
            let kv_len = 1 + encoding::encoded_len_varint(key.len() as u64) + key.len();
            encoding::key_len(EVENT_KV_FIELD) + encoding::encoded_len_varint(kv_len as u64) + kv_len
        })
    }

    fn clear(&mut self) {
        self.key = None;
    }
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
            events: vec![
                Event {
                    r#type: 1,
                    kv: Some(KeyValue {
                        key: b"/k/1".to_vec(),
                        value: vec![7; 256],
                        mod_revision: 9,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
                Event {
                    r#type: 0,
                    kv: Some(KeyValue {
                        key: b"/k/2".to_vec(),
                        create_revision: 3,
                        lease: 5,
                        ..Default::default()
                    }),
                    prev_kv: Some(KeyValue {
                        key: b"/k/2".to_vec(),
                        ..Default::default()
                    }),
                },
                Event::default(),
            ],
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
            .filter_map(|event| event.key.as_deref())
            .collect();
        assert_eq!(keys, vec![b"/k/1".as_slice(), b"/k/2".as_slice()]);
        assert_eq!(counted.events.len(), 3, "an event without a key still counts");
    }
}
