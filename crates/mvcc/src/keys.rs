//! The byte layout of the one sled tree the store owns, and the encodings of
//! what it holds. Every key starts with a one-byte keyspace tag:
//!
//! | tag    | key                        | value                                     |
//! |--------|----------------------------|-------------------------------------------|
//! | `0x00` | `0x00 0x00 name`           | store meta: format version, compact rev   |
//! | `0x00` | `0x00 0x01 name`           | app meta blob (e.g. `raft/last_applied`)  |
//! | `0x03` | `BE(main) BE(sub)`         | one change record (below)                 |
//! | `0x04` | `lease_id(id)`             | a lease: `BE(ttl) BE(remaining_ttl)`      |
//! | `0x05` | `lease_id(id) key`         | empty: `key` is attached to lease `id`    |
//!
//! `lease_id` is the ID's big-endian bytes with the sign bit flipped, so
//! keys sort in numeric order of IDs. `remaining_ttl` is the last
//! checkpointed time left (seconds), 0 when none is recorded (`leases.rs`).
//!
//! A change record (etcd's bbolt `key` bucket, keyed by revision):
//! ```text
//! put:        'p' varint(key_len) key varint(create_revision) varint(version) varint(lease) value
//! tombstone:  't' varint(key_len) key
//! ```
//! `mod_revision` is the record's own main revision. The key and the
//! metadata come before the value, so rebuilding the in-memory index
//! (`index.rs`) reads them without touching the value bytes.
//!
//! Invariants of the layout:
//! - The `0x03` records are the whole history: every change not yet dropped
//!   by a compaction has exactly one record, and the in-memory index is a
//!   function of them (rebuilt from them on open and snapshot install).
//! - The store revision is not stored: it is the highest main revision of a
//!   record, or the compact revision if that is higher (a compaction at the
//!   current revision may drop the newest records, tombstones), or 1.
//! - Revisions in keys are non-negative, so big-endian order is numeric order.
//! - `0x01` (live keys) and `0x02` (per-key history) of format 1 are gone;
//!   a keyspace of another format is refused by `open` and by snapshot install.

use keel_api::mvccpb::KeyValue;

use crate::error::{corrupt, Result};

pub(crate) const REVISIONS: u8 = 0x03;
pub(crate) const LEASES: u8 = 0x04;
pub(crate) const LEASE_KEYS: u8 = 0x05;

pub(crate) const META_COMPACT: &[u8] = b"\x00\x00compact";
pub(crate) const META_FORMAT: &[u8] = b"\x00\x00format";
pub(crate) const APP_META_PREFIX: &[u8] = b"\x00\x01";

/// The version of this layout, stored under [`META_FORMAT`]. Format 1 kept
/// live keys and a history index on disk; format 2 keeps only the records.
pub(crate) const FORMAT_VERSION: u32 = 2;

const REVISION_BYTES: usize = 16;
pub(crate) const REVISION_KEY_BYTES: usize = 1 + REVISION_BYTES;

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

// ---- 0x04, 0x05: leases and their attached keys ----

fn push_lease_id(out: &mut Vec<u8>, id: i64) {
    out.extend_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
}

/// The key of lease `id`'s record.
pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(LEASES);
    push_lease_id(&mut key, id);
    key
}

/// The ID a lease record key names.
pub(crate) fn parse_lease_key(raw: &[u8]) -> Result<i64> {
    match raw.split_first() {
        Some((&LEASES, rest)) => Ok((decode_i64(rest, "lease id")? as u64 ^ (1 << 63)) as i64),
        _ => Err(corrupt(format!("lease key of {} bytes", raw.len()))),
    }
}

/// The prefix of every attachment key of lease `id`.
pub(crate) fn lease_keys_prefix(id: i64) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(9);
    prefix.push(LEASE_KEYS);
    push_lease_id(&mut prefix, id);
    prefix
}

/// The key recording that `key` is attached to lease `id`.
pub(crate) fn lease_attachment_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut attachment = lease_keys_prefix(id);
    attachment.extend_from_slice(key);
    attachment
}

/// A lease as the keyspace stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    /// The granted TTL, seconds.
    pub ttl: i64,
    /// The last checkpointed time left, seconds; 0 when none is recorded.
    pub remaining_ttl: i64,
}

pub(crate) fn encode_lease(record: &LeaseRecord) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&record.ttl.to_be_bytes());
    value[8..].copy_from_slice(&record.remaining_ttl.to_be_bytes());
    value
}

pub(crate) fn decode_lease(id: i64, value: &[u8]) -> Result<LeaseRecord> {
    if value.len() != 16 {
        return Err(corrupt(format!("lease record of {} bytes", value.len())));
    }
    let (ttl, remaining) = value.split_at(8);
    Ok(LeaseRecord {
        id,
        ttl: decode_i64(ttl, "lease ttl")?,
        remaining_ttl: decode_i64(remaining, "lease remaining ttl")?,
    })
}

// ---- 0x03: revision records ----

pub(crate) fn revision_key(revision: Revision) -> [u8; REVISION_KEY_BYTES] {
    let mut key = [0u8; REVISION_KEY_BYTES];
    key[0] = REVISIONS;
    key[1..9].copy_from_slice(&revision.main.max(0).to_be_bytes());
    key[9..].copy_from_slice(&revision.sub.max(0).to_be_bytes());
    key
}

/// The revision a record key names.
pub(crate) fn parse_revision_key(raw: &[u8]) -> Result<Revision> {
    match raw.split_first() {
        Some((&REVISIONS, rest)) if rest.len() == REVISION_BYTES => {
            let (main, sub) = rest.split_at(8);
            Ok(Revision::new(
                decode_i64(main, "revision main")?,
                decode_i64(sub, "revision sub")?,
            ))
        }
        _ => Err(corrupt(format!("revision key of {} bytes", raw.len()))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Put,
    Tombstone,
}

const PUT_TAG: u8 = b'p';
const TOMBSTONE_TAG: u8 = b't';

/// What a put stores besides its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PutMeta {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// A decoded change record, borrowing from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub key: &'a [u8],
    /// `None` for a tombstone.
    pub put: Option<PutMeta>,
    /// Empty for a tombstone.
    pub value: &'a [u8],
}

impl Record<'_> {
    pub fn kind(&self) -> ChangeKind {
        match self.put {
            Some(_) => ChangeKind::Put,
            None => ChangeKind::Tombstone,
        }
    }

    /// The `KeyValue` this record holds at `revision` (a tombstone: only
    /// `key` and `mod_revision`, as a watch delete event carries it).
    pub fn to_kv(self, revision: Revision) -> KeyValue {
        let meta = self.put.unwrap_or(PutMeta {
            create_revision: 0,
            version: 0,
            lease: 0,
        });
        KeyValue {
            key: self.key.to_vec(),
            create_revision: meta.create_revision,
            mod_revision: revision.main,
            version: meta.version,
            value: self.value.to_vec(),
            lease: meta.lease,
        }
    }
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an LEB128 varint off the front of `bytes`.
fn take_varint(bytes: &mut &[u8], what: &str) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| corrupt(format!("record truncated in {what}")))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(corrupt(format!("record {what} is not a varint")))
}

fn push_key(out: &mut Vec<u8>, tag: u8, key: &[u8]) {
    out.push(tag);
    push_varint(out, key.len() as u64);
    out.extend_from_slice(key);
}

/// The record of a put.
pub(crate) fn encode_put(key: &[u8], meta: PutMeta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 5 + key.len() + 3 * 10 + value.len());
    push_key(&mut out, PUT_TAG, key);
    // Negative numbers round-trip through the two's-complement cast.
    push_varint(&mut out, meta.create_revision as u64);
    push_varint(&mut out, meta.version as u64);
    push_varint(&mut out, meta.lease as u64);
    out.extend_from_slice(value);
    out
}

/// The record of a tombstone.
pub(crate) fn encode_tombstone(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 5 + key.len());
    push_key(&mut out, TOMBSTONE_TAG, key);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record<'_>> {
    let (&tag, mut rest) = bytes.split_first().ok_or_else(|| corrupt("empty record"))?;
    let key_len =
        usize::try_from(take_varint(&mut rest, "key length")?).map_err(|_| corrupt("record key length"))?;
    if key_len > rest.len() {
        return Err(corrupt("record key longer than the record"));
    }
    let (key, mut rest) = rest.split_at(key_len);
    match tag {
        PUT_TAG => {
            let meta = PutMeta {
                create_revision: take_varint(&mut rest, "create revision")? as i64,
                version: take_varint(&mut rest, "version")? as i64,
                lease: take_varint(&mut rest, "lease")? as i64,
            };
            Ok(Record {
                key,
                put: Some(meta),
                value: rest,
            })
        }
        TOMBSTONE_TAG if rest.is_empty() => Ok(Record {
            key,
            put: None,
            value: &[],
        }),
        TOMBSTONE_TAG => Err(corrupt("tombstone record with trailing bytes")),
        other => Err(corrupt(format!("unknown record tag {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_numerically_and_round_trip() {
        let revisions = [
            Revision::new(1, 0),
            Revision::new(1, 7),
            Revision::new(2, 0),
            Revision::new(255, 3),
            Revision::new(256, 0),
            Revision::new(i64::MAX, 0),
        ];
        let keys: Vec<_> = revisions.iter().map(|&r| revision_key(r)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (key, revision) in keys.iter().zip(revisions) {
            assert_eq!(parse_revision_key(key).expect("parse"), revision);
        }
    }

    #[test]
    fn records_round_trip() {
        let meta = PutMeta {
            create_revision: 300,
            version: 2,
            lease: -5,
        };
        for key in [&b""[..], b"k", &[0xffu8; 200][..]] {
            for value in [&b""[..], b"v\x00", &[7u8; 1000][..]] {
                let bytes = encode_put(key, meta, value);
                let record = decode_record(&bytes).expect("decode put");
                assert_eq!(
                    record,
                    Record {
                        key,
                        put: Some(meta),
                        value
                    }
                );
                let kv = record.to_kv(Revision::new(9, 1));
                assert_eq!(
                    (kv.mod_revision, kv.create_revision, kv.version, kv.lease),
                    (9, 300, 2, -5)
                );
            }
            let bytes = encode_tombstone(key);
            let record = decode_record(&bytes).expect("decode tombstone");
            assert_eq!(record.kind(), ChangeKind::Tombstone);
            assert_eq!(record.key, key);
        }
    }

    #[test]
    fn lease_keys_sort_by_id_and_round_trip() {
        let ids = [i64::MIN, -1, 0, 1, 255, 256, i64::MAX];
        let keys: Vec<_> = ids.iter().map(|&id| lease_key(id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (key, id) in keys.iter().zip(ids) {
            assert_eq!(parse_lease_key(key).expect("parse"), id);
        }
        let record = LeaseRecord {
            id: 7,
            ttl: 60,
            remaining_ttl: 12,
        };
        assert_eq!(decode_lease(7, &encode_lease(&record)).expect("decode"), record);
        assert!(decode_lease(7, b"short").is_err());
        assert!(lease_attachment_key(7, b"k").starts_with(&lease_keys_prefix(7)));
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(parse_revision_key(b"\x03ab").is_err());
        assert!(parse_revision_key(&[0x02; 17]).is_err());
        assert!(decode_record(b"").is_err());
        assert!(decode_record(b"x\x00").is_err());
        assert!(decode_record(b"p").is_err());
        assert!(decode_record(b"p\x05ab").is_err());
        assert!(decode_record(b"p\x01k\x01").is_err());
        assert!(decode_record(b"p\x01k\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(decode_record(b"t\x01kextra").is_err());
        assert!(decode_i64(b"abc", "x").is_err());
    }
}
