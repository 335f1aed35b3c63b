//! Raft's pre-vote, which openraft 0.9 lacks: before a member raises its term
//! and asks for real votes, it asks every voter whether it WOULD vote for it.
//!
//! Invariant: a member starts a real election only when a quorum (itself
//! included) would vote for it. A voter would, only when (1) it is not a
//! leader in good standing, (2) it has not heard from a leader for the
//! leader lease, and (3) the candidate's last log id is at least as up to
//! date as its own (last term, then last index, as Raft compares them).
//! So a member with a stale log, or cut off in a minority, never inflates
//! its term: it cannot win, and a higher term would only depose a healthy
//! leader or outrun the member that can win (openraft 0.9 does not raise a
//! voter's term on a refused vote, so a stale candidate that keeps
//! campaigning can stay a term ahead of the up-to-date member indefinitely).

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use keel_api::keelpb::{PreVoteRequest, PreVoteResponse};
use keel_raft::network::PeerMessage;
use keel_raft::type_config::LogId;
use keel_raft::{KeelRaft, NodeId, PeerNetwork, SledLogStore};

/// A log position as elections compare it: (last term, last index).
pub type LogPosition = Option<(u64, u64)>;

pub fn log_position(log_id: Option<LogId>) -> LogPosition {
    log_id.map(|id| (id.leader_id.term, id.index))
}

/// What a voter tells a pre-candidate.
pub fn answer(
    leader_in_good_standing: bool,
    quiet_for: Duration,
    leader_lease: Duration,
    mine: LogPosition,
    candidate: LogPosition,
) -> PreVoteResponse {
    let up_to_date = candidate >= mine;
    PreVoteResponse {
        would_grant: !leader_in_good_standing && quiet_for >= leader_lease && up_to_date,
        longer_log: mine > candidate,
    }
}

pub fn request_from(candidate_id: NodeId, position: LogPosition) -> PreVoteRequest {
    let (last_log_term, last_log_index) = position.unwrap_or_default();
    PreVoteRequest {
        candidate_id,
        has_log: position.is_some(),
        last_log_term,
        last_log_index,
    }
}

pub fn position_of(request: &PreVoteRequest) -> LogPosition {
    request
        .has_log
        .then_some((request.last_log_term, request.last_log_index))
}

/// How a pre-vote round went.
pub struct PreVoteOutcome {
    /// A quorum of voters (this member included) would vote for it.
    pub quorum: bool,
    /// Some voter has a longer log: it, not this member, should campaign.
    pub longer_log_seen: bool,
}

/// Asks every other voter, at once, whether it would vote for this member.
pub async fn ask_voters(
    raft: &KeelRaft,
    network: &PeerNetwork,
    log_store: &SledLogStore,
    self_id: NodeId,
    timeout: Duration,
) -> PreVoteOutcome {
    let membership = raft.metrics().borrow_watched().membership_config.clone();
    let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
    let majority = voters.len() / 2 + 1;
    let position = match log_store.last_log_id() {
        Ok(last) => log_position(last),
        Err(error) => {
            tracing::warn!(%error, "reading the last log id for a pre-vote");
            return PreVoteOutcome {
                quorum: false,
                longer_log_seen: false,
            };
        }
    };
    let request = request_from(self_id, position);
    let asks = voters.iter().filter(|id| **id != self_id).filter_map(|id| {
        let node = membership.membership().get_node(id)?;
        let mut client = network.client(*id, &node.peer_url, PeerMessage::PreVote).ok()?;
        let mut call = tonic::Request::new(request);
        call.set_timeout(timeout);
        Some(async move { tokio::time::timeout(timeout, client.pre_vote(call)).await })
    });
    let answers = futures::future::join_all(asks).await;
    let mut grants = usize::from(voters.contains(&self_id));
    let mut longer_log_seen = false;
    for answer in answers.into_iter().flatten().flatten() {
        let answer = answer.into_inner();
        grants += usize::from(answer.would_grant);
        longer_log_seen |= answer.longer_log;
    }
    PreVoteOutcome {
        quorum: grants >= majority,
        longer_log_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(900);
    const QUIET: Duration = Duration::from_millis(1000);

    #[test]
    fn an_up_to_date_candidate_gets_the_vote_once_the_leader_is_silent() {
        let answer = answer(false, QUIET, LEASE, Some((2, 10)), Some((2, 10)));
        assert!(answer.would_grant && !answer.longer_log);
        let higher_term = super::answer(false, QUIET, LEASE, Some((2, 10)), Some((3, 1)));
        assert!(
            higher_term.would_grant,
            "a later last term beats a longer log of an older term"
        );
    }

    #[test]
    fn a_stale_candidate_is_refused_and_told_a_longer_log_exists() {
        let answer = answer(false, QUIET, LEASE, Some((2, 10)), Some((2, 9)));
        assert!(!answer.would_grant && answer.longer_log);
        let empty = super::answer(false, QUIET, LEASE, Some((1, 0)), None);
        assert!(!empty.would_grant && empty.longer_log);
    }

    #[test]
    fn nobody_is_encouraged_while_a_leader_is_alive() {
        assert!(!answer(false, LEASE / 2, LEASE, Some((2, 10)), Some((2, 10))).would_grant);
        assert!(!answer(true, QUIET, LEASE, Some((2, 10)), Some((2, 11))).would_grant);
    }

    #[test]
    fn requests_carry_the_log_position_both_ways() {
        assert_eq!(position_of(&request_from(7, Some((3, 42)))), Some((3, 42)));
        assert_eq!(position_of(&request_from(7, None)), None);
    }
}
