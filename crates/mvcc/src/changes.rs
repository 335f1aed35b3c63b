//! The change feed: every committed change as an etcd watch event, for the
//! watchers a member serves. Recent changes come from memory
//! ([`RecentChanges`]), older ones from the revision records; a watcher
//! pulls them with [`crate::MvccStore::changes_after`] and learns of new
//! commits through [`crate::MvccStore::subscribe_revisions`].
//!
//! Invariants owned here:
//! - [`RecentChanges`] holds every change with a main revision in
//!   `[first_revision, current]` and nothing else, in revision order (main,
//!   then sub, which is the order of the changes inside a txn). It is
//!   changed only while the keyspace lock is held exclusively (a commit
//!   appends the batch's records; a compaction forgets what it covers; a
//!   snapshot install empties it and moves `first_revision` past the
//!   installed revision), so a reader holding the lock shared sees changes
//!   and store revision that agree, and the same history from memory as
//!   from disk.
//! - A pull returns whole revisions only: every event of a txn, or none;
//!   its [`PullBudget`] bounds it (the lock it holds, the response it makes).
//!   It starts at `after + 1` and ends at the `through_revision` it
//!   reports, so successive pulls from `through_revision` neither skip nor
//!   repeat a change.
//! - A pull that starts below the compact revision fails with
//!   [`MvccError::Compacted`] (etcd cancels such a watcher; a start exactly
//!   at the compact revision is served, as etcd serves it).
//! - Memory is bounded: the recent changes keep at most
//!   [`RECENT_CHANGES_MAX_EVENTS`] events and [`RECENT_CHANGES_MAX_BYTES`]
//!   bytes of keys and encoded events, dropping the oldest whole revisions first.

use std::collections::VecDeque;

use bytes::Bytes;
use keel_api::encoded_watch::EncodedEvent;
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::{event::EventType, Event};
use keel_storage::sled::IVec;

use crate::error::Result;
use crate::keys::{self, ChangeKind, Revision};

/// At most this many events stay in memory for watchers.
pub const RECENT_CHANGES_MAX_EVENTS: usize = 16 * 1024;
/// At most this many bytes of keys and encoded events stay in memory for
/// watchers.
pub const RECENT_CHANGES_MAX_BYTES: usize = 16 * 1024 * 1024;

/// One committed change as watchers receive it: where it is in history,
/// what it did to which key (to match watchers), and the watch event,
/// encoded once for every watcher that gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub revision: i64,
    pub kind: EventType,
    pub key: Bytes,
    pub encoded: EncodedEvent,
}

impl ChangeEvent {
    fn new(event: Event) -> ChangeEvent {
        let encoded = EncodedEvent::encode(&event);
        let kind = EventType::try_from(event.r#type).unwrap_or(EventType::Put);
        let (revision, key) = event.kv.map_or((0, Vec::new()), |kv| (kv.mod_revision, kv.key));
        ChangeEvent {
            revision,
            kind,
            key: Bytes::from(key),
            encoded,
        }
    }

    /// The watch event (a decoding of the bytes this member encoded).
    pub fn decode(&self) -> std::result::Result<Event, prost::DecodeError> {
        self.encoded.decode()
    }

    /// What holding it in memory costs, roughly.
    fn held_bytes(&self) -> usize {
        self.key.len() + self.encoded.len()
    }
}

/// What one pull of the feed found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    /// The matching events of revisions `after + 1 ..= through_revision`,
    /// in revision order.
    pub events: Vec<ChangeEvent>,
    /// The last revision the pull covered (the store revision when it
    /// reached the end of the history).
    pub through_revision: i64,
}

impl Changes {
    /// The events, decoded.
    pub fn decoded_events(&self) -> std::result::Result<Vec<Event>, prost::DecodeError> {
        self.events.iter().map(ChangeEvent::decode).collect()
    }
}

/// The last committed changes, in revision order.
pub(crate) struct RecentChanges {
    /// Every change with a main revision at or above this is held.
    first_revision: i64,
    events: VecDeque<ChangeEvent>,
    bytes: usize,
}

impl RecentChanges {
    /// Holds nothing yet: every change after `current` will be held.
    pub fn starting_after(current: i64) -> Self {
        RecentChanges {
            first_revision: current.saturating_add(1),
            events: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Appends a committed batch's events (see [`events_of_records`]), in
    /// revision order, then drops the oldest revisions beyond the bounds.
    pub fn append(&mut self, events: Vec<ChangeEvent>) {
        for event in events {
            self.bytes += event.held_bytes();
            self.events.push_back(event);
        }
        while self.events.len() > RECENT_CHANGES_MAX_EVENTS || self.bytes > RECENT_CHANGES_MAX_BYTES {
            let Some(oldest) = self.events.front().map(|event| event.revision) else {
                break;
            };
            while self.events.front().is_some_and(|event| event.revision == oldest) {
                if let Some(dropped) = self.events.pop_front() {
                    self.bytes -= dropped.held_bytes();
                }
            }
            self.first_revision = oldest.saturating_add(1);
        }
    }

    /// Forgets the changes at or below a new compact revision: some of them
    /// are gone from disk (`compaction.rs`), and a pull must see the same
    /// history whether it reads memory or disk.
    pub fn forget_through(&mut self, compacted: i64) {
        while self
            .events
            .front()
            .is_some_and(|event| event.revision <= compacted)
        {
            if let Some(dropped) = self.events.pop_front() {
                self.bytes -= dropped.held_bytes();
            }
        }
        self.first_revision = self.first_revision.max(compacted.saturating_add(1));
    }

    /// Whether every change from `revision` on is held.
    pub fn holds_from(&self, revision: i64) -> bool {
        revision >= self.first_revision
    }

    /// The held events of revisions `> after`, in order.
    pub fn after(&self, after: i64) -> impl Iterator<Item = &ChangeEvent> {
        let start = self.events.partition_point(|event| event.revision <= after);
        self.events.range(start..)
    }
}

/// The events of a batch's new records (revision key, record bytes).
pub(crate) fn events_of_records<'a>(
    records: impl Iterator<Item = (&'a IVec, &'a IVec)>,
) -> Result<Vec<ChangeEvent>> {
    records
        .map(|(key, value)| {
            Ok(event_of(
                keys::parse_revision_key(key)?,
                &keys::decode_record(value)?,
            ))
        })
        .collect()
}

/// The watch event a change record stands for.
pub(crate) fn event_of(revision: Revision, record: &keys::Record<'_>) -> ChangeEvent {
    let kind = match record.kind() {
        ChangeKind::Put => EventType::Put,
        ChangeKind::Tombstone => EventType::Delete,
    };
    ChangeEvent::new(Event {
        r#type: kind as i32,
        kv: Some(record.to_kv(revision)),
        prev_kv: None,
    })
}

/// How much one pull may take: it stops at the first revision boundary
/// after it has looked at `scanned_events` changes or taken
/// `matched_bytes` bytes of encoded events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullBudget {
    pub scanned_events: usize,
    pub matched_bytes: usize,
}

/// Collects the events of `source` (in revision order) that `selection`
/// matches, within `budget`; returns them and the last revision it
/// completed when the budget stopped it (`None` when it reached the end
/// of `source`).
pub(crate) fn take_whole_revisions(
    source: impl Iterator<Item = Result<ChangeEvent>>,
    selection: &KeySelection<'_>,
    budget: PullBudget,
) -> Result<(Vec<ChangeEvent>, Option<i64>)> {
    let mut taken = Vec::new();
    let mut taken_bytes = 0usize;
    let mut current: Option<i64> = None;
    for (scanned, event) in source.enumerate() {
        let event = event?;
        let revision = event.revision;
        if current != Some(revision) {
            if let Some(finished) = current {
                if scanned >= budget.scanned_events || taken_bytes >= budget.matched_bytes {
                    return Ok((taken, Some(finished)));
                }
            }
            current = Some(revision);
        }
        if selection.contains(&event.key) {
            taken_bytes += event.encoded.len();
            taken.push(event);
        }
    }
    Ok((taken, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    use keel_api::mvccpb::KeyValue;

    fn put_of(revision: i64, key: &str, value_bytes: usize) -> Result<ChangeEvent> {
        Ok(ChangeEvent::new(Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![0; value_bytes],
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }))
    }

    fn put(revision: i64, key: &str) -> Result<ChangeEvent> {
        put_of(revision, key, 0)
    }

    #[test]
    fn a_pull_stops_only_between_revisions() {
        let source = vec![put(2, "a"), put(3, "a"), put(3, "b"), put(3, "c"), put(4, "a")];
        let all = KeySelection::Range {
            start: b"",
            end: None,
        };
        let budget = PullBudget {
            scanned_events: 2,
            matched_bytes: usize::MAX,
        };
        let (events, through) = take_whole_revisions(source.into_iter(), &all, budget).expect("pull");
        assert_eq!(events.len(), 4, "the txn at revision 3 is taken whole");
        assert_eq!(through, Some(3), "stopped after revision 3");
    }

    const LARGE: PullBudget = PullBudget {
        scanned_events: 10,
        matched_bytes: usize::MAX,
    };

    #[test]
    fn a_pull_stops_after_its_byte_budget_at_a_revision_boundary() {
        let big = |revision: i64| put_of(revision, "a", 100);
        let source = vec![big(2), big(3), big(3), big(4)];
        let all = KeySelection::Range {
            start: b"",
            end: None,
        };
        let budget = PullBudget {
            scanned_events: 100,
            matched_bytes: 150,
        };
        let (events, through) = take_whole_revisions(source.into_iter(), &all, budget).expect("pull");
        assert_eq!((events.len(), through), (3, Some(3)));
    }

    #[test]
    fn a_pull_covers_unmatched_revisions_too() {
        let source = vec![put(2, "a"), put(3, "b")];
        let (events, through) =
            take_whole_revisions(source.into_iter(), &KeySelection::Single(b"z"), LARGE).expect("pull");
        assert!(events.is_empty());
        assert_eq!(through, None, "reached the end");
    }
}
