//! keel's keyspace: etcd's MVCC semantics on sled, with no Raft and no gRPC.
//!
//! Invariants this crate keeps (each module states the ones it owns):
//! - The store revision starts at 1 and grows by exactly one per write
//!   request that changes something (a put, a delete that deletes, a txn
//!   whose chosen branch writes); all changes of one request share that main
//!   revision and are told apart by a sub-revision.
//! - Per key: `create_revision` is the revision of the put that created the
//!   current generation, `mod_revision` the last put, `version` counts puts
//!   since creation; a delete writes a tombstone and ends the generation.
//! - A read at revision R sees exactly the writes with revision <= R; reads
//!   below the compacted revision fail with [`MvccError::Compacted`].
//! - Everything an [`ApplyBatch`] changes (data and app meta such as the last
//!   applied Raft log id) reaches sled in one atomic batch, so a crash never
//!   leaves half of it. On disk there is one record per change, keyed by
//!   revision (as etcd's bbolt); the per-key index (live keys, their
//!   metadata, and the revisions of every version) lives in memory, is
//!   updated with each commit, and is rebuilt from the records on open and
//!   on snapshot install.
//! - Applying the same requests to equal stores gives byte-equal stores
//!   ([`MvccStore::hash_kv`] proves it), however the requests are split
//!   into batches.
//!
//! Layout: `keys.rs` (the one sled tree's keyspaces and record encoding),
//! `index.rs` (the in-memory key index, rebuilt from the records on open),
//! `store.rs` (open, locks, reads), `apply.rs` (batches and revision
//! numbering), `overlay.rs` (a batch's pending records and index deltas,
//! with undo), `view.rs` (read-your-writes views over index and tree),
//! `changes.rs` (the change feed for watchers), `leases.rs` (lease records and
//! the keys attached to them), `range.rs`, `txn.rs`, `compaction.rs`, `hash.rs`, `snapshot.rs` (dump and
//! atomic install), `defrag.rs` (rewriting the keyspace into a fresh tree).

mod apply;
mod changes;
mod compaction;
mod defrag;
mod error;
mod hash;
mod index;
mod keys;
mod leases;
mod overlay;
mod range;
mod snapshot;
mod store;
mod txn;
mod view;

pub use apply::ApplyBatch;
pub use changes::{ChangeEvent, Changes, PullBudget, RECENT_CHANGES_MAX_BYTES, RECENT_CHANGES_MAX_EVENTS};
pub use defrag::{DefragStats, DefragStep};
pub use error::MvccError;
pub use keys::LeaseRecord;
pub use snapshot::SnapshotCut;
pub use store::{KvHash, MvccStore, SnapshotStats};
