//! Where keel's sled databases are fdatasynced: makes a sled 0.34 database
//! durable beyond what `sled::Db::flush` does.
//!
//! sled's flush ends with `sync_file_range`, which neither persists the data
//! file's grown size nor flushes the drive's write cache, and sled writes
//! records too large for its log (over ~128 KiB: a big group-committed
//! entry, a large tree node) as separate files under `blobs/` that it never
//! syncs. A crash of the machine (not just of the process) could then lose
//! what a flush reported written.
//!
//! Invariant: [`SledFdatasync::sync`], called right after a flush, fsyncs
//! every blob file not synced yet (and the `blobs` directory when one
//! appeared), then fdatasyncs sled's `db` file: after it returns, everything
//! that flush covered is on disk. It lists `blobs/` only when the process
//! has written a blob file since its last look (the vendored sled counts
//! them, `sled::blob_files_written`, before a flush can cover them); most
//! flushes write none, and the listing was 5 system calls per flush. [`SledFdatasync::open`] syncs once the
//! directory entries sled created (the database directory in its parent,
//! `db` and `blobs` in it), so they survive a crash too.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// The fsyncs and the fdatasync that one sled database's own flush leaves
/// out: its data file and the blob files it has not synced yet.
pub(crate) struct SledFdatasync {
    data_file: File,
    data_path: PathBuf,
    blob_dir: PathBuf,
    /// Blob files already fsynced; names sled has since removed are dropped.
    synced_blobs: HashSet<OsString>,
    /// `sled::blob_files_written()` read before the last listing; none
    /// before the first.
    blob_files_at_last_listing: Option<u64>,
    #[cfg(test)]
    listings: usize,
}

impl SledFdatasync {
    /// Opens the files of the sled database in `path` and syncs what sled
    /// has written so far, directory entries included.
    pub(crate) fn open(path: &Path) -> Result<SledFdatasync, StorageError> {
        let data_path = path.join("db");
        let data_file = File::open(&data_path).map_err(|e| StorageError::io("opening", &data_path, e))?;
        let blob_dir = path.join("blobs");
        std::fs::create_dir_all(&blob_dir).map_err(|e| StorageError::io("creating", &blob_dir, e))?;
        let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty());
        for dir in parent.into_iter().chain([path, blob_dir.as_path()]) {
            sync_path(dir)?;
        }
        let mut files = SledFdatasync {
            data_file,
            data_path,
            blob_dir,
            synced_blobs: HashSet::new(),
            blob_files_at_last_listing: None,
            #[cfg(test)]
            listings: 0,
        };
        files.sync()?;
        Ok(files)
    }

    /// Makes everything sled has flushed durable: new blobs, then the data file.
    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        let blob_files_written = sled::blob_files_written();
        if self.blob_files_at_last_listing != Some(blob_files_written) {
            self.sync_new_blobs()?;
            self.blob_files_at_last_listing = Some(blob_files_written);
        }
        self.data_file
            .sync_data()
            .map_err(|e| StorageError::io("syncing", &self.data_path, e))
    }

    /// fsyncs the blob files not synced yet, and the directory if any.
    fn sync_new_blobs(&mut self) -> Result<(), StorageError> {
        #[cfg(test)]
        {
            self.listings += 1;
        }
        let listing_error = |e| StorageError::io("listing", &self.blob_dir, e);
        let mut present = HashSet::new();
        let mut new_blob = false;
        for entry in std::fs::read_dir(&self.blob_dir).map_err(listing_error)? {
            let name = entry.map_err(listing_error)?.file_name();
            if !self.synced_blobs.contains(&name) {
                let blob_path = self.blob_dir.join(&name);
                match File::open(&blob_path) {
                    Ok(blob) => blob
                        .sync_all()
                        .map_err(|e| StorageError::io("syncing", &blob_path, e))?,
                    // Collected by sled between the listing and the open.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(StorageError::io("opening", &blob_path, error)),
                }
                new_blob = true;
            }
            present.insert(name);
        }
        if new_blob {
            sync_path(&self.blob_dir)?;
        }
        self.synced_blobs = present;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn synced_blob_count(&self) -> usize {
        self.synced_blobs.len()
    }
}

/// fsyncs a file or directory by path.
fn sync_path(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| StorageError::io("syncing", path, e))
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

    #[test]
    fn a_sync_lists_the_blob_dir_only_after_a_blob_file_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let mut files = SledFdatasync::open(dir.path()).expect("files");
        let listings = files.listings;
        let before = sled::blob_files_written();
        db.insert(b"small", vec![7u8; 100]).expect("insert");
        db.flush().expect("flush");
        files.sync().expect("sync");
        // Other tests of this process may write blob files meanwhile.
        if sled::blob_files_written() == before {
            assert_eq!(files.listings, listings, "no blob file written: no listing");
        }
        db.insert(b"big", vec![7u8; 1024 * 1024]).expect("insert");
        db.flush().expect("flush");
        assert!(sled::blob_files_written() > before, "sled counted the blob file");
        files.sync().expect("sync");
        assert!(files.listings > listings, "a blob file written: listed");
        let blobs = std::fs::read_dir(dir.path().join("blobs"))
            .expect("blobs")
            .count();
        assert!(blobs > 0);
        assert_eq!(files.synced_blob_count(), blobs, "and synced");
    }
}
