//! Compaction inside an apply batch (etcd's `Compact`, done synchronously so
//! that it is part of the deterministic apply).
//!
//! Rule: after compacting at `C`, for every key the history at or below `C`
//! keeps only its newest entry there, and only if that entry is a put (a
//! tombstone at or below `C` goes with everything older). Reads below `C`
//! fail with `Compacted`; the store revision does not change.
//!
//! Only keys written since the previous compaction can have anything to
//! drop: a key untouched since then has at most one entry at or below the
//! previous compact revision, a put, which stays. So the work is bounded by
//! the writes since the last compaction, not by the keyspace size.

use std::collections::BTreeSet;

use sled::IVec;

use crate::apply::ApplyBatch;
use crate::error::{MvccError, Result};
use crate::keys::{self, ChangeKind, Revision};
use crate::view::KeyspaceView;

pub(crate) fn compact(batch: &mut ApplyBatch<'_>, revision: i64) -> Result<()> {
    if revision <= batch.compact_revision {
        return Err(MvccError::Compacted {
            requested: revision,
            compacted: batch.compact_revision,
        });
    }
    if revision > batch.revision {
        return Err(MvccError::FutureRevision {
            requested: revision,
            current: batch.revision,
        });
    }
    let upper = Revision::new(revision.saturating_add(1), 0);
    let doomed = {
        let view = batch.view();
        let touched = keys_written_between(&view, batch.compact_revision, upper)?;
        let mut doomed = Vec::new();
        for key in &touched {
            doomed_history(&view, key, upper, &mut doomed)?;
        }
        doomed
    };
    tracing::debug!(revision, dropped = doomed.len(), "compacting");
    for (history_key, entry_revision) in doomed {
        batch.overlay.remove(history_key);
        batch.overlay.remove(keys::revision_key(entry_revision));
    }
    batch.compact_revision = revision;
    Ok(())
}

/// The user keys with a change in `(after, upper)`.
fn keys_written_between(view: &dyn KeyspaceView, after: i64, upper: Revision) -> Result<BTreeSet<Vec<u8>>> {
    let low = keys::revision_key(Revision::new(after.saturating_add(1).max(0), 0));
    let high = keys::revision_key(upper);
    let mut touched = BTreeSet::new();
    for entry in view.scan(&low, &high, false) {
        let (_, value) = entry?;
        let (_, kv) = keys::decode_change(&value)?;
        touched.insert(kv.key);
    }
    Ok(touched)
}

/// Adds to `doomed` the history entries of `key` below `upper` that the
/// compaction drops: all but the newest, and the newest too if a tombstone.
fn doomed_history(
    view: &dyn KeyspaceView,
    key: &[u8],
    upper: Revision,
    doomed: &mut Vec<(IVec, Revision)>,
) -> Result<()> {
    let low = keys::history_prefix(key);
    let high = keys::history_key(key, upper);
    let mut entries = Vec::new();
    for entry in view.scan(&low, &high, false) {
        let (raw_key, value) = entry?;
        let (_, revision) = keys::split_history_key(&raw_key)?;
        entries.push((raw_key, revision, keys::decode_history_value(&value)?));
    }
    if let Some((_, _, ChangeKind::Put)) = entries.last() {
        entries.pop();
    }
    doomed.extend(
        entries
            .into_iter()
            .map(|(raw_key, revision, _)| (raw_key, revision)),
    );
    Ok(())
}
