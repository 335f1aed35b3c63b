//! The Raft log, vote and committed index, in their own sled database.
//!
//! Durability rule (openraft's `RaftLogStorage` contract): a vote is
//! reported saved, and appended entries are reported through
//! `IOFlushed::io_completed`, only after a sled flush that started after
//! they were written has returned AND the database's files were
//! fdatasynced (sled's own flush stops at `sync_file_range`): keel-storage's
//! `GroupFlusher`, which also lets concurrent appends share one flush.
//! `append` itself returns as soon as the entries are in sled's
//! memory, as openraft's contract allows, so the next append can join the
//! same flush. A member therefore never votes twice in a term or
//! acknowledges an entry it could lose in a crash. Votes, truncation and
//! purge wait for their flush before they return.
//!
//! Purge rule: a member's log is purged up to index i only once the
//! state machine's applied state up to i is durable (`durable_applied.rs`);
//! until then `purge` waits. `purge` records the purge point durably and
//! returns; the entries behind it are removed later on a thread of their
//! own (`purged_entry_remover.rs`). Entries left behind the purge point (not
//! yet removed, or left by a crash) are harmless: the log's last id is
//! never reported below the purge point, and reads return only a gap-free
//! run of entries.
//!
//! Reads: the newest entries are also kept in memory (`recent_entries.rs`,
//! which states how it stays equal to the log tree), so replicating and
//! applying an entry just appended reads neither sled nor protobuf.
//!
//! Layout: tree `log` maps the big-endian u64 index to the entry's
//! `keelstoragepb.LogEntry` record; tree `raft_state` holds `vote` (a
//! `Vote`), `committed` (an `OptionalLogId`) and `last_purged` (a `LogId`),
//! all encoded by `storage_codec.rs`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use keel_storage::sled;
use keel_storage::{Database, DatabaseRole, GroupFlusher};

use crate::durable_applied::DurableApplied;
use crate::purged_entry_remover::PurgedEntryRemover;
use crate::recent_entries::RecentEntries;
use crate::storage_codec::{decode_entry, decode_entry_log_id, encode_entry, StorageRecord};
use crate::type_config::{Entry, LogId, TypeConfig, Vote};
use crate::RaftStorageError;

/// sled's page cache for the log: entries are read back only while they are
/// replicated, so a small cache suffices (sled's default is 1 GiB per Db).
const LOG_CACHE_BYTES: u64 = 32 * 1024 * 1024;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct SledLogStore {
    database: Database,
    log: sled::Tree,
    state: sled::Tree,
    flusher: GroupFlusher,
    /// A member's state machine durability, which purges wait for; `None`
    /// for a log without a state machine (benchmarks, openraft's suite).
    purge_gate: Option<DurableApplied>,
    /// Removes purged entries off the IO path; shared by the clones, and
    /// stopped when the last one is dropped.
    purged_entry_remover: Arc<PurgedEntryRemover>,
    /// One past the purge point: reads start here, whatever entries the
    /// remover has not removed yet.
    first_unpurged_index: Arc<AtomicU64>,
    /// The log's newest entries, shared by the clones (the log readers).
    recent_entries: Arc<RecentEntries>,
}

fn read_logs_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("reading the Raft log: {error}"))
}

fn write_logs_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("writing the Raft log: {error}"))
}

impl SledLogStore {
    /// Opens (or creates) a member's log database in `path`; purges wait
    /// until `durable_applied` covers them.
    pub fn open_for_member(
        path: &std::path::Path,
        durable_applied: DurableApplied,
    ) -> Result<Self, RaftStorageError> {
        let mut store = Self::open(path)?;
        store.purge_gate = Some(durable_applied);
        Ok(store)
    }

    /// Opens (or creates) a log database in `path` with no state machine
    /// behind it: purges happen at once.
    pub fn open(path: &std::path::Path) -> Result<Self, RaftStorageError> {
        // A group-committed entry can be MiBs: large-record segments keep
        // entries and the log tree's nodes in sled's log, not a file each.
        let database = Database::open_holding(path, LOG_CACHE_BYTES, DatabaseRole::RaftLog)?;
        let log = database.sled().open_tree("log")?;
        let state = database.sled().open_tree("raft_state")?;
        let flusher = database.start_group_flusher()?;
        let purged_entry_remover = Arc::new(PurgedEntryRemover::start(log.clone())?);
        let store = SledLogStore {
            database,
            log,
            state,
            flusher,
            purge_gate: None,
            purged_entry_remover,
            first_unpurged_index: Arc::new(AtomicU64::new(0)),
            recent_entries: Arc::default(),
        };
        let last_purged: Option<LogId> = store.read_state(LAST_PURGED_KEY)?;
        store.first_unpurged_index.store(
            last_purged.map_or(0, |id| id.index.saturating_add(1)),
            Ordering::Release,
        );
        Ok(store)
    }

    /// The database the log lives in (for its size on disk).
    pub fn database(&self) -> &Database {
        &self.database
    }

    fn read_state<T: StorageRecord>(&self, key: &[u8]) -> Result<Option<T>, io::Error> {
        let Some(bytes) = self.state.get(key).map_err(read_logs_error)? else {
            return Ok(None);
        };
        T::decode_record(&bytes).map(Some).map_err(read_logs_error)
    }

    fn write_state<T: StorageRecord>(&self, key: &[u8], value: &T) -> Result<(), io::Error> {
        self.state
            .insert(key, value.encode_record())
            .map_err(write_logs_error)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), io::Error> {
        self.flusher.flush().await.map_err(write_logs_error)
    }

    /// The id of the last entry of the log, appended or purged; what Raft's
    /// "at least as up to date" comparison of elections looks at.
    pub fn last_log_id(&self) -> Result<Option<LogId>, io::Error> {
        let last_purged: Option<LogId> = self.read_state(LAST_PURGED_KEY)?;
        // After a purge torn by a crash, entries below the purge point may
        // remain: the log still ends at least at the purge point.
        Ok(self.last_entry_log_id()?.max(last_purged))
    }

    /// Appends `entries` and returns once they are durable: what `append`
    /// does, for callers outside openraft (benchmarks), which cannot build
    /// the `LogFlushed` callback `append` takes.
    pub async fn append_durably(&mut self, entries: Vec<Entry>) -> Result<(), io::Error> {
        self.write_entries(entries)?;
        self.flush().await
    }

    /// Puts `entries` into sled's memory (not yet durable), in one batch.
    /// Writes appended entries to sled's memory, all or none.
    ///
    /// One entry (the usual append, on the leader and the followers alike)
    /// is one `insert`, atomic by itself; several go in one `apply_batch`.
    /// Not a batch of one: sled starts every batch by sealing its current IO
    /// buffer and writing a buffer that holds only the batch's manifest,
    /// each written and `sync_file_range`d on sled's IO thread pool, so a
    /// batch costs two disk writes and two thread wake-ups before the flush.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), io::Error> {
        let encoded: Vec<(Entry, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| {
                let bytes = encode_entry(&entry);
                (entry, bytes)
            })
            .collect();
        match encoded.as_slice() {
            [] => return Ok(()),
            [(entry, bytes)] => {
                self.log
                    .insert(index_key(entry.log_id.index), bytes.as_slice())
                    .map_err(write_logs_error)?;
            }
            several => {
                let mut batch = sled::Batch::default();
                for (entry, bytes) in several {
                    batch.insert(&index_key(entry.log_id.index), bytes.as_slice());
                }
                self.log.apply_batch(batch).map_err(write_logs_error)?;
            }
        }
        self.recent_entries
            .appended(encoded.into_iter().map(|(entry, bytes)| (entry, bytes.len())));
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, io::Error> {
        let Some((_, bytes)) = self.log.last().map_err(read_logs_error)? else {
            return Ok(None);
        };
        Ok(Some(decode_entry_log_id(&bytes).map_err(read_logs_error)?))
    }
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index a key of the log tree names.
pub(crate) fn entry_index(key: &[u8]) -> Result<u64, io::Error> {
    let bytes = key.try_into().map_err(|_| {
        read_logs_error(RaftStorageError::Corrupt {
            what: "log key",
            detail: format!("{key:?}"),
        })
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(self.first_unpurged_index.load(Ordering::Acquire));
        if let Some(entries) = self.recent_entries.read(start, &range) {
            return Ok(entries);
        }
        let mut entries: Vec<Entry> = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, bytes) = item.map_err(read_logs_error)?;
            let index = entry_index(&key)?;
            let contiguous = entries.last().is_none_or(|last| last.log_id.index + 1 == index);
            if !range.contains(&index) || !contiguous {
                break;
            }
            entries.push(decode_entry(&bytes).map_err(read_logs_error)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_state(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_state(LAST_PURGED_KEY)?;
        let last_log_id = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_state(VOTE_KEY, vote)?;
        self.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not flushed here: the committed index only shortens recovery (it lets a
        // restarted member re-apply without waiting for the leader); losing the
        // latest value is safe because committed entries are re-learned from the leader.
        self.write_state(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_state::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries)?;
        self.flusher.after_next_flush(Box::new(move |flushed| {
            callback.io_completed(flushed.map_err(io::Error::other));
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        tracing::debug!(after = ?last_log_id, "truncating conflicting log entries");
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(first_removed)..) {
            let (key, _) = item.map_err(write_logs_error)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_logs_error)?;
        self.recent_entries.truncated_from(first_removed);
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if let Some(gate) = &self.purge_gate {
            if gate.durable_upto().map_err(write_logs_error)? < Some(log_id.index) {
                tracing::info!(upto = %log_id, "log purge waits until the state machine is durable there");
            }
            gate.wait_until_durable(log_id.index)
                .await
                .map_err(write_logs_error)?;
        }
        tracing::debug!(upto = %log_id, "purging log entries covered by a snapshot");
        // Record the purge point first: a crash between the two steps leaves
        // extra entries behind it, which get_log_state ignores.
        self.write_state(LAST_PURGED_KEY, &log_id)?;
        self.flush().await?;
        self.first_unpurged_index
            .fetch_max(log_id.index.saturating_add(1), Ordering::AcqRel);
        self.recent_entries.purged_up_to(log_id.index);
        // The entries go on the remover's thread: removing them here held
        // the appends behind them for hundreds of ms (`purged_entry_remover.rs`).
        self.purged_entry_remover.remove_up_to(log_id.index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_config::CommittedLeaderId;
    use openraft::EntryPayload;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// A log store in `dir` holding the entries `indexes`, made durable.
    async fn store_with_entries(
        dir: &std::path::Path,
        indexes: std::ops::RangeInclusive<u64>,
    ) -> SledLogStore {
        let mut store = SledLogStore::open(dir).expect("open");
        store
            .append_durably(indexes.map(blank).collect())
            .await
            .expect("append");
        store
    }

    #[tokio::test]
    async fn a_purge_torn_by_a_crash_never_reports_the_log_ending_below_the_purge_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = store_with_entries(dir.path(), 1..=10).await;
        // A purge up to 20 (behind an installed snapshot) that recorded its
        // point and crashed before removing any entry.
        store
            .write_state(LAST_PURGED_KEY, &blank(20).log_id)
            .expect("record the purge point");
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(20));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(20));
    }

    /// Waits until the log tree holds exactly the entries `expected` (the
    /// remover works on its own thread).
    async fn wait_for_stored_indexes(store: &SledLogStore, expected: Vec<u64>) {
        let stored = || -> Vec<u64> {
            store
                .log
                .iter()
                .map(|item| entry_index(&item.expect("entry").0).expect("key"))
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stored() != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "the log holds {:?}, not {expected:?}",
                stored()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_purge_removes_every_entry_up_to_its_point_and_a_later_one_what_a_torn_purge_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = store_with_entries(dir.path(), 1..=300).await;
        store.purge(blank(4).log_id).await.expect("purge to 4");
        // The purge point is recorded before any entry goes.
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(4));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(300));
        // Reads start past it at once, removed or not.
        let read = store.try_get_log_entries(0..10).await.expect("read");
        assert_eq!(
            read.iter().map(|entry| entry.log_id.index).collect::<Vec<_>>(),
            (5..10).collect::<Vec<_>>()
        );
        wait_for_stored_indexes(&store, (5..=300).collect()).await;
        // A purge to 7 torn by a crash: its point recorded, no entry gone.
        store
            .write_state(LAST_PURGED_KEY, &blank(7).log_id)
            .expect("record the purge point");
        // More entries than one removal batch.
        store.purge(blank(208).log_id).await.expect("purge to 208");
        wait_for_stored_indexes(&store, (209..=300).collect()).await;
        // Up to the last entry, and past it (behind an installed snapshot).
        store.purge(blank(400).log_id).await.expect("purge to 400");
        wait_for_stored_indexes(&store, Vec::new()).await;
        store.purge(blank(401).log_id).await.expect("purge an empty log");
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id.map(|id| id.index), Some(401));
    }

    #[tokio::test]
    async fn a_closed_log_store_releases_its_database_for_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = store_with_entries(dir.path(), 1..=10).await;
        store.purge(blank(5).log_id).await.expect("purge");
        drop(store);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut reopened = loop {
            match SledLogStore::open(dir.path()) {
                Ok(store) => break store,
                Err(error) => {
                    assert!(std::time::Instant::now() < deadline, "reopen: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        };
        let state = reopened.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(5));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(10));
    }

    #[tokio::test]
    async fn reads_return_only_a_gap_free_run_of_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SledLogStore::open(dir.path()).expect("open");
        store
            .append_durably((1..=5).chain(8..=10).map(blank).collect())
            .await
            .expect("append");
        let entries = store.try_get_log_entries(1..11).await.expect("read");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5]);
    }
}
