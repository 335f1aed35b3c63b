//! Compaction inside an apply batch (etcd's `Compact`, done synchronously so
//! that it is part of the deterministic apply).
//!
//! Rule: after compacting at `C`, for every key the history at or below `C`
//! keeps only its newest entry there, and only if that entry is a put (a
//! tombstone at or below `C` goes with everything older). Reads below `C`
//! fail with `Compacted`; the store revision does not change.
//!
//! Both the revision records and the index entries go: records are removed
//! in the batch's overlay, and the key's pending index entry drops the same
//! changes (a prefix of its history); a key left with nothing leaves the
//! index at commit.
//!
//! Only keys written since the previous compaction can have anything to
//! drop: a key untouched since then has at most one entry at or below the
//! previous compact revision, a put, which stays. So the work is bounded by
//! the writes since the last compaction, not by the keyspace size.

use std::collections::BTreeSet;

use crate::apply::ApplyBatch;
use crate::error::{MvccError, Result};
use crate::index::{Change, KeyState};
use crate::keys::{self, ChangeKind, Revision};
use crate::view::{BatchView, View};

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
    let doomed: Vec<(Vec<u8>, Vec<Change>)> = {
        let view = batch.view();
        keys_written_between(&view, batch.compact_revision, upper)?
            .into_iter()
            .filter_map(|key| {
                let dropped = view
                    .key_state(&key)
                    .map(|state| doomed_changes(state, revision))?;
                (!dropped.is_empty()).then_some((key, dropped))
            })
            .collect()
    };
    tracing::debug!(
        revision,
        dropped = doomed.iter().map(|(_, changes)| changes.len()).sum::<usize>(),
        "compacting"
    );
    for (key, dropped) in doomed {
        for change in &dropped {
            batch.overlay.remove(&keys::revision_key(change.revision())[..]);
        }
        let (pending, committed) = batch.key_entry(&key);
        pending.drop_oldest(dropped.len(), committed);
    }
    batch.compact_revision = revision;
    Ok(())
}

/// The user keys with a change in `(after, upper)`, from their records.
fn keys_written_between(view: &BatchView<'_>, after: i64, upper: Revision) -> Result<BTreeSet<Vec<u8>>> {
    let low = keys::revision_key(Revision::new(after.saturating_add(1).max(0), 0));
    let high = keys::revision_key(upper);
    let mut touched = BTreeSet::new();
    for entry in view.scan(&low, &high) {
        let (_, value) = entry?;
        let record = keys::decode_record(&value)?;
        if !touched.contains(record.key) {
            touched.insert(record.key.to_vec());
        }
    }
    Ok(touched)
}

/// The changes of a key that a compaction at `at` drops: those at or below
/// `at`, except the newest of them if it is a put. Always a prefix of the
/// key's history, never its live put.
fn doomed_changes(state: KeyState<'_>, at: i64) -> Vec<Change> {
    let mut through: Vec<Change> = state.changes().take_while(|change| change.main() <= at).collect();
    if through
        .last()
        .is_some_and(|newest| newest.kind() == ChangeKind::Put)
    {
        through.pop();
    }
    through
}
