//! Snapshot streams of the whole keyspace tree, and their atomic install.
//!
//! Stream format (all integers big-endian), written and read incrementally:
//! ```text
//! header   "KEELMVCC" u32:format_version
//! record*  0x01 u32:key_len key u32:value_len value     (raw tree entries, key order)
//! trailer  0x00 u64:record_count u32:crc32(every byte before the crc)
//! ```
//!
//! Format 2 streams carry keyspace format 2 (revision records only; the
//! in-memory index is not in the stream, it is rebuilt from the records).
//!
//! Invariant (consistent cut while writes go on): a [`SnapshotCut`] is taken
//! under the writer slot at store revision R. It copies then what later
//! batches may change in place: the entries before the revision records
//! (store and app meta) and those after them (leases and their keys). It
//! streams the revision records at or below R from the live tree later:
//! batches only add records above R, and whatever removes records (a
//! compaction, an install, a defragmentation) waits for the cut's history
//! pin (`store.rs`). So the stream is the keyspace exactly as it was at R.
//!
//! Invariant (atomic flip): an install writes into a FRESH tree, verifies
//! the trailer and the store meta, builds the new tree's index, makes it
//! durable (`Database::make_durable`), and only then, under the store's exclusive lock, points [`ACTIVE_POINTER`] at
//! the new tree and swaps tree and index in together; the old tree is
//! dropped afterwards. A truncated or corrupt stream, or a
//! crash at any point before the pointer is written, leaves the active store
//! untouched (`open` drops a half-filled tree).

use keel_storage::sled;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::changes::RecentChanges;
use crate::error::{MvccError, Result};
use crate::keys::{self, Revision, REVISION_KEY_BYTES};
use crate::store::{
    keyspace_tree_name, load, HistoryPin, Keyspace, Shared, SnapshotStats, WriterSlot, ACTIVE_POINTER,
};

const MAGIC: &[u8; 8] = b"KEELMVCC";
const STREAM_FORMAT_VERSION: u32 = 2;
const RECORD_TAG: u8 = 0x01;
const END_TAG: u8 = 0x00;

fn invalid(what: impl Into<String>) -> MvccError {
    MvccError::InvalidSnapshot(what.into())
}

/// Counts and checksums every byte written.
struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl HashingWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn put_len(&mut self, len: usize) -> Result<()> {
        let len = u32::try_from(len).map_err(|_| invalid("a record longer than 4 GiB"))?;
        self.put(&len.to_be_bytes())
    }
}

/// The keyspace at one store revision, to stream while writes go on (see
/// the module's doc). Holds the history pin until dropped.
pub struct SnapshotCut<'a> {
    _history_pinned: HistoryPin<'a>,
    tree: sled::Tree,
    /// The store and app meta entries, copied at the cut.
    entries_before_records: Vec<(sled::IVec, sled::IVec)>,
    /// The key just past the last revision record of the cut.
    records_end: [u8; REVISION_KEY_BYTES],
    /// The lease and lease-key entries, copied at the cut.
    entries_after_records: Vec<(sled::IVec, sled::IVec)>,
}

/// Takes a cut of the active keyspace; the caller holds the writer `slot`.
pub(crate) fn cut<'a>(shared: &'a Shared, slot: &WriterSlot<'_>) -> Result<SnapshotCut<'a>> {
    let history_pinned = shared.pin_history(slot);
    let tree = shared.read_keyspace().tree.clone();
    let revision = shared.revisions().current;
    let records_start = [keys::REVISIONS];
    let after_records = [keys::REVISIONS + 1];
    let entries_before_records = tree
        .range(..&records_start[..])
        .collect::<sled::Result<Vec<_>>>()?;
    let entries_after_records = tree
        .range(&after_records[..]..)
        .collect::<sled::Result<Vec<_>>>()?;
    Ok(SnapshotCut {
        _history_pinned: history_pinned,
        tree,
        entries_before_records,
        records_end: keys::revision_key(Revision::new(revision.saturating_add(1), 0)),
        entries_after_records,
    })
}

impl SnapshotCut<'_> {
    /// An application blob as committed at the cut
    /// ([`crate::ApplyBatch::set_app_meta`]).
    pub fn app_meta(&self, key: &str) -> Option<&[u8]> {
        let wanted = keys::app_meta_key(key);
        self.entries_before_records
            .iter()
            .find(|(stored, _)| stored[..] == wanted[..])
            .map(|(_, value)| &value[..])
    }

    /// Streams the cut to `out` in the stream format above.
    pub fn write(&self, out: &mut dyn Write) -> Result<SnapshotStats> {
        let records_start = [keys::REVISIONS];
        let records = self.tree.range(&records_start[..]..&self.records_end[..]);
        let copied_before = self.entries_before_records.iter().cloned().map(Ok);
        let copied_after = self.entries_after_records.iter().cloned().map(Ok);
        write_entries(copied_before.chain(records).chain(copied_after), out)
    }
}

/// Writes `entries` (in key order) as one stream.
fn write_entries(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    out: &mut dyn Write,
) -> Result<SnapshotStats> {
    let mut writer = HashingWriter {
        out,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    writer.put(MAGIC)?;
    writer.put(&STREAM_FORMAT_VERSION.to_be_bytes())?;
    let mut records = 0u64;
    for entry in entries {
        let (key, value) = entry?;
        writer.put(&[RECORD_TAG])?;
        writer.put_len(key.len())?;
        writer.put(&key)?;
        writer.put_len(value.len())?;
        writer.put(&value)?;
        records += 1;
    }
    writer.put(&[END_TAG])?;
    writer.put(&records.to_be_bytes())?;
    let crc = writer.hasher.clone().finalize();
    writer.out.write_all(&crc.to_be_bytes())?;
    writer.out.flush()?;
    Ok(SnapshotStats {
        records,
        bytes: writer.bytes + 4,
    })
}

/// Reads exactly what is asked, checksumming it; end of stream is an error.
struct HashingReader<'a> {
    input: &'a mut dyn Read,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl HashingReader<'_> {
    fn take_exact(&mut self, buffer: &mut [u8]) -> Result<()> {
        self.input.read_exact(buffer).map_err(eof_is_truncation)?;
        self.hasher.update(buffer);
        self.bytes += buffer.len() as u64;
        Ok(())
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buffer = [0u8; N];
        self.take_exact(&mut buffer)?;
        Ok(buffer)
    }

    /// A length-prefixed byte string, grown as bytes arrive (a corrupt length
    /// cannot make it allocate more than the stream holds).
    fn take_bytes(&mut self) -> Result<Vec<u8>> {
        let len = u32::from_be_bytes(self.take_array()?) as u64;
        let mut buffer = Vec::new();
        let read = (&mut *self.input)
            .take(len)
            .read_to_end(&mut buffer)
            .map_err(eof_is_truncation)?;
        if read as u64 != len {
            return Err(invalid("stream truncated inside a record"));
        }
        self.hasher.update(&buffer);
        self.bytes += len;
        Ok(buffer)
    }
}

fn eof_is_truncation(error: io::Error) -> MvccError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        invalid("stream truncated")
    } else {
        MvccError::SnapshotIo(error)
    }
}

/// Fills the empty `tree` from `input`, verifying order, count and checksum.
fn fill(tree: &sled::Tree, input: &mut dyn Read) -> Result<SnapshotStats> {
    let mut reader = HashingReader {
        input,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    if &reader.take_array::<8>()? != MAGIC {
        return Err(invalid("not a keel mvcc snapshot"));
    }
    let version = u32::from_be_bytes(reader.take_array()?);
    if version != STREAM_FORMAT_VERSION {
        return Err(invalid(format!(
            "snapshot format {version}, this build reads {STREAM_FORMAT_VERSION}"
        )));
    }
    let mut records = 0u64;
    let mut previous_key: Option<Vec<u8>> = None;
    loop {
        let [tag] = reader.take_array::<1>()?;
        match tag {
            RECORD_TAG => {}
            END_TAG => break,
            other => return Err(invalid(format!("unknown record tag {other:#04x}"))),
        }
        let key = reader.take_bytes()?;
        let value = reader.take_bytes()?;
        if previous_key.as_ref().is_some_and(|previous| *previous >= key) {
            return Err(invalid("records out of key order"));
        }
        previous_key = Some(key.clone());
        // Plain inserts in key order: the fresh tree is invisible until the
        // flip, so it needs no batch atomicity, and ordered inserts are the
        // fastest way into sled.
        tree.insert(key, value)?;
        records += 1;
    }
    let declared = u64::from_be_bytes(reader.take_array()?);
    let expected_crc = reader.hasher.clone().finalize();
    let mut crc = [0u8; 4];
    reader.input.read_exact(&mut crc).map_err(eof_is_truncation)?;
    if u32::from_be_bytes(crc) != expected_crc {
        return Err(invalid("checksum mismatch"));
    }
    if declared != records {
        return Err(invalid(format!(
            "trailer declares {declared} records, stream held {records}"
        )));
    }
    Ok(SnapshotStats {
        records,
        bytes: reader.bytes + 4,
    })
}

/// Installs a stream as the new active keyspace; the caller holds the writer slot.
pub(crate) fn install(shared: &Shared, input: &mut dyn Read) -> Result<SnapshotStats> {
    let generation = shared.read_keyspace().generation + 1;
    let name = keyspace_tree_name(generation);
    let database = shared.database();
    let db = database.sled();
    db.drop_tree(&name)?;
    let tree = db.open_tree(&name)?;
    let filled = fill(&tree, input).and_then(|stats| match load(&tree) {
        Ok(Some(loaded)) => Ok((stats, loaded)),
        Ok(None) => Err(invalid("snapshot holds no store meta")),
        Err(error) => Err(invalid(format!("snapshot keyspace: {error}"))),
    });
    let (stats, loaded) = match filled {
        Ok(filled) => filled,
        Err(error) => {
            drop(tree);
            if let Err(drop_error) = db.drop_tree(&name) {
                tracing::warn!(%drop_error, "could not drop a rejected snapshot tree; open will");
            }
            return Err(error);
        }
    };
    database.make_durable()?;
    let old = {
        let mut active = shared.write_keyspace();
        db.insert(ACTIVE_POINTER, name.as_bytes())?;
        let old = std::mem::replace(
            &mut *active,
            Keyspace {
                database: database.clone(),
                generation,
                tree,
                index: Arc::new(loaded.index),
                lease_ids: Arc::new(loaded.lease_ids),
                recent: RecentChanges::starting_after(loaded.revisions.current),
            },
        );
        shared.set_revisions(loaded.revisions);
        shared.live_bytes.store(loaded.live_bytes, Ordering::Release);
        old
    };
    shared.announce_revision(loaded.revisions.current);
    // Freed outside the exclusive section: a big index takes a while.
    let old_generation = old.generation;
    drop(old);
    database.make_durable()?;
    if let Err(error) = db.drop_tree(keyspace_tree_name(old_generation)) {
        tracing::warn!(%error, "could not drop the replaced keyspace tree; open will");
    }
    Ok(stats)
}
