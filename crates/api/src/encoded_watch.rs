//! etcd's `WatchResponse` with its events already encoded: a member encodes
//! each change once ([`EncodedEvent`]) and every watcher's response carries
//! those bytes, instead of a copy of the event per watcher, encoded again
//! for each. On the wire it is exactly a `WatchResponse`: a client decodes
//! it with the generated type.
//!
//! Invariant: an [`EncodedEvent`]'s bytes are the protobuf encoding of one
//! `mvccpb::Event` (made only by [`EncodedEvent::encode`], or by decoding
//! a response's event field), so a response built from them is a valid
//! `WatchResponse`.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::etcdserverpb::WatchResponse;
use crate::mvccpb::Event;

/// `WatchResponse.events`' field number in etcd's rpc.proto.
const EVENTS_FIELD: u32 = 11;

/// One `mvccpb::Event`, protobuf-encoded once and shared (cloning is a
/// reference count).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedEvent(Bytes);

impl EncodedEvent {
    pub fn encode(event: &Event) -> EncodedEvent {
        EncodedEvent(Bytes::from(event.encode_to_vec()))
    }

    /// The event these bytes encode.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        Event::decode(self.0.clone())
    }

    /// The encoded event's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What this event adds to a response that carries it.
    pub fn field_len(&self) -> usize {
        encoding::key_len(EVENTS_FIELD) + encoding::encoded_len_varint(self.0.len() as u64) + self.0.len()
    }
}

/// A `WatchResponse` whose events are [`EncodedEvent`]s: `head` holds every
/// other field (its `events` stay empty).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncodedWatchResponse {
    pub head: WatchResponse,
    pub events: Vec<EncodedEvent>,
}

impl From<WatchResponse> for EncodedWatchResponse {
    fn from(mut response: WatchResponse) -> Self {
        let events = response
            .events
            .drain(..)
            .map(|event| EncodedEvent::encode(&event))
            .collect();
        EncodedWatchResponse {
            head: response,
            events,
        }
    }
}

impl EncodedWatchResponse {
    /// The same response with its events decoded.
    pub fn decode_events(self) -> Result<WatchResponse, DecodeError> {
        let mut response = self.head;
        response.events = self
            .events
            .iter()
            .map(EncodedEvent::decode)
            .collect::<Result<_, _>>()?;
        Ok(response)
    }
}

impl Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for event in &self.events {
            encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, buf);
            encoding::encode_varint(event.0.len() as u64, buf);
            buf.put_slice(&event.0);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == EVENTS_FIELD {
            let mut bytes = Bytes::new();
            encoding::bytes::merge(wire_type, &mut bytes, buf, ctx)?;
            self.events.push(EncodedEvent(bytes));
            Ok(())
        } else {
            self.head.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.events.iter().map(EncodedEvent::field_len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::ResponseHeader;
    use crate::mvccpb::{event::EventType, KeyValue};

    fn event(kind: EventType, key: &str, value: &str, revision: i64) -> Event {
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                create_revision: 2,
                mod_revision: revision,
                version: 3,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn response() -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 7,
                member_id: 9,
                revision: 12,
                raft_term: 4,
            }),
            watch_id: 5,
            fragment: true,
            events: vec![
                event(EventType::Put, "a", "x", 11),
                event(EventType::Delete, "b", "", 12),
                event(EventType::Put, "c", &"v".repeat(300), 12),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_encoded_response_is_the_same_bytes_as_the_generated_one() {
        let generated = response();
        let encoded = EncodedWatchResponse::from(generated.clone());
        assert_eq!(encoded.encoded_len(), generated.encoded_len());
        assert_eq!(encoded.encode_to_vec(), generated.encode_to_vec());
    }

    #[test]
    fn a_generated_client_decodes_it_and_it_decodes_back() {
        let generated = response();
        let bytes = EncodedWatchResponse::from(generated.clone()).encode_to_vec();
        assert_eq!(
            WatchResponse::decode(bytes.as_slice()).expect("decodes"),
            generated
        );
        let again = EncodedWatchResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(again.events.len(), 3);
        assert_eq!(again.decode_events().expect("events decode"), generated);
    }
}
