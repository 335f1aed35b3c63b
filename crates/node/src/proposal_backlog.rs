//! What the leader's proposer is about to do, for the replication sessions
//! that decide whether a commit-only AppendEntries may wait for the next
//! request (`commit_only_folding.rs`): how many proposals wait in its queue
//! for the next log entry, and whether the entry in flight carries writes
//! forwarded by a follower.
//!
//! Holding a commit-only request is worth it only when a next entry is
//! coming soon, and harmless only when no follower waits on that commit: a
//! follower answers its forwarded writes only once it applied them
//! (`local_apply.rs`), and it learns the commit from that very request. So
//! the commit may wait only while proposals are queued and the entry in
//! flight carries no forwarded writes. One client writing one write after
//! another, or clients writing through followers, keep it unheld.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Shared by the proposer and the replication sessions; cheap to clone.
#[derive(Clone, Default, Debug)]
pub(crate) struct ProposalBacklog {
    shared: Arc<Backlog>,
}

#[derive(Default, Debug)]
struct Backlog {
    waiting: AtomicUsize,
    entry_in_flight_carries_forwarded_writes: AtomicBool,
}

/// One proposal counted as waiting until this is dropped: it travels inside
/// the proposal, so a proposal the proposer took, one whose sending was
/// given up, and one left in a stopped proposer's queue all stop counting.
#[derive(Debug)]
pub(crate) struct WaitingProposal {
    shared: Arc<Backlog>,
}

impl ProposalBacklog {
    /// Counts a proposal about to enter the proposer's queue.
    pub(crate) fn entering(&self) -> WaitingProposal {
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingProposal {
            shared: self.shared.clone(),
        }
    }

    /// The proposer is about to propose an entry.
    pub(crate) fn proposing(&self, carries_forwarded_writes: bool) {
        self.shared
            .entry_in_flight_carries_forwarded_writes
            .store(carries_forwarded_writes, Ordering::Relaxed);
    }

    /// Whether a commit-only request may wait for the next request now.
    pub(crate) fn commit_may_wait(&self) -> bool {
        self.shared.waiting.load(Ordering::Relaxed) > 0
            && !self
                .shared
                .entry_in_flight_carries_forwarded_writes
                .load(Ordering::Relaxed)
    }
}

impl Drop for WaitingProposal {
    fn drop(&mut self) {
        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_may_wait_only_while_a_proposal_waits() {
        let backlog = ProposalBacklog::default();
        assert!(!backlog.commit_may_wait());
        let first = backlog.entering();
        let second = backlog.entering();
        drop(first);
        assert!(backlog.commit_may_wait());
        drop(second);
        assert!(!backlog.commit_may_wait());
    }

    #[test]
    fn a_commit_never_waits_while_the_entry_in_flight_carries_forwarded_writes() {
        let backlog = ProposalBacklog::default();
        let _queued = backlog.entering();
        backlog.proposing(true);
        assert!(!backlog.commit_may_wait());
        backlog.proposing(false);
        assert!(backlog.commit_may_wait());
    }
}
