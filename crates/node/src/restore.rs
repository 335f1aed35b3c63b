//! Building a member's data dir from a client snapshot, as `etcdctl
//! snapshot restore` builds one for etcd: the keyspace dump is installed
//! into a new data dir's keyspace database, the old cluster's Raft metadata
//! is forgotten ([`keel_raft::state_machine::forget_raft_metadata`]), and
//! the format version is recorded. Started with `--initial-cluster-state
//! new` and the same `--initial-cluster` on every restored member, the
//! members bootstrap a new cluster whose keyspace is the snapshot's, at its
//! revision.
//!
//! Invariant: a data dir is built whole or not at all. It is built in a
//! sibling directory and renamed into place only once the keyspace is
//! installed and durable; an existing data dir is never touched.

use std::io::Read;
use std::path::{Path, PathBuf};

use keel_mvcc::MvccStore;
use keel_storage::Database;

/// Page cache for the restore's keyspace database.
const RESTORE_CACHE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("data-dir {} exists; a restore builds a new one", .0.display())]
    DataDirExists(PathBuf),
    #[error("building {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the snapshot's keyspace: {0}")]
    Keyspace(#[from] keel_mvcc::MvccError),
    #[error("the keyspace database: {0}")]
    Storage(#[from] keel_storage::StorageError),
    #[error("forgetting the old cluster's Raft state: {0}")]
    RaftMetadata(#[from] keel_raft::RaftStorageError),
    #[error("recording the format version: {0}")]
    Format(#[from] crate::data_format::DataFormatError),
}

/// What a restored data dir holds.
#[derive(Debug, Clone, Copy)]
pub struct RestoredKeyspace {
    pub revision: i64,
}

/// Builds `data_dir` from a keyspace dump (the content of a client
/// snapshot, checksum already verified).
pub fn restore_data_dir(dump: &mut dyn Read, data_dir: &Path) -> Result<RestoredKeyspace, RestoreError> {
    if data_dir.exists() {
        return Err(RestoreError::DataDirExists(data_dir.to_path_buf()));
    }
    let file_name = data_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_string());
    let building = data_dir.with_file_name(format!(".{file_name}.restoring"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io(&building))?;
    }
    std::fs::create_dir_all(&building).map_err(io(&building))?;
    let built = build(dump, &building);
    match built {
        Ok(restored) => {
            std::fs::rename(&building, data_dir).map_err(io(data_dir))?;
            Ok(restored)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(error)
        }
    }
}

fn build(dump: &mut dyn Read, data_dir: &Path) -> Result<RestoredKeyspace, RestoreError> {
    crate::data_format::check_or_record(data_dir)?;
    let database = Database::open(&data_dir.join("mvcc"), RESTORE_CACHE_BYTES)?;
    let store = MvccStore::open(&database)?;
    store.install_snapshot(dump)?;
    keel_raft::state_machine::forget_raft_metadata(&store)?;
    Ok(RestoredKeyspace {
        revision: store.current_revision(),
    })
}
