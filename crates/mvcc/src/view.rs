//! What reads see: the in-memory index for keys and revisions, the sled
//! tree for record bytes. A [`CommittedView`] is the committed state (taken
//! under the store's read lock); a [`BatchView`] lays an apply batch's
//! pending records ([`Overlay`]) and index deltas ([`IndexOverlay`]) over it.
//!
//! Invariant: a [`BatchView`] answers exactly what a [`CommittedView`] would
//! answer after the batch were committed (read-your-writes, scans included,
//! in both directions).

use std::cmp::Ordering;
use std::iter::Peekable;

use keel_storage::sled::{self, IVec};

use crate::error::{MvccError, Result};
use crate::index::{self, Index, IndexKey, KeyHistory, KeyState, PendingKey};
use crate::keys::{self, Revision};
use crate::overlay::{key_range, IndexOverlay, Overlay};

pub(crate) type KeyStates<'a> = Box<dyn Iterator<Item = (&'a [u8], KeyState<'a>)> + 'a>;
pub(crate) type RawEntry = (IVec, IVec);
pub(crate) type RawIter<'a> = Box<dyn Iterator<Item = Result<RawEntry>> + 'a>;

/// A readable keyspace at one revision.
pub(crate) trait View {
    /// The history of `key`, if it has any left.
    fn key_state(&self, key: &[u8]) -> Option<KeyState<'_>>;
    /// The keys with history in `[start, end)` (`None` = unbounded), in key
    /// order or reversed.
    fn key_states(&self, start: &[u8], end: Option<&[u8]>, reverse: bool) -> KeyStates<'_>;
    /// The raw bytes of the record at `revision`.
    fn record(&self, revision: Revision) -> Result<Option<IVec>>;
}

/// The committed index and tree.
#[derive(Clone, Copy)]
pub(crate) struct CommittedView<'a> {
    pub index: &'a Index,
    pub(crate) tree: &'a sled::Tree,
}

impl View for CommittedView<'_> {
    fn key_state(&self, key: &[u8]) -> Option<KeyState<'_>> {
        index::find(self.index, key).map(KeyHistory::state)
    }

    fn key_states(&self, start: &[u8], end: Option<&[u8]>, reverse: bool) -> KeyStates<'_> {
        let entries = key_range(self.index, start, end);
        if reverse {
            Box::new(entries.rev().map(entry_state))
        } else {
            Box::new(entries.map(entry_state))
        }
    }

    fn record(&self, revision: Revision) -> Result<Option<IVec>> {
        Ok(self.tree.get(keys::revision_key(revision))?)
    }
}

fn entry_state<'a>((key, history): (&'a IndexKey, &'a KeyHistory)) -> (&'a [u8], KeyState<'a>) {
    (key.as_slice(), history.state())
}

/// The committed state with an apply batch's pending writes on top.
pub(crate) struct BatchView<'a> {
    pub committed: CommittedView<'a>,
    pub overlay: &'a Overlay,
    pub keys: &'a IndexOverlay,
}

impl BatchView<'_> {
    /// Raw tree entries with keys in `[start, end)`, pending writes included.
    pub fn scan(&self, start: &[u8], end: &[u8]) -> RawIter<'_> {
        if start >= end {
            return Box::new(std::iter::empty());
        }
        let committed = self
            .committed
            .tree
            .range(start..end)
            .map(|entry| entry.map_err(MvccError::from));
        Box::new(RawMerge {
            committed: committed.peekable(),
            pending: self.overlay.range(start, end).peekable(),
        })
    }
}

impl View for BatchView<'_> {
    fn key_state(&self, key: &[u8]) -> Option<KeyState<'_>> {
        batch_key_state(index::find(self.committed.index, key), self.keys.get(key))
    }

    fn key_states(&self, start: &[u8], end: Option<&[u8]>, reverse: bool) -> KeyStates<'_> {
        let committed = key_range(self.committed.index, start, end);
        let pending = self.keys.range(start, end);
        if reverse {
            Box::new(KeyMerge::new(committed.rev(), pending.rev(), true))
        } else {
            Box::new(KeyMerge::new(committed, pending, false))
        }
    }

    fn record(&self, revision: Revision) -> Result<Option<IVec>> {
        let key = keys::revision_key(revision);
        match self.overlay.get(&key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.committed.tree.get(key)?),
        }
    }
}

/// A key's state in an apply batch: its `pending` change in the batch over
/// its `committed` entry, or the committed entry when the batch has not
/// touched it.
pub(crate) fn batch_key_state<'a>(
    committed: Option<&'a KeyHistory>,
    pending: Option<&'a PendingKey>,
) -> Option<KeyState<'a>> {
    match pending {
        Some(pending) => Some(pending.state(committed)).filter(|state| !state.is_empty()),
        None => committed.map(KeyHistory::state),
    }
}

/// Merges committed index entries with pending ones in the same key range;
/// a pending entry is a delta over the committed entry of its key.
struct KeyMerge<'a, C, P>
where
    C: Iterator<Item = (&'a IndexKey, &'a KeyHistory)>,
    P: Iterator<Item = (&'a IndexKey, &'a PendingKey)>,
{
    committed: Peekable<C>,
    pending: Peekable<P>,
    reverse: bool,
}

impl<'a, C, P> KeyMerge<'a, C, P>
where
    C: Iterator<Item = (&'a IndexKey, &'a KeyHistory)>,
    P: Iterator<Item = (&'a IndexKey, &'a PendingKey)>,
{
    fn new(committed: C, pending: P, reverse: bool) -> Self {
        KeyMerge {
            committed: committed.peekable(),
            pending: pending.peekable(),
            reverse,
        }
    }
}

impl<'a, C, P> Iterator for KeyMerge<'a, C, P>
where
    C: Iterator<Item = (&'a IndexKey, &'a KeyHistory)>,
    P: Iterator<Item = (&'a IndexKey, &'a PendingKey)>,
{
    type Item = (&'a [u8], KeyState<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.committed.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((committed, _)), Some((pending, _))) => {
                    let order = committed.cmp(pending);
                    if self.reverse {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            let item = match order {
                Ordering::Less => self.committed.next().map(entry_state),
                Ordering::Equal => {
                    let committed = self.committed.next().map(|(_, history)| history);
                    self.pending
                        .next()
                        .map(|(key, pending)| (key.as_slice(), pending.state(committed)))
                }
                Ordering::Greater => self
                    .pending
                    .next()
                    .map(|(key, pending)| (key.as_slice(), pending.state(None))),
            };
            match item {
                Some((_, state)) if state.is_empty() => continue,
                item => return item,
            }
        }
    }
}

/// Merges a committed tree scan with the overlay's entries in the same
/// range (ascending); the overlay wins on equal keys and its removals hide
/// committed entries.
struct RawMerge<'a, C: Iterator<Item = Result<RawEntry>>> {
    committed: Peekable<C>,
    pending: Peekable<std::collections::btree_map::Range<'a, IVec, Option<IVec>>>,
}

impl<C: Iterator<Item = Result<RawEntry>>> Iterator for RawMerge<'_, C> {
    type Item = Result<RawEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_pending = match (self.committed.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => return self.committed.next(),
                (None, Some(_)) => true,
                (Some(Ok((committed_key, _))), Some((pending_key, _))) => {
                    match committed_key.as_ref().cmp(pending_key.as_ref()) {
                        Ordering::Less => return self.committed.next(),
                        Ordering::Equal => {
                            self.committed.next();
                            true
                        }
                        Ordering::Greater => true,
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
    use crate::index::{Change, LiveVersion};
    use crate::keys::{ChangeKind, PutMeta};

    fn live(main: i64) -> LiveVersion {
        let meta = PutMeta {
            create_revision: main,
            version: 1,
            lease: 0,
        };
        LiveVersion::new(Revision::new(main, 0), meta).expect("live")
    }

    #[test]
    fn merged_raw_scans_see_pending_writes_and_removals() {
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
        let index = Index::new();
        let keys = IndexOverlay::default();
        let view = BatchView {
            committed: CommittedView {
                index: &index,
                tree: &tree,
            },
            overlay: &overlay,
            keys: &keys,
        };
        let scanned: Vec<(Vec<u8>, Vec<u8>)> = view
            .scan(b"a", b"z")
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_>>()
            .expect("scan");
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"old".to_vec()),
            (b"b".to_vec(), b"new".to_vec()),
            (b"c".to_vec(), b"new".to_vec()),
            (b"g".to_vec(), b"old".to_vec()),
            (b"h".to_vec(), b"new".to_vec()),
        ];
        assert_eq!(scanned, expected);
        assert_eq!(view.scan(b"d", b"a").count(), 0);
    }

    #[test]
    fn merged_key_scans_see_pending_keys_both_ways() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let tree = db.open_tree("t").expect("tree");
        let mut index = Index::new();
        for (main, key) in [(2, "a"), (3, "c"), (4, "e")] {
            let mut pending = PendingKey::of(None);
            pending.put(live(main));
            crate::index::apply_pending(&mut index, IndexKey::new(key.as_bytes()), pending);
        }
        let mut keys = IndexOverlay::default();
        keys.entry(b"b", None).put(live(5));
        let tombstone = Change::new(Revision::new(5, 1), ChangeKind::Tombstone).expect("change");
        keys.entry(b"c", index.get(&b"c"[..])).tombstone(tombstone);
        // "e" compacted away entirely inside the batch.
        keys.entry(b"e", index.get(&b"e"[..]))
            .tombstone(Change::new(Revision::new(5, 2), ChangeKind::Tombstone).expect("change"));
        keys.entry(b"e", index.get(&b"e"[..]))
            .drop_oldest(2, index.get(&b"e"[..]));
        let overlay = Overlay::default();
        let view = BatchView {
            committed: CommittedView {
                index: &index,
                tree: &tree,
            },
            overlay: &overlay,
            keys: &keys,
        };
        let listed = |reverse| -> Vec<(Vec<u8>, bool)> {
            view.key_states(b"", None, reverse)
                .map(|(key, state)| (key.to_vec(), state.live().is_some()))
                .collect()
        };
        let forward = listed(false);
        let expected = vec![
            (b"a".to_vec(), true),
            (b"b".to_vec(), true),
            (b"c".to_vec(), false),
        ];
        assert_eq!(forward, expected);
        let mut backward = listed(true);
        backward.reverse();
        assert_eq!(backward, expected);
        assert!(view.key_state(b"e").is_none());
        assert_eq!(
            view.key_state(b"c").and_then(|s| s.put_at(4)),
            Some(Revision::new(3, 0))
        );
        assert_eq!(view.key_states(b"b", Some(b"c"), false).count(), 1);
    }
}
