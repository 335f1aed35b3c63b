//! A follower's wait for its own state machine to apply the entry that
//! carried its forwarded writes, before it answers them.
//!
//! Invariant: a member answers a write it took only once it has applied
//! that write itself (or the write's deadline passed), as an etcd member
//! answers a proposal only once its own applier reached it. A client that
//! then reads serializably, or opens a watch, on the member it wrote
//! through sees its write. The leader answers a forwarded batch as soon as
//! it applied the entry; the follower learns that the entry committed only
//! from the leader's next AppendEntries, which can come after that answer.

use keel_raft::KeelRaft;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;

/// Waits on this member's applied index; cheap to clone.
#[derive(Clone)]
pub(crate) struct LocalApply {
    /// `None` in unit tests that forward without a Raft member of their own.
    raft: Option<KeelRaft>,
}

impl LocalApply {
    pub(crate) fn of(raft: KeelRaft) -> LocalApply {
        LocalApply { raft: Some(raft) }
    }

    /// For a forwarder with no state machine of its own (unit tests).
    #[cfg(test)]
    pub(crate) fn none() -> LocalApply {
        LocalApply { raft: None }
    }

    /// Whether this member has applied the entry at `log_index`.
    pub(crate) fn has_applied(&self, log_index: u64) -> bool {
        match &self.raft {
            Some(raft) => raft
                .metrics()
                .borrow_watched()
                .last_applied
                .is_some_and(|applied| applied.index >= log_index),
            None => true,
        }
    }

    /// Returns once this member applied the entry at `log_index`, or at
    /// `deadline`: the write applied on the leader either way, so a member
    /// cut off from the leader answers late, never wrongly.
    pub(crate) async fn until_applied(&self, log_index: u64, deadline: Instant) {
        let Some(raft) = &self.raft else { return };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(error) = raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(log_index), "a forwarded write applied here")
            .await
        {
            tracing::debug!(%error, log_index, "answering forwarded writes before applying them here");
        }
    }
}
