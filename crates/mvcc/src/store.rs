//! [`MvccStore`]: opening the keyspace, finding the active tree, and every
//! read that does not go through an [`ApplyBatch`].
//!
//! Invariants owned here:
//! - Everything the store persists lives in ONE sled tree (the active
//!   keyspace, layout in `keys.rs`); the Db's default tree holds only the
//!   pointer [`ACTIVE_POINTER`] naming it. `open` follows the pointer and
//!   drops any other keyspace tree (a leftover of an interrupted snapshot
//!   install), then rebuilds the in-memory index from the tree's records.
//! - The tree and its index live together in [`Keyspace`], behind one
//!   `RwLock`, and always describe the same state. Readers never see a torn
//!   batch: a read holds `active` shared for the whole time it touches the
//!   index or the tree; a commit holds it exclusively only around
//!   `Tree::apply_batch` plus the index update (and updates the cached
//!   revisions inside the same section); a snapshot install builds the new
//!   index before and holds it exclusively only to flip the pointer and swap
//!   tree and index; a defragmentation holds it exclusively only to swap the
//!   database and tree (the index stays: same records).
//! - One writer at a time: an `ApplyBatch`, a snapshot install, a
//!   defragmentation and a `hash_kv` scan each hold the writer slot for their whole
//!   life, so the tree a batch reads cannot change under it and a hash is a
//!   consistent cut. A snapshot dump holds it only while it takes its cut
//!   (`snapshot.rs`), then streams while batches commit. (A thread holding
//!   an `ApplyBatch` must therefore not start another batch, dump, install,
//!   defragmentation or hash: it would wait for itself.)
//! - History pins: while a snapshot cut streams, no revision record at or
//!   below its revision may go. A cut pins the history while it holds the
//!   writer slot and keeps the pin after; whatever removes records (a batch
//!   that compacts, a snapshot install, a defragmentation) holds the writer
//!   slot and first waits until no pin is left. Holding the slot, it knows
//!   no new pin can start.

use keel_storage::sled;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keel_storage::Database;

use crate::apply::ApplyBatch;
use crate::changes::{self, Changes, PullBudget, RecentChanges};
use crate::defrag::{self, DefragStats, DefragStep};
use crate::error::{corrupt, MvccError, Result};
use crate::index::{self, Index};
use crate::keys;
use crate::leases::LeaseIds;
use crate::range::{self, ViewRevisions};
use crate::snapshot::{self, SnapshotCut};
use crate::view::CommittedView;
use crate::{hash, leases};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse};
use keel_api::key_range::KeySelection;

/// The key in the Db's default tree naming the active keyspace tree.
pub(crate) const ACTIVE_POINTER: &[u8] = b"keel-mvcc/active-keyspace";
const KEYSPACE_TREE_PREFIX: &str = "keel-mvcc/keyspace/";

/// The revision of an empty store, as etcd's.
const INITIAL_REVISION: i64 = 1;
/// The compact revision of a never compacted store, as etcd's.
const NEVER_COMPACTED: i64 = -1;

/// The hash of the key-value history up to a revision ([`MvccStore::hash_kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision the hash covers.
    pub revision: i64,
    pub compact_revision: i64,
}

/// What a snapshot dump or install moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotStats {
    pub records: u64,
    pub bytes: u64,
}

/// etcd's MVCC keyspace on sled. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct MvccStore {
    shared: Arc<Shared>,
}

/// The active keyspace tree, the database holding it (a defragmentation
/// replaces that too), the name the pointer gives the tree, and its index.
pub(crate) struct Keyspace {
    pub(crate) database: Database,
    pub generation: u64,
    pub(crate) tree: sled::Tree,
    /// Shared only with the one running [`ApplyBatch`] (see its `index`).
    pub index: Arc<Index>,
    /// The ids of the tree's lease records (`leases.rs`); shared as `index`.
    pub(crate) lease_ids: Arc<LeaseIds>,
    /// The last committed changes, for watchers (`changes.rs`).
    pub(crate) recent: RecentChanges,
}

impl Keyspace {
    pub fn view(&self) -> CommittedView<'_> {
        CommittedView {
            index: &self.index,
            tree: &self.tree,
        }
    }
}

pub(crate) struct Shared {
    pub active: RwLock<Keyspace>,
    /// The store revision and compact revision of the committed state; only
    /// changed while `active` is held exclusively.
    pub revision: AtomicI64,
    pub compact_revision: AtomicI64,
    /// The bytes of the active tree's entries (keys plus values); only
    /// changed while `active` is held exclusively.
    pub live_bytes: AtomicU64,
    writer_busy: Mutex<bool>,
    writer_free: Condvar,
    /// The snapshot cuts streaming now (see the module's doc).
    history_pins: Mutex<usize>,
    history_unpinned: Condvar,
    /// The committed store revision, for watchers to wait on; sent after
    /// the exclusive section that committed it.
    revision_announcer: tokio::sync::watch::Sender<i64>,
}

/// A snapshot cut's pin on the history; see [`Shared::pin_history`].
pub(crate) struct HistoryPin<'a> {
    shared: &'a Shared,
}

impl Drop for HistoryPin<'_> {
    fn drop(&mut self) {
        let mut pins = self.shared.history_pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins = pins.saturating_sub(1);
        if *pins == 0 {
            self.shared.history_unpinned.notify_all();
        }
    }
}

/// Proof of holding the writer slot; releases it when dropped.
pub(crate) struct WriterSlot<'a> {
    shared: &'a Shared,
}

impl Drop for WriterSlot<'_> {
    fn drop(&mut self) {
        let mut busy = self.shared.writer_busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy = false;
        self.shared.writer_free.notify_one();
    }
}

impl Shared {
    pub fn acquire_writer(&self) -> WriterSlot<'_> {
        let mut busy = self.writer_busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            busy = self.writer_free.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy = true;
        WriterSlot { shared: self }
    }

    /// Keeps every revision record at or below the current revision in the
    /// tree until dropped (a snapshot cut); `_slot` proves the caller holds
    /// the writer slot.
    pub fn pin_history(&self, _slot: &WriterSlot<'_>) -> HistoryPin<'_> {
        *self.history_pins.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        HistoryPin { shared: self }
    }

    /// Waits until no snapshot cut pins the history; for whatever removes
    /// revision records, holding the writer slot (`_slot`) so that no new
    /// pin can start before it is done.
    pub fn wait_until_history_unpinned(&self, _slot: &WriterSlot<'_>) {
        let mut pins = self.history_pins.lock().unwrap_or_else(|p| p.into_inner());
        while *pins > 0 {
            pins = self
                .history_unpinned
                .wait(pins)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The database the active keyspace is in (a handle; the active one
    /// changes with a defragmentation).
    pub fn database(&self) -> Database {
        self.read_keyspace().database.clone()
    }

    pub fn read_keyspace(&self) -> RwLockReadGuard<'_, Keyspace> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_keyspace(&self) -> RwLockWriteGuard<'_, Keyspace> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed revisions; consistent with the tree while `active` is held.
    pub fn revisions(&self) -> ViewRevisions {
        ViewRevisions {
            current: self.revision.load(Ordering::Acquire),
            compacted: self.compact_revision.load(Ordering::Acquire),
        }
    }

    /// Wakes whoever waits for a revision newer than they saw.
    pub fn announce_revision(&self, revision: i64) {
        self.revision_announcer.send_if_modified(|announced| {
            let newer = *announced != revision;
            *announced = revision;
            newer
        });
    }

    /// Adds `change` to the live bytes (a commit's; never below 0).
    pub fn change_live_bytes(&self, change: i64) {
        let _always_some = self
            .live_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bytes| {
                Some(bytes.saturating_add_signed(change))
            });
    }

    pub fn set_revisions(&self, revisions: ViewRevisions) {
        self.revision.store(revisions.current, Ordering::Release);
        self.compact_revision
            .store(revisions.compacted, Ordering::Release);
    }
}

pub(crate) fn keyspace_tree_name(generation: u64) -> String {
    format!("{KEYSPACE_TREE_PREFIX}{generation}")
}

fn parse_keyspace_tree_name(name: &[u8]) -> Result<u64> {
    std::str::from_utf8(name)
        .ok()
        .and_then(|name| name.strip_prefix(KEYSPACE_TREE_PREFIX))
        .and_then(|generation| generation.parse().ok())
        .ok_or_else(|| {
            corrupt(format!(
                "active keyspace pointer names {:?}",
                String::from_utf8_lossy(name)
            ))
        })
}

/// Reads the store meta of a keyspace tree; `None` if the tree is empty.
/// Returns the compact revision.
fn load_meta(tree: &sled::Tree) -> Result<Option<i64>> {
    let format = tree.get(keys::META_FORMAT)?;
    let compacted = tree.get(keys::META_COMPACT)?;
    match (format, compacted) {
        (None, None) if tree.is_empty() => Ok(None),
        (Some(format), compacted) => {
            let format = u32::from_be_bytes(
                format
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("format version is not 4 bytes"))?,
            );
            if format != keys::FORMAT_VERSION {
                return Err(corrupt(format!(
                    "keyspace format {format}, this build reads only {} (stores of another \
                     format are not migrated)",
                    keys::FORMAT_VERSION
                )));
            }
            let compacted = compacted.ok_or_else(|| corrupt("keyspace without its compact revision"))?;
            Ok(Some(keys::decode_i64(&compacted, "compact revision")?))
        }
        _ => Err(corrupt("keyspace without its store meta")),
    }
}

/// A keyspace tree read whole ([`load`]).
pub(crate) struct Loaded {
    pub revisions: ViewRevisions,
    pub index: Index,
    pub lease_ids: LeaseIds,
    /// The bytes of its entries (keys plus values; see [`MvccStore::live_bytes`]).
    pub live_bytes: u64,
}

/// Reads a non-empty keyspace tree whole: its meta and its rebuilt index,
/// with the store revision derived from the records, and its size.
pub(crate) fn load(tree: &sled::Tree) -> Result<Option<Loaded>> {
    let Some(compacted) = load_meta(tree)? else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let rebuilt = index::rebuild(tree)?;
    let current = rebuilt
        .last_main
        .unwrap_or(INITIAL_REVISION)
        .max(compacted)
        .max(INITIAL_REVISION);
    let live_bytes = rebuilt.record_bytes + bytes_beside_revisions(tree)?;
    tracing::info!(
        keys = rebuilt.index.len(),
        revision = current,
        live_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt the mvcc key index"
    );
    Ok(Some(Loaded {
        revisions: ViewRevisions { current, compacted },
        index: rebuilt.index,
        lease_ids: leases::lease_ids(tree)?,
        live_bytes,
    }))
}

/// The bytes of a tree's entries other than its revision records (store
/// meta, leases and their attachments, app meta): few, next to the records.
fn bytes_beside_revisions(tree: &sled::Tree) -> Result<u64> {
    let below = tree.range(..&[keys::REVISIONS][..]);
    let above = tree.range(&[keys::REVISIONS + 1][..]..);
    let mut bytes = 0u64;
    for entry in below.chain(above) {
        let (key, value) = entry?;
        bytes += (key.len() + value.len()) as u64;
    }
    Ok(bytes)
}

fn initialize(tree: &sled::Tree) -> Result<ViewRevisions> {
    let mut batch = sled::Batch::default();
    batch.insert(keys::META_FORMAT, &keys::FORMAT_VERSION.to_be_bytes()[..]);
    batch.insert(keys::META_COMPACT, &keys::encode_i64(NEVER_COMPACTED)[..]);
    tree.apply_batch(batch)?;
    Ok(ViewRevisions {
        current: INITIAL_REVISION,
        compacted: NEVER_COMPACTED,
    })
}

impl MvccStore {
    /// Opens (or creates) the store kept in `database`. Open it once per
    /// database and share clones: two separately opened stores would not
    /// exclude each other's writers.
    pub fn open(database: &Database) -> Result<Self, MvccError> {
        let db = database.sled();
        let pointer = db.get(ACTIVE_POINTER)?;
        let generation = match &pointer {
            Some(name) => parse_keyspace_tree_name(name)?,
            None => 0,
        };
        let name = keyspace_tree_name(generation);
        for stale in db.tree_names() {
            if stale.starts_with(KEYSPACE_TREE_PREFIX.as_bytes()) && stale != name.as_bytes() {
                tracing::info!(tree = %String::from_utf8_lossy(&stale), "dropping a stale keyspace tree");
                db.drop_tree(&stale)?;
            }
        }
        let tree = db.open_tree(&name)?;
        let Loaded {
            revisions,
            index,
            lease_ids,
            live_bytes,
        } = match load(&tree)? {
            Some(loaded) => loaded,
            None => Loaded {
                revisions: initialize(&tree)?,
                index: Index::new(),
                lease_ids: LeaseIds::new(),
                live_bytes: bytes_beside_revisions(&tree)?,
            },
        };
        if pointer.is_none() {
            db.insert(ACTIVE_POINTER, name.as_bytes())?;
        }
        let shared = Shared {
            active: RwLock::new(Keyspace {
                database: database.clone(),
                generation,
                tree,
                index: Arc::new(index),
                lease_ids: Arc::new(lease_ids),
                recent: RecentChanges::starting_after(revisions.current),
            }),
            revision: AtomicI64::new(revisions.current),
            compact_revision: AtomicI64::new(revisions.compacted),
            live_bytes: AtomicU64::new(live_bytes),
            writer_busy: Mutex::new(false),
            writer_free: Condvar::new(),
            history_pins: Mutex::new(0),
            history_unpinned: Condvar::new(),
            revision_announcer: tokio::sync::watch::Sender::new(revisions.current),
        };
        Ok(MvccStore {
            shared: Arc::new(shared),
        })
    }

    /// The revision of the last committed write (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// The revision of the last compaction (-1 if never compacted, as etcd).
    pub fn compact_revision(&self) -> i64 {
        self.shared.compact_revision.load(Ordering::Acquire)
    }

    /// Serves a range read at the current or a historical revision; the
    /// header carries the current revision.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let (selected, revisions) = {
            let keyspace = self.shared.read_keyspace();
            let revisions = self.shared.revisions();
            (range::select(&keyspace.view(), revisions, request)?, revisions)
        };
        Ok(selected.into_response(request, revisions.current))
    }

    /// The store revision, changing after every commit (and snapshot
    /// install) that moves it: a watcher waits on this, then pulls
    /// [`Self::changes_after`].
    pub fn subscribe_revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.revision_announcer.subscribe()
    }

    /// The changes after revision `after` that `selection` matches, in
    /// revision order, whole revisions only; once past its `budget` the
    /// pull stops and says how far it got (see `changes.rs`). Fails with `Compacted` when `after + 1` is below the
    /// compact revision.
    pub fn changes_after(
        &self,
        after: i64,
        selection: &KeySelection<'_>,
        budget: PullBudget,
    ) -> Result<Changes, MvccError> {
        let keyspace = self.shared.read_keyspace();
        let revisions = self.shared.revisions();
        let start = after.saturating_add(1);
        if start < revisions.compacted {
            return Err(MvccError::Compacted {
                requested: start,
                compacted: revisions.compacted,
            });
        }
        if after >= revisions.current {
            return Ok(Changes {
                events: Vec::new(),
                through_revision: after,
            });
        }
        let (events, stopped_at) = if keyspace.recent.holds_from(start) {
            let source = keyspace.recent.after(after).cloned().map(Ok);
            changes::take_whole_revisions(source, selection, budget)?
        } else {
            let low = keys::revision_key(keys::Revision::new(start, 0));
            let high = keys::revision_key(keys::Revision::new(revisions.current.saturating_add(1), 0));
            let source = keyspace.tree.range(low..high).map(|entry| {
                let (key, value) = entry?;
                Ok(changes::event_of(
                    keys::parse_revision_key(&key)?,
                    &keys::decode_record(&value)?,
                ))
            });
            changes::take_whole_revisions(source, selection, budget)?
        };
        Ok(Changes {
            events,
            through_revision: stopped_at.unwrap_or(revisions.current),
        })
    }

    /// Starts a batch of writes; waits while another batch, dump or install runs.
    pub fn begin_apply(&self) -> ApplyBatch<'_> {
        ApplyBatch::begin(&self.shared)
    }

    /// A crc32 of the history up to `revision` (0 = current): every change
    /// record with a revision at or below it, which after a compaction means
    /// the versions the compaction kept plus everything newer; then, for
    /// the current revision only, the leases (`hash.rs`).
    ///
    /// Holds the writer slot rather than the read lock while it scans, so a
    /// long hash delays writes (which must not change what it hashes) but
    /// never reads.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let _slot = self.shared.acquire_writer();
        let tree = self.shared.read_keyspace().tree.clone();
        hash::hash_kv(&tree, self.shared.revisions(), revision)
    }

    /// etcd's `Hash`: a crc32 of the whole keyspace (store meta, every
    /// change record, leases and attachments; not the app meta, which
    /// records a member's Raft position) and the current revision it
    /// covers (`hash.rs`). Holds the writer slot while it scans, as
    /// [`Self::hash_kv`] does.
    pub fn hash(&self) -> Result<(u32, i64), MvccError> {
        let _slot = self.shared.acquire_writer();
        let tree = self.shared.read_keyspace().tree.clone();
        hash::hash_keyspace(&tree, self.shared.revisions())
    }

    /// Every lease, in ID order (the applied state; no clock).
    pub fn leases(&self) -> Result<Vec<crate::LeaseRecord>, MvccError> {
        leases::leases(&self.shared.read_keyspace().tree)
    }

    /// Lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Result<Option<crate::LeaseRecord>, MvccError> {
        leases::lease(&self.shared.read_keyspace().tree, id)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
        leases::attached_keys(&self.shared.read_keyspace().tree, id)
    }

    /// An application blob committed with [`ApplyBatch::set_app_meta`].
    pub fn app_meta(&self, key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let keyspace = self.shared.read_keyspace();
        Ok(keyspace
            .tree
            .get(keys::app_meta_key(key))?
            .map(|value| value.to_vec()))
    }

    /// Streams the whole keyspace tree (revision records, meta, app meta) to
    /// `out`; the index is rebuilt from it on install. One consistent cut:
    /// [`Self::snapshot_cut`] then [`SnapshotCut::write`].
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<SnapshotStats, MvccError> {
        self.snapshot_cut()?.write(out)
    }

    /// The keyspace as it is now, to stream later: writes wait only while
    /// the cut is taken (it copies the store and app meta and the leases),
    /// not while it is written out. Compactions, snapshot installs and
    /// defragmentations wait until the cut is dropped.
    pub fn snapshot_cut(&self) -> Result<SnapshotCut<'_>, MvccError> {
        let slot = self.shared.acquire_writer();
        snapshot::cut(&self.shared, &slot)
    }

    /// Replaces the whole keyspace with a stream from [`Self::write_snapshot`].
    /// Atomic: on any error the store is left as it was.
    pub fn install_snapshot(&self, input: &mut dyn std::io::Read) -> Result<SnapshotStats, MvccError> {
        let slot = self.shared.acquire_writer();
        self.shared.wait_until_history_unpinned(&slot);
        snapshot::install(&self.shared, input)
    }

    /// Makes every batch committed before this call durable, and returns
    /// only once it is: sled's flush followed by the fsyncs of new blob
    /// files and the fdatasync of sled's data file
    /// ([`Database::make_durable`]), so the committed state survives a
    /// crash of the machine, not just of the process. Blocks on the disk.
    ///
    /// Commits themselves ([`ApplyBatch::commit`]) are atomic but not
    /// durable; whoever needs a state on disk (the Raft state machine before
    /// it reports a snapshot built or installed, which lets the log be
    /// purged behind it) calls this. A temporary database
    /// ([`Database::open_temporary`]) is only flushed.
    pub fn flush(&self) -> Result<(), MvccError> {
        let started = std::time::Instant::now();
        self.shared.database().make_durable()?;
        keel_metrics::metrics()
            .backend_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Where the keyspace database in use lives (a defragmentation moves it
    /// to the next generation of its name); `None` for a temporary one.
    pub fn database_path(&self) -> Option<std::path::PathBuf> {
        self.shared.database().path().map(|path| path.to_path_buf())
    }

    /// The size of the keyspace database on disk, in bytes (0 if unknown).
    pub fn size_on_disk(&self) -> u64 {
        self.shared.database().size_on_disk().unwrap_or(0)
    }

    /// The bytes the active keyspace holds: the keys and values of every
    /// entry of its tree (revision records, store meta, leases and their
    /// attachments, app meta), as stored, without sled's own overhead
    /// (page headers, tree nodes, free space). Kept current by every
    /// commit, snapshot install and defragmentation (no scan): the lower
    /// bound of [`Self::size_on_disk`] a defragmentation can reach; what a
    /// compaction frees leaves it at once and the disk size only later.
    pub fn live_bytes(&self) -> u64 {
        self.shared.live_bytes.load(Ordering::Acquire)
    }

    /// Rewrites the active keyspace into a fresh database and deletes the
    /// old one, giving back to the file system the space compactions and
    /// deletes freed (`defrag.rs`). The keyspace stays the same (every
    /// record, revision and index entry); reads go on meanwhile, writes wait.
    pub fn defragment(&self) -> Result<DefragStats, MvccError> {
        self.defragment_stopping_at(&mut |_| Ok(()))
    }

    /// [`Self::defragment`], passing each [`DefragStep`] to `step` first; an
    /// error from `step` ends the defragmentation there, doing nothing more,
    /// as a crash at that point would (for crash tests).
    pub fn defragment_stopping_at(
        &self,
        step: &mut dyn FnMut(DefragStep) -> Result<(), MvccError>,
    ) -> Result<DefragStats, MvccError> {
        let slot = self.shared.acquire_writer();
        self.shared.wait_until_history_unpinned(&slot);
        defrag::defragment(&self.shared, step)
    }
}
