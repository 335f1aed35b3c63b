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

use tokio::sync::Notify;

/// The applied-write count and the count at the last snapshot; cheap to
/// clone, shared by the state machine and whoever triggers snapshots.
///
/// The applier wakes the waiter only when the count it waits for is
/// reached, not on every apply: the waiter lives as long as the member, and
/// a wake-up per applied entry was a task switch per write.
#[derive(Clone, Default)]
pub struct AppliedWrites {
    shared: Arc<Counts>,
}

struct Counts {
    applied: AtomicU64,
    at_last_snapshot: AtomicU64,
    /// Writes since the last snapshot that the waiter waits for; `u64::MAX`
    /// while nobody waits.
    waited_for: AtomicU64,
    reached: Notify,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            applied: AtomicU64::new(0),
            at_last_snapshot: AtomicU64::new(0),
            waited_for: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
        }
    }
}

impl AppliedWrites {
    /// Called by the state machine once a batch of this many writes is
    /// committed.
    pub(crate) fn add(&self, writes: u64) {
        if writes == 0 {
            return;
        }
        // SeqCst with the waiter's store and load below: one of the two sees
        // the other's write, so the wake-up is never missed.
        self.shared.applied.fetch_add(writes, Ordering::SeqCst);
        if self.since_last_snapshot() >= self.shared.waited_for.load(Ordering::SeqCst) {
            self.shared.reached.notify_one();
        }
    }

    /// Called just before the keyspace cut a snapshot is built from: the
    /// snapshot holds at least everything applied so far (writes applied
    /// between this and the cut count towards the next snapshot, which
    /// therefore comes a little early, never late).
    pub(crate) fn mark_snapshot(&self) {
        let applied = self.shared.applied.load(Ordering::Acquire);
        self.shared.at_last_snapshot.store(applied, Ordering::Release);
    }

    /// Writes applied since the last snapshot this process built or
    /// installed (or since it started).
    pub fn since_last_snapshot(&self) -> u64 {
        let applied = self.shared.applied.load(Ordering::SeqCst);
        applied.saturating_sub(self.shared.at_last_snapshot.load(Ordering::Acquire))
    }

    /// Waits until at least `count` writes were applied since the last
    /// snapshot. One waiter at a time (the member's snapshot trigger).
    pub async fn wait_for_writes_since_snapshot(&self, count: u64) {
        self.shared.waited_for.store(count, Ordering::SeqCst);
        // `notify_one` keeps a permit when nobody is waiting yet, so an
        // apply between the check and the wait is not missed.
        while self.since_last_snapshot() < count {
            self.shared.reached.notified().await;
        }
        self.shared.waited_for.store(u64::MAX, Ordering::Release);
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
