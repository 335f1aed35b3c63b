//! The byte layout of the one sled tree the store owns, and the encodings of
//! what it holds. Every key starts with a one-byte keyspace tag:
//!
//! | tag    | key                                          | value                                   |
//! |--------|----------------------------------------------|-----------------------------------------|
//! | `0x00` | `0x00 0x00 name`                             | store meta: revision, compact, format   |
//! | `0x00` | `0x00 0x01 name`                             | app meta blob (e.g. `raft/last_applied`) |
//! | `0x01` | `user_key`                                   | live `KeyValue` (prost, key omitted)    |
//! | `0x02` | `escaped(user_key) BE(main) BE(sub)`          | `p` (put) or `t` (tombstone)            |
//! | `0x03` | `BE(main) BE(sub)`                           | tag `p`/`t` + `KeyValue` (prost)        |
//!
//! Invariants of the layout:
//! - `0x01` holds exactly the keys alive at the store revision, in user-key
//!   order, so a current-revision range is one ordered scan.
//! - `escaped(k)` maps `0x00` to `0x00 0xFF` and ends with `0x00 0x01`, so
//!   `0x02` sorts by user key first and revision second for arbitrary bytes.
//! - Every `0x02` entry has the `0x03` record of the same revision and vice
//!   versa; compaction removes both together.
//! - Revisions in keys are non-negative, so big-endian order is numeric order.

use keel_api::mvccpb::KeyValue;
use prost::Message;

use crate::error::{corrupt, Result};

pub(crate) const LIVE: u8 = 0x01;
pub(crate) const HISTORY: u8 = 0x02;
pub(crate) const REVISIONS: u8 = 0x03;

pub(crate) const META_REVISION: &[u8] = b"\x00\x00revision";
pub(crate) const META_COMPACT: &[u8] = b"\x00\x00compact";
pub(crate) const META_FORMAT: &[u8] = b"\x00\x00format";
const APP_META_PREFIX: &[u8] = b"\x00\x01";

/// The version of this layout, stored under [`META_FORMAT`].
pub(crate) const FORMAT_VERSION: u32 = 1;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;
const REVISION_BYTES: usize = 16;

/// A point in the history: the main revision of a write request and the
/// position of one change within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

fn push_revision(out: &mut Vec<u8>, revision: Revision) {
    out.extend_from_slice(&revision.main.max(0).to_be_bytes());
    out.extend_from_slice(&revision.sub.max(0).to_be_bytes());
}

fn parse_revision(bytes: &[u8]) -> Result<Revision> {
    let (main, sub) = match (bytes.get(..8), bytes.get(8..16)) {
        (Some(main), Some(sub)) if bytes.len() == REVISION_BYTES => (main, sub),
        _ => return Err(corrupt(format!("revision of {} bytes", bytes.len()))),
    };
    let main = i64::from_be_bytes(main.try_into().map_err(|_| corrupt("revision main"))?);
    let sub = i64::from_be_bytes(sub.try_into().map_err(|_| corrupt("revision sub"))?);
    Ok(Revision { main, sub })
}

pub(crate) fn encode_i64(value: i64) -> [u8; 8] {
    value.to_be_bytes()
}

pub(crate) fn decode_i64(bytes: &[u8], what: &str) -> Result<i64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what}: {} bytes", bytes.len())))?;
    Ok(i64::from_be_bytes(array))
}

pub(crate) fn app_meta_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(APP_META_PREFIX.len() + name.len());
    key.extend_from_slice(APP_META_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

// ---- 0x01: live keys ----

pub(crate) fn live_key(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + user_key.len());
    key.push(LIVE);
    key.extend_from_slice(user_key);
    key
}

/// The raw `[start, end)` of the live keyspace for user keys in
/// `[start, end)`; `end == None` means unbounded.
pub(crate) fn live_bounds(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let upper = match end {
        Some(end) => live_key(end),
        None => vec![LIVE + 1],
    };
    (live_key(start), upper)
}

pub(crate) fn user_key_of_live(raw: &[u8]) -> Result<&[u8]> {
    match raw.split_first() {
        Some((&LIVE, user_key)) => Ok(user_key),
        _ => Err(corrupt("live key outside its keyspace")),
    }
}

/// A live value: the `KeyValue` without its key (the tree key holds it).
pub(crate) fn encode_live_value(kv: &KeyValue) -> Vec<u8> {
    let keyless = KeyValue {
        key: Vec::new(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease,
    };
    keyless.encode_to_vec()
}

pub(crate) fn decode_live(raw_key: &[u8], value: &[u8]) -> Result<KeyValue> {
    let user_key = user_key_of_live(raw_key)?;
    let mut kv = KeyValue::decode(value).map_err(|e| corrupt(format!("live value: {e}")))?;
    kv.key = user_key.to_vec();
    Ok(kv)
}

// ---- 0x02: per-key history index ----

fn push_escaped(out: &mut Vec<u8>, user_key: &[u8]) {
    for &byte in user_key {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
}

/// `0x02 escaped(user_key)`: every history entry of `user_key` starts with it.
pub(crate) fn history_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_key.len() + 3 + REVISION_BYTES);
    key.push(HISTORY);
    push_escaped(&mut key, user_key);
    key
}

pub(crate) fn history_key(user_key: &[u8], revision: Revision) -> Vec<u8> {
    let mut key = history_prefix(user_key);
    push_revision(&mut key, revision);
    key
}

/// The raw `[start, end)` of the history index for user keys in `[start, end)`.
pub(crate) fn history_bounds(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let upper = match end {
        Some(end) => history_prefix(end),
        None => vec![HISTORY + 1],
    };
    (history_prefix(start), upper)
}

/// Splits a history key into its escaped user-key part (including the
/// keyspace tag, usable to tell keys apart without unescaping) and revision.
pub(crate) fn split_history_key(raw: &[u8]) -> Result<(&[u8], Revision)> {
    if raw.first() != Some(&HISTORY) || raw.len() < 3 + REVISION_BYTES {
        return Err(corrupt("history key too short or outside its keyspace"));
    }
    let (escaped, revision) = raw.split_at(raw.len() - REVISION_BYTES);
    Ok((escaped, parse_revision(revision)?))
}

/// The user key of an escaped part returned by [`split_history_key`].
pub(crate) fn unescape_history_key(escaped: &[u8]) -> Result<Vec<u8>> {
    let body = escaped.get(1..).ok_or_else(|| corrupt("empty history key"))?;
    let mut user_key = Vec::with_capacity(body.len());
    let mut bytes = body.iter();
    while let Some(&byte) = bytes.next() {
        if byte != ESCAPE {
            user_key.push(byte);
            continue;
        }
        match bytes.next() {
            Some(&ESCAPED_ZERO) => user_key.push(ESCAPE),
            Some(&TERMINATOR) if bytes.as_slice().is_empty() => return Ok(user_key),
            _ => break,
        }
    }
    Err(corrupt("badly escaped history key"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Put,
    Tombstone,
}

const PUT_TAG: u8 = b'p';
const TOMBSTONE_TAG: u8 = b't';

impl ChangeKind {
    pub fn tag(self) -> u8 {
        match self {
            ChangeKind::Put => PUT_TAG,
            ChangeKind::Tombstone => TOMBSTONE_TAG,
        }
    }

    pub fn from_tag(tag: Option<&u8>) -> Result<Self> {
        match tag {
            Some(&PUT_TAG) => Ok(ChangeKind::Put),
            Some(&TOMBSTONE_TAG) => Ok(ChangeKind::Tombstone),
            _ => Err(corrupt("unknown change tag")),
        }
    }
}

pub(crate) fn decode_history_value(value: &[u8]) -> Result<ChangeKind> {
    if value.len() != 1 {
        return Err(corrupt("history value is not one tag byte"));
    }
    ChangeKind::from_tag(value.first())
}

// ---- 0x03: revision store ----

pub(crate) fn revision_key(revision: Revision) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + REVISION_BYTES);
    key.push(REVISIONS);
    push_revision(&mut key, revision);
    key
}

/// What one change wrote: the new `KeyValue` of a put, or a tombstone
/// (`KeyValue` with only `key` and `mod_revision`, as a watch delete event
/// carries it).
pub(crate) fn encode_change(kind: ChangeKind, kv: &KeyValue) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + kv.encoded_len());
    value.push(kind.tag());
    // Encoding into a Vec cannot run out of space.
    let _ = kv.encode(&mut value);
    value
}

pub(crate) fn decode_change(value: &[u8]) -> Result<(ChangeKind, KeyValue)> {
    let kind = ChangeKind::from_tag(value.first())?;
    let kv = KeyValue::decode(value.get(1..).unwrap_or(&[]))
        .map_err(|e| corrupt(format!("revision record: {e}")))?;
    Ok((kind, kv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_history_keys_sort_by_user_key_then_revision() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"\x00\xff",
            b"a",
            b"a\x00",
            b"ab",
            b"b",
        ];
        let mut encoded = Vec::new();
        for key in &keys {
            for main in [1i64, 2, 300] {
                encoded.push(history_key(key, Revision::new(main, 0)));
                encoded.push(history_key(key, Revision::new(main, 7)));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(sorted, encoded);
    }

    #[test]
    fn history_keys_round_trip() {
        for key in [&b""[..], b"\x00", b"a\x00b\x00", b"\xff\x00\x01"] {
            let raw = history_key(key, Revision::new(42, 3));
            let (escaped, revision) = split_history_key(&raw).expect("split");
            assert_eq!(revision, Revision::new(42, 3));
            assert_eq!(unescape_history_key(escaped).expect("unescape"), key.to_vec());
            assert!(raw.starts_with(&history_prefix(key)));
        }
    }

    #[test]
    fn history_bounds_cover_exactly_the_user_range() {
        let (start, end) = history_bounds(b"b", Some(b"c"));
        let inside = history_key(b"b\x00\xff", Revision::new(9, 9));
        let below = history_key(b"a\xff", Revision::new(9, 9));
        let above = history_key(b"c", Revision::new(1, 0));
        assert!(inside >= start && inside < end);
        assert!(below < start);
        assert!(above >= end);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(split_history_key(b"\x02ab").is_err());
        assert!(unescape_history_key(b"\x02a\x00\x07").is_err());
        assert!(unescape_history_key(b"\x02a").is_err());
        assert!(decode_change(b"").is_err());
        assert!(decode_change(b"x").is_err());
        assert!(decode_change(b"p\xff\xff").is_err());
        assert!(decode_live(b"\x02a", b"").is_err());
        assert!(decode_i64(b"abc", "x").is_err());
    }

    #[test]
    fn live_values_omit_the_key_and_round_trip() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"v".to_vec(),
            lease: 0,
        };
        let value = encode_live_value(&kv);
        assert!(!value.windows(1).any(|w| w == b"k"));
        assert_eq!(decode_live(&live_key(b"k"), &value).expect("decode"), kv);
    }
}
