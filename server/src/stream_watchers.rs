//! The watchers of one `Watch` stream, by id and by the keys they watch,
//! and which of them want which events of a pull of the change feed.
//!
//! Invariant: `single_key` lists exactly the watchers of one key (an empty
//! `range_end`), under that key; every insert and remove goes through
//! [`StreamWatchers`], which keeps it in step with `by_id`. So after a
//! commit a stream finds the single-key watchers of an event's key with one
//! lookup, instead of testing each of them against every event (etcd keeps
//! an interval tree of its watchers for the same reason); watchers of
//! ranges and prefixes test each event.

use std::collections::{BTreeMap, HashMap};

use keel_api::key_range::KeySelection;
use keel_api::mvccpb::event::EventType;
use keel_mvcc::{ChangeEvent, Changes};

pub struct Watcher {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// The last revision whose changes this watcher has been given (or
    /// decided it need not be given).
    pub delivered_through: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl Watcher {
    pub fn watches_one_key(&self) -> bool {
        self.range_end.is_empty()
    }

    fn passes_filters(&self, event: &ChangeEvent) -> bool {
        match event.kind {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        }
    }

    pub fn wants(&self, event: &ChangeEvent) -> bool {
        self.passes_filters(event)
            && KeySelection::from_request(&self.key, &self.range_end).contains(&event.key)
    }
}

#[derive(Default)]
pub struct StreamWatchers {
    by_id: BTreeMap<i64, Watcher>,
    single_key: HashMap<Vec<u8>, Vec<i64>>,
}

impl StreamWatchers {
    pub fn contains(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Watcher> {
        self.by_id.get(&id)
    }

    pub fn insert(&mut self, id: i64, watcher: Watcher) {
        self.remove(id);
        if watcher.watches_one_key() {
            self.single_key.entry(watcher.key.clone()).or_default().push(id);
        }
        self.by_id.insert(id, watcher);
    }

    pub fn remove(&mut self, id: i64) -> Option<Watcher> {
        let watcher = self.by_id.remove(&id)?;
        if watcher.watches_one_key() {
            if let Some(ids) = self.single_key.get_mut(&watcher.key) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.single_key.remove(&watcher.key);
                }
            }
        }
        Some(watcher)
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &Watcher)> {
        self.by_id.iter().map(|(id, watcher)| (*id, watcher))
    }

    /// Records that watcher `id` has every change through `revision`.
    pub fn delivered(&mut self, id: i64, revision: i64) {
        if let Some(watcher) = self.by_id.get_mut(&id) {
            watcher.delivered_through = watcher.delivered_through.max(revision);
        }
    }

    /// The watchers still behind `current`, grouped by the revision they
    /// have been given changes through (watchers in one group want the
    /// same pull of the feed), each group in id order.
    pub fn behind(&self, current: i64) -> BTreeMap<i64, Vec<i64>> {
        let mut groups: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (id, watcher) in &self.by_id {
            if watcher.delivered_through < current {
                groups.entry(watcher.delivered_through).or_default().push(*id);
            }
        }
        groups
    }

    /// For the single-key watchers at `after` (see [`Self::behind`]), the
    /// indexes into `changes.events` of the events each wants, in order;
    /// watchers that want none are absent. A watcher of a range or prefix
    /// is not listed: it tests each event itself ([`Watcher::wants`]), as
    /// an index would not spare it that.
    pub fn single_key_matches(&self, after: i64, changes: &Changes) -> HashMap<i64, Vec<usize>> {
        let mut matches: HashMap<i64, Vec<usize>> = HashMap::new();
        if self.single_key.is_empty() {
            return matches;
        }
        for (index, event) in changes.events.iter().enumerate() {
            for id in self.single_key.get(event.key.as_ref()).into_iter().flatten() {
                let at_after = self
                    .by_id
                    .get(id)
                    .filter(|watcher| watcher.delivered_through == after);
                if at_after.is_some_and(|watcher| watcher.passes_filters(event)) {
                    matches.entry(*id).or_default().push(index);
                }
            }
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::encoded_watch::EncodedEvent;

    fn watcher(key: &str, range_end: &str, delivered_through: i64) -> Watcher {
        Watcher {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            delivered_through,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
        }
    }

    fn changes(events: &[(&str, EventType)]) -> Changes {
        Changes {
            events: events
                .iter()
                .enumerate()
                .map(|(index, (key, kind))| ChangeEvent {
                    revision: 10 + index as i64,
                    kind: *kind,
                    key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                    encoded: EncodedEvent::default(),
                })
                .collect(),
            through_revision: 10 + events.len() as i64,
        }
    }

    #[test]
    fn each_watcher_of_a_group_wants_exactly_the_events_of_its_keys() {
        let mut watchers = StreamWatchers::default();
        watchers.insert(1, watcher("a", "", 9));
        watchers.insert(2, watcher("a", "", 9));
        watchers.insert(3, watcher("b", "c", 9)); // the range [b, c)
        watchers.insert(4, watcher("a", "\0", 9)); // every key from a
        watchers.insert(5, watcher("bz", "", 9));
        watchers.insert(6, watcher("a", "", 5)); // another group
        watchers.insert(
            7,
            Watcher {
                no_delete: true,
                ..watcher("bz", "", 9)
            },
        );
        let pull = changes(&[
            ("a", EventType::Put),
            ("bz", EventType::Delete),
            ("c", EventType::Put),
            ("b", EventType::Put),
        ]);
        let groups = watchers.behind(20);
        assert_eq!(groups.get(&9), Some(&vec![1, 2, 3, 4, 5, 7]));
        assert_eq!(groups.get(&5), Some(&vec![6]));
        let mut listed: Vec<(i64, Vec<usize>)> = watchers.single_key_matches(9, &pull).into_iter().collect();
        listed.sort();
        assert_eq!(listed, vec![(1, vec![0]), (2, vec![0]), (5, vec![1])]);
        let ranged_wants = |id: i64| -> Vec<usize> {
            let watcher = watchers.get(id).expect("a watcher");
            (0..pull.events.len())
                .filter(|index| watcher.wants(&pull.events[*index]))
                .collect()
        };
        assert_eq!(ranged_wants(3), vec![1, 3]);
        assert_eq!(ranged_wants(4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_removed_watcher_leaves_the_index_and_its_key_mates_stay() {
        let mut watchers = StreamWatchers::default();
        watchers.insert(1, watcher("a", "", 0));
        watchers.insert(2, watcher("a", "", 0));
        watchers.insert(3, watcher("a", "b", 0));
        assert!(watchers.remove(1).is_some());
        assert!(watchers.remove(3).is_some());
        assert!(watchers.remove(3).is_none());
        let pull = changes(&[("a", EventType::Put)]);
        let matches = watchers.single_key_matches(0, &pull);
        assert_eq!(matches.into_iter().collect::<Vec<_>>(), vec![(2, vec![0])]);
        watchers.delivered(2, 11);
        assert!(watchers.behind(11).is_empty());
        assert!(!watchers.contains(1));
    }
}
