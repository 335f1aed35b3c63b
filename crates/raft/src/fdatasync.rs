//! Where keel's sled databases are fdatasynced: makes a sled 0.34 database
//! durable beyond what `sled::Db::flush` does.
//!
//! sled's flush ends with `sync_file_range`, which neither persists the data
//! file's grown size nor flushes the drive's write cache, and sled writes
//! records too large for its log (over ~128 KiB: a big group-committed
//! entry, a large tree node) as separate files under `blobs/` that it never
//! syncs. A crash of the machine (not just of the process) could then lose
//! what a flush reported written. [`SledFdatasync::sync`], called right after a
//! flush, fsyncs every blob file not synced yet (and the `blobs` directory
//! when one appeared), then fdatasyncs sled's `db` file: after it returns,
//! everything that flush covered is on disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The fsyncs and the fdatasync that one sled database's own flush leaves
/// out: its data file and the blob files it has not synced yet.
pub(crate) struct SledFdatasync {
    data_file: File,
    blob_dir: PathBuf,
    /// Blob files already fsynced; names sled has since removed are dropped.
    synced_blobs: HashSet<OsString>,
}

impl SledFdatasync {
    pub(crate) fn open(path: &Path) -> std::io::Result<SledFdatasync> {
        let data_file = File::open(path.join("db"))?;
        let blob_dir = path.join("blobs");
        std::fs::create_dir_all(&blob_dir)?;
        // The directory entries sled created (the database's own directory
        // in its parent, `db` and `blobs` in it), once.
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty());
        for dir in parent.into_iter().chain([path, blob_dir.as_path()]) {
            File::open(dir)?.sync_all()?;
        }
        let mut files = SledFdatasync {
            data_file,
            blob_dir,
            synced_blobs: HashSet::new(),
        };
        files.sync()?;
        Ok(files)
    }

    /// Makes everything sled has flushed durable: new blobs, then the data file.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        let mut present = HashSet::new();
        let mut new_blob = false;
        for entry in std::fs::read_dir(&self.blob_dir)? {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(self.blob_dir.join(&name)) {
                    Ok(blob) => blob.sync_all()?,
                    // Collected by sled between the listing and the open.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                new_blob = true;
            }
            present.insert(name);
        }
        if new_blob {
            File::open(&self.blob_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        self.data_file.sync_data()
    }

    #[cfg(test)]
    pub(crate) fn synced_blob_count(&self) -> usize {
        self.synced_blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_too_large_for_sleds_log_becomes_a_blob_file_that_sync_covers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let mut files = SledFdatasync::open(dir.path()).expect("files");
        assert_eq!(files.synced_blob_count(), 0);
        db.insert(b"big", vec![7u8; 1024 * 1024]).expect("insert");
        db.flush().expect("flush");
        files.sync().expect("sync");
        let blobs = std::fs::read_dir(dir.path().join("blobs"))
            .expect("blobs")
            .count();
        assert!(blobs > 0, "sled keeps a 1 MiB record as a blob file");
        assert_eq!(
            files.synced_blob_count(),
            blobs,
            "every blob is synced by the flush"
        );
    }
}
