//! Leases in the keyspace (etcd's lease bucket plus the lessor's
//! lease→keys index): granting, revoking, checkpointing, attaching keys.
//!
//! Invariants owned here:
//! - A lease record (`0x04`) and its attachments (`0x05`) change in the same
//!   apply batch as the puts and deletes that cause them, so they reach sled
//!   in the batch's one atomic write (and a failed request undoes them with
//!   the rest of its overlay).
//! - A live key whose current version names lease L != 0 has exactly one
//!   attachment, under L; a put that names another lease (or none) moves or
//!   drops it, a delete drops it. So a revoke finds its keys by one prefix
//!   range, never a scan of the keyspace.
//! - A put or txn can attach a key only to a lease that exists (etcd's
//!   "requested lease not found" otherwise).
//! - A revoke deletes every attached key at ONE new revision (sub-revisions
//!   in key order, as a txn's deletes), then drops the lease. A revoke of a
//!   lease that is gone (already revoked or expired through the log) is the
//!   deterministic outcome `LeaseNotFound`, never a crash.
//! - [`LeaseIds`], the ids of the committed lease records, held in memory
//!   beside the key index so a put with a lease checks it without reading
//!   sled: built from the records when a keyspace is loaded, and changed
//!   with them at commit, under the store's exclusive lock.
//! - Nothing here reads a clock: TTLs are numbers the leader chose, so every
//!   member applies the same entries into the same bytes (`hash_kv` folds
//!   the lease records and attachments in, see `hash.rs`).

use std::collections::HashSet;

use keel_api::etcdserverpb::{LeaseGrantResponse, LeaseRevokeResponse};
use keel_storage::sled;

use crate::apply::ApplyBatch;
use crate::error::{MvccError, Result};
use crate::keys::{self, LeaseRecord};
use crate::overlay::Overlay;
use crate::range::header;
use crate::view::{BatchView, View};

/// Lease `id` as the batch sees it.
fn pending_lease(view: &BatchView<'_>, id: i64) -> Result<Option<LeaseRecord>> {
    let key = keys::lease_key(id);
    let value = match view.overlay.get(&key) {
        Some(pending) => pending.clone(),
        None => view.committed.tree.get(&key)?,
    };
    value.map(|value| keys::decode_lease(id, &value)).transpose()
}

/// The ids of the committed leases (see the module's invariants).
pub(crate) type LeaseIds = HashSet<i64>;

/// The ids of a keyspace tree's lease records.
pub(crate) fn lease_ids(tree: &sled::Tree) -> Result<LeaseIds> {
    tree.range(&[keys::LEASES][..]..&[keys::LEASES + 1][..])
        .map(|entry| keys::parse_lease_key(&entry?.0))
        .collect()
}

/// A batch's changes of lease records, from its overlay: each lease id
/// with whether it exists after the batch.
pub(crate) fn lease_id_changes(overlay: &Overlay) -> Result<Vec<(i64, bool)>> {
    overlay
        .range(&[keys::LEASES], &[keys::LEASES + 1])
        .map(|(key, value)| Ok((keys::parse_lease_key(key)?, value.is_some())))
        .collect()
}

/// Makes [`lease_id_changes`] part of the committed ids; the caller holds
/// the store's exclusive lock and has written the batch to sled.
pub(crate) fn apply_lease_id_changes(ids: &mut LeaseIds, changes: Vec<(i64, bool)>) {
    for (id, exists) in changes {
        if exists {
            ids.insert(id);
        } else {
            ids.remove(&id);
        }
    }
}

impl ApplyBatch<'_> {
    /// Fails `LeaseNotFound` unless lease `id` exists as the batch sees it
    /// (0 is "no lease"): its pending change in the batch, else the
    /// committed ids, with no read of sled.
    pub(crate) fn check_lease_exists(&self, id: i64) -> Result<()> {
        let exists = id == 0
            || match self.overlay.get(&keys::lease_key(id)) {
                Some(pending) => pending.is_some(),
                None => self.lease_ids.contains(&id),
            };
        if exists {
            Ok(())
        } else {
            Err(MvccError::LeaseNotFound)
        }
    }
}

/// Moves `key`'s attachment from lease `from` to lease `to` (0 = none).
pub(crate) fn reattach(overlay: &mut Overlay, key: &[u8], from: i64, to: i64) {
    if from == to {
        return;
    }
    if from != 0 {
        overlay.remove(keys::lease_attachment_key(from, key));
    }
    if to != 0 {
        overlay.insert(keys::lease_attachment_key(to, key), &[][..]);
    }
}

/// The end of the prefix range `[prefix, end)`: the prefix with its last
/// byte that is not 0xff incremented (lease prefixes are never all 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl ApplyBatch<'_> {
    /// etcd's LeaseGrant with the ID already chosen: fails `LeaseExists` if
    /// the ID is taken. The revision does not change.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, MvccError> {
        self.run_request(|batch| {
            if id == 0 {
                return Err(MvccError::LeaseNotFound);
            }
            if pending_lease(&batch.view(), id)?.is_some() {
                return Err(MvccError::LeaseExists);
            }
            let record = LeaseRecord {
                id,
                ttl,
                remaining_ttl: 0,
            };
            batch
                .overlay
                .insert(keys::lease_key(id), &keys::encode_lease(&record)[..]);
            Ok(LeaseGrantResponse {
                header: header(batch.revision),
                id,
                ttl,
                error: String::new(),
            })
        })
    }

    /// etcd's LeaseRevoke: deletes every key attached to lease `id` at one
    /// new revision (none if it has no keys), then the lease.
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, MvccError> {
        self.run_request(|batch| {
            if pending_lease(&batch.view(), id)?.is_none() {
                return Err(MvccError::LeaseNotFound);
            }
            let prefix = keys::lease_keys_prefix(id);
            let attachments: Vec<Vec<u8>> = batch
                .view()
                .scan(&prefix, &prefix_end(&prefix))
                .map(|entry| entry.map(|(key, _)| key.to_vec()))
                .collect::<Result<_>>()?;
            let mut cursor = batch.cursor();
            for attachment in attachments {
                let key = &attachment[prefix.len()..];
                let attached_live = batch
                    .view()
                    .key_state(key)
                    .and_then(|state| state.live())
                    .is_some_and(|live| live.lease == id);
                if attached_live {
                    let revision = cursor.next_revision();
                    batch.write_tombstone(key, revision)?;
                } else {
                    tracing::warn!(lease = id, "a lease attachment without its live key; dropping it");
                }
                batch.overlay.remove(attachment);
            }
            batch.overlay.remove(keys::lease_key(id));
            batch.revision = cursor.revision();
            Ok(LeaseRevokeResponse {
                header: header(cursor.revision()),
            })
        })
    }

    /// Records checkpointed remaining TTLs (0 clears one); leases that are
    /// gone are skipped, as etcd skips them.
    pub fn lease_checkpoint(&mut self, checkpoints: &[(i64, i64)]) -> Result<(), MvccError> {
        self.run_request(|batch| {
            for &(id, remaining_ttl) in checkpoints {
                let Some(mut record) = pending_lease(&batch.view(), id)? else {
                    continue;
                };
                record.remaining_ttl = remaining_ttl.max(0);
                batch
                    .overlay
                    .insert(keys::lease_key(id), &keys::encode_lease(&record)[..]);
            }
            Ok(())
        })
    }
}

/// Every committed lease, in ID order.
pub(crate) fn leases(tree: &sled::Tree) -> Result<Vec<LeaseRecord>> {
    tree.range(&[keys::LEASES][..]..&[keys::LEASES + 1][..])
        .map(|entry| {
            let (key, value) = entry?;
            keys::decode_lease(keys::parse_lease_key(&key)?, &value)
        })
        .collect()
}

/// Committed lease `id`, if it exists.
pub(crate) fn lease(tree: &sled::Tree, id: i64) -> Result<Option<LeaseRecord>> {
    tree.get(keys::lease_key(id))?
        .map(|value| keys::decode_lease(id, &value))
        .transpose()
}

/// The keys attached to committed lease `id`, in key order.
pub(crate) fn attached_keys(tree: &sled::Tree, id: i64) -> Result<Vec<Vec<u8>>> {
    let prefix = keys::lease_keys_prefix(id);
    tree.range(prefix.as_slice()..prefix_end(&prefix).as_slice())
        .map(|entry| Ok(entry?.0[prefix.len()..].to_vec()))
        .collect()
}

/// Feeds every lease record and attachment to `hasher` (`hash.rs` folds
/// them into `hash_kv`), as length-prefixed key and value.
pub(crate) fn feed_hash(tree: &sled::Tree, hasher: &mut crc32fast::Hasher) -> Result<()> {
    for entry in tree.range(&[keys::LEASES][..]..&[keys::LEASE_KEYS + 1][..]) {
        let (key, value) = entry?;
        for part in [&key, &value] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"\x05\x00\x01"), b"\x05\x00\x02");
        assert_eq!(prefix_end(b"\x05\x00\xff"), b"\x05\x01");
    }
}
