//! Having the leader answer a request made on any member: wait for a
//! leader, answer here when this member leads, else call the leader over
//! the peer service, and try the next leader when the attempt failed. The
//! write path (forwarded writes) and the lessor (renewals, time-to-live
//! queries) share this loop; each says what its request is ([`Repeat`]).
//!
//! Invariant: an attempt is followed by another only when the first
//! provably had no effect (this member's or the called leader's leadership
//! check refused it, or the connection was never made), or when the request
//! was declared [`Repeat::Harmless`] and the call broke in flight. A call
//! that broke in flight with a request that must act once answers etcd's
//! "leader changed" (its effect is unknown) and is never repeated. A call
//! that ran out of the request's time answers "request timed out".

use std::future::Future;
use std::time::Duration;

use keel_api::WireError;
use keel_raft::NodeId;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::leadership::{LeaderRoute, Leadership};
use crate::network::{PeerMessage, PeerNetwork, PeerUnavailable};
use crate::request_error::{is_not_leader_refusal, RequestError};

type PeerClient = keel_api::keelpb::peer_client::PeerClient<Channel>;

/// What a request does when it is run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// A write: run twice it could apply twice, so after a call that broke
    /// in flight it is not repeated (its effect is unknown).
    ActsOnce,
    /// A renewal or a query: run twice it has the effect of running once
    /// (a renewal restarts the lease's TTL from the later instant, which
    /// the client's own next keep-alive would do anyway), so it is repeated
    /// after a broken call too.
    Harmless,
}

/// Where the leader is, for one attempt.
pub(crate) enum LeaderAt {
    /// This member leads: answer here.
    Here,
    /// Another member leads: its id and a client of its peer service.
    Peer(NodeId, PeerClient),
}

/// How one attempt failed.
pub(crate) enum AttemptFailure {
    /// Answered here; `RequestError::RefusedNotLeader` means not proposed.
    Here(RequestError),
    /// The leader's peer service (or the transport to it) answered.
    Peer(Status),
}

/// The route to the leader.
#[derive(Clone)]
pub(crate) struct LeaderCall {
    pub(crate) leadership: Leadership,
    pub(crate) network: PeerNetwork,
    /// How long a request waits for a leader to be known.
    pub(crate) leader_wait: Duration,
    /// The longest pause before trying again after a failed attempt (a new
    /// leader, when one is seen sooner, ends it).
    pub(crate) retry_pause: Duration,
}

impl LeaderCall {
    pub(crate) fn new(route: &LeaderRoute, retry_pause: Duration) -> LeaderCall {
        LeaderCall {
            leadership: route.leadership.clone(),
            network: route.network.clone(),
            leader_wait: route.leader_wait,
            retry_pause,
        }
    }

    /// Runs `attempt` against the leader until it answers, a failure ends
    /// the request, or `deadline` passes waiting for a leader.
    pub(crate) async fn until_answered<T, Attempt, Answer>(
        &self,
        kind: PeerMessage,
        repeat: Repeat,
        deadline: Instant,
        mut attempt: Attempt,
    ) -> Result<T, RequestError>
    where
        Attempt: FnMut(LeaderAt) -> Answer,
        Answer: Future<Output = Result<T, AttemptFailure>>,
    {
        loop {
            let leader_deadline = deadline.min(Instant::now() + self.leader_wait);
            let (leader, node) = self.leadership.wait_for_leader(leader_deadline).await?;
            let at = if leader == self.leadership.self_id() {
                Some(LeaderAt::Here)
            } else {
                self.peer(leader, &node.peer_url, kind)?
                    .map(|client| LeaderAt::Peer(leader, client))
            };
            if let Some(at) = at {
                match attempt(at).await {
                    Ok(answer) => return Ok(answer),
                    Err(failure) => {
                        if let Some(ended) = ends_request(failure, repeat) {
                            return Err(ended);
                        }
                    }
                }
            }
            self.leadership
                .wait_for_another_leader(leader, Instant::now() + self.retry_pause)
                .await;
        }
    }

    /// A client of the leader's peer service; `None` when the link is cut
    /// (nothing was sent: try again).
    fn peer(
        &self,
        leader: NodeId,
        peer_url: &str,
        kind: PeerMessage,
    ) -> Result<Option<PeerClient>, RequestError> {
        match self.network.client(leader, peer_url, kind) {
            Ok(client) => Ok(Some(client)),
            Err(PeerUnavailable::LinkCut { .. }) => Ok(None),
            Err(invalid @ (PeerUnavailable::InvalidUrl { .. } | PeerUnavailable::NoPeerTls { .. })) => {
                Err(invalid.into())
            }
        }
    }
}

/// The error a failed attempt ends its request with; `None` when another
/// attempt may follow.
fn ends_request(failure: AttemptFailure, repeat: Repeat) -> Option<RequestError> {
    let status = match failure {
        AttemptFailure::Here(RequestError::RefusedNotLeader) => return None,
        AttemptFailure::Here(error) => return Some(error),
        AttemptFailure::Peer(status) => status,
    };
    if is_not_leader_refusal(&status) || keel_client::never_reached_server(&status) {
        return None;
    }
    if status.code() == Code::DeadlineExceeded {
        // The call ran out of this request's time: etcd's "request timed out".
        return Some(WireError::Timeout.into());
    }
    if keel_client::transport_failure(&status) {
        return match repeat {
            Repeat::Harmless => None,
            // The leader went away with the request in flight: it may or may
            // not have acted, which etcd calls "leader changed".
            Repeat::ActsOnce => Some(WireError::LeaderChanged.into()),
        };
    }
    Some(RequestError::from_peer_status(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken_in_flight() -> Status {
        Status::unavailable("connection reset")
    }

    #[test]
    fn a_call_broken_in_flight_ends_a_write_with_leader_changed_and_repeats_a_harmless_request() {
        assert!(matches!(
            ends_request(AttemptFailure::Peer(broken_in_flight()), Repeat::ActsOnce),
            Some(RequestError::Wire(WireError::LeaderChanged))
        ));
        assert!(ends_request(AttemptFailure::Peer(broken_in_flight()), Repeat::Harmless).is_none());
    }

    #[test]
    fn a_refusal_is_repeated_and_a_timeout_or_an_answer_ends_the_request() {
        for repeat in [Repeat::ActsOnce, Repeat::Harmless] {
            assert!(ends_request(AttemptFailure::Here(RequestError::RefusedNotLeader), repeat).is_none());
            let peer_refusal = Status::from(RequestError::RefusedNotLeader);
            assert!(ends_request(AttemptFailure::Peer(peer_refusal), repeat).is_none());
            assert!(matches!(
                ends_request(AttemptFailure::Peer(WireError::LeaseNotFound.into()), repeat),
                Some(RequestError::Wire(WireError::LeaseNotFound))
            ));
            assert!(matches!(
                ends_request(AttemptFailure::Peer(Status::deadline_exceeded("late")), repeat),
                Some(RequestError::Wire(WireError::Timeout))
            ));
            assert!(matches!(
                ends_request(AttemptFailure::Here(WireError::Stopped.into()), repeat),
                Some(RequestError::Wire(WireError::Stopped))
            ));
            // A forwarded write whose batch answer could not be read
            // (`write_forwarder.rs`): its effect is unknown, never repeated.
            let unreadable_answer = Status::from(RequestError::Wire(WireError::Timeout));
            assert!(matches!(
                ends_request(AttemptFailure::Peer(unreadable_answer), repeat),
                Some(RequestError::Wire(WireError::Timeout))
            ));
        }
    }
}
