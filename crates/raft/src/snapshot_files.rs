//! The snapshot directory of a member: at most one current snapshot (a data
//! file of the mvcc dump plus its openraft `SnapshotMeta`), and the files
//! being received from a leader.
//!
//! Invariant: `current.meta` names a data file that was fully written and
//! fsynced before `current.meta` was atomically renamed into place, so a
//! crash leaves either the previous snapshot or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::type_config::SnapshotMeta;
use crate::RaftStorageError;

const CURRENT_META: &str = "current.meta";

pub struct SnapshotFiles {
    dir: PathBuf,
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
        let safe_id: String = meta
            .snapshot_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("snapshot-{safe_id}.data"))
    }

    /// Makes the fully written, fsynced file at `partial` the current snapshot.
    pub fn commit(&self, meta: &SnapshotMeta, partial: &Path) -> Result<PathBuf, RaftStorageError> {
        let data_path = self.data_path(meta);
        fs::rename(partial, &data_path)?;
        let meta_bytes = serde_json::to_vec(&(meta, data_path.file_name().map(|n| n.to_string_lossy())))
            .map_err(|e| RaftStorageError::Corrupt {
                what: "snapshot meta",
                detail: e.to_string(),
            })?;
        let tmp_meta = self.dir.join(format!("{CURRENT_META}.partial"));
        let mut file = fs::File::create(&tmp_meta)?;
        file.write_all(&meta_bytes)?;
        file.sync_all()?;
        fs::rename(&tmp_meta, self.dir.join(CURRENT_META))?;
        fs::File::open(&self.dir)?.sync_all()?;
        self.remove_stale_data_files(&data_path)?;
        Ok(data_path)
    }

    fn remove_stale_data_files(&self, keep: &Path) -> Result<(), RaftStorageError> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "data") && path != keep {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// The current snapshot's meta and data path, if any.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, PathBuf)>, RaftStorageError> {
        let meta_path = self.dir.join(CURRENT_META);
        let bytes = match fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (meta, file_name): (SnapshotMeta, String) =
            serde_json::from_slice(&bytes).map_err(|e| RaftStorageError::Corrupt {
                what: "snapshot meta",
                detail: e.to_string(),
            })?;
        Ok(Some((meta, self.dir.join(file_name))))
    }
}
