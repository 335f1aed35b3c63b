//! The pending writes of an apply batch, each with its per-request undo log:
//! [`Overlay`] for raw tree entries (revision records, meta, app meta) and
//! [`IndexOverlay`] for the in-memory index ([`PendingKey`] deltas).
//!
//! Invariant: between `begin_request` and `finish_request` both overlays
//! remember the first previous state of everything the request touched, so
//! `roll_back_request` restores both exactly (a failed request leaves no
//! trace in the batch, neither on disk nor in the index).

use std::collections::BTreeMap;
use std::ops::Bound;

use keel_storage::sled::{self, IVec};

use crate::error::Result;
use crate::index::{IndexKey, KeyHistory, PendingKey};

/// Pending entries with a per-request undo log: while a request runs, the
/// first previous state of every key it touches is remembered, so a failed
/// request can be rolled back exactly.
struct UndoableMap<K: Ord + Clone, V: Clone> {
    pending: BTreeMap<K, V>,
    undo: Option<BTreeMap<K, Option<V>>>,
}

impl<K: Ord + Clone, V: Clone> Default for UndoableMap<K, V> {
    fn default() -> Self {
        UndoableMap {
            pending: BTreeMap::new(),
            undo: None,
        }
    }
}

impl<K: Ord + Clone, V: Clone> UndoableMap<K, V> {
    /// Records `key`'s pending entry before its first change in the request.
    fn remember_first_touch(&mut self, key: &K) {
        if let Some(undo) = &mut self.undo {
            if !undo.contains_key(key) {
                undo.insert(key.clone(), self.pending.get(key).cloned());
            }
        }
    }

    fn begin_request(&mut self) {
        self.undo = Some(BTreeMap::new());
    }

    fn finish_request(&mut self) {
        self.undo = None;
    }

    fn roll_back_request(&mut self) {
        for (key, previous) in self.undo.take().unwrap_or_default() {
            match previous {
                Some(previous) => {
                    self.pending.insert(key, previous);
                }
                None => {
                    self.pending.remove(&key);
                }
            }
        }
    }
}

/// The pending writes of an apply batch: `Some(value)` sets, `None` removes.
#[derive(Default)]
pub(crate) struct Overlay {
    map: UndoableMap<IVec, Option<IVec>>,
}

impl Overlay {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.write(key.into(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.write(key.into(), None);
    }

    fn write(&mut self, key: IVec, value: Option<IVec>) {
        self.map.remember_first_touch(&key);
        self.map.pending.insert(key, value);
    }

    pub fn is_empty(&self) -> bool {
        self.map.pending.is_empty()
    }

    /// Starts recording what the next request changes.
    pub fn begin_request(&mut self) {
        self.map.begin_request();
    }

    /// Keeps the request's changes.
    pub fn finish_request(&mut self) {
        self.map.finish_request();
    }

    /// Restores the overlay to what it was at [`Overlay::begin_request`].
    pub fn roll_back_request(&mut self) {
        self.map.roll_back_request();
    }

    pub(crate) fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.map.pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }

    /// How much committing the overlay changes the bytes (keys plus values)
    /// of `tree`'s entries: each pending entry's size minus the size of the
    /// entry it replaces, looked up in `tree` unless `new_in_tree` says the
    /// key cannot be there yet (a new revision record).
    pub fn size_change(&self, tree: &sled::Tree, new_in_tree: impl Fn(&[u8]) -> bool) -> Result<i64> {
        let mut change = 0i64;
        for (key, value) in &self.map.pending {
            if let Some(value) = value {
                change += (key.len() + value.len()) as i64;
            }
            if !new_in_tree(&key[..]) {
                if let Some(previous) = tree.get(key)? {
                    change -= (key.len() + previous.len()) as i64;
                }
            }
        }
        Ok(change)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Option<IVec>> {
        self.map.pending.get(key)
    }

    pub fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> std::collections::btree_map::Range<'_, IVec, Option<IVec>> {
        self.map
            .pending
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
    }
}

/// The pending index changes of an apply batch, by user key.
#[derive(Default)]
pub(crate) struct IndexOverlay {
    map: UndoableMap<IndexKey, PendingKey>,
}

impl IndexOverlay {
    pub fn get(&self, key: &[u8]) -> Option<&PendingKey> {
        crate::index::find(&self.map.pending, key)
    }

    /// The pending entry of `key` to change, starting from the committed
    /// `committed` on first touch in the batch.
    pub fn entry(&mut self, key: &[u8], committed: Option<&KeyHistory>) -> &mut PendingKey {
        let key = IndexKey::new(key);
        self.map.remember_first_touch(&key);
        self.map
            .pending
            .entry(key)
            .or_insert_with(|| PendingKey::of(committed))
    }

    pub fn is_empty(&self) -> bool {
        self.map.pending.is_empty()
    }

    pub fn begin_request(&mut self) {
        self.map.begin_request();
    }

    pub fn finish_request(&mut self) {
        self.map.finish_request();
    }

    pub fn roll_back_request(&mut self) {
        self.map.roll_back_request();
    }

    /// Pending entries with keys in `[start, end)` (`None` = unbounded).
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> std::collections::btree_map::Range<'_, IndexKey, PendingKey> {
        key_range(&self.map.pending, start, end)
    }

    pub fn into_pending(self) -> BTreeMap<IndexKey, PendingKey> {
        self.map.pending
    }
}

/// `map`'s entries with keys in `[start, end)`; empty (not a panic) when
/// `end <= start`.
pub(crate) fn key_range<'a, V>(
    map: &'a BTreeMap<IndexKey, V>,
    start: &[u8],
    end: Option<&[u8]>,
) -> std::collections::btree_map::Range<'a, IndexKey, V> {
    let upper = match end {
        Some(end) if end <= start => Bound::Excluded(start),
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    map.range::<[u8], _>((Bound::Included(start), upper))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::LiveVersion;
    use crate::keys::{PutMeta, Revision};

    #[test]
    fn rolled_back_requests_leave_the_overlay_as_before() {
        let mut overlay = Overlay::default();
        overlay.insert(&b"a"[..], &b"1"[..]);
        overlay.begin_request();
        overlay.insert(&b"a"[..], &b"2"[..]);
        overlay.insert(&b"a"[..], &b"3"[..]);
        overlay.remove(&b"b"[..]);
        overlay.roll_back_request();
        let pending: Vec<_> = overlay
            .map
            .pending
            .iter()
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        assert_eq!(pending, vec![(b"a".to_vec(), Some(IVec::from(&b"1"[..])))]);
    }

    #[test]
    fn rolled_back_requests_leave_the_index_overlay_as_before() {
        let live = |main| {
            let meta = PutMeta {
                create_revision: 2,
                version: 1,
                lease: 0,
            };
            LiveVersion::new(Revision::new(main, 0), meta).expect("live")
        };
        let mut overlay = IndexOverlay::default();
        overlay.entry(b"a", None).put(live(2));
        overlay.begin_request();
        overlay.entry(b"a", None).put(live(3));
        overlay.entry(b"b", None).put(live(3));
        overlay.roll_back_request();
        assert!(overlay.get(b"b").is_none());
        let state = overlay.get(b"a").expect("a").state(None);
        assert_eq!(state.live(), Some(live(2)));
        assert_eq!(state.changes().count(), 1);
        assert_eq!(overlay.range(b"a", Some(b"a")).count(), 0);
        assert_eq!(overlay.range(b"b", Some(b"a")).count(), 0);
        assert_eq!(overlay.range(b"a", None).count(), 1);
    }
}
