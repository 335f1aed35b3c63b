//! etcd's membership changes (MemberAdd, MemberRemove, MemberUpdate,
//! MemberPromote) as openraft membership changes, and the notice that tells
//! a removed member it was removed.
//!
//! Invariants:
//! - Only the leader changes the membership, through openraft's joint
//!   consensus, so no two majorities exist at any moment; openraft refuses a
//!   change while another is uncommitted, so there is one at a time. A
//!   change asked on a follower is routed to the leader (`leader_call.rs`)
//!   and is never repeated once it may have reached the leader's Raft: its
//!   effect is then unknown ("leader changed").
//! - etcd's safety checks run on the leader before anything is proposed:
//!   a voter is added, promoted or removed only while enough voters are
//!   started (published their attributes) and connected for the new
//!   configuration to have a quorum.
//! - An added member gets an id the cluster never used: a hash of its peer
//!   URLs, the cluster token and the time, checked against the current and
//!   the removed members. A removed id is in the replicated removed list
//!   (the state machine); a member refused as removed by a peer, or that
//!   finds its own id in that list, stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_api::etcdserverpb::{MemberAddRequest, MemberRemoveRequest, MemberUpdateRequest};
use keel_api::keelpb::membership_change::Change;
use keel_api::keelpb::MembershipChange;
use keel_api::WireError;
use keel_raft::state_machine::StateView;
use keel_raft::{KeelRaft, MemberNode, NodeId};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Instant as _};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::leader_call::{AttemptFailure, LeaderAt, LeaderCall, Repeat};
use crate::leadership::LeaderRoute;
use crate::network::PeerMessage;
use crate::request_error::RequestError;

/// A voter not heard from for this long counts as not connected (etcd's
/// health interval for reconfiguration checks).
const CONNECTED_WITHIN: Duration = Duration::from_secs(5);

/// etcd 3.4 allows one learner at a time.
const MAX_LEARNERS: usize = 1;

/// How long a leader removing itself waits for another voter to take over.
const SELF_REMOVAL_TRANSFER_LIMIT: Duration = Duration::from_secs(5);

/// Changes the cluster's membership from any member.
#[derive(Clone)]
pub(crate) struct MembershipChanges {
    raft: KeelRaft,
    state: StateView,
    call: LeaderCall,
    cluster_token: Arc<str>,
    request_timeout: Duration,
}

impl MembershipChanges {
    pub(crate) fn new(route: &LeaderRoute, state: StateView, cluster_token: &str) -> Self {
        MembershipChanges {
            raft: route.raft.clone(),
            state,
            call: LeaderCall::new(route, Duration::from_millis(100)),
            cluster_token: Arc::from(cluster_token),
            request_timeout: route.request_timeout,
        }
    }

    /// Makes `change` on the leader; answers the id of the member it was
    /// about (for an add, the id it got).
    pub(crate) async fn change(&self, change: MembershipChange) -> Result<NodeId, RequestError> {
        let deadline = Instant::now() + self.request_timeout;
        let change = &change;
        self.call
            .until_answered(
                PeerMessage::ChangeMembership,
                Repeat::ActsOnce,
                deadline,
                |at| async move {
                    match at {
                        LeaderAt::Here => self
                            .change_as_leader(change.clone())
                            .await
                            .map_err(AttemptFailure::Here),
                        LeaderAt::Peer(_, mut client) => {
                            let mut request = tonic::Request::new(change.clone());
                            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
                            client
                                .change_membership(request)
                                .await
                                .map(|answer| answer.into_inner().member_id)
                                .map_err(AttemptFailure::Peer)
                        }
                    }
                },
            )
            .await
    }

    /// Makes `change` on this member, which must lead (else it refuses with
    /// `RefusedNotLeader` before acting).
    pub(crate) async fn change_as_leader(&self, change: MembershipChange) -> Result<NodeId, RequestError> {
        if !self.call.leadership.is_leader() {
            return Err(RequestError::RefusedNotLeader);
        }
        let view = ClusterView::now(&self.raft, &self.state);
        match change.change {
            Some(Change::Add(add)) => self.add(&view, add).await,
            Some(Change::Remove(MemberRemoveRequest { id })) => self.remove(&view, id).await,
            Some(Change::Update(update)) => self.update(&view, update).await,
            Some(Change::Promote(promote)) => self.promote(&view, promote.id).await,
            None => Err(RequestError::EmptyMembershipChange),
        }
    }

    async fn add(&self, view: &ClusterView, add: MemberAddRequest) -> Result<NodeId, RequestError> {
        let peer_url = checked_peer_url(&add.peer_ur_ls)?;
        if view
            .nodes
            .values()
            .any(|node| add.peer_ur_ls.contains(&node.peer_url))
        {
            return Err(WireError::PeerUrlExists.into());
        }
        if add.is_learner {
            if view.learners().count() >= MAX_LEARNERS {
                return Err(WireError::TooManyLearners.into());
            }
        } else {
            view.check_voters_after(view.voters.len() + 1, None)?;
        }
        let id = self.fresh_member_id(view, &add.peer_ur_ls);
        let node = MemberNode {
            name: String::new(),
            peer_url,
        };
        let change = if add.is_learner {
            ChangeMembers::AddNodes(BTreeMap::from([(id, node)]))
        } else {
            ChangeMembers::AddVoters(BTreeMap::from([(id, node)]))
        };
        tracing::info!(
            member_id = %format!("{id:x}"),
            learner = add.is_learner,
            peer_urls = ?add.peer_ur_ls,
            "adding a member"
        );
        self.propose(change).await?;
        Ok(id)
    }

    async fn remove(&self, view: &ClusterView, id: NodeId) -> Result<NodeId, RequestError> {
        if !view.nodes.contains_key(&id) {
            return Err(WireError::MemberNotFound.into());
        }
        let change = if view.voters.contains(&id) {
            view.check_voters_after(view.voters.len() - 1, Some(id))?;
            if id == self.call.leadership.self_id() {
                // The leader leaves last: another voter takes over first and
                // makes the change (the caller's loop follows it there).
                self.hand_over_leadership(view, id).await;
                return Err(RequestError::RefusedNotLeader);
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(member_id = %format!("{id:x}"), "removing a member");
        self.propose(change).await?;
        Ok(id)
    }

    async fn update(&self, view: &ClusterView, update: MemberUpdateRequest) -> Result<NodeId, RequestError> {
        let peer_url = checked_peer_url(&update.peer_ur_ls)?;
        let Some(current) = view.nodes.get(&update.id) else {
            return Err(WireError::MemberNotFound.into());
        };
        if view
            .nodes
            .iter()
            .any(|(id, node)| *id != update.id && update.peer_ur_ls.contains(&node.peer_url))
        {
            return Err(WireError::PeerUrlExists.into());
        }
        let node = MemberNode {
            name: current.name.clone(),
            peer_url,
        };
        tracing::info!(member_id = %format!("{:x}", update.id), peer_urls = ?update.peer_ur_ls, "updating a member's peer URLs");
        self.propose(ChangeMembers::SetNodes(BTreeMap::from([(update.id, node)])))
            .await?;
        Ok(update.id)
    }

    async fn promote(&self, view: &ClusterView, id: NodeId) -> Result<NodeId, RequestError> {
        if !view.nodes.contains_key(&id) {
            return Err(WireError::MemberNotFound.into());
        }
        if view.voters.contains(&id) {
            return Err(WireError::MemberNotLearner.into());
        }
        if !view.learner_in_sync(id) {
            return Err(WireError::LearnerNotReady.into());
        }
        view.check_voters_after(view.voters.len() + 1, None)?;
        tracing::info!(member_id = %format!("{id:x}"), "promoting a learner to voter");
        self.propose(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await?;
        Ok(id)
    }

    /// Proposes `change` and waits until it is committed.
    async fn propose(&self, change: ChangeMembers<NodeId, MemberNode>) -> Result<(), RequestError> {
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => Err(RequestError::MembershipChangeInProgress),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(refused))) => {
                Err(RequestError::MembershipChangeRefused(refused.to_string()))
            }
            // Proposed or not: its effect is unknown.
            Err(RaftError::APIError(_)) => Err(WireError::LeaderChanged.into()),
            Err(RaftError::Fatal(_)) => Err(WireError::Stopped.into()),
        }
    }

    /// Hands leadership to the most caught-up other voter; a failed handover
    /// leaves this member leading, and the caller's next attempt tries again.
    async fn hand_over_leadership(&self, view: &ClusterView, leaving: NodeId) {
        let successor = view
            .voters
            .iter()
            .filter(|id| **id != leaving)
            .max_by_key(|id| view.matched.get(id).copied().flatten());
        if let Some(successor) = successor {
            tracing::info!(to = %format!("{successor:x}"), "handing leadership over before removing this member");
            if let Err(error) = crate::leader_transfer::transfer_leadership(
                &self.raft,
                *successor,
                SELF_REMOVAL_TRANSFER_LIMIT,
            )
            .await
            {
                tracing::warn!(%error, "leadership handover before self-removal failed");
            }
        }
    }

    /// An id no member of the cluster has or had.
    fn fresh_member_id(&self, view: &ClusterView, peer_urls: &[String]) -> NodeId {
        let mut salt = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default();
        loop {
            let id = added_member_id(peer_urls, &self.cluster_token, salt);
            if !view.nodes.contains_key(&id) && !self.state.is_removed(id) {
                return id;
            }
            salt += 1;
        }
    }
}

/// etcd's id for an added member: its sorted peer URLs, the cluster token
/// and the time of the add (never 0, which means "no member").
fn added_member_id(peer_urls: &[String], cluster_token: &str, salt: u128) -> NodeId {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let mut hasher = Sha256::new();
    hasher.update(sorted.concat().as_bytes());
    hasher.update(cluster_token.as_bytes());
    hasher.update(salt.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes).max(1)
}

/// The first of `peer_urls` once every one passes etcd's rule for member
/// URLs and is an http(s) one (keel dials its peers over TCP only); keel
/// dials the first.
fn checked_peer_url(peer_urls: &[String]) -> Result<String, RequestError> {
    let dialable = |url: &String| {
        keel_api::member_urls::check_member_url(url).is_ok_and(|scheme| scheme.starts_with("http"))
    };
    match peer_urls.first() {
        Some(first) if peer_urls.iter().all(dialable) => Ok(first.clone()),
        _ => Err(WireError::MemberBadUrls.into()),
    }
}

/// The leader's view of the cluster for one change.
struct ClusterView {
    self_id: NodeId,
    voters: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, MemberNode>,
    /// Members that published their attributes (etcd's "started").
    started: BTreeSet<NodeId>,
    /// Members acknowledged within `CONNECTED_WITHIN` (and the leader).
    connected: BTreeSet<NodeId>,
    matched: BTreeMap<NodeId, Option<u64>>,
    last_log_index: u64,
}

impl ClusterView {
    fn now(raft: &KeelRaft, state: &StateView) -> ClusterView {
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let started = state.member_attributes().keys().copied().collect();
        let mut connected: BTreeSet<NodeId> = metrics
            .heartbeat
            .iter()
            .flatten()
            .filter(|(_, acked)| acked.as_ref().is_some_and(|at| at.elapsed() < CONNECTED_WITHIN))
            .map(|(id, _)| *id)
            .collect();
        connected.insert(metrics.id);
        let matched = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, log_id)| (*id, log_id.as_ref().map(|log_id| log_id.index)))
            .collect();
        ClusterView {
            self_id: metrics.id,
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.clone())).collect(),
            started,
            connected,
            matched,
            last_log_index: metrics.last_log_index.unwrap_or(0),
        }
    }

    fn learners(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.keys().filter(|id| !self.voters.contains(id))
    }

    /// etcd's checks before a change leaving `voters_after` voters (without
    /// `leaving`): enough of them are started, and enough connected, to
    /// form a quorum of the new configuration.
    fn check_voters_after(&self, voters_after: usize, leaving: Option<NodeId>) -> Result<(), RequestError> {
        let staying = self.voters.iter().filter(|id| Some(**id) != leaving);
        let started = staying.clone().filter(|id| self.started.contains(id)).count();
        let quorum = voters_after / 2 + 1;
        // A one-member cluster may add its second member (etcd's exception).
        let growing_from_one = self.voters.len() == 1 && voters_after == 2;
        if started < quorum && !growing_from_one {
            return Err(WireError::MemberNotEnoughStarted.into());
        }
        let connected = staying.filter(|id| self.connected.contains(id)).count();
        if connected < quorum && !growing_from_one {
            return Err(WireError::Unhealthy.into());
        }
        Ok(())
    }

    /// etcd's readiness for a promotion: the learner has at least 90% of the
    /// leader's log.
    fn learner_in_sync(&self, id: NodeId) -> bool {
        let matched = self.matched.get(&id).copied().flatten().unwrap_or(0);
        id != self.self_id && matched as f64 >= self.last_log_index as f64 * 0.9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_are_checked_as_etcd_checks_them() {
        for good in [
            vec!["http://127.0.0.1:2380"],
            vec!["https://a.example:1", "http://b:2"],
        ] {
            let urls: Vec<String> = good.iter().map(|u| u.to_string()).collect();
            assert_eq!(checked_peer_url(&urls).ok(), Some(urls[0].clone()));
        }
        for bad in [
            vec![],
            vec!["127.0.0.1:2380"],
            vec!["http://127.0.0.1"],
            vec!["http://h:1/path"],
            vec!["http://h:1", "ftp://h:2"],
            // Valid for etcd, but keel dials its peers over TCP only.
            vec!["unix://sock"],
        ] {
            let urls: Vec<String> = bad.iter().map(|u| u.to_string()).collect();
            assert!(
                matches!(
                    checked_peer_url(&urls),
                    Err(RequestError::Wire(WireError::MemberBadUrls))
                ),
                "{urls:?}"
            );
        }
    }

    #[test]
    fn the_same_peer_urls_added_at_another_time_get_another_id() {
        let urls = vec!["http://127.0.0.1:2380".to_string()];
        assert_ne!(added_member_id(&urls, "t", 1), added_member_id(&urls, "t", 2));
        assert_eq!(added_member_id(&urls, "t", 1), added_member_id(&urls, "t", 1));
    }

    fn view(voters: &[NodeId], started: &[NodeId], connected: &[NodeId]) -> ClusterView {
        ClusterView {
            self_id: voters[0],
            voters: voters.iter().copied().collect(),
            nodes: voters
                .iter()
                .map(|id| {
                    (
                        *id,
                        MemberNode {
                            name: String::new(),
                            peer_url: format!("http://h:{id}"),
                        },
                    )
                })
                .collect(),
            started: started.iter().copied().collect(),
            connected: connected.iter().copied().collect(),
            matched: BTreeMap::new(),
            last_log_index: 0,
        }
    }

    #[test]
    fn a_voter_is_added_only_while_a_quorum_of_the_grown_cluster_is_started_and_connected() {
        let all_up = view(&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]);
        assert!(all_up.check_voters_after(4, None).is_ok());
        let one_unstarted = view(&[1, 2, 3], &[1, 2], &[1, 2, 3]);
        assert!(matches!(
            one_unstarted.check_voters_after(4, None),
            Err(RequestError::Wire(WireError::MemberNotEnoughStarted))
        ));
        let one_cut_off = view(&[1, 2, 3], &[1, 2, 3], &[1, 2]);
        assert!(matches!(
            one_cut_off.check_voters_after(4, None),
            Err(RequestError::Wire(WireError::Unhealthy))
        ));
        assert!(view(&[1], &[1], &[1]).check_voters_after(2, None).is_ok());
    }

    #[test]
    fn removing_a_voter_needs_a_quorum_of_the_rest_started() {
        let one_down = view(&[1, 2, 3], &[1, 2], &[1, 2]);
        // Removing the member that is down leaves 2 of 2 started.
        assert!(one_down.check_voters_after(2, Some(3)).is_ok());
        // Removing a live one leaves 1 started of 2: no quorum.
        assert!(matches!(
            one_down.check_voters_after(2, Some(2)),
            Err(RequestError::Wire(WireError::MemberNotEnoughStarted))
        ));
    }
}
