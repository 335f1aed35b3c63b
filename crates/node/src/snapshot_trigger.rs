//! Takes a snapshot every `--snapshot-count` applied client writes (etcd's
//! unit), not every `--snapshot-count` log entries: a keel entry is a
//! group-committed batch of many writes (`keel_raft::applied_writes`).
//! openraft's own entry-count policy stays on as a backstop; it can only
//! come second, since every entry counts at least one write.
//!
//! Each snapshot lets openraft purge the log behind it (keeping
//! `max_in_snapshot_log_to_keep` entries), so a member that is added or
//! falls far behind catches up by snapshot, as in etcd, instead of
//! replaying the cluster's whole history.

use std::time::Duration;

use keel_raft::{AppliedWrites, KeelRaft};

/// How long to wait before asking again when a snapshot was asked for and
/// none was built (one was already being built, which openraft then keeps).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs until openraft stops.
pub async fn snapshot_every_n_writes(raft: KeelRaft, applied_writes: AppliedWrites, snapshot_count: u64) {
    loop {
        applied_writes
            .wait_for_writes_since_snapshot(snapshot_count)
            .await;
        tracing::debug!(
            writes = applied_writes.since_last_snapshot(),
            snapshot_count,
            "snapshot count reached"
        );
        if raft.trigger().snapshot().await.is_err() {
            // openraft stopped (shut down or a fatal storage error, which
            // the node reports itself).
            return;
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}
