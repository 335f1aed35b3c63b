//! Group flushing of the Raft log's sled database: one dedicated thread
//! runs `sled::Db::flush` for every write waiting when it starts, so many
//! appends (and votes, truncations, purges) share one fsync.
//!
//! Invariant: a waiter is answered only by a flush that STARTED after the
//! waiter's writes were applied to sled (a waiter is queued after its writes,
//! and the thread takes waiters before it flushes), so an answer of Ok means
//! those writes are on disk. Waiters are answered in the order they queued,
//! which keeps openraft's `log_io_completed` callbacks in append order.
//!
//! "On disk" means fdatasync, not just sled's flush (which stops at
//! `sync_file_range`): after each sled flush the thread also syncs the
//! database's files (`fdatasync.rs`). Only then are the waiters answered.
//!
//! Why not `flush_async`: sled 0.34 runs it on its shared IO thread pool,
//! whose queue wakes every idle pool thread on each job; profiles of a loaded
//! member showed seven pool threads spending more CPU waking up than the
//! flushes themselves took.

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use crate::fdatasync::SledFdatasync;

/// What to do once the flush covering a waiter's writes finished.
pub type FlushCompletion = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Clone)]
pub struct GroupFlusher {
    waiters: mpsc::Sender<FlushCompletion>,
}

impl GroupFlusher {
    /// Starts the flushing thread for `db`, the sled database opened in
    /// `path`; it ends when every handle is dropped.
    pub fn start(db: sled::Db, path: &Path) -> std::io::Result<GroupFlusher> {
        let mut files = SledFdatasync::open(path)?;
        let (waiters, queue) = mpsc::channel::<FlushCompletion>();
        thread::Builder::new()
            .name("keel-log-flush".into())
            .spawn(move || run_flusher(&db, &mut files, &queue))?;
        Ok(GroupFlusher { waiters })
    }

    /// Runs `completion` after a flush that covers every write made so far.
    pub fn after_next_flush(&self, completion: FlushCompletion) {
        if let Err(mpsc::SendError(completion)) = self.waiters.send(completion) {
            completion(Err("the log flusher thread has stopped".to_string()));
        }
    }

    /// Waits until every write made so far is durable.
    pub async fn flush(&self) -> Result<(), String> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.after_next_flush(Box::new(move |result| {
            let _ = done.send(result);
        }));
        flushed
            .await
            .unwrap_or_else(|_| Err("the log flusher thread has stopped".to_string()))
    }
}

fn flush_durably(db: &sled::Db, files: &mut SledFdatasync) -> Result<(), String> {
    db.flush().map_err(|error| error.to_string())?;
    files.sync().map_err(|error| error.to_string())
}

fn run_flusher(db: &sled::Db, files: &mut SledFdatasync, queue: &mpsc::Receiver<FlushCompletion>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let result = flush_durably(db, files);
        if let Err(error) = &result {
            tracing::error!(%error, waiters = batch.len(), "flushing the Raft log failed");
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
            let db = sled::open(dir.path()).expect("open");
            let flusher = GroupFlusher::start(db.clone(), dir.path()).expect("start");
            for i in 0..50u32 {
                db.insert(i.to_be_bytes(), vec![1u8; 100]).expect("insert");
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
