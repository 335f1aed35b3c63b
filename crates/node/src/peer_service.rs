//! The receiving side of keel's peer protocol: Raft messages (pipelined
//! replication streams, pre-votes, leadership transfers and whole streamed
//! snapshots included) into openraft, noting leader contact for the
//! leadership view and which connection carries whose leader messages (for
//! `leader_connection.rs`); forwarded writes (single, batched, or on a
//! forwarding session) into the leader's proposer;
//! read-index requests into the leader's batcher; lease renewals and
//! TimeToLive into the leader's lessor.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use keel_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::keelpb::peer_server::Peer;
use keel_api::keelpb::{
    ClusterMember, ClusterMembersRequest, ClusterMembersResponse, ForwardedOutcomes, ForwardedWrites,
    LeaseRenewalsRequest, LeaseRenewalsResponse, MembershipChange, MembershipChangeOutcome, RaftPayload,
    ReadIndexRequest, ReadIndexResponse, SnapshotChunk, WriteRequest, WriteResponse,
};
use keel_raft::state_machine::StateView;
use keel_raft::type_config::{Snapshot, Vote};
use keel_raft::{KeelRaft, NodeId, TypeConfig};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest};
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};
use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use crate::forwarding_session::{answer_forwarded_batches, ForwardedAnswers};
use crate::leader_connection::ConnectionOrigin;
use crate::leadership::LeaderContact;
use crate::lessor::Lessor;
use crate::membership::MembershipChanges;
use crate::network::SnapshotHeader;
use crate::peer_codec::{decode_payload, encode_payload};
use crate::read_path::ReadPath;
use crate::renewal_forwarder::{outcome_of as renewal_outcome_of, MAX_RENEWALS_PER_BATCH};
use crate::request_error::member_removed_refusal;
use crate::write_path::WritePath;

/// What the peer service hands its requests to.
pub(crate) struct PeerService {
    pub(crate) member_id: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) membership: MembershipChanges,
    pub(crate) raft: KeelRaft,
    pub(crate) state: StateView,
    pub(crate) write_path: WritePath,
    pub(crate) read_path: ReadPath,
    pub(crate) lessor: Lessor,
    pub(crate) contact: LeaderContact,
    /// Becomes true when the member starts stopping: Raft messages are
    /// refused from then on.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// Holds one token per Raft call (or replication session) in progress;
    /// the node shuts Raft down once they are done, so no message is left
    /// unanswered inside a Raft that stopped.
    pub(crate) raft_calls: TaskTracker,
}

fn bad_payload(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("keel peer: undecodable payload: {error}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(value)
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
}

impl PeerService {
    /// Enters a Raft call, or refuses it once the member is stopping (the
    /// sender takes `Unavailable` for an unreachable member, which a stopping
    /// one is). The token is taken before the check: a call that passes it is
    /// one the node's shutdown waits for.
    fn enter_raft_call(&self) -> Result<TaskTrackerToken, Status> {
        let call = self.raft_calls.token();
        if *self.stopping.borrow() {
            return Err(Status::unavailable("keel peer: the member is stopping"));
        }
        Ok(call)
    }

    /// Refuses a (pre-)vote from a member the cluster removed: the refusal
    /// tells it to stop (`membership.rs`).
    fn refuse_removed_candidate(&self, request: &VoteRequest<TypeConfig>) -> Result<(), Status> {
        let candidate = request.vote.leader_id().voted_for;
        if self.state.is_removed(candidate) {
            return Err(member_removed_refusal(candidate));
        }
        Ok(())
    }
}

/// True when this member accepted the sender of a snapshot chunk as its
/// leader: the vote it answers with is the sender's. A stale leader is
/// answered with a higher vote, and its message is no sign of a live leader.
fn sender_is_current_leader(sender_vote: &Vote, answered: &Vote) -> bool {
    answered <= sender_vote
}

/// True when an AppendEntries answer accepts its sender as the leader
/// (everything but a higher vote): leader contact.
fn accepts_sender_as_leader(response: &AppendEntriesResponse<TypeConfig>) -> bool {
    !matches!(response, AppendEntriesResponse::HigherVote(_))
}

/// Notes on the connection `origin` that the member voting `sender_vote`
/// sends leader messages on it.
fn note_leader_message(origin: Option<&ConnectionOrigin>, sender_vote: &Vote) {
    if let Some(origin) = origin {
        origin.carries_leader_messages_from(sender_vote.leader_id().voted_for);
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

/// A replication session's answers, holding its Raft-call token until the
/// last answer went out (or the session was dropped).
struct ReplicationSession {
    answers: AnswerStream,
    _call: TaskTrackerToken,
}

impl Stream for ReplicationSession {
    type Item = Result<RaftPayload, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().answers.as_mut().poll_next(cx)
    }
}

/// Writes a snapshot stream's chunks (the first one's data already taken)
/// into `file`; returns how many bytes the stream carried.
async fn receive_chunks(
    file: &mut tokio::fs::File,
    first: Vec<u8>,
    chunks: &mut Streaming<SnapshotChunk>,
) -> Result<u64, Status> {
    let write_error = |e: std::io::Error| Status::internal(format!("receiving a snapshot: {e}"));
    let mut received = first.len() as u64;
    file.write_all(&first).await.map_err(write_error)?;
    while let Some(chunk) = chunks.next().await.transpose()? {
        received += chunk.data.len() as u64;
        file.write_all(&chunk.data).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    Ok(received)
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let _call = self.enter_raft_call()?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode_payload(request.get_ref()).map_err(bad_payload)?;
        note_leader_message(request.extensions().get(), &rpc.vote);
        let result = self.raft.append_entries(rpc).await;
        if result.as_ref().is_ok_and(accepts_sender_as_leader) {
            self.contact.touch();
        }
        encode(&result)
    }

    type StreamAppendStream = AnswerStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let call = self.enter_raft_call()?;
        let origin = request.extensions().get::<ConnectionOrigin>().cloned();
        let undecodable: Arc<Mutex<Option<Status>>> = Arc::default();
        let mut stopping = self.stopping.clone();
        let member_stops = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        let requests = {
            let undecodable = undecodable.clone();
            // A stopping member takes no more messages from the session.
            futures::StreamExt::take_until(request.into_inner(), Box::pin(member_stops)).map_while(
                move |message| match message {
                    Ok(payload) => match decode_payload::<AppendEntriesRequest<TypeConfig>>(&payload) {
                        Ok(rpc) => {
                            note_leader_message(origin.as_ref(), &rpc.vote);
                            Some(rpc)
                        }
                        Err(error) => {
                            *undecodable.lock().unwrap_or_else(|p| p.into_inner()) = Some(bad_payload(error));
                            None
                        }
                    },
                    // The sender ended the session or went away: what arrived
                    // is still answered, then the session ends.
                    Err(_) => None,
                },
            )
        };
        let contact = self.contact.clone();
        let answers = self.raft.stream_append(requests).map(move |answer| {
            let answer = answer.map_err(RaftError::<TypeConfig>::Fatal);
            if let Ok(result) = &answer {
                if accepts_sender_as_leader(&result.clone().into()) {
                    contact.touch();
                }
            }
            encode_payload(&answer).map_err(|e| Status::internal(e.to_string()))
        });
        // A request that could not be decoded ends the session with its error.
        let refusal =
            futures::stream::once(
                async move { undecodable.lock().unwrap_or_else(|p| p.into_inner()).take() },
            )
            .filter_map(|refusal| refusal.map(Err));
        Ok(Response::new(Box::pin(ReplicationSession {
            answers: Box::pin(answers.chain(refusal)),
            _call: call,
        })))
    }

    async fn transfer_leader(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let _call = self.enter_raft_call()?;
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode_payload(request.get_ref()).map_err(bad_payload)?;
        let result = self.raft.handle_transfer_leader(rpc).await;
        encode(&result.map_err(RaftError::<TypeConfig>::Fatal))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let _call = self.enter_raft_call()?;
        let rpc: VoteRequest<TypeConfig> = decode_payload(request.get_ref()).map_err(bad_payload)?;
        self.refuse_removed_candidate(&rpc)?;
        let result = self.raft.vote(rpc).await;
        if result.as_ref().is_ok_and(|response| response.vote_granted) {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let origin = request.extensions().get::<ConnectionOrigin>().cloned();
        let mut chunks = request.into_inner();
        let Some(first) = chunks.next().await.transpose()? else {
            return Err(bad_payload("an empty snapshot stream"));
        };
        let header: SnapshotHeader =
            decode_payload(&RaftPayload { data: first.header }).map_err(bad_payload)?;
        note_leader_message(origin.as_ref(), &header.vote);
        let mut incoming = self
            .state
            .incoming_snapshot()
            .await
            .map_err(|e| Status::internal(format!("receiving a snapshot: {e}")))?;
        let received = receive_chunks(&mut incoming.file, first.data, &mut chunks).await;
        let received = match received {
            Ok(received) if received == header.size => received,
            outcome => {
                // A cut or short stream: its partial file is useless.
                let _ = tokio::fs::remove_file(&incoming.path).await;
                return Err(match outcome {
                    Err(status) => status,
                    Ok(received) => bad_payload(format!(
                        "a snapshot of {} bytes ended after {received}",
                        header.size
                    )),
                });
            }
        };
        tracing::debug!(bytes = received, "received a whole snapshot");
        let sender_vote = header.vote;
        let partial = incoming.path.clone();
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: incoming.into(),
        };
        let _call = self.enter_raft_call()?;
        let response = self
            .raft
            .install_full_snapshot(sender_vote, snapshot)
            .await
            .map_err(|fatal| Status::internal(format!("installing a snapshot: {fatal}")));
        // An installed snapshot's file was renamed into place; one refused
        // (a stale sender) is left behind and is removed here.
        let _ = tokio::fs::remove_file(partial).await;
        let response = response?;
        if sender_is_current_leader(&sender_vote, &response.vote) {
            self.contact.touch();
        }
        encode(&response)
    }

    async fn forward_write(&self, request: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        self.write_path
            .propose_as_leader(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn forward_writes(
        &self,
        request: Request<ForwardedWrites>,
    ) -> Result<Response<ForwardedOutcomes>, Status> {
        self.write_path
            .propose_batch_as_leader(request.into_inner().writes)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type StreamForwardWritesStream = ForwardedAnswers;

    async fn stream_forward_writes(
        &self,
        request: Request<Streaming<ForwardedWrites>>,
    ) -> Result<Response<ForwardedAnswers>, Status> {
        Ok(Response::new(answer_forwarded_batches(
            self.write_path.clone(),
            request.into_inner(),
        )))
    }

    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let read_index = self
            .read_path
            .serve_follower_request()
            .await
            .map_err(Status::from)?;
        Ok(Response::new(ReadIndexResponse {
            read_index,
            leader_id: self.member_id,
        }))
    }

    async fn lease_renew(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.lessor
            .renew_as_leader(request.into_inner().id)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn lease_renewals(
        &self,
        request: Request<LeaseRenewalsRequest>,
    ) -> Result<Response<LeaseRenewalsResponse>, Status> {
        let ids = request.into_inner().ids;
        if ids.len() > MAX_RENEWALS_PER_BATCH {
            return Err(Status::invalid_argument(format!(
                "keel: {} lease renewals in one call, at most {MAX_RENEWALS_PER_BATCH}",
                ids.len()
            )));
        }
        let renewals = ids.into_iter().map(|id| self.lessor.renew_as_leader(id));
        let outcomes = futures::future::join_all(renewals).await;
        Ok(Response::new(LeaseRenewalsResponse {
            outcomes: outcomes.into_iter().map(renewal_outcome_of).collect(),
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.lessor
            .time_to_live_as_leader(request.get_ref())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let _call = self.enter_raft_call()?;
        let rpc: VoteRequest<TypeConfig> = decode_payload(request.get_ref()).map_err(bad_payload)?;
        self.refuse_removed_candidate(&rpc)?;
        encode(&self.raft.pre_vote(rpc).await)
    }

    async fn change_membership(
        &self,
        request: Request<MembershipChange>,
    ) -> Result<Response<MembershipChangeOutcome>, Status> {
        let member_id = self
            .membership
            .change_as_leader(request.into_inner())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(MembershipChangeOutcome { member_id }))
    }

    async fn cluster_members(
        &self,
        _: Request<ClusterMembersRequest>,
    ) -> Result<Response<ClusterMembersResponse>, Status> {
        let membership = self.raft.metrics().borrow_watched().membership_config.clone();
        let membership = membership.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        Ok(Response::new(ClusterMembersResponse {
            cluster_id: self.cluster_id,
            members: membership
                .nodes()
                .map(|(id, node)| ClusterMember {
                    id: *id,
                    peer_url: node.peer_url.clone(),
                    is_learner: !voters.contains(id),
                })
                .collect(),
            removed_ids: self.state.removed_members().into_iter().collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_from_a_deposed_leader_is_no_contact_with_the_leader() {
        let old_leader = Vote::new_committed(3, 1);
        let current = Vote::new_committed(4, 2);
        assert!(!sender_is_current_leader(&old_leader, &current));
        assert!(sender_is_current_leader(&current, &current));
    }
}
