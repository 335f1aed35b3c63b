//! Leaders of an earlier keel that answered a batched call "unimplemented"
//! (forwarded writes, lease renewals): for a while, a follower sends them
//! its requests one per call instead. Every forwarded request asks; while
//! no leader is marked (every cluster of one keel version) the answer is
//! one atomic load, not a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_raft::NodeId;
use tokio::time::Instant;

/// Leaders marked, each until an instant; cheap to clone (shared).
#[derive(Clone)]
pub(crate) struct BatchlessLeaders(Arc<MarkedLeaders>);

struct MarkedLeaders {
    /// How long a leader stays marked (it may have been upgraded since).
    marked_for: Duration,
    /// Whether `until` may hold a leader; only changed under its lock.
    any: AtomicBool,
    until: Mutex<HashMap<NodeId, Instant>>,
}

impl BatchlessLeaders {
    pub(crate) fn new(marked_for: Duration) -> BatchlessLeaders {
        BatchlessLeaders(Arc::new(MarkedLeaders {
            marked_for,
            any: AtomicBool::new(false),
            until: Mutex::new(HashMap::new()),
        }))
    }

    /// `leader` answered a batch "unimplemented".
    pub(crate) fn mark(&self, leader: NodeId) {
        let mut leaders = self
            .0
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        leaders.insert(leader, Instant::now() + self.0.marked_for);
        self.0.any.store(true, Ordering::Release);
    }

    /// Whether `leader` takes its requests one per call now.
    pub(crate) fn is_marked(&self, leader: NodeId) -> bool {
        if !self.0.any.load(Ordering::Acquire) {
            return false;
        }
        let mut leaders = self
            .0
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let marked = match leaders.get(&leader) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                leaders.remove(&leader);
                false
            }
            None => false,
        };
        if leaders.is_empty() {
            self.0.any.store(false, Ordering::Release);
        }
        marked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_marked_leader_stays_marked_until_its_time_is_up_then_none_is_marked() {
        let marked_for = Duration::from_secs(60);
        let leaders = BatchlessLeaders::new(marked_for);
        assert!(!leaders.is_marked(1));
        leaders.mark(1);
        assert!(leaders.is_marked(1));
        assert!(!leaders.is_marked(2));
        tokio::time::advance(marked_for + Duration::from_secs(1)).await;
        assert!(!leaders.is_marked(1));
        assert!(
            !leaders.0.any.load(Ordering::Acquire),
            "no leader is marked any more"
        );
    }
}
