//! [`Database`]: one sled database opened with keel's settings, and the one
//! way to make it durable. A database can be replaced whole by a fresh
//! generation at runtime (`generations.rs`).
//!
//! Invariant: [`Database::make_durable`] returns Ok only after a sled flush
//! that started after the call did, followed by the fsyncs and the fdatasync
//! of `fdatasync.rs`; everything written to the database before the call is
//! then on disk. Calls are serialized (one set of files per database), so a
//! sync never overlaps another sync of the same files.
//!
//! What a database holds ([`DatabaseRole`]) decides two settings:
//!
//! - Segment size: sled writes any record larger than a quarter of its log
//!   segment as a file of its own under `blobs/` (created, written, then
//!   fsynced by `fdatasync.rs`, and its directory too). With sled's 512 KiB
//!   segments that is every group-committed Raft entry over about 128 KiB
//!   and every rewrite of a log tree node that holds such entries. The Raft
//!   log is therefore created with [`LARGE_RECORD_SEGMENT_BYTES`] segments.
//!   sled refuses to open a database with another segment size than it was
//!   created with, so an existing database keeps the size its `conf` file
//!   records.
//! - Zeros past the tip (keel's sled patch, `zero_past_tip`): when sled's
//!   file grows by a segment, a pool job writes zeros over the next one, so
//!   that the log's later writes land in written blocks and the fdatasync
//!   after them writes no inode. That pays for the Raft log, synced after
//!   every append; the keyspace is synced only at snapshots, and there the
//!   zeros would be a second copy of its bytes for nothing (8.5% of the
//!   members' CPU in a 256-client put profile, both databases filled).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fdatasync::SledFdatasync;
use crate::generations::Generation;
use crate::group_flush::GroupFlusher;
use crate::StorageError;

/// sled's segment size for the Raft log: records up to 2 MiB stay in sled's
/// log.
const LARGE_RECORD_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// sled's own segment size, kept for the keyspace.
const SLED_DEFAULT_SEGMENT_BYTES: usize = 512 * 1024;

/// What a database holds, which decides the segment size a new database is
/// created with and whether sled zeroes the segment past its tip (see the
/// module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseRole {
    /// Keys and values of a few KiB, made durable at checkpoints (the
    /// keyspace): sled's own segments, no zeros ahead of the tip.
    Keyspace,
    /// Records up to MiBs made durable after every write (the Raft log,
    /// whose entries pack many writes): large segments, zeros ahead of the
    /// tip.
    RaftLog,
}

impl DatabaseRole {
    fn segment_bytes(self) -> usize {
        match self {
            DatabaseRole::Keyspace => SLED_DEFAULT_SEGMENT_BYTES,
            DatabaseRole::RaftLog => LARGE_RECORD_SEGMENT_BYTES,
        }
    }

    fn zeroes_past_tip(self) -> bool {
        self == DatabaseRole::RaftLog
    }
}

/// A sled database of keel's. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
}

struct Shared {
    db: sled::Db,
    /// Where the database lives; `None` for a temporary one.
    path: Option<PathBuf>,
    /// Which generation of the name it was opened by this is; `None` for a
    /// temporary one.
    generation: Option<Generation>,
    cache_bytes: u64,
    role: DatabaseRole,
    /// The files synced after each flush; `None` for a temporary database,
    /// which is deleted when dropped and has nothing to keep.
    files: Option<Mutex<SledFdatasync>>,
}

impl Database {
    /// Opens (or creates) the database in `path` with keel's settings: a
    /// page cache of `cache_bytes` and sled's `HighThroughput` mode (keel
    /// makes data durable itself, with [`Database::make_durable`]; sled's
    /// periodic background flush only bounds what a process crash loses of
    /// writes nobody waited for).
    ///
    /// `path` names the database: its files are in `path` itself, or, once
    /// it was replaced ([`Database::open_next_generation`]), in the
    /// generation its pointer file names; other generations left by a crash
    /// are deleted.
    ///
    /// A database another open database holds is [`StorageError::Locked`].
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Database, StorageError> {
        Database::open_holding(path, cache_bytes, DatabaseRole::Keyspace)
    }

    /// [`Database::open`] for a database of `role`.
    pub fn open_holding(path: &Path, cache_bytes: u64, role: DatabaseRole) -> Result<Database, StorageError> {
        let generation = Generation::current(path)?;
        generation.delete_the_others()?;
        Database::open_generation(generation, cache_bytes, role)
    }

    fn open_generation(
        generation: Generation,
        cache_bytes: u64,
        role: DatabaseRole,
    ) -> Result<Database, StorageError> {
        let path = generation.dir();
        ensure_not_locked(&path)?;
        let segment_bytes = persisted_segment_bytes(&path)?.unwrap_or(role.segment_bytes());
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .segment_size(segment_bytes)
            .mode(sled::Mode::HighThroughput)
            .zero_past_tip(role.zeroes_past_tip())
            .open()?;
        let files = SledFdatasync::open(&path)?;
        Ok(Database {
            shared: Arc::new(Shared {
                db,
                path: Some(path),
                generation: Some(generation),
                cache_bytes,
                role,
                files: Some(Mutex::new(files)),
            }),
        })
    }

    /// A fresh, empty database that can replace this one: the next
    /// generation of its name (a leftover of that generation is deleted
    /// first), or another temporary database for a temporary one. It is not
    /// what the name opens until [`Database::make_current`].
    pub fn open_next_generation(&self) -> Result<Database, StorageError> {
        match &self.shared.generation {
            None => Database::open_temporary(),
            Some(generation) => {
                let next = generation.next();
                next.delete_dir()?;
                Database::open_generation(next, self.shared.cache_bytes, self.shared.role)
            }
        }
    }

    /// Makes this generation the one its name opens, atomically and
    /// durably (`generations.rs`). Make its contents durable first. A
    /// temporary database has nothing to switch.
    pub fn make_current(&self) -> Result<(), StorageError> {
        match &self.shared.generation {
            None => Ok(()),
            Some(generation) => generation.make_current(),
        }
    }

    /// Closes this handle of a replaced generation and deletes its files,
    /// giving their space back to the file system. Call it once
    /// another generation is current and nothing reads this one any more; if
    /// another handle is still open, the files are left for the next open to
    /// delete.
    pub fn retire(self) -> Result<(), StorageError> {
        let Some(generation) = self.shared.generation.clone() else {
            return Ok(());
        };
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => {
                drop(shared);
                generation.delete_dir()
            }
            Err(_still_shared) => {
                tracing::info!(
                    dir = %generation.dir().display(),
                    "a replaced database is still open elsewhere; its files go at the next start"
                );
                Ok(())
            }
        }
    }

    /// A database that lives only as long as its last handle (tests,
    /// benchmarks): [`Database::make_durable`] only flushes it.
    pub fn open_temporary() -> Result<Database, StorageError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Database {
            shared: Arc::new(Shared {
                db,
                path: None,
                generation: None,
                cache_bytes: 0,
                role: DatabaseRole::Keyspace,
                files: None,
            }),
        })
    }

    /// The sled database, for reading and writing its trees. Make it durable
    /// with [`Database::make_durable`] (or a [`GroupFlusher`]), never with
    /// sled's own `flush`, which stops short of the disk.
    pub fn sled(&self) -> &sled::Db {
        &self.shared.db
    }

    /// Where the database lives (`None` for a temporary one).
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// Makes every write applied to the database before this call durable:
    /// sled's flush, then the blob fsyncs and the fdatasync of its data
    /// file. Blocks for as long as the disk takes.
    pub fn make_durable(&self) -> Result<(), StorageError> {
        // Held across the flush too, so that concurrent callers never sync
        // the files while another one's flush is still writing them.
        let files = self
            .shared
            .files
            .as_ref()
            .map(|files| files.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        self.shared.db.flush()?;
        if let Some(mut files) = files {
            files.sync()?;
        }
        Ok(())
    }

    /// [`Database::make_durable`] on tokio's blocking pool.
    pub async fn make_durable_async(&self) -> Result<(), StorageError> {
        let database = self.clone();
        match tokio::task::spawn_blocking(move || database.make_durable()).await {
            Ok(result) => result,
            Err(join_error) => Err(StorageError::io(
                "making durable",
                self.shared.path.clone().unwrap_or_default(),
                std::io::Error::other(join_error),
            )),
        }
    }

    /// Starts a [`GroupFlusher`] thread for this database.
    pub fn start_group_flusher(&self) -> Result<GroupFlusher, StorageError> {
        GroupFlusher::start(self.clone())
    }

    /// The size of the database's files on disk (its data file and blobs), in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(self.shared.db.size_on_disk()?)
    }
}

/// The segment size sled recorded in the `conf` file of the database in
/// `dir` when it created it (`segment_size: N` on a line of its own);
/// `None` for a database not created yet, or a `conf` without the line
/// (sled then judges the file itself).
fn persisted_segment_bytes(dir: &Path) -> Result<Option<usize>, StorageError> {
    let conf_path = dir.join("conf");
    let conf = match std::fs::read(&conf_path) {
        Ok(conf) => conf,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::io("reading", &conf_path, error)),
    };
    Ok(conf
        .split(|byte| *byte == b'\n')
        .filter_map(|line| line.strip_prefix(b"segment_size: "))
        .find_map(|digits| std::str::from_utf8(digits).ok()?.parse().ok()))
}

/// Fails with [`StorageError::Locked`] when another open database holds
/// the lock sled takes on its data file (an exclusive `flock`), which sled
/// itself reports only as text. The probe's own lock is released at once;
/// sled then takes it. (Whoever takes it in between is reported by sled,
/// untyped.)
fn ensure_not_locked(path: &Path) -> Result<(), StorageError> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let data_path = path.join("db");
    let file = match std::fs::File::open(&data_path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StorageError::io("opening", &data_path, error)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_when_dropped) => Ok(()),
        Err((_, Errno::EWOULDBLOCK)) => Err(StorageError::Locked {
            path: path.to_path_buf(),
        }),
        Err((_, errno)) => Err(StorageError::io("locking", &data_path, errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the database in `path` again, retrying while sled's background
    /// thread of a just dropped handle still holds the file lock.
    fn reopen(path: &Path) -> Database {
        reopen_holding(path, DatabaseRole::Keyspace)
    }

    fn reopen_holding(path: &Path, role: DatabaseRole) -> Database {
        let mut attempts = 0;
        loop {
            match Database::open_holding(path, 1024 * 1024, role) {
                Ok(database) => return database,
                Err(StorageError::Locked { .. }) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(error) => panic!("reopen: {error}"),
            }
        }
    }

    #[test]
    fn what_make_durable_covered_is_there_after_reopening_and_is_counted_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let database = Database::open(&path, 1024 * 1024).expect("open");
            assert_eq!(database.path(), Some(path.as_path()));
            let tree = database.sled().open_tree("t").expect("tree");
            tree.insert(b"small", &b"v"[..]).expect("insert");
            tree.insert(b"big", vec![3u8; 512 * 1024]).expect("insert");
            database.make_durable().expect("durable");
            assert!(
                database.size_on_disk().expect("size") >= 512 * 1024,
                "the size on disk counts the blob file of the big record"
            );
        }
        let database = reopen(&path);
        let tree = database.sled().open_tree("t").expect("tree");
        assert_eq!(tree.get(b"small").expect("get").as_deref(), Some(&b"v"[..]));
        assert_eq!(tree.get(b"big").expect("get").map(|v| v.len()), Some(512 * 1024));
    }

    #[test]
    fn a_database_that_cannot_be_created_is_a_storage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        match Database::open(&file.join("db"), 1024 * 1024) {
            Err(StorageError::Sled(_)) | Err(StorageError::Io { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a database under a regular file cannot open"),
        }
    }

    #[test]
    fn a_database_open_elsewhere_is_refused_as_locked_until_it_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let first = Database::open(&path, 1024 * 1024).expect("open");
        match Database::open(&path, 1024 * 1024) {
            Err(StorageError::Locked { path: locked }) => assert_eq!(locked, path),
            Err(other) => panic!("expected Locked, got {other:?}"),
            Ok(_) => panic!("a database open elsewhere must be refused"),
        }
        drop(first);
        reopen(&path);
    }

    fn blob_files(path: &Path) -> usize {
        std::fs::read_dir(path.join("blobs")).expect("blobs dir").count()
    }

    #[test]
    fn a_large_record_database_keeps_a_1_mib_record_in_sleds_log_not_in_a_blob_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, role, blobs_expected) in [
            ("small", DatabaseRole::Keyspace, true),
            ("large", DatabaseRole::RaftLog, false),
        ] {
            let path = dir.path().join(name);
            let database = Database::open_holding(&path, 1024 * 1024, role).expect("open");
            database
                .sled()
                .insert(b"entry", vec![7u8; 1024 * 1024])
                .expect("insert");
            database.make_durable().expect("durable");
            assert_eq!(blob_files(&path) > 0, blobs_expected, "{name}");
            drop(database);
            let database = reopen_holding(&path, role);
            let entry = database.sled().get(b"entry").expect("get");
            assert_eq!(entry.map(|entry| entry.len()), Some(1024 * 1024), "{name}");
        }
    }

    #[test]
    fn a_database_keeps_the_segment_size_it_was_created_with_whatever_it_is_opened_as() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let database = Database::open_holding(&path, 1024 * 1024, DatabaseRole::Keyspace).expect("open");
            database.sled().insert(b"k", &b"v"[..]).expect("insert");
            database.make_durable().expect("durable");
        }
        // sled refuses another segment size than the database's own.
        let database = reopen_holding(&path, DatabaseRole::RaftLog);
        assert_eq!(
            database.sled().get(b"k").expect("get").as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(
            persisted_segment_bytes(&path).expect("conf"),
            Some(SLED_DEFAULT_SEGMENT_BYTES)
        );
        let other = dir.path().join("other");
        drop(Database::open_holding(&other, 1024 * 1024, DatabaseRole::RaftLog).expect("open"));
        assert_eq!(
            persisted_segment_bytes(&other).expect("conf"),
            Some(LARGE_RECORD_SEGMENT_BYTES)
        );
    }

    /// Whether the file's last `segment` bytes exist and are all zero.
    fn ends_in_a_zeroed_segment(file: &Path, segment: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(handle) = std::fs::File::open(file) else {
            return false;
        };
        let Ok(len) = handle.metadata().map(|metadata| metadata.len()) else {
            return false;
        };
        if len < 2 * segment || len % segment != 0 {
            return false;
        }
        let mut tail = vec![1u8; segment as usize];
        handle.read_exact_at(&mut tail, len - segment).is_ok() && tail.iter().all(|&byte| byte == 0)
    }

    /// Writes `count` records of 4 KiB and makes them durable.
    fn write_records(database: &Database, count: u32) {
        for i in 0..count {
            database
                .sled()
                .insert(i.to_be_bytes(), record_value(i))
                .expect("insert");
        }
        database.make_durable().expect("durable");
    }

    fn record_value(i: u32) -> Vec<u8> {
        vec![(i % 251) as u8; 4096]
    }

    #[test]
    fn sled_writes_zeros_over_the_segment_past_the_raft_logs_tip_and_a_reopened_log_has_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let segment = LARGE_RECORD_SEGMENT_BYTES as u64;
        // About 20 MiB of records: more than two segments, so the tip moved.
        let count = 5000u32;
        {
            let database = Database::open_holding(&path, 1024 * 1024, DatabaseRole::RaftLog).expect("open");
            write_records(&database, count);
            // The zero fill runs on sled's pool: give it a moment.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !ends_in_a_zeroed_segment(&path.join("db"), segment) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the log file does not end in a whole zeroed segment past the tip"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let database = reopen_holding(&path, DatabaseRole::RaftLog);
        for i in 0..count {
            let stored = database.sled().get(i.to_be_bytes()).expect("get");
            assert_eq!(stored.as_deref(), Some(&record_value(i)[..]), "record {i}");
        }
    }

    #[test]
    fn the_keyspace_gets_no_zeros_past_its_tip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let segment = SLED_DEFAULT_SEGMENT_BYTES as u64;
        let database = Database::open(&path, 1024 * 1024).expect("open");
        // About 3 MiB of records: several segments, so the tip moved.
        write_records(&database, 800);
        // A zero fill would have finished well within this.
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            !ends_in_a_zeroed_segment(&path.join("db"), segment),
            "the keyspace file ends in a zeroed segment"
        );
    }

    #[tokio::test]
    async fn a_temporary_database_makes_durable_by_flushing() {
        let database = Database::open_temporary().expect("temporary");
        assert_eq!(database.path(), None);
        database.sled().insert(b"k", &b"v"[..]).expect("insert");
        database.make_durable_async().await.expect("flush");
    }
}
