//! Defragmentation: rewriting the active keyspace tree into a fresh one
//! after compactions and deletes (etcd's `Defragment`, local to one member,
//! never through Raft).
//!
//! Invariant (crash safety): the caller holds the writer slot, so the copy
//! is one consistent cut and no batch commits meanwhile (reads go on
//! against the old keyspace). Every entry is copied into a tree of a FRESH
//! database (the next generation of the keyspace database's name,
//! `keel_storage`'s `generations.rs`) whose default tree names it in
//! [`ACTIVE_POINTER`]; that database is made durable, and only then made
//! the generation the name opens (an atomic, durable pointer switch). Then,
//! under the store's exclusive lock, the database and tree are swapped (the
//! index, the recent changes and the revisions stay: the records are the
//! same), and the old database's files are deleted. A crash before the
//! switch leaves the old database current, and `Database::open` deletes the
//! half-made copy; a crash after it leaves the new one current, and the old
//! one is deleted at open. Never half of either.
//!
//! This is what gives the space back: sled 0.34 never shrinks a file it
//! keeps using (`examples/defrag_space.rs` measured a dropped tree's pages
//! staying in the file), so the old file goes as a whole.

use std::sync::atomic::Ordering;

use crate::error::{MvccError, Result};
use crate::store::{keyspace_tree_name, Shared, ACTIVE_POINTER};

/// The points a defragmentation passes, in order (see
/// `MvccStore::defragment_stopping_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefragStep {
    /// The fresh database holds every entry and is durable; the old one is
    /// still the current generation.
    BeforeSwitch,
    /// The fresh database is the current generation (durably); the old
    /// one's files are not deleted yet.
    BeforeDroppingOld,
}

/// What a defragmentation moved, and the keyspace database's size around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DefragStats {
    /// Entries copied (every entry of the keyspace tree).
    pub records: u64,
    /// Their keys' and values' bytes.
    pub bytes: u64,
    pub size_before: u64,
    pub size_after: u64,
}

/// Copies the active tree into a fresh database and switches to it; the
/// caller holds the writer slot.
pub(crate) fn defragment(
    shared: &Shared,
    step: &mut dyn FnMut(DefragStep) -> Result<(), MvccError>,
) -> Result<DefragStats> {
    let started = std::time::Instant::now();
    let (old_database, old_generation, old_tree) = {
        let active = shared.read_keyspace();
        (active.database.clone(), active.generation, active.tree.clone())
    };
    let size_before = old_database.size_on_disk()?;
    let generation = old_generation + 1;
    let name = keyspace_tree_name(generation);
    let fresh_database = old_database.open_next_generation()?;
    let fresh = fresh_database.sled().open_tree(&name)?;
    let copied = copy(&old_tree, &fresh).and_then(|copied| {
        fresh_database.sled().insert(ACTIVE_POINTER, name.as_bytes())?;
        fresh_database.make_durable()?;
        Ok(copied)
    });
    let (records, bytes) = match copied {
        Ok(copied) => copied,
        Err(error) => {
            drop(fresh);
            if let Err(retire_error) = fresh_database.retire() {
                tracing::warn!(%retire_error, "could not delete a half-made defragmented database; open will");
            }
            return Err(error);
        }
    };
    step(DefragStep::BeforeSwitch)?;
    fresh_database.make_current()?;
    {
        let mut active = shared.write_keyspace();
        active.database = fresh_database;
        active.generation = generation;
        active.tree = fresh;
        shared.live_bytes.store(bytes, Ordering::Release);
    }
    step(DefragStep::BeforeDroppingOld)?;
    drop(old_tree);
    old_database.retire()?;
    let stats = DefragStats {
        records,
        bytes,
        size_before,
        size_after: shared.database().size_on_disk()?,
    };
    tracing::info!(
        records,
        bytes,
        size_before,
        size_after = stats.size_after,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "defragmented the keyspace"
    );
    Ok(stats)
}

/// Copies every entry of `from` into the empty `to`, in key order (the
/// fastest way into sled; the fresh tree is invisible until the flip, so it
/// needs no batch atomicity). Returns the entries and their bytes.
fn copy(from: &keel_storage::sled::Tree, to: &keel_storage::sled::Tree) -> Result<(u64, u64)> {
    let mut records = 0u64;
    let mut bytes = 0u64;
    for entry in from.iter() {
        let (key, value) = entry?;
        bytes += (key.len() + value.len()) as u64;
        records += 1;
        to.insert(key, value)?;
    }
    Ok((records, bytes))
}
