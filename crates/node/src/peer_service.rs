//! The receiving side of keel's peer protocol: Raft messages (pre-votes and
//! whole streamed snapshots included) into openraft, noting leader contact
//! for the leadership view; forwarded writes into the leader's proposer;
//! read-index requests into the leader's batcher.

use keel_api::keelpb::peer_server::Peer;
use keel_api::keelpb::{
    RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk, WriteRequest, WriteResponse,
};
use keel_raft::state_machine::StateView;
use keel_raft::type_config::Snapshot;
use keel_raft::{KeelRaft, NodeId, TypeConfig};
use openraft::raft::{AppendEntriesResponse, VoteRequest};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::leadership::LeaderContact;
use crate::network::SnapshotHeader;
use crate::peer_codec::{decode_payload, encode_payload};
use crate::read_path::ReadPath;
use crate::write_path::WritePath;

/// What the peer service hands its requests to.
pub(crate) struct PeerService {
    pub(crate) member_id: NodeId,
    pub(crate) raft: KeelRaft,
    pub(crate) state: StateView,
    pub(crate) write_path: WritePath,
    pub(crate) read_path: ReadPath,
    pub(crate) contact: LeaderContact,
}

fn bad_payload(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("keel peer: undecodable payload: {error}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(value)
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
}

/// True when this member accepted the sender of a snapshot chunk as its
/// leader: the vote it answers with is the sender's. A stale leader is
/// answered with a higher vote, and its message is no sign of a live leader.
fn sender_is_current_leader(
    sender_vote: &keel_raft::type_config::Vote,
    answered: &keel_raft::type_config::Vote,
) -> bool {
    answered <= sender_vote
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
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> =
            decode_payload(request.get_ref()).map_err(bad_payload)?;
        let result = self.raft.append_entries(rpc).await;
        if let Ok(response) = &result {
            if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                self.contact.touch();
            }
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode_payload(request.get_ref()).map_err(bad_payload)?;
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
        let mut chunks = request.into_inner();
        let Some(first) = chunks.next().await.transpose()? else {
            return Err(bad_payload("an empty snapshot stream"));
        };
        let header: SnapshotHeader =
            decode_payload(&RaftPayload { data: first.header }).map_err(bad_payload)?;
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
                if let Some(partial) = &incoming.incoming {
                    let _ = tokio::fs::remove_file(partial).await;
                }
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
        let partial = incoming.incoming.clone();
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: incoming,
        };
        let response = self
            .raft
            .install_full_snapshot(sender_vote, snapshot)
            .await
            .map_err(|fatal| Status::internal(format!("installing a snapshot: {fatal}")));
        // An installed snapshot's file was renamed into place; one refused
        // (a stale sender) is left behind and is removed here.
        if let Some(partial) = partial {
            let _ = tokio::fs::remove_file(partial).await;
        }
        let response = response?;
        if sender_is_current_leader(&sender_vote, &response.vote) {
            self.contact.touch();
        }
        encode(&response)
    }

    async fn forward_write(&self, request: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        self.write_path
            .serve_forwarded(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
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

    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode_payload(request.get_ref()).map_err(bad_payload)?;
        encode(&self.raft.pre_vote(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::type_config::Vote;

    #[test]
    fn a_snapshot_from_a_deposed_leader_is_no_contact_with_the_leader() {
        let old_leader = Vote::new_committed(3, 1);
        let current = Vote::new_committed(4, 2);
        assert!(!sender_is_current_leader(&old_leader, &current));
        assert!(sender_is_current_leader(&current, &current));
    }
}
