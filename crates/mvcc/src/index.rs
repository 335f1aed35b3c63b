//! The in-memory key index (etcd's `treeIndex` of `keyIndex`es): for every
//! user key with history left, the revisions of its changes and what reads
//! of its current version need besides the value.
//!
//! A key's history is a list of changes in revision order; a tombstone ends
//! a generation (etcd's `generation`: a created revision, the puts, ended by
//! a tombstone), and the next put starts a new one. [`KeyHistory`] keeps the
//! newest put of a live key apart, with its metadata ([`LiveVersion`]:
//! create_revision, mod_revision, version, lease), so current-revision reads
//! never touch sled except to fetch values; every older change is a
//! [`Change`] (revision + put/tombstone bit) in `earlier`.
//!
//! Invariants owned here:
//! - The index is a function of the revision records on disk: [`rebuild`]
//!   derives it from them, and every batch changes both together (records in
//!   the sled batch, index in [`apply_pending`] under the same exclusive lock).
//! - Per key, `earlier ++ [live put]` is in strictly increasing revision
//!   order, starts with a put, and never has two tombstones in a row; `live`
//!   is `Some` exactly when the newest change is a put. A key with neither a
//!   live version nor earlier changes is not in the index.
//! - Compaction drops a prefix of `earlier` (every change at or below the
//!   compact revision except the newest there when it is a put), so it never
//!   drops the live put, and `version`/`create_revision` are stored, not
//!   counted, so they survive it.
//!
//! Memory per key (64-bit): a `BTreeMap` slot of 24 bytes ([`IndexKey`],
//! holding keys of up to 22 bytes inline, longer ones boxed) + 48 bytes
//! ([`KeyHistory`]: 40 for the live version, 8 for the thin pointer to
//! older changes) = 72 bytes, plus B-tree node overhead (leaves of 11 slots
//! are full after a rebuild but about half full after inserts in random key
//! order), plus the boxed key's allocation for keys over 22 bytes.
//! Measured for 1M keys (`index_memory_per_key`, in malloc chunks):
//! 14-byte keys ~131 bytes/key inserted in random order (a store loaded by
//! clients), ~75 after a reopen or snapshot install (rebuilt with full
//! nodes); 41-byte keys ~179 and ~123. A key's first older version not yet
//! compacted adds 64 bytes (its `Box<Vec>` and a 12-byte [`Change`]), each
//! further one 12 bytes.

use keel_storage::sled;
use std::collections::BTreeMap;
use std::num::NonZeroI64;

use keel_api::mvccpb::KeyValue;

use crate::error::{corrupt, Result};
use crate::keys::{self, ChangeKind, PutMeta, Revision};

pub(crate) type Index = BTreeMap<IndexKey, KeyHistory>;

/// The longest key kept inline in an [`IndexKey`].
const INLINE_KEY_BYTES: usize = 22;

/// A user key in the index: inline when short (most keys of most
/// workloads), so B-tree searches compare bytes inside the node instead of
/// chasing a pointer per comparison, and no allocation is needed; boxed
/// otherwise. 24 bytes either way.
#[derive(Clone)]
pub(crate) enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES] },
    Boxed(Box<[u8]>),
}

impl IndexKey {
    pub fn new(key: &[u8]) -> Self {
        IndexKey::inline(key).unwrap_or_else(|| IndexKey::Boxed(Box::from(key)))
    }

    /// `key` inline, zero-padded (which [`IndexKey::cmp`] relies on), when
    /// it is short enough.
    fn inline(key: &[u8]) -> Option<Self> {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY_BYTES => {
                let mut bytes = [0u8; INLINE_KEY_BYTES];
                bytes[..key.len()].copy_from_slice(key);
                Some(IndexKey::Inline { len, bytes })
            }
            _ => None,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            IndexKey::Boxed(key) => key,
        }
    }
}

impl std::borrow::Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IndexKey {}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    /// The order of the keys' bytes. Two inline keys compare as their
    /// zero-padded arrays, then their lengths: where the arrays first differ
    /// inside both keys that is the keys' first difference, and past the
    /// shorter key its padding (0) is below the longer key's byte there,
    /// which the keys order the same way (a prefix sorts first); arrays
    /// equal to the end differ only in trailing zeros, which the length
    /// orders. Three word compares instead of a call to `memcmp`, on every
    /// step of a search down the index.
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (
                IndexKey::Inline { len, bytes },
                IndexKey::Inline {
                    len: other_len,
                    bytes: other_bytes,
                },
            ) => padded_words(bytes)
                .cmp(&padded_words(other_bytes))
                .then(len.cmp(other_len)),
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

/// An inline key's bytes, zero-padded, as big-endian words: they compare
/// as the bytes do.
#[inline]
fn padded_words(bytes: &[u8; INLINE_KEY_BYTES]) -> [u64; 3] {
    let mut padded = [0u8; 24];
    padded[..INLINE_KEY_BYTES].copy_from_slice(bytes);
    let (words, _) = padded.as_chunks::<8>();
    [words[0], words[1], words[2]].map(u64::from_be_bytes)
}

/// `key`'s entry in a map keyed by [`IndexKey`]. A key short enough is
/// searched as an inline [`IndexKey`], so each comparison on the way down
/// is [`IndexKey::cmp`]'s word compare.
pub(crate) fn find<'map, V>(map: &'map BTreeMap<IndexKey, V>, key: &[u8]) -> Option<&'map V> {
    match IndexKey::inline(key) {
        Some(probe) => map.get(&probe),
        None => map.get(key),
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice())
    }
}

const TOMBSTONE_BIT: u32 = 1 << 31;

/// One change of a key: its revision and whether it was a put or a
/// tombstone, in 12 bytes (sub-revisions below 2^31).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub(crate) struct Change {
    main: i64,
    sub_and_kind: u32,
}

impl Change {
    pub fn new(revision: Revision, kind: ChangeKind) -> Result<Self> {
        let sub = u32::try_from(revision.sub)
            .ok()
            .filter(|sub| sub & TOMBSTONE_BIT == 0)
            .ok_or_else(|| corrupt(format!("sub-revision {} out of range", revision.sub)))?;
        if revision.main < 0 {
            return Err(corrupt(format!("negative revision {}", revision.main)));
        }
        let kind_bit = match kind {
            ChangeKind::Put => 0,
            ChangeKind::Tombstone => TOMBSTONE_BIT,
        };
        Ok(Change {
            main: revision.main,
            sub_and_kind: sub | kind_bit,
        })
    }

    pub fn main(self) -> i64 {
        self.main
    }

    pub fn revision(self) -> Revision {
        Revision::new(self.main, i64::from(self.sub_and_kind & !TOMBSTONE_BIT))
    }

    pub fn kind(self) -> ChangeKind {
        if self.sub_and_kind & TOMBSTONE_BIT == 0 {
            ChangeKind::Put
        } else {
            ChangeKind::Tombstone
        }
    }
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self.revision();
        write!(f, "{:?}@{}.{}", self.kind(), revision.main, revision.sub)
    }
}

/// The current version of a live key: everything of its `KeyValue` but the
/// key and the value (which stays in the record at its revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveVersion {
    pub mod_revision: i64,
    pub create_revision: i64,
    version: NonZeroI64,
    pub lease: i64,
    sub: u32,
}

impl LiveVersion {
    pub fn new(revision: Revision, meta: PutMeta) -> Result<Self> {
        let change = Change::new(revision, ChangeKind::Put)?;
        let version = NonZeroI64::new(meta.version)
            .filter(|version| version.get() > 0)
            .ok_or_else(|| corrupt(format!("put at {revision:?} with version {}", meta.version)))?;
        Ok(LiveVersion {
            mod_revision: change.main,
            create_revision: meta.create_revision,
            version,
            lease: meta.lease,
            sub: change.sub_and_kind,
        })
    }

    pub fn version(&self) -> i64 {
        self.version.get()
    }

    pub fn revision(&self) -> Revision {
        Revision::new(self.mod_revision, i64::from(self.sub))
    }

    pub fn change(&self) -> Change {
        Change {
            main: self.mod_revision,
            sub_and_kind: self.sub,
        }
    }

    pub fn meta(&self) -> PutMeta {
        PutMeta {
            create_revision: self.create_revision,
            version: self.version(),
            lease: self.lease,
        }
    }

    /// The `KeyValue` of this version with `value` (empty for keys-only reads).
    pub fn to_kv(self, key: &[u8], value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version(),
            value,
            lease: self.lease,
        }
    }
}

/// Everything the index knows of one key.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyHistory {
    /// The newest change when it is a put.
    live: Option<LiveVersion>,
    /// Every older change still in the history, oldest first. A thin
    /// pointer (8 bytes, no allocation for a key with one version) rather
    /// than an inline `Vec` (24 bytes): most keys have no older changes.
    #[allow(clippy::box_collection)]
    earlier: Option<Box<Vec<Change>>>,
}

impl KeyHistory {
    pub fn state(&self) -> KeyState<'_> {
        KeyState {
            older: self.earlier(),
            newer: &[],
            live: self.live,
        }
    }

    fn earlier(&self) -> &[Change] {
        self.earlier.as_deref().map_or(&[], Vec::as_slice)
    }

    fn is_empty(&self) -> bool {
        self.live.is_none() && self.earlier().is_empty()
    }

    /// Appends a change read from disk (`meta` is `Some` for a put).
    fn push(&mut self, change: Change, meta: Option<PutMeta>) -> Result<()> {
        let previous = match meta {
            Some(meta) => self.live.replace(LiveVersion::new(change.revision(), meta)?),
            None => match self.live.take() {
                Some(previous) => Some(previous),
                None => return Err(corrupt(format!("tombstone {change:?} of a deleted key"))),
            },
        };
        let tombstone = meta.is_none().then_some(change);
        let mut older = [previous.map(|previous| previous.change()), tombstone]
            .into_iter()
            .flatten()
            .peekable();
        if older.peek().is_some() {
            self.earlier.get_or_insert_with(Default::default).extend(older);
        }
        Ok(())
    }
}

/// A key's history as a view sees it: the committed changes left after the
/// batch's compactions (`older`), the changes the batch appended (`newer`)
/// and the live version; all in revision order, in that order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyState<'a> {
    older: &'a [Change],
    newer: &'a [Change],
    live: Option<LiveVersion>,
}

impl<'a> KeyState<'a> {
    pub fn is_empty(&self) -> bool {
        self.live.is_none() && self.older.is_empty() && self.newer.is_empty()
    }

    /// The current version, if the key is alive.
    pub fn live(&self) -> Option<LiveVersion> {
        self.live
    }

    /// The revision of the put alive at revision `at`, if any.
    pub fn put_at(&self, at: i64) -> Option<Revision> {
        if let Some(live) = self.live.filter(|live| live.mod_revision <= at) {
            return Some(live.revision());
        }
        let newest = newest_at(self.newer, at).or_else(|| newest_at(self.older, at))?;
        (newest.kind() == ChangeKind::Put).then(|| newest.revision())
    }

    /// Every change, oldest first (the live put last).
    pub fn changes(&self) -> impl DoubleEndedIterator<Item = Change> + 'a {
        let live = self.live.map(|live| live.change());
        self.older.iter().chain(self.newer).copied().chain(live)
    }
}

fn newest_at(changes: &[Change], at: i64) -> Option<Change> {
    let through = changes.partition_point(|change| change.main() <= at);
    through
        .checked_sub(1)
        .and_then(|index| changes.get(index).copied())
}

/// What an apply batch changed of one key, relative to the committed
/// [`KeyHistory`] (absent for a key new to the index): the number of
/// committed older changes its compactions dropped from the front, the
/// changes it appended, and the live version it leaves. A delta rather than
/// a copy, so a write to a key with a long history costs no copy of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingKey {
    dropped: usize,
    appended: Vec<Change>,
    live: Option<LiveVersion>,
}

impl PendingKey {
    /// An unchanged key.
    pub fn of(committed: Option<&KeyHistory>) -> Self {
        PendingKey {
            dropped: 0,
            appended: Vec::new(),
            live: committed.and_then(|history| history.live),
        }
    }

    pub fn state<'a>(&'a self, committed: Option<&'a KeyHistory>) -> KeyState<'a> {
        let earlier = committed.map_or(&[][..], KeyHistory::earlier);
        KeyState {
            older: earlier.get(self.dropped..).unwrap_or(&[]),
            newer: &self.appended,
            live: self.live,
        }
    }

    pub fn put(&mut self, live: LiveVersion) {
        if let Some(previous) = self.live.replace(live) {
            self.appended.push(previous.change());
        }
    }

    pub fn tombstone(&mut self, change: Change) {
        if let Some(previous) = self.live.take() {
            self.appended.push(previous.change());
        }
        self.appended.push(change);
    }

    /// Drops the `count` oldest changes (never the live put, which a
    /// compaction keeps).
    pub fn drop_oldest(&mut self, count: usize, committed: Option<&KeyHistory>) {
        let committed_left = committed
            .map_or(0, |history| history.earlier().len())
            .saturating_sub(self.dropped);
        let from_committed = count.min(committed_left);
        self.dropped += from_committed;
        let from_appended = (count - from_committed).min(self.appended.len());
        self.appended.drain(..from_appended);
    }
}

/// Makes a batch's change of `key` part of the committed index; the caller
/// holds the store's exclusive lock.
pub(crate) fn apply_pending(index: &mut Index, key: IndexKey, pending: PendingKey) {
    let PendingKey {
        dropped,
        mut appended,
        live,
    } = pending;
    // One search of the B-tree per key: the entry serves the read, the
    // update and the removal.
    let mut entry = match index.entry(key) {
        std::collections::btree_map::Entry::Vacant(vacant) => {
            // Most keys gain one older change per batch: no spare capacity
            // for the first ones (later growth doubles as usual).
            appended.shrink_to_fit();
            let history = KeyHistory {
                live,
                earlier: (!appended.is_empty()).then(|| Box::new(appended)),
            };
            if !history.is_empty() {
                vacant.insert(history);
            }
            return;
        }
        std::collections::btree_map::Entry::Occupied(occupied) => occupied,
    };
    let history = entry.get_mut();
    if appended.len() < appended.capacity() && history.earlier().is_empty() {
        appended.shrink_to_fit();
    }
    history.live = live;
    if dropped > 0 || !appended.is_empty() {
        let earlier = history.earlier.get_or_insert_with(Default::default);
        earlier.drain(..dropped.min(earlier.len()));
        if earlier.is_empty() {
            **earlier = appended;
        } else {
            earlier.extend_from_slice(&appended);
        }
        if earlier.is_empty() {
            history.earlier = None;
        } else if dropped > 0 && earlier.capacity() > 4 * earlier.len() {
            earlier.shrink_to_fit();
        }
    }
    if history.is_empty() {
        entry.remove();
    }
}

/// What [`rebuild`] found in a keyspace tree's revision records.
pub(crate) struct Rebuilt {
    pub index: Index,
    /// The highest main revision among them.
    pub last_main: Option<i64>,
    /// Their keys' and values' bytes.
    pub record_bytes: u64,
}

/// The index of a keyspace tree, from one ordered scan of its revision
/// records, with their highest main revision and their size.
pub(crate) fn rebuild(tree: &sled::Tree) -> Result<Rebuilt> {
    let mut index = Index::new();
    let mut last: Option<Revision> = None;
    let mut record_bytes = 0u64;
    let low = [keys::REVISIONS];
    let high = [keys::REVISIONS + 1];
    for entry in tree.range(&low[..]..&high[..]) {
        let (raw_key, value) = entry?;
        record_bytes += (raw_key.len() + value.len()) as u64;
        let revision = keys::parse_revision_key(&raw_key)?;
        if last.is_some_and(|last| last >= revision) || revision.main < 1 {
            return Err(corrupt(format!("revision record {revision:?} out of order")));
        }
        last = Some(revision);
        let record = keys::decode_record(&value)?;
        let change = Change::new(revision, record.kind())?;
        match index.get_mut(record.key) {
            Some(history) => history.push(change, record.put)?,
            None => {
                let mut history = KeyHistory::default();
                history.push(change, record.put)?;
                index.insert(IndexKey::new(record.key), history);
            }
        }
    }
    // Collecting sorted entries builds the tree bottom-up with full nodes,
    // which take ~40 % less memory than the half-full ones of random inserts.
    let index: Index = index
        .into_iter()
        .map(|(key, mut history)| {
            if let Some(earlier) = &mut history.earlier {
                earlier.shrink_to_fit();
            }
            (key, history)
        })
        .collect();
    Ok(Rebuilt {
        index,
        last_main: last.map(|last| last.main),
        record_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};

    #[test]
    fn index_keys_order_as_their_bytes_and_find_searches_inline_and_boxed_keys() {
        // Every key up to 3 bytes over bytes that stress the padding (0, 1,
        // 255), and keys around the inline limit sharing long prefixes.
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = keys
                .iter()
                .filter(|key| key.len() == keys.last().map_or(0, Vec::len))
                .flat_map(|key| [0u8, 1, 255].map(|byte| [key.as_slice(), &[byte]].concat()))
                .collect();
            keys.extend(longer);
        }
        for len in 20..=24 {
            for last in [0u8, 7, 255] {
                let mut key = vec![9u8; len];
                key[len - 1] = last;
                keys.push(key.clone());
                key[8] = 0;
                keys.push(key);
            }
        }
        let index_keys: Vec<IndexKey> = keys.iter().map(|key| IndexKey::new(key)).collect();
        for (a, a_key) in keys.iter().zip(&index_keys) {
            for (b, b_key) in keys.iter().zip(&index_keys) {
                assert_eq!(a_key.cmp(b_key), a.cmp(b), "{a:?} against {b:?}");
            }
        }
        let map: BTreeMap<IndexKey, usize> = index_keys.into_iter().zip(0..).collect();
        for (position, key) in keys.iter().enumerate() {
            assert_eq!(find(&map, key), Some(&position), "{key:?}");
            assert_eq!(find(&map, &[key.as_slice(), &[3]].concat()), None);
        }
    }

    /// Counts the bytes the test binary holds, for [`index_memory_per_key`].
    struct Counting;

    static HELD: AtomicIsize = AtomicIsize::new(0);
    /// The same, in glibc malloc chunks (8-byte header, 16-byte rounding,
    /// 32 bytes at least).
    static CHUNKS: AtomicIsize = AtomicIsize::new(0);

    fn chunk(layout: Layout) -> isize {
        ((layout.size() + 8 + 15) & !15).max(32) as isize
    }

    // SAFETY: forwards to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
            CHUNKS.fetch_add(chunk(layout), Ordering::Relaxed);
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            CHUNKS.fetch_sub(chunk(layout), Ordering::Relaxed);
            // SAFETY: the caller's contract is the system allocator's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Bytes per key (requested, and in malloc chunks) of an index of 1M
    /// keys, short like the mvcc bench's and long like Kubernetes', inserted
    /// in scrambled order as a live server sees them, then rebuilt as `open`
    /// builds it, then with a second version each.
    /// `cargo test --release -p keel-mvcc --lib index_memory -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn index_memory_per_key() {
        const KEYS: u64 = 1_000_000;
        let short = |i: u64| format!("/d{:04}/k{:06}", i / 1000, i % 1000).into_bytes();
        let long =
            |i: u64| format!("/registry/pods/namespace-{:04}/pod-{:06}", i / 1000, i % 1000).into_bytes();
        type Shape<'a> = (&'a str, &'a dyn Fn(u64) -> Vec<u8>);
        let shapes: [Shape<'_>; 2] = [("14-byte", &short), ("41-byte", &long)];
        let held = || (HELD.load(Ordering::Relaxed), CHUNKS.load(Ordering::Relaxed));
        let since = |(held, chunks): (isize, isize), (held_then, chunks_then): (isize, isize)| {
            let per_key = |bytes: isize| bytes as f64 / KEYS as f64;
            format!(
                "{:.1} ({:.1} in chunks)",
                per_key(held - held_then),
                per_key(chunks - chunks_then)
            )
        };
        for (shape, key) in shapes {
            let start = held();
            let mut index = Index::new();
            for i in 0..KEYS {
                // 7919 is coprime with 10^6: a permutation of the keys.
                let scrambled = i * 7919 % KEYS;
                let mut pending = PendingKey::of(None);
                pending.put(live(i as i64 + 2, i as i64 + 2, 1));
                apply_pending(&mut index, IndexKey::new(&key(scrambled)), pending);
            }
            let incremental = since(held(), start);
            let mut index: Index = std::mem::take(&mut index).into_iter().collect();
            let rebuilt = since(held(), start);
            let keys: Vec<IndexKey> = index.keys().cloned().collect();
            let before_versions = held();
            for (i, key) in keys.iter().enumerate() {
                let mut pending = PendingKey::of(index.get(key));
                pending.put(live(KEYS as i64 + i as i64 + 2, 2, 2));
                apply_pending(&mut index, key.clone(), pending);
            }
            let second_version = since(held(), before_versions);
            drop(keys);
            println!(
                "index bytes/key, {shape} keys: {incremental} inserted in scrambled order, {rebuilt} \
                 rebuilt, +{second_version} for a second version"
            );
            assert_eq!(index.len() as u64, KEYS);
        }
    }

    fn meta(create: i64, version: i64) -> PutMeta {
        PutMeta {
            create_revision: create,
            version,
            lease: 0,
        }
    }

    fn put(main: i64) -> Change {
        Change::new(Revision::new(main, 0), ChangeKind::Put).expect("change")
    }

    fn tombstone(main: i64) -> Change {
        Change::new(Revision::new(main, 0), ChangeKind::Tombstone).expect("change")
    }

    fn live(main: i64, create: i64, version: i64) -> LiveVersion {
        LiveVersion::new(Revision::new(main, 0), meta(create, version)).expect("live")
    }

    #[test]
    fn the_index_entry_is_compact() {
        assert_eq!(std::mem::size_of::<Change>(), 12);
        assert_eq!(std::mem::size_of::<Option<LiveVersion>>(), 40);
        assert_eq!(std::mem::size_of::<KeyHistory>(), 48);
    }

    #[test]
    fn changes_keep_revision_and_kind() {
        let change = Change::new(Revision::new(7, 3), ChangeKind::Tombstone).expect("change");
        assert_eq!(change.revision(), Revision::new(7, 3));
        assert_eq!(change.kind(), ChangeKind::Tombstone);
        assert!(Change::new(Revision::new(7, 1 << 31), ChangeKind::Put).is_err());
        assert!(Change::new(Revision::new(-1, 0), ChangeKind::Put).is_err());
        assert!(LiveVersion::new(Revision::new(7, 0), meta(7, 0)).is_err());
    }

    #[test]
    fn reads_at_a_revision_follow_generations() {
        // put@2 put@3 del@4 put@6, as a committed history plus a batch delta.
        let mut committed = KeyHistory::default();
        committed.push(put(2), Some(meta(2, 1))).expect("push");
        committed.push(put(3), Some(meta(2, 2))).expect("push");
        let mut pending = PendingKey::of(Some(&committed));
        pending.tombstone(tombstone(4));
        pending.put(live(6, 6, 1));
        let state = pending.state(Some(&committed));
        let expected = [None, None, Some(2), Some(3), None, None, Some(6), Some(6)];
        for (at, expected) in expected.iter().enumerate() {
            let got = state.put_at(at as i64).map(|revision| revision.main);
            assert_eq!(got, *expected, "at {at}");
        }
        let mains: Vec<i64> = state.changes().map(Change::main).collect();
        assert_eq!(mains, vec![2, 3, 4, 6]);
        assert_eq!(committed.state().put_at(9).map(|r| r.main), Some(3));
        // Compaction at 4 drops put@2, put@3 and del@4.
        pending.drop_oldest(3, Some(&committed));
        let mains: Vec<i64> = pending
            .state(Some(&committed))
            .changes()
            .map(Change::main)
            .collect();
        assert_eq!(mains, vec![6]);
        let mut index = Index::new();
        index.insert(IndexKey::new(b"k"), committed);
        apply_pending(&mut index, IndexKey::new(b"k"), pending);
        let history = index.get(&b"k"[..]).expect("kept");
        assert!(history.earlier.is_none());
        assert_eq!(history.live, Some(live(6, 6, 1)));
    }

    #[test]
    fn a_key_with_nothing_left_leaves_the_index() {
        let mut committed = KeyHistory::default();
        committed.push(put(2), Some(meta(2, 1))).expect("push");
        committed.push(tombstone(3), None).expect("push");
        assert!(committed.clone().push(tombstone(4), None).is_err());
        let mut index = Index::new();
        index.insert(IndexKey::new(b"k"), committed.clone());
        let mut pending = PendingKey::of(Some(&committed));
        pending.drop_oldest(2, Some(&committed));
        assert!(pending.state(Some(&committed)).is_empty());
        apply_pending(&mut index, IndexKey::new(b"k"), pending);
        assert!(index.is_empty());
        // A key created and compacted away inside one batch never enters it.
        let mut pending = PendingKey::of(None);
        pending.put(live(5, 5, 1));
        pending.tombstone(tombstone(6));
        pending.drop_oldest(2, None);
        apply_pending(&mut index, IndexKey::new(b"n"), pending);
        assert!(index.is_empty());
    }
}
