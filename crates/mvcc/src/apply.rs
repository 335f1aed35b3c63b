//! [`ApplyBatch`]: applying write requests (put, delete_range, txn,
//! compaction, app meta) on top of the committed keyspace and committing
//! them all at once.
//!
//! Invariants owned here:
//! - Revision numbering: the store revision grows by exactly one per request
//!   that changes something (a put; a delete that deletes; a txn whose
//!   branch writes). All changes of one request share main revision
//!   `begin + 1` and are numbered by sub-revision from 0 ([`WriteCursor`]).
//! - A request that fails leaves no trace in the batch: its overlay writes
//!   are undone and the batch revisions restored.
//! - Atomic commit: data, history, store meta and app meta of the whole batch
//!   go to sled in ONE `Tree::apply_batch`, under the store's exclusive lock,
//!   so neither a crash nor a concurrent reader sees part of it.

use keel_api::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::KeyValue;

use crate::error::{MvccError, Result};
use crate::keys::{self, ChangeKind, Revision};
use crate::range::{self, header, ViewRevisions};
use crate::store::{Shared, WriterSlot};
use crate::view::{BatchView, KeyspaceView, Overlay};
use crate::{compaction, txn};

/// A batch of write requests applied in order, each seeing the ones before
/// it, committed together by [`ApplyBatch::commit`] (dropping it discards
/// everything). Only one batch exists at a time per store.
pub struct ApplyBatch<'a> {
    shared: &'a Shared,
    _slot: WriterSlot<'a>,
    /// The active keyspace; stable while the writer slot is held.
    tree: sled::Tree,
    pub(crate) overlay: Overlay,
    /// The store revision including the requests applied so far.
    pub(crate) revision: i64,
    pub(crate) compact_revision: i64,
    committed: ViewRevisions,
}

/// Numbers the changes of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCursor {
    begin: i64,
    changes: i64,
}

impl WriteCursor {
    /// The revision of the next change.
    fn next_revision(&mut self) -> Revision {
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
        let tree = shared.read_keyspace().tree.clone();
        let committed = shared.revisions();
        ApplyBatch {
            shared,
            _slot: slot,
            tree,
            overlay: Overlay::default(),
            revision: committed.current,
            compact_revision: committed.compacted,
            committed,
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
        self.run_request(|batch| compaction::compact(batch, revision))
    }

    /// Stores an application blob, committed atomically with the data.
    pub fn set_app_meta(&mut self, key: &str, value: Vec<u8>) {
        self.overlay.insert(keys::app_meta_key(key), value);
    }

    /// Commits every request of the batch and the app meta in one atomic
    /// sled batch, and publishes the new revision to readers.
    pub fn commit(self) -> Result<(), MvccError> {
        let ApplyBatch {
            shared,
            _slot,
            tree,
            mut overlay,
            revision,
            compact_revision,
            committed,
        } = self;
        if revision != committed.current {
            overlay.insert(keys::META_REVISION, &keys::encode_i64(revision)[..]);
        }
        if compact_revision != committed.compacted {
            overlay.insert(keys::META_COMPACT, &keys::encode_i64(compact_revision)[..]);
        }
        if overlay.is_empty() {
            return Ok(());
        }
        let batch = overlay.into_batch();
        let _exclusive = shared.write_keyspace();
        tree.apply_batch(batch)?;
        shared.set_revisions(ViewRevisions {
            current: revision,
            compacted: compact_revision,
        });
        Ok(())
    }

    /// Runs one request; if it fails, undoes whatever it wrote.
    fn run_request<T>(&mut self, request: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let (revision, compact_revision) = (self.revision, self.compact_revision);
        self.overlay.begin_request();
        let outcome = request(self);
        match &outcome {
            Ok(_) => self.overlay.finish_request(),
            Err(error) => {
                if !matches!(
                    error,
                    MvccError::Compacted { .. }
                        | MvccError::FutureRevision { .. }
                        | MvccError::KeyNotFound
                        | MvccError::LeaseNotFound
                ) {
                    tracing::warn!(%error, "a write request failed on storage; its changes are discarded");
                }
                self.overlay.roll_back_request();
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
            tree: &self.tree,
            overlay: &self.overlay,
        }
    }

    fn live_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let raw_key = keys::live_key(key);
        match self.view().get(&raw_key)? {
            Some(value) => Ok(Some(keys::decode_live(&raw_key, &value)?)),
            None => Ok(None),
        }
    }

    /// Records one change: the live keyspace, the history index and the
    /// revision record.
    fn write_change(&mut self, kind: ChangeKind, kv: &KeyValue, revision: Revision) {
        let live_key = keys::live_key(&kv.key);
        match kind {
            ChangeKind::Put => self.overlay.insert(live_key, keys::encode_live_value(kv)),
            ChangeKind::Tombstone => self.overlay.remove(live_key),
        }
        self.overlay
            .insert(keys::history_key(&kv.key, revision), &[kind.tag()][..]);
        self.overlay
            .insert(keys::revision_key(revision), keys::encode_change(kind, kv));
    }

    /// A put inside a request (etcd's `applierV3backend.Put` with a txn).
    pub(crate) fn apply_put(
        &mut self,
        cursor: &mut WriteCursor,
        request: &PutRequest,
    ) -> Result<PutResponse> {
        if request.lease != 0 {
            // keel grants no leases yet, so no lease can be attached.
            return Err(MvccError::LeaseNotFound);
        }
        let previous = self.live_kv(&request.key)?;
        let reuses_previous = request.ignore_value || request.ignore_lease;
        let (value, lease) = match &previous {
            None if reuses_previous => return Err(MvccError::KeyNotFound),
            None => (request.value.clone(), request.lease),
            Some(previous) => (
                if request.ignore_value {
                    previous.value.clone()
                } else {
                    request.value.clone()
                },
                if request.ignore_lease {
                    previous.lease
                } else {
                    request.lease
                },
            ),
        };
        let revision = cursor.next_revision();
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(revision.main, |previous| previous.create_revision),
            mod_revision: revision.main,
            version: previous.as_ref().map_or(1, |previous| previous.version + 1),
            value,
            lease,
        };
        self.write_change(ChangeKind::Put, &kv, revision);
        Ok(PutResponse {
            header: header(revision.main),
            prev_kv: if request.prev_kv { previous } else { None },
        })
    }

    /// A delete inside a request (etcd's `applierV3backend.DeleteRange`).
    pub(crate) fn apply_delete_range(
        &mut self,
        cursor: &mut WriteCursor,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        let selection = KeySelection::from_request(&request.key, &request.range_end);
        let doomed: Vec<KeyValue> = if request.prev_kv {
            range::live_kvs(&self.view(), &selection)?
        } else {
            range::live_candidates(&self.view(), &selection, false)
                .map(|entry| {
                    let (raw_key, _) = entry?;
                    Ok(KeyValue {
                        key: keys::user_key_of_live(&raw_key)?.to_vec(),
                        ..Default::default()
                    })
                })
                .collect::<Result<_>>()?
        };
        for victim in &doomed {
            let revision = cursor.next_revision();
            let tombstone = KeyValue {
                key: victim.key.clone(),
                mod_revision: revision.main,
                ..Default::default()
            };
            self.write_change(ChangeKind::Tombstone, &tombstone, revision);
        }
        let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        Ok(DeleteRangeResponse {
            header: header(cursor.revision()),
            deleted,
            prev_kvs: if request.prev_kv { doomed } else { Vec::new() },
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
