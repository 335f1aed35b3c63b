//! keel's one owner of storage and durability: every sled database keel
//! keeps (the keyspace, the Raft log) is opened, made durable and measured
//! here, and only this crate shows sled types in its public API.
//!
//! - [`Database`] (`database.rs`): opens sled with keel's settings (the
//!   path, the page cache size, `HighThroughput` mode) and makes it durable
//!   ([`Database::make_durable`]: sled's flush, then the fsyncs and the
//!   fdatasync sled's flush leaves out).
//! - `generations.rs`: a database replaced whole at runtime by a fresh copy
//!   (the keyspace's defragmentation), switched by an atomically renamed
//!   pointer file.
//! - `fdatasync.rs`: what sled 0.34's own flush does not make durable, and
//!   the syncs that do.
//! - [`GroupFlusher`] (`group_flush.rs`): one thread that makes a database
//!   durable for every waiter queued when it starts, so many Raft log writes
//!   share one flush.
//! - [`SteadyWritebackFile`] (`steady_writeback.rs`): a long file (a Raft
//!   snapshot) written back to the disk as it is written, so its final sync
//!   does not stall the Raft log's syncs behind hundreds of MiB.
//!
//! Durability rule every caller relies on: after [`Database::make_durable`]
//! (or a [`GroupFlusher`] completion) returns Ok, every write applied to the
//! database before the call started survives a crash of the process AND of
//! the machine. sled's own `Db::flush` does not promise that (it stops at
//! `sync_file_range`), so no caller flushes through [`Database::sled`].
//!
//! The crate re-exports [`sled`] so the crates above it use the one sled
//! this crate is built with, inside their own code only.

mod database;
mod fdatasync;
mod generations;
mod group_flush;
mod steady_writeback;

pub use database::{Database, DatabaseRole};
pub use group_flush::{FlushCompletion, GroupFlusher};
pub use sled;
pub use steady_writeback::SteadyWritebackFile;

use std::path::PathBuf;
use std::sync::Arc;

/// Why opening, flushing or measuring a database failed.
///
/// Cloneable, so that one failed group flush can answer each of its waiters.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// sled itself failed (I/O inside sled, corruption it detected).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation of keel's own on a database's files failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What keel was doing: "opening", "syncing", "measuring".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Another open database (in this process or another) holds the lock
    /// of the database in `path`: a member still running on the data dir,
    /// or one whose sled threads have not let go of it yet.
    #[error("the database in {} is locked by another open database", path.display())]
    Locked { path: PathBuf },
    /// A database's generation pointer file holds no generation number.
    #[error("{} does not name a database generation (found {found:?})", path.display())]
    GenerationPointerUnreadable { path: PathBuf, found: String },
    /// The group flusher thread is gone, so nothing can be made durable.
    #[error("the flusher thread of {} has stopped", path.display())]
    FlusherStopped { path: PathBuf },
}

impl StorageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            action,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
