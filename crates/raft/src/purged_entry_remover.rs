//! [`PurgedEntryRemover`]: removes the Raft log's purged entries from sled
//! on a thread of its own, off the log's IO path.
//!
//! Why: sled loads a tree node to remove a key from it, and the nodes of
//! entries behind a snapshot are long out of sled's 32 MiB cache. In a load
//! of 4 KiB puts at 64 clients, one purge removed about 2,500 entries of 64
//! writes each, read some 600 MiB back to do it, and held the member's
//! appends for 700 ms; both followers purged at once, so the leader lost its
//! quorum and every put waited.
//!
//! Rule: `SledLogStore::purge` records the purge point and makes it durable
//! before asking for any removal. Entries at or below that point are then
//! garbage nobody reads (the log's state never reports the log ending below
//! it, and openraft sends a snapshot rather than read behind it), so
//! removing them later, in chunks, changes nothing a reader sees. Removals
//! are not flushed: one cut off by a crash or a close leaves garbage that
//! the next purge removes, since every removal starts at the first entry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use keel_storage::sled;

/// Entries removed per sled batch; the thread checks for a close between
/// batches.
const ENTRIES_PER_REMOVAL: u64 = 16;
/// The pause after each batch, so that the nodes the removal reads back
/// from the disk do not crowd out the appends' reads and syncs.
const PAUSE_BETWEEN_REMOVALS: std::time::Duration = std::time::Duration::from_millis(10);

/// The handle a log store keeps; dropping it stops the thread after its
/// current batch.
pub(crate) struct PurgedEntryRemover {
    shared: Arc<RemoverShared>,
}

struct RemoverShared {
    log: sled::Tree,
    /// The highest purge point asked for and not yet taken by the thread.
    wanted_up_to: Mutex<Option<u64>>,
    asked: Condvar,
    closed: AtomicBool,
}

impl PurgedEntryRemover {
    /// Starts the thread that removes entries of `log`.
    pub(crate) fn start(log: sled::Tree) -> std::io::Result<PurgedEntryRemover> {
        let shared = Arc::new(RemoverShared {
            log,
            wanted_up_to: Mutex::new(None),
            asked: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("keel-log-purge".to_owned())
            .spawn(move || thread_shared.run())?;
        Ok(PurgedEntryRemover { shared })
    }

    /// Asks for every entry at or below `index` to go (the purge point is
    /// already durable).
    pub(crate) fn remove_up_to(&self, index: u64) {
        let mut wanted = self.shared.wanted_up_to.lock().unwrap_or_else(|p| p.into_inner());
        *wanted = Some(wanted.map_or(index, |earlier| earlier.max(index)));
        self.shared.asked.notify_one();
    }
}

impl Drop for PurgedEntryRemover {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _wanted = self.shared.wanted_up_to.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.asked.notify_one();
    }
}

impl RemoverShared {
    fn run(&self) {
        while let Some(up_to) = self.next_request() {
            if let Err(error) = self.remove_up_to(up_to) {
                tracing::warn!(%error, up_to, "removing purged Raft log entries failed; the next purge tries again");
            }
        }
    }

    /// Waits for a purge point; `None` once closed.
    fn next_request(&self) -> Option<u64> {
        let mut wanted = self.wanted_up_to.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(up_to) = wanted.take() {
                return Some(up_to);
            }
            wanted = self.asked.wait(wanted).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Removes the entries from the first one to `up_to` (at most to the
    /// last one: a purge point past the log, behind an installed snapshot,
    /// names no more keys than the log holds).
    fn remove_up_to(&self, up_to: u64) -> Result<(), crate::RaftStorageError> {
        let (Some((first, _)), Some((last, _))) = (self.log.first()?, self.log.last()?) else {
            return Ok(());
        };
        let last_removed = up_to.min(crate::log_store::entry_index(&last)?);
        let mut next = crate::log_store::entry_index(&first)?;
        while next <= last_removed && !self.closed.load(Ordering::Acquire) {
            let batch_end = last_removed.min(next.saturating_add(ENTRIES_PER_REMOVAL - 1));
            let mut batch = sled::Batch::default();
            for index in next..=batch_end {
                batch.remove(&crate::log_store::index_key(index));
            }
            self.log.apply_batch(batch)?;
            next = batch_end.saturating_add(1);
            if batch_end == u64::MAX {
                break;
            }
            std::thread::sleep(PAUSE_BETWEEN_REMOVALS);
        }
        Ok(())
    }
}
