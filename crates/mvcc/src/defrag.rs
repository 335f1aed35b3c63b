//! Defragmentation: rewriting the active keyspace tree into a fresh one
//! after compactions and deletes (etcd's `Defragment`, local to one member,
//! never through Raft).
//!
//! Invariant (crash safety, the same atomic flip as a snapshot install,
//! `snapshot.rs`): the caller holds the writer slot, so the copy is one
//! consistent cut and no batch commits meanwhile (reads go on against the
//! old tree). Every entry is copied into a FRESH tree, which is made durable
//! (`Database::make_durable`); only then, under the store's exclusive lock,
//! is [`ACTIVE_POINTER`] pointed at it and the tree swapped (the index, the
//! recent changes and the revisions stay: the records are the same). The
//! pointer is made durable before the old tree is dropped. A crash before
//! the pointer write reaches the disk leaves the old tree active and `open`
//! drops the half-made copy; a crash after it leaves the new tree active and
//! `open` drops the old one. Never half of either.
//!
//! What it does not do: make the file smaller. In every pattern measured
//! (`examples/defrag_space.rs`) sled 0.34 did not shrink its file after the
//! old tree was dropped, so `size_on_disk` stays. Giving the space back to the file system needs a
//! copy into a fresh sled database swapped in at runtime (as bolt's
//! defragmentation does), which keel does not do yet.

use std::sync::atomic::Ordering;

use crate::error::{MvccError, Result};
use crate::store::{keyspace_tree_name, Shared, ACTIVE_POINTER};

/// The points a defragmentation passes, in order (see
/// `MvccStore::defragment_stopping_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefragStep {
    /// The fresh tree holds every entry and is durable; the pointer still
    /// names the old tree.
    BeforeSwitch,
    /// The pointer names the fresh tree and is durable; the old tree is
    /// not dropped yet.
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

/// Copies the active tree into a fresh one and flips to it; the caller
/// holds the writer slot.
pub(crate) fn defragment(
    shared: &Shared,
    step: &mut dyn FnMut(DefragStep) -> Result<(), MvccError>,
) -> Result<DefragStats> {
    let started = std::time::Instant::now();
    let size_before = shared.database.size_on_disk()?;
    let (old_generation, old_tree) = {
        let active = shared.read_keyspace();
        (active.generation, active.tree.clone())
    };
    let generation = old_generation + 1;
    let name = keyspace_tree_name(generation);
    let db = shared.database.sled();
    // A leftover of an interrupted install or defragmentation (open drops
    // those too).
    db.drop_tree(&name)?;
    let fresh = db.open_tree(&name)?;
    let copied = copy(&old_tree, &fresh);
    let (records, bytes) = match copied {
        Ok(copied) => copied,
        Err(error) => {
            drop(fresh);
            if let Err(drop_error) = db.drop_tree(&name) {
                tracing::warn!(%drop_error, "could not drop a half-made defragmented tree; open will");
            }
            return Err(error);
        }
    };
    shared.database.make_durable()?;
    step(DefragStep::BeforeSwitch)?;
    {
        let mut active = shared.write_keyspace();
        db.insert(ACTIVE_POINTER, name.as_bytes())?;
        active.generation = generation;
        active.tree = fresh;
        shared.live_bytes.store(bytes, Ordering::Release);
    }
    drop(old_tree);
    shared.database.make_durable()?;
    step(DefragStep::BeforeDroppingOld)?;
    db.drop_tree(keyspace_tree_name(old_generation))?;
    shared.database.make_durable()?;
    let stats = DefragStats {
        records,
        bytes,
        size_before,
        size_after: shared.database.size_on_disk()?,
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
