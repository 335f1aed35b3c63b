//! `hash_kv`: a crc32 over the change records (`0x03`) with a revision at or
//! below the requested one, in revision order, each fed as length-prefixed
//! key and value (the record bytes of format 2, so hashes differ from
//! format 1's for the same history; members of one cluster run one format). Records at or below the compact revision are the versions
//! the compaction kept, so a key last written before a compaction is still
//! covered; equal histories (same log applied) give equal hashes, and any
//! difference in a key, value, version or revision changes it. Store meta
//! and app meta are outside `0x03` and never hashed.
//!
//! A hash of the current revision also folds in the leases (`0x04` records
//! and `0x05` attachments) after the records, so members with equal
//! keyspaces but different lease state differ in hash; a store without
//! leases hashes as before leases existed. Only the current lease state is
//! stored, so a hash of an older revision covers the records alone: it
//! stays a function of the history up to that revision, equal whenever it
//! is asked.
//!
//! `hash_keyspace` (etcd's `Hash`, a hash of the whole backend) covers
//! every entry of the tree in key order except the app meta (`0x00 0x01`:
//! the Raft state machine's own position and membership, which say where
//! a member is in the log, not what it holds): the store meta (format
//! version, compact revision), every change record, the leases and their
//! attachments. Members that applied the same log hash equal; a compaction
//! changes it.

use crate::error::Result;
use crate::keys::{self, Revision};
use crate::range::ViewRevisions;
use crate::store::KvHash;
use keel_storage::sled;

pub(crate) fn hash_kv(tree: &sled::Tree, revisions: ViewRevisions, requested: i64) -> Result<KvHash> {
    let at = revisions.resolve(requested)?;
    let low = [keys::REVISIONS];
    let high = keys::revision_key(Revision::new(at.saturating_add(1), 0));
    let mut hasher = crc32fast::Hasher::new();
    for entry in tree.range(&low[..]..&high[..]) {
        let (key, value) = entry?;
        for part in [&key, &value] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    if at == revisions.current {
        crate::leases::feed_hash(tree, &mut hasher)?;
    }
    Ok(KvHash {
        hash: hasher.finalize(),
        revision: at,
        compact_revision: revisions.compacted,
    })
}

/// A crc32 of the whole keyspace less the app meta, and the current
/// revision it was taken at (see the module comment).
pub(crate) fn hash_keyspace(tree: &sled::Tree, revisions: ViewRevisions) -> Result<(u32, i64)> {
    let mut hasher = crc32fast::Hasher::new();
    for entry in tree.iter() {
        let (key, value) = entry?;
        if key.starts_with(keys::APP_META_PREFIX) {
            continue;
        }
        for part in [&key, &value] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    Ok((hasher.finalize(), revisions.current))
}
