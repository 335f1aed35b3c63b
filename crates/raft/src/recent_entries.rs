//! The newest Raft log entries, kept in memory beside the log tree, so the
//! reads that follow every append (the leader's replication of the entry,
//! and every member's apply of it once committed) are served without
//! walking sled's tree and decoding the entry again.
//!
//! Invariant: the cache holds a SUFFIX of the log, a gap-free run of
//! entries that ends at the log's last entry and equals the log tree's
//! records at those indexes (or it is empty). Every change of the log keeps
//! it so, in this order:
//! - an append writes sled first, then adds its entries here before
//!   returning; entries that do not continue the cached run (the first
//!   append after open, after a purge past the log's end, or after a
//!   truncation that emptied the cache) restart it with themselves, which
//!   are the log's new tail;
//! - a truncation drops the cached entries it removed once sled has removed
//!   them (a failed removal leaves both as they were);
//! - a purge drops the entries up to its point, and eviction drops the
//!   oldest, both of which leave a suffix.
//!
//! A read is served here only when its first index is at or past the
//! cache's first: what the cache holds past that is exactly what the log
//! holds. Otherwise it goes to sled, as before. A read racing a change sees
//! the log as it was before or after it: an append's entries appear here
//! only once sled holds them, and a truncation's disappear here just after
//! they did from sled (openraft reads only entries it appended, and never
//! truncates committed ones, which are all that apply reads).

use std::collections::VecDeque;
use std::ops::RangeBounds;
use std::sync::Mutex;

use crate::type_config::Entry;

/// The most entries kept, whatever their size (an entry of a single small
/// write is a few hundred bytes).
const MOST_ENTRIES: usize = 1024;
/// The most encoded bytes kept: at 256 clients an entry packs a hundred
/// writes (~30 KiB), and replication and apply read it back within a few
/// entries; a small bound keeps the memory figures of `benches/` honest.
const MOST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct RecentEntries {
    run: Mutex<CachedRun>,
}

#[derive(Default)]
struct CachedRun {
    /// Entries with consecutive indexes, each with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl CachedRun {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index + 1)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_oldest(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes;
        }
    }
}

impl RecentEntries {
    fn run(&self) -> std::sync::MutexGuard<'_, CachedRun> {
        // The run is consistent after every statement that changes it; a
        // panic elsewhere while the lock was held leaves nothing half done.
        self.run.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records entries the log tree now holds as its new tail (call after
    /// the sled write, before the append returns), with their encoded sizes.
    pub(crate) fn appended(&self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut run = self.run();
        for (entry, bytes) in entries {
            if run.next_index() != Some(entry.log_id.index) {
                run.clear();
            }
            run.bytes += bytes;
            run.entries.push_back((entry, bytes));
        }
        while run.entries.len() > MOST_ENTRIES || (run.bytes > MOST_BYTES && run.entries.len() > 1) {
            run.pop_oldest();
        }
    }

    /// Drops the entries from `first_removed` on (call once the log tree
    /// has removed them).
    pub(crate) fn truncated_from(&self, first_removed: u64) {
        let mut run = self.run();
        while run.next_index().is_some_and(|next| next > first_removed) {
            if let Some((_, bytes)) = run.entries.pop_back() {
                run.bytes -= bytes;
            }
        }
    }

    /// Drops the entries up to and including `index` (purged).
    pub(crate) fn purged_up_to(&self, index: u64) {
        let mut run = self.run();
        while run.first_index().is_some_and(|first| first <= index) {
            run.pop_oldest();
        }
    }

    /// The log's entries in `range` from `start` on (up to the log's end),
    /// if the cache holds the log from `start`; `None` sends the read to sled.
    pub(crate) fn read(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<Entry>> {
        let run = self.run();
        let first = run.first_index()?;
        let skip = usize::try_from(start.checked_sub(first)?).ok()?;
        Some(
            run.entries
                .iter()
                .skip(skip)
                .take_while(|(entry, _)| range.contains(&entry.log_id.index))
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::{CommittedLeaderId, LogId};
    use openraft::EntryPayload;
    use std::collections::BTreeMap;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term), index),
            payload: EntryPayload::Blank,
        }
    }

    fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
            .collect()
    }

    /// Random appends, truncations, purges and evictions against a model
    /// log: every read the cache answers is the model's answer.
    #[test]
    fn every_read_the_cache_answers_is_what_the_log_holds() {
        let cache = RecentEntries::default();
        let mut log: BTreeMap<u64, u64> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next_random = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let mut answered = 0;
        // The log's last index (appended or purged) and its purge point.
        let (mut last, mut purged) = (0u64, 0u64);
        for step in 0..20_000u64 {
            match next_random(10) {
                0..=4 => {
                    let count = 1 + next_random(4);
                    let appended: Vec<(Entry, usize)> = (last + 1..=last + count)
                        .map(|index| (entry(step, index), 1 + next_random(3) as usize * 1_000_000))
                        .collect();
                    for (entry, _) in &appended {
                        log.insert(entry.log_id.index, step);
                    }
                    last += count;
                    cache.appended(appended);
                }
                5 => {
                    let first_removed = last.saturating_sub(next_random(5)).max(purged + 1);
                    cache.truncated_from(first_removed);
                    log.retain(|&index, _| index < first_removed);
                    last = last.min(first_removed - 1);
                }
                6 => {
                    // Up to a point inside the log, or past its end (a snapshot installed).
                    let point = last.saturating_sub(next_random(8)).max(purged) + next_random(3);
                    cache.purged_up_to(point);
                    log.retain(|&index, _| index > point);
                    (purged, last) = (point, last.max(point));
                }
                _ => {
                    let start = last.saturating_sub(next_random(12)).max(purged + 1);
                    let end = start + next_random(10);
                    if let Some(read) = cache.read(start, &(start..end)) {
                        answered += 1;
                        let expected: Vec<(u64, u64)> = log
                            .range(start..end)
                            .map(|(&index, &term)| (term, index))
                            .collect();
                        assert_eq!(ids(&read), expected, "step {step}: read {start}..{end}");
                    }
                }
            }
        }
        assert!(answered > 1000, "the cache answered only {answered} reads");
    }

    #[test]
    fn an_append_that_does_not_continue_the_run_restarts_it() {
        let cache = RecentEntries::default();
        cache.appended((1..=3).map(|index| (entry(1, index), 10)));
        cache.appended([(entry(2, 7), 10)]);
        assert_eq!(cache.read(1, &(1..)), None, "1..=3 are not known to precede 7");
        let read = cache.read(7, &(7..)).expect("7 is the tail");
        assert_eq!(ids(&read), vec![(2, 7)]);
        assert_eq!(cache.read(9, &(9..)).map(|entries| entries.len()), Some(0));
    }

    #[test]
    fn eviction_keeps_the_newest_entries_within_the_limits() {
        let cache = RecentEntries::default();
        cache.appended((1..=MOST_ENTRIES as u64 + 10).map(|index| (entry(1, index), 10)));
        assert_eq!(cache.read(10, &(10..20)), None, "the oldest were evicted");
        let newest = cache.read(11, &(11..)).expect("from the first kept entry");
        assert_eq!(newest.len(), MOST_ENTRIES);
        cache.appended([(entry(1, MOST_ENTRIES as u64 + 11), MOST_BYTES)]);
        let read = cache.read(0, &(0..)).map(|entries| ids(&entries));
        assert_eq!(read, None, "a start before the cache goes to sled");
        let read = cache.read(MOST_ENTRIES as u64 + 11, &(0..)).expect("kept");
        assert_eq!(ids(&read), vec![(1, MOST_ENTRIES as u64 + 11)]);
    }
}
