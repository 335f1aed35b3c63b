//! Counts what the state machine applies in etcd's unit, one client write,
//! so that a member takes a snapshot every `--snapshot-count` writes as etcd
//! does.
//!
//! etcd's `--snapshot-count` counts applied Raft entries, and each etcd entry
//! holds one request. A keel entry is a group-committed batch that may hold
//! hundreds of writes, so counting entries (openraft's `LogsSinceLast`) let a
//! member go a million writes without a snapshot: its log was never purged,
//! and a member added later replayed the whole history instead of installing
//! a snapshot.
//!
//! Rule: an entry counts as the number of requests in its batch, at least
//! one (blank and membership entries count one), so this count never runs
//! behind openraft's entry count. The count is since the process started; a
//! built or installed snapshot marks the count it covers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// The applied-write count and the count at the last snapshot; cheap to
/// clone, shared by the state machine and whoever triggers snapshots.
#[derive(Clone)]
pub struct AppliedWrites {
    applied: Arc<watch::Sender<u64>>,
    at_last_snapshot: Arc<AtomicU64>,
}

impl Default for AppliedWrites {
    fn default() -> Self {
        AppliedWrites {
            applied: Arc::new(watch::Sender::new(0)),
            at_last_snapshot: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl AppliedWrites {
    /// Called by the state machine once a batch of this many writes is
    /// committed.
    pub(crate) fn add(&self, writes: u64) {
        if writes > 0 {
            self.applied.send_modify(|applied| *applied += writes);
        }
    }

    /// Called with the apply gate held, when the state a snapshot covers is
    /// fixed: everything applied so far is in it.
    pub(crate) fn mark_snapshot(&self) {
        self.at_last_snapshot
            .store(*self.applied.borrow(), Ordering::Release);
    }

    /// Writes applied since the last snapshot this process built or
    /// installed (or since it started).
    pub fn since_last_snapshot(&self) -> u64 {
        let applied = *self.applied.borrow();
        applied.saturating_sub(self.at_last_snapshot.load(Ordering::Acquire))
    }

    /// Waits until at least `count` writes were applied since the last
    /// snapshot.
    pub async fn wait_for_writes_since_snapshot(&self, count: u64) {
        let mut applied = self.applied.subscribe();
        loop {
            if self.since_last_snapshot() >= count {
                return;
            }
            if applied.changed().await.is_err() {
                // The sender lives as long as `self`: never reached.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How many writes an entry of `requests` requests counts as.
pub(crate) fn writes_in_entry(requests: usize) -> u64 {
    requests.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_snapshot_resets_the_count_and_the_waiter_wakes_at_the_threshold() {
        let writes = AppliedWrites::default();
        writes.add(writes_in_entry(0));
        writes.add(writes_in_entry(40));
        assert_eq!(writes.since_last_snapshot(), 41);
        writes.mark_snapshot();
        assert_eq!(writes.since_last_snapshot(), 0);

        let waiter = {
            let writes = writes.clone();
            tokio::spawn(async move { writes.wait_for_writes_since_snapshot(100).await })
        };
        writes.add(99);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "woke before the threshold");
        writes.add(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke at the threshold")
            .expect("waiter task");
    }
}
