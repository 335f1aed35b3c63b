//! Linearizable reads through ReadIndex, on every member.
//!
//! Invariant: a linearizable read is served only after this member's state
//! machine has applied at least the leader's commit index as confirmed by a
//! quorum AFTER the read arrived. So the read reflects every write
//! acknowledged before it started, whichever member acknowledged it.
//!
//! Concurrent reads share one confirmation: a batcher task takes every read
//! waiting when a round starts and answers all of them with that round's
//! index; reads arriving during a round wait for the next one (a round that
//! started before a read arrived could miss a write acknowledged just before).
//! On the leader a round is openraft's `get_read_linearizer` with
//! `ReadPolicy::ReadIndex` (a heartbeat round to a quorum); on a follower it
//! is a `ReadIndex` RPC to the leader, which answers from its own leader-side
//! batcher.
//!
//! The leader's index is openraft's read log id: the larger of its own
//! term's first (blank) entry and its commit index. Every write acknowledged
//! before a term began is at or below that first entry, every write of the
//! term is committed, so the index covers all of them. This holds because a
//! leader always starts its term with that entry: keel turns openraft 0.10's
//! leader restore off (`enable_leader_restore = false`, member.rs), which
//! would otherwise let a restarted leader resume its old term with a commit
//! index read from disk (the case keel's former "last log index" floor
//! covered under openraft 0.9).

use std::time::Duration;

use keel_api::keelpb::ReadIndexRequest;
use keel_api::WireError;
use keel_raft::KeelRaft;
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::leadership::{LeaderRoute, Leadership};
use crate::network::{PeerMessage, PeerNetwork, PeerUnavailable};
use crate::request_error::RequestError;

type IndexReply = oneshot::Sender<Result<u64, RequestError>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum RoundKind {
    /// Confirm as leader, or ask the leader (requests from local clients).
    AnyMember,
    /// Confirm as leader or refuse (requests forwarded by followers).
    LeaderOnly,
}

#[derive(Clone)]
pub struct ReadPath {
    any_member: mpsc::Sender<IndexReply>,
    leader_only: mpsc::Sender<IndexReply>,
    raft: KeelRaft,
    request_timeout: Duration,
}

#[derive(Clone)]
struct RoundContext {
    raft: KeelRaft,
    leadership: Leadership,
    network: PeerNetwork,
    leader_wait: Duration,
    confirm_timeout: Duration,
}

impl ReadPath {
    /// Starts the read-index batchers; a round waits at most
    /// `confirm_timeout` for the leader's confirmation.
    pub(crate) fn start(route: LeaderRoute, confirm_timeout: Duration) -> Self {
        let LeaderRoute {
            raft,
            leadership,
            network,
            request_timeout,
            leader_wait,
        } = route;
        let context = RoundContext {
            raft: raft.clone(),
            leadership,
            network,
            leader_wait,
            confirm_timeout,
        };
        let (any_member, any_queue) = mpsc::channel(16 * 1024);
        let (leader_only, leader_queue) = mpsc::channel(16 * 1024);
        tokio::spawn(run_rounds(context.clone(), any_queue, RoundKind::AnyMember));
        tokio::spawn(run_rounds(context, leader_queue, RoundKind::LeaderOnly));
        ReadPath {
            any_member,
            leader_only,
            raft,
            request_timeout,
        }
    }

    /// Returns once a read on this member is linearizable.
    pub async fn linearize(&self) -> Result<(), RequestError> {
        let started = Instant::now();
        let deadline = started + self.request_timeout;
        let index = loop {
            match ask(&self.any_member).await {
                Ok(index) => break index,
                // The leader moved while the round ran: ask again, in time.
                Err(RequestError::Wire(WireError::LeaderChanged)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| WireError::Timeout)?;
        keel_metrics::metrics()
            .read_index_round_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The leader's answer to a follower's ReadIndex RPC.
    pub(crate) async fn serve_follower_request(&self) -> Result<u64, RequestError> {
        ask(&self.leader_only).await
    }
}

async fn ask(queue: &mpsc::Sender<IndexReply>) -> Result<u64, RequestError> {
    let (reply, answer) = oneshot::channel();
    queue.send(reply).await.map_err(|_| WireError::Stopped)?;
    answer.await.map_err(|_| WireError::Stopped)?
}

async fn run_rounds(context: RoundContext, mut queue: mpsc::Receiver<IndexReply>, kind: RoundKind) {
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = queue.try_recv() {
            waiting.push(next);
        }
        let result = confirm_read_index(&context, kind).await;
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

async fn confirm_read_index(context: &RoundContext, kind: RoundKind) -> Result<u64, RequestError> {
    let leader_deadline = Instant::now() + context.leader_wait;
    let (leader, node) = match kind {
        RoundKind::AnyMember => context.leadership.wait_for_leader(leader_deadline).await?,
        RoundKind::LeaderOnly => match context.leadership.known_leader() {
            Some(leader) if leader.0 == context.leadership.self_id() => leader,
            _ => return Err(RequestError::RefusedNotLeader),
        },
    };
    if leader == context.leadership.self_id() {
        let linearizer = context.raft.get_read_linearizer(ReadPolicy::ReadIndex);
        return match tokio::time::timeout(context.confirm_timeout, linearizer).await {
            Ok(Ok(linearizer)) => Ok(linearizer.read_log_id().index()),
            Ok(Err(error)) => {
                tracing::debug!(%error, "read index confirmation failed");
                Err(WireError::LeaderChanged.into())
            }
            Err(_elapsed) => Err(WireError::NoLeader.into()),
        };
    }
    let mut client = match context
        .network
        .client(leader, &node.peer_url, PeerMessage::ReadIndex)
    {
        Ok(client) => client,
        // Not sent: the round is asked again, as after a refusal.
        Err(PeerUnavailable::LinkCut { .. }) => return Err(WireError::LeaderChanged.into()),
        Err(invalid) => return Err(invalid.into()),
    };
    let mut request = tonic::Request::new(ReadIndexRequest {});
    request.set_timeout(context.confirm_timeout);
    match client.read_index(request).await {
        Ok(response) => Ok(response.into_inner().read_index),
        Err(status) if crate::request_error::is_not_leader_refusal(&status) => {
            Err(WireError::LeaderChanged.into())
        }
        Err(status) if status.code() == tonic::Code::DeadlineExceeded => Err(WireError::NoLeader.into()),
        // The leader went away mid-round (connection lost or refused): the
        // round is asked again once a leader is known, within the deadline.
        Err(status) if keel_client::transport_failure(&status) => Err(WireError::LeaderChanged.into()),
        Err(status) => Err(RequestError::from_peer_status(status)),
    }
}
