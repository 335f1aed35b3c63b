//! The snapshot directory of a member: at most one current snapshot (its
//! openraft `SnapshotMeta`, and the data file of an mvcc dump when it has
//! one), and the files being received from a leader. A snapshot this member
//! took itself has no data file: the keyspace, durable at the snapshot's
//! log id, is the snapshot, and it is dumped only when a follower needs it
//! (`state_machine.rs`); a snapshot received from a leader keeps its dump.
//! `current.meta` holds the snapshot's meta and data file name (empty when
//! there is none) as a `keelstoragepb.SnapshotMeta` record
//! (`storage_codec.rs`): it stays on disk as long as the snapshot, which on
//! a quiet cluster is as long as the log, so it is kept in the same
//! add-only protobuf encoding, not in openraft's serde layout.
//!
//! Invariants:
//! - `current.meta` names a data file (if any) that was fully written and
//!   fsynced before `current.meta` was atomically renamed into place, so a
//!   crash leaves either the previous snapshot or the new one, never a torn
//!   one. A snapshot without a data file is recorded only after the keyspace
//!   it stands for was made durable at its log id.
//! - The current snapshot never moves back: a snapshot is made current only
//!   if it is newer (a higher last log id) than the current one. A build
//!   that started before an install of a newer snapshot finished must not
//!   replace it, since the log is already purged up to the newer one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::storage_codec::{CurrentSnapshotRecord, StorageRecord};
use crate::type_config::SnapshotMeta;
use crate::RaftStorageError;

const CURRENT_META: &str = "current.meta";

/// The name of the data file of the snapshot taken at `meta`.
fn data_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("snapshot-{}-{}.data", id.leader_id.term, id.index),
        None => "snapshot-empty.data".to_string(),
    }
}

pub struct SnapshotFiles {
    dir: PathBuf,
    /// Held while the current snapshot is read or replaced.
    current_lock: Mutex<()>,
}

impl SnapshotFiles {
    pub fn open(dir: &Path) -> Result<Self, RaftStorageError> {
        fs::create_dir_all(dir)?;
        // Leftovers of interrupted builds or transfers are useless after a restart.
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "partial") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            current_lock: Mutex::new(()),
        })
    }

    /// A fresh path for a snapshot being built or received.
    pub fn partial_path(&self, purpose: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        self.dir.join(format!("{purpose}-{nanos}.partial"))
    }

    fn data_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir.join(data_file_name(meta))
    }

    /// Makes the fully written, fsynced file at `partial` the current
    /// snapshot, or, with no `partial`, records a snapshot without a data
    /// file (the caller made the keyspace durable at `meta`), unless the
    /// current one is at least as new (then `partial` is removed). Returns
    /// the snapshot that is current afterwards, its data file opened.
    pub fn commit(
        &self,
        meta: &SnapshotMeta,
        partial: Option<&Path>,
    ) -> Result<(SnapshotMeta, Option<fs::File>), RaftStorageError> {
        let _current = self.current_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, current_path)) = self.read_current()? {
            if current.last_log_id >= meta.last_log_id {
                tracing::info!(
                    kept = ?current.last_log_id,
                    dropped = ?meta.last_log_id,
                    "a snapshot at least as new is already current; dropping the older one"
                );
                if let Some(partial) = partial {
                    let _ = fs::remove_file(partial);
                }
                let file = current_path.map(fs::File::open).transpose()?;
                return Ok((current, file));
            }
        }
        let data_path = match partial {
            Some(partial) => {
                let data_path = self.data_path(meta);
                fs::rename(partial, &data_path)?;
                Some(data_path)
            }
            None => None,
        };
        let meta_bytes = CurrentSnapshotRecord {
            meta: meta.clone(),
            data_file: data_path.as_ref().map(|_| data_file_name(meta)),
        }
        .encode_record();
        let tmp_meta = self.dir.join(format!("{CURRENT_META}.partial"));
        let mut file = fs::File::create(&tmp_meta)?;
        file.write_all(&meta_bytes)?;
        file.sync_all()?;
        fs::rename(&tmp_meta, self.dir.join(CURRENT_META))?;
        fs::File::open(&self.dir)?.sync_all()?;
        self.remove_stale_data_files(data_path.as_deref())?;
        let file = data_path.map(fs::File::open).transpose()?;
        Ok((meta.clone(), file))
    }

    fn remove_stale_data_files(&self, keep: Option<&Path>) -> Result<(), RaftStorageError> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "data") && Some(path.as_path()) != keep {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// The current snapshot's meta and its data file (if it has one),
    /// opened, if there is a current snapshot.
    pub fn open_current(&self) -> Result<Option<(SnapshotMeta, Option<fs::File>)>, RaftStorageError> {
        let _current = self.current_lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.read_current()? {
            None => Ok(None),
            Some((meta, path)) => Ok(Some((meta, path.map(fs::File::open).transpose()?))),
        }
    }

    fn read_current(&self) -> Result<Option<(SnapshotMeta, Option<PathBuf>)>, RaftStorageError> {
        let meta_path = self.dir.join(CURRENT_META);
        let bytes = match fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let current = CurrentSnapshotRecord::decode_record(&bytes)?;
        Ok(Some((
            current.meta,
            current.data_file.map(|name| self.dir.join(name)),
        )))
    }
}
