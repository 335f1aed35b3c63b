//! Group flushing of a sled database (the Raft log's): one dedicated thread
//! makes the database durable for every waiter queued when it starts, so
//! many appends (and votes, truncations, purges) share one flush.
//!
//! Invariant: a waiter is answered only by a [`Database::make_durable`]
//! that STARTED after the waiter's writes were applied to sled (a waiter is
//! queued after its writes, and the thread takes waiters before it
//! flushes), so an answer of Ok means those writes are on disk: sled's
//! flush and the fdatasync of `fdatasync.rs`, not just sled's flush (which
//! stops at `sync_file_range`). Waiters are answered in the order they
//! queued, which keeps openraft's `log_io_completed` callbacks in append
//! order.
//!
//! Why not `flush_async`: sled 0.34 runs it on its shared IO thread pool,
//! whose queue wakes every idle pool thread on each job; profiles of a loaded
//! member showed seven pool threads spending more CPU waking up than the
//! flushes themselves took.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use crate::database::Database;
use crate::StorageError;

/// What to do once the flush covering a waiter's writes finished.
pub type FlushCompletion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A handle on a database's flushing thread; the thread ends when every
/// handle is dropped.
#[derive(Clone)]
pub struct GroupFlusher {
    waiters: mpsc::Sender<FlushCompletion>,
    /// The database's path, for the error when the thread is gone.
    path: PathBuf,
}

impl GroupFlusher {
    /// Starts the flushing thread for `database`.
    pub(crate) fn start(database: Database) -> Result<GroupFlusher, StorageError> {
        let path = database.path().map(PathBuf::from).unwrap_or_default();
        let (waiters, queue) = mpsc::channel::<FlushCompletion>();
        thread::Builder::new()
            .name("keel-log-flush".into())
            .spawn(move || run_flusher(&database, &queue))
            .map_err(|e| StorageError::io("starting the flusher thread of", &path, e))?;
        Ok(GroupFlusher { waiters, path })
    }

    /// Runs `completion` after a flush that covers every write made so far.
    pub fn after_next_flush(&self, completion: FlushCompletion) {
        if let Err(mpsc::SendError(completion)) = self.waiters.send(completion) {
            completion(Err(self.stopped()));
        }
    }

    /// Waits until every write made so far is durable.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.after_next_flush(Box::new(move |result| {
            let _ = done.send(result);
        }));
        flushed.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    fn stopped(&self) -> StorageError {
        StorageError::FlusherStopped {
            path: self.path.clone(),
        }
    }
}

fn run_flusher(database: &Database, queue: &mpsc::Receiver<FlushCompletion>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let started = std::time::Instant::now();
        let result = database.make_durable();
        keel_metrics::metrics()
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            tracing::error!(%error, waiters = batch.len(), "making a database durable failed");
        }
        for completion in batch {
            completion(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flushed_write_survives_reopening_and_completions_keep_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let database = Database::open(dir.path(), 1024 * 1024).expect("open");
            let flusher = database.start_group_flusher().expect("start");
            for i in 0..50u32 {
                database
                    .sled()
                    .insert(i.to_be_bytes(), vec![1u8; 100])
                    .expect("insert");
                let order = order.clone();
                flusher.after_next_flush(Box::new(move |result| {
                    assert!(result.is_ok());
                    order.lock().expect("lock").push(i);
                }));
            }
            flusher.flush().await.expect("flush");
        }
        assert_eq!(*order.lock().expect("lock"), (0..50).collect::<Vec<_>>());
        // The flusher thread lets go of the database once its handles are gone.
        let mut reopened = sled::open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            reopened = sled::open(dir.path());
        }
        let reopened = reopened.expect("reopen");
        assert_eq!(reopened.len(), 50);
    }
}
