//! The receiving side of keel's peer protocol: Raft messages into openraft
//! (noting leader contact for the election timer), forwarded writes into the
//! leader's proposer, and read-index requests into the leader's batcher.

use std::sync::Arc;

use keel_api::keelpb::peer_server::Peer;
use keel_api::keelpb::{RaftPayload, ReadIndexRequest, ReadIndexResponse, WriteRequest, WriteResponse};
use keel_raft::peer_codec::{decode_payload, encode_payload};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::election_timer::LeaderContact;

pub struct PeerService {
    context: Arc<MemberContext>,
    contact: LeaderContact,
}

impl PeerService {
    pub fn new(context: Arc<MemberContext>, contact: LeaderContact) -> Self {
        PeerService { context, contact }
    }
}

fn bad_payload(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("keel peer: undecodable payload: {error}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(value)
        .map(Response::new)
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<keel_raft::TypeConfig> =
            decode_payload(request.get_ref()).map_err(bad_payload)?;
        let result = self.context.raft.append_entries(rpc).await;
        if let Ok(response) = &result {
            if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                self.contact.touch();
            }
        }
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode_payload(request.get_ref()).map_err(bad_payload)?;
        let result = self.context.raft.vote(rpc).await;
        if result.as_ref().is_ok_and(|response| response.vote_granted) {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<keel_raft::TypeConfig> =
            decode_payload(request.get_ref()).map_err(bad_payload)?;
        let result = self.context.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.contact.touch();
        }
        encode(&result)
    }

    async fn forward_write(&self, request: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        self.context
            .write_path
            .serve_forwarded(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let read_index = self.context.read_path.serve_follower_request().await?;
        Ok(Response::new(ReadIndexResponse {
            read_index,
            leader_id: self.context.member_id,
        }))
    }
}
