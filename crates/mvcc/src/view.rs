//! Read access to the raw keyspace, either the committed sled tree alone or
//! the tree with an apply batch's pending writes laid over it
//! ([`Overlay`], which also owns the per-request undo log).
//!
//! Invariant: a [`BatchView`] answers exactly what the tree would answer
//! after the overlay were applied to it (read-your-writes, scans included).

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use sled::IVec;

use crate::error::{MvccError, Result};

pub(crate) type RawEntry = (IVec, IVec);
pub(crate) type RawIter<'a> = Box<dyn Iterator<Item = Result<RawEntry>> + 'a>;
/// Overlay entries in a range: `Some` sets, `None` removes.
type PendingIter<'a> = Box<dyn Iterator<Item = (&'a IVec, &'a Option<IVec>)> + 'a>;

/// A readable raw keyspace.
pub(crate) trait KeyspaceView {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>>;
    /// Entries with keys in `[start, end)`, ascending or descending.
    fn scan(&self, start: &[u8], end: &[u8], reverse: bool) -> RawIter<'_>;
}

impl KeyspaceView for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        Ok(sled::Tree::get(self, key)?)
    }

    fn scan(&self, start: &[u8], end: &[u8], reverse: bool) -> RawIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let entries = self.range(start..end).map(|entry| entry.map_err(MvccError::from));
        if reverse {
            Box::new(entries.rev())
        } else {
            Box::new(entries)
        }
    }
}

/// The pending writes of an apply batch: `Some(value)` sets, `None` removes.
#[derive(Default)]
pub(crate) struct Overlay {
    pending: BTreeMap<IVec, Option<IVec>>,
    /// While a request runs: the overlay's previous entry for every key it
    /// touched (first touch only), so a failed request can be undone.
    undo: Option<BTreeMap<IVec, Option<Option<IVec>>>>,
}

impl Overlay {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.write(key.into(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.write(key.into(), None);
    }

    fn write(&mut self, key: IVec, value: Option<IVec>) {
        let previous = self.pending.insert(key.clone(), value);
        if let Some(undo) = &mut self.undo {
            undo.entry(key).or_insert(previous);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Starts recording what the next request changes.
    pub fn begin_request(&mut self) {
        self.undo = Some(BTreeMap::new());
    }

    /// Keeps the request's changes.
    pub fn finish_request(&mut self) {
        self.undo = None;
    }

    /// Restores the overlay to what it was at [`Overlay::begin_request`].
    pub fn roll_back_request(&mut self) {
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

    pub fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }

    fn range(&self, start: &[u8], end: &[u8]) -> std::collections::btree_map::Range<'_, IVec, Option<IVec>> {
        self.pending
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
    }
}

/// The committed tree with an overlay of pending writes on top.
pub(crate) struct BatchView<'a> {
    pub tree: &'a sled::Tree,
    pub overlay: &'a Overlay,
}

impl KeyspaceView for BatchView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        match self.overlay.pending.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => KeyspaceView::get(self.tree, key),
        }
    }

    fn scan(&self, start: &[u8], end: &[u8], reverse: bool) -> RawIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let committed = self.tree.scan(start, end, reverse);
        let pending: PendingIter<'_> = if reverse {
            Box::new(self.overlay.range(start, end).rev())
        } else {
            Box::new(self.overlay.range(start, end))
        };
        Box::new(Merged {
            committed: committed.peekable(),
            pending: pending.peekable(),
            reverse,
        })
    }
}

/// Merges a committed scan with the overlay's entries in the same range;
/// the overlay wins on equal keys and its removals hide committed entries.
struct Merged<'a, C: Iterator<Item = Result<RawEntry>>> {
    committed: Peekable<C>,
    pending: Peekable<PendingIter<'a>>,
    reverse: bool,
}

impl<C: Iterator<Item = Result<RawEntry>>> Iterator for Merged<'_, C> {
    type Item = Result<RawEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.committed.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.committed.next(),
                (None, Some(_)) => true,
                (Some(Ok((committed_key, _))), Some((pending_key, _))) => {
                    let order = committed_key.as_ref().cmp(pending_key.as_ref());
                    let order = if self.reverse { order.reverse() } else { order };
                    match order {
                        std::cmp::Ordering::Less => return self.committed.next(),
                        std::cmp::Ordering::Equal => {
                            self.committed.next();
                            true
                        }
                        std::cmp::Ordering::Greater => true,
                    }
                }
            };
            if take_pending {
                if let Some((key, Some(value))) = self.pending.next() {
                    return Some(Ok((key.clone(), value.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(view: &dyn KeyspaceView, start: &[u8], end: &[u8], reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        view.scan(start, end, reverse)
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_>>()
            .expect("scan")
    }

    #[test]
    fn merged_scans_see_pending_writes_and_removals_both_ways() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let tree = db.open_tree("t").expect("tree");
        for key in [b"a", b"c", b"e", b"g"] {
            tree.insert(key, &b"old"[..]).expect("insert");
        }
        let mut overlay = Overlay::default();
        overlay.insert(&b"b"[..], &b"new"[..]);
        overlay.insert(&b"c"[..], &b"new"[..]);
        overlay.remove(&b"e"[..]);
        overlay.remove(&b"f"[..]);
        overlay.insert(&b"h"[..], &b"new"[..]);
        let view = BatchView {
            tree: &tree,
            overlay: &overlay,
        };
        let forward = collect(&view, b"a", b"z", false);
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"old".to_vec()),
            (b"b".to_vec(), b"new".to_vec()),
            (b"c".to_vec(), b"new".to_vec()),
            (b"g".to_vec(), b"old".to_vec()),
            (b"h".to_vec(), b"new".to_vec()),
        ];
        assert_eq!(forward, expected);
        let mut backward = collect(&view, b"a", b"z", true);
        backward.reverse();
        assert_eq!(backward, expected);
        assert_eq!(collect(&view, b"b", b"d", false).len(), 2);
        assert!(collect(&view, b"d", b"a", false).is_empty());
        assert_eq!(view.get(b"e").expect("get"), None);
        assert_eq!(view.get(b"c").expect("get").as_deref(), Some(&b"new"[..]));
        assert_eq!(view.get(b"g").expect("get").as_deref(), Some(&b"old"[..]));
    }

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
            .pending
            .iter()
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        assert_eq!(pending, vec![(b"a".to_vec(), Some(IVec::from(&b"1"[..])))]);
    }
}
