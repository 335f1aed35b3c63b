//! Who leads, as this member sees it, and bounded waiting for a leader.
//!
//! A leader that has not heard from a quorum for longer than the election
//! timeout does not count as a leader, so requests on a cut-off member fail
//! with "etcdserver: no leader" before anything is proposed, instead of
//! hanging. (openraft 0.10's CheckQuorum refuses the proposal itself too, but
//! only once keel has handed it over, where keel answers the indeterminate
//! "leader changed"; and the leader keeps its role either way.) For the same
//! reason a leader elected a moment ago counts only once a quorum
//! acknowledged it: openraft refuses its proposals until then. Likewise a
//! follower that has not heard from its leader for the election timeout
//! trusts it no more: with pre-vote, a member cut off in a minority never
//! raises its term, so openraft keeps reporting the lost leader forever.
//! openraft 0.10 has no such follower-side check, so keel keeps this one. A
//! follower that saw its leader's connection close stops trusting it at once
//! (`leader_connection.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::WireError;
use keel_raft::{KeelRaft, MemberNode, NodeId, TypeConfig};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{Instant as _, RaftMetrics, ServerState};
use tokio::time::Instant;

/// When this member last heard from a leader it accepts (or granted a
/// vote); the peer service touches it. A follower that saw its leader's
/// connection close loses the contact (`leader_connection.rs`) until it
/// hears from a leader again.
#[derive(Clone)]
pub(crate) struct LeaderContact {
    origin: std::time::Instant,
    /// Microseconds from `origin` to the last contact, plus one; `LOST`
    /// (0) once the contact was lost.
    last_contact: Arc<AtomicU64>,
}

const LOST: u64 = 0;

impl LeaderContact {
    pub(crate) fn new() -> Self {
        LeaderContact {
            origin: std::time::Instant::now(),
            // As if contacted at creation.
            last_contact: Arc::new(AtomicU64::new(LOST + 1)),
        }
    }

    pub(crate) fn touch(&self) {
        let now = self.origin.elapsed().as_micros() as u64 + 1;
        self.last_contact.fetch_max(now, Ordering::Relaxed);
    }

    /// Forgets the leader: no contact counts until the next `touch`.
    pub(crate) fn lose(&self) {
        self.last_contact.store(LOST, Ordering::Relaxed);
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.last_contact.load(Ordering::Relaxed) == LOST
    }

    pub(crate) fn since_last_contact(&self) -> Duration {
        match self.last_contact.load(Ordering::Relaxed) {
            LOST => Duration::MAX,
            last => self
                .origin
                .elapsed()
                .saturating_sub(Duration::from_micros(last - 1)),
        }
    }
}

#[derive(Clone)]
pub struct Leadership {
    raft: KeelRaft,
    self_id: NodeId,
    election_timeout: Duration,
    contact: LeaderContact,
}

impl Leadership {
    pub(crate) fn new(
        raft: KeelRaft,
        self_id: NodeId,
        election_timeout: Duration,
        contact: LeaderContact,
    ) -> Self {
        Leadership {
            raft,
            self_id,
            election_timeout,
            contact,
        }
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// The leader this member currently trusts, with its member record.
    pub fn known_leader(&self) -> Option<(NodeId, MemberNode)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        self.known_leader_in(&metrics)
    }

    /// [`Self::known_leader`] as of `metrics`, a snapshot of openraft's
    /// metrics the caller also reads other fields from. Status reads its
    /// term and its leader from one snapshot: read apart, a member whose
    /// vote moved in between pairs its old term with the next term's leader
    /// (the long partition suite once saw it, and counted two leaders in
    /// that term).
    pub fn known_leader_in(&self, metrics: &RaftMetrics<TypeConfig>) -> Option<(NodeId, MemberNode)> {
        let leader = metrics.current_leader?;
        if leader == self.self_id {
            if metrics.state != ServerState::Leader {
                return None;
            }
            // openraft refuses proposals until a quorum acknowledged this
            // leader, and again once that is older than the lease.
            let voters = metrics.membership_config.membership().voter_ids().count();
            let quorum_ack_age = metrics.last_quorum_acked.as_ref().map(|acked| acked.elapsed());
            if voters > 1 && quorum_ack_age.is_none_or(|age| age > self.election_timeout) {
                return None;
            }
        } else if self.contact.since_last_contact() > self.election_timeout {
            return None;
        }
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    pub fn is_leader(&self) -> bool {
        self.known_leader().is_some_and(|(id, _)| id == self.self_id)
    }

    /// Waits until a leader is known, or fails with "no leader" at `deadline`.
    pub async fn wait_for_leader(&self, deadline: Instant) -> Result<(NodeId, MemberNode), WireError> {
        loop {
            if let Some(leader) = self.known_leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(WireError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a leader other than `previous` is known, or `deadline`.
    pub async fn wait_for_another_leader(&self, previous: NodeId, deadline: Instant) {
        while Instant::now() < deadline {
            if self.known_leader().is_some_and(|(leader, _)| leader != previous) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// openraft's term while it has this member in the leader state (before
    /// keel's own checks of [`Self::known_leader`]), else `None`.
    pub fn raft_leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        (metrics.state == ServerState::Leader).then_some(metrics.current_term)
    }

    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }
}

/// What the read and write paths share to reach the leader from this member.
#[derive(Clone)]
pub(crate) struct LeaderRoute {
    pub(crate) raft: KeelRaft,
    pub(crate) leadership: Leadership,
    pub(crate) network: crate::network::PeerNetwork,
    /// The whole time one client request may take.
    pub(crate) request_timeout: Duration,
    /// How long a request waits for a leader to be known.
    pub(crate) leader_wait: Duration,
}
