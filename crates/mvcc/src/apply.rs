//! [`ApplyBatch`]: applying write requests (put, delete_range, txn,
//! compaction, app meta; the lease requests are in `leases.rs`) on top of the committed keyspace and committing
//! them all at once.
//!
//! Invariants owned here:
//! - Revision numbering: the store revision grows by exactly one per request
//!   that changes something (a put; a delete that deletes; a txn whose
//!   branch writes). All changes of one request share main revision
//!   `begin + 1` and are numbered by sub-revision from 0 ([`WriteCursor`]).
//! - A request that fails leaves no trace in the batch: its writes in both
//!   overlays (records and index deltas) are undone and the batch revisions
//!   restored.
//! - One record per change: a put or a tombstone writes exactly one sled
//!   entry, its revision record; everything else a write changes is in the
//!   in-memory index (as a [`PendingKey`] delta until commit). A plain put
//!   reads nothing from sled (only `prev_kv`/`ignore_value` fetch the old value).
//! - Atomic commit: the records, store meta and app meta of the whole batch
//!   go to sled in ONE `Tree::apply_batch`, and the index deltas are applied,
//!   both under the store's exclusive lock, so neither a crash nor a
//!   concurrent reader sees part of it (and a failed sled write leaves the
//!   index untouched).

use keel_storage::sled;
use std::sync::Arc;

use keel_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::KeyValue;

use crate::error::{MvccError, Result};
use crate::index::{self, Change, Index, KeyHistory, LiveVersion, PendingKey};
use crate::keys::{self, ChangeKind, PutMeta, Revision};
use crate::leases::LeaseIds;
use crate::overlay::{IndexOverlay, Overlay};
use crate::range::{self, header, ViewRevisions};
use crate::store::{Shared, WriterSlot};
use crate::view::{batch_key_state, BatchView, CommittedView};
use crate::{changes, compaction, leases, txn};

/// A batch of write requests applied in order, each seeing the ones before
/// it, committed together by [`ApplyBatch::commit`] (dropping it discards
/// everything). Only one batch exists at a time per store.
pub struct ApplyBatch<'a> {
    shared: &'a Shared,
    _slot: WriterSlot<'a>,
    /// Whether the batch waited for the snapshot cuts to finish, as it must
    /// before its first compaction removes revision records (`store.rs`).
    history_unpinned: bool,
    /// The committed tree and index; stable while the writer slot is held.
    /// The batch's clone of the index `Arc` is the only one besides the
    /// store's (readers borrow it under the lock), and the commit drops it
    /// before updating the index in place.
    tree: sled::Tree,
    index: Arc<Index>,
    /// The committed lease ids, shared the same way as `index`.
    pub(crate) lease_ids: Arc<LeaseIds>,
    /// Pending raw writes: revision records, store meta, app meta.
    pub(crate) overlay: Overlay,
    /// Pending index changes.
    keys: IndexOverlay,
    /// The store revision including the requests applied so far.
    pub(crate) revision: i64,
    pub(crate) compact_revision: i64,
    committed_revisions: ViewRevisions,
}

/// Numbers the changes of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCursor {
    begin: i64,
    changes: i64,
}

impl WriteCursor {
    /// The revision of the next change.
    pub(crate) fn next_revision(&mut self) -> Revision {
        let revision = Revision::new(self.begin + 1, self.changes);
        self.changes += 1;
        revision
    }

    /// The store revision as this request sees it so far.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

impl<'a> ApplyBatch<'a> {
    pub(crate) fn begin(shared: &'a Shared) -> Self {
        let slot = shared.acquire_writer();
        let (tree, index, lease_ids) = {
            let keyspace = shared.read_keyspace();
            (
                keyspace.tree.clone(),
                keyspace.index.clone(),
                keyspace.lease_ids.clone(),
            )
        };
        let committed = shared.revisions();
        ApplyBatch {
            shared,
            _slot: slot,
            history_unpinned: false,
            tree,
            index,
            lease_ids,
            overlay: Overlay::default(),
            keys: IndexOverlay::default(),
            revision: committed.current,
            compact_revision: committed.compacted,
            committed_revisions: committed,
        }
    }

    /// The store revision including the requests applied in this batch.
    pub fn current_revision(&self) -> i64 {
        self.revision
    }

    /// etcd's Put: a new version of `key` at a new revision.
    pub fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        self.run_request(|batch| {
            let mut cursor = batch.cursor();
            let response = batch.apply_put(&mut cursor, request)?;
            batch.revision = cursor.revision();
            Ok(response)
        })
    }

    /// etcd's DeleteRange: tombstones every live key in the range; the
    /// revision grows only if something was deleted.
    pub fn delete_range(&mut self, request: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        self.run_request(|batch| {
            let mut cursor = batch.cursor();
            let response = batch.apply_delete_range(&mut cursor, request)?;
            batch.revision = cursor.revision();
            Ok(response)
        })
    }

    /// etcd's Txn: compares, then the chosen branch's operations in order.
    pub fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.run_request(|batch| txn::apply_txn(batch, request))
    }

    /// etcd's Compact: drops history at or below `revision` except the
    /// versions still visible there. The revision does not change.
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if !self.history_unpinned {
            self.shared.wait_until_history_unpinned(&self._slot);
            self.history_unpinned = true;
        }
        self.run_request(|batch| compaction::compact(batch, revision))
    }

    /// Stores an application blob, committed atomically with the data.
    pub fn set_app_meta(&mut self, key: &str, value: Vec<u8>) {
        self.overlay.insert(keys::app_meta_key(key), value);
    }

    /// Commits every request of the batch and the app meta in one atomic
    /// sled batch, applies the index changes, and publishes the new revision
    /// to readers, all under the exclusive lock.
    ///
    /// The store revision is not written: `open` derives it from the records.
    pub fn commit(self) -> Result<(), MvccError> {
        let ApplyBatch {
            shared,
            _slot,
            history_unpinned: _,
            tree,
            index: committed_index,
            lease_ids: committed_lease_ids,
            mut overlay,
            keys,
            revision,
            compact_revision,
            committed_revisions,
        } = self;
        drop(committed_index);
        drop(committed_lease_ids);
        if compact_revision != committed_revisions.compacted {
            overlay.insert(keys::META_COMPACT, &keys::encode_i64(compact_revision)[..]);
        }
        if overlay.is_empty() && keys.is_empty() && revision == committed_revisions.current {
            return Ok(());
        }
        let new_records_low =
            keys::revision_key(Revision::new(committed_revisions.current.saturating_add(1), 0));
        let new_records_high = keys::revision_key(Revision::new(i64::MAX, 0));
        // Read before the tree changes; the writer slot keeps it still.
        let live_bytes_change = overlay.size_change(&tree, |key| {
            new_records_low.as_slice() <= key && key < new_records_high.as_slice()
        })?;
        drop(tree);
        let new_events = changes::events_of_records(
            overlay
                .range(&new_records_low, &new_records_high)
                .filter_map(|(key, value)| value.as_ref().map(|value| (key, value))),
        )?;
        let lease_id_changes = leases::lease_id_changes(&overlay)?;
        let batch = overlay.into_batch();
        let mut exclusive = shared.write_keyspace();
        exclusive.tree.apply_batch(batch)?;
        if !lease_id_changes.is_empty() {
            // In place, as the index below: the batch dropped its clone.
            leases::apply_lease_id_changes(Arc::make_mut(&mut exclusive.lease_ids), lease_id_changes);
        }
        // In place: nothing else holds the index `Arc` now (see `index`);
        // were it shared after all, `make_mut` would update a copy.
        if Arc::get_mut(&mut exclusive.index).is_none() {
            tracing::warn!("the mvcc index is shared at commit; copying it");
        }
        let index = Arc::make_mut(&mut exclusive.index);
        for (key, pending) in keys.into_pending() {
            index::apply_pending(index, key, pending);
        }
        if compact_revision != committed_revisions.compacted {
            exclusive.recent.forget_through(compact_revision);
        }
        exclusive.recent.append(new_events);
        shared.set_revisions(ViewRevisions {
            current: revision,
            compacted: compact_revision,
        });
        shared.change_live_bytes(live_bytes_change);
        drop(exclusive);
        shared.announce_revision(revision);
        Ok(())
    }

    /// Runs one request; if it fails, undoes whatever it wrote.
    pub(crate) fn run_request<T>(&mut self, request: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let (revision, compact_revision) = (self.revision, self.compact_revision);
        self.overlay.begin_request();
        self.keys.begin_request();
        let outcome = request(self);
        match &outcome {
            Ok(_) => {
                self.overlay.finish_request();
                self.keys.finish_request();
            }
            Err(error) => {
                if !matches!(
                    error,
                    MvccError::Compacted { .. }
                        | MvccError::FutureRevision { .. }
                        | MvccError::KeyNotFound
                        | MvccError::LeaseNotFound
                        | MvccError::LeaseExists
                ) {
                    tracing::warn!(%error, "a write request failed on storage; its changes are discarded");
                }
                self.overlay.roll_back_request();
                self.keys.roll_back_request();
                self.revision = revision;
                self.compact_revision = compact_revision;
            }
        }
        outcome
    }

    pub(crate) fn cursor(&self) -> WriteCursor {
        WriteCursor {
            begin: self.revision,
            changes: 0,
        }
    }

    /// The keyspace as this batch sees it.
    pub(crate) fn view(&self) -> BatchView<'_> {
        BatchView {
            committed: CommittedView {
                index: &self.index,
                tree: &self.tree,
            },
            overlay: &self.overlay,
            keys: &self.keys,
        }
    }

    /// The batch's pending index entry of `key` (created on first touch)
    /// and the committed entry it is a delta over.
    pub(crate) fn key_entry(&mut self, key: &[u8]) -> (&mut PendingKey, Option<&KeyHistory>) {
        let committed = index::find(&self.index, key);
        (self.keys.entry(key, committed), committed)
    }

    pub(crate) fn write_tombstone(&mut self, key: &[u8], revision: Revision) -> Result<()> {
        let change = Change::new(revision, ChangeKind::Tombstone)?;
        self.overlay
            .insert(&keys::revision_key(revision)[..], keys::encode_tombstone(key));
        self.key_entry(key).0.tombstone(change);
        Ok(())
    }

    /// A put inside a request (etcd's `applierV3backend.Put` with a txn).
    pub(crate) fn apply_put(
        &mut self,
        cursor: &mut WriteCursor,
        request: &PutRequest,
    ) -> Result<PutResponse> {
        self.check_lease_exists(request.lease)?;
        let key = request.key.as_slice();
        // The put's one search of the committed index: it serves both the
        // previous version and the pending entry the put writes.
        let committed = index::find(&self.index, key);
        let previous = batch_key_state(committed, self.keys.get(key)).and_then(|state| state.live());
        if previous.is_none() && (request.ignore_value || request.ignore_lease) {
            return Err(MvccError::KeyNotFound);
        }
        let previous_value = match previous {
            Some(previous) if request.prev_kv || request.ignore_value => {
                Some(range::load_value(&self.view(), key, previous.revision())?)
            }
            _ => None,
        };
        let value = match &previous_value {
            Some(previous_value) if request.ignore_value => previous_value.as_slice(),
            _ => request.value.as_slice(),
        };
        let lease = match previous {
            Some(previous) if request.ignore_lease => previous.lease,
            _ => request.lease,
        };
        let revision = cursor.next_revision();
        let meta = PutMeta {
            create_revision: previous.map_or(revision.main, |previous| previous.create_revision),
            version: previous.map_or(1, |previous| previous.version().saturating_add(1)),
            lease,
        };
        let live = LiveVersion::new(revision, meta)?;
        self.overlay.insert(
            &keys::revision_key(live.revision())[..],
            keys::encode_put(key, live.meta(), value),
        );
        self.keys.entry(key, committed).put(live);
        leases::reattach(
            &mut self.overlay,
            key,
            previous.map_or(0, |previous| previous.lease),
            lease,
        );
        let prev_kv = match previous {
            Some(previous) if request.prev_kv => {
                Some(previous.to_kv(key, previous_value.unwrap_or_default()))
            }
            _ => None,
        };
        Ok(PutResponse {
            header: header(revision.main),
            prev_kv,
        })
    }

    /// A delete inside a request (etcd's `applierV3backend.DeleteRange`).
    pub(crate) fn apply_delete_range(
        &mut self,
        cursor: &mut WriteCursor,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        let selection = KeySelection::from_request(&request.key, &request.range_end);
        let doomed = range::live_versions(&self.view(), &selection);
        let prev_kvs: Vec<KeyValue> = if request.prev_kv {
            let view = self.view();
            doomed
                .iter()
                .map(|(key, live)| range::current_kv(&view, key, *live, true))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        for (key, live) in &doomed {
            let revision = cursor.next_revision();
            self.write_tombstone(key, revision)?;
            leases::reattach(&mut self.overlay, key, live.lease, 0);
        }
        let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        Ok(DeleteRangeResponse {
            header: header(cursor.revision()),
            deleted,
            prev_kvs,
        })
    }

    /// A range inside a request: sees the request's own earlier writes.
    pub(crate) fn apply_range(&self, cursor: &WriteCursor, request: &RangeRequest) -> Result<RangeResponse> {
        let revisions = ViewRevisions {
            current: cursor.revision(),
            compacted: self.compact_revision,
        };
        range::range(&self.view(), revisions, request)
    }
}
