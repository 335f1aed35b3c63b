//! What every service of a running member shares: its identity, its Raft
//! node's handle (state, reads, writes, leadership) and the request limits;
//! the stamping of etcd's `ResponseHeader`; and the translation of the
//! domain errors services meet (mvcc's, leadership transfer's) into etcd's
//! statuses.

use std::sync::Arc;

use keel_api::etcdserverpb::ResponseHeader;
use keel_api::WireError;
use keel_mvcc::MvccError;
use keel_node::leader_transfer::LeaderTransferError;
use keel_node::NodeHandle;
use tonic::Status;

use crate::request_checks::RequestLimits;
use crate::space_quota::SpaceQuota;

pub struct MemberContext {
    pub cluster_id: u64,
    pub member_id: u64,
    /// The member's Raft side: its state, reads, writes and leadership.
    pub node: NodeHandle,
    pub limits: RequestLimits,
    pub space_quota: SpaceQuota,
    /// bcrypt's cost for the auth passwords this member hashes.
    pub bcrypt_cost: u32,
    /// With `--auth-token jwt,...`, the keys tokens are signed and verified
    /// with; `None`: simple tokens (the state machine's token table).
    pub jwt_tokens: Option<Arc<keel_auth::jwt::JwtTokens>>,
}

impl MemberContext {
    /// A full header for a response produced at `revision` (or, when the
    /// producing layer set none, at the current revision).
    pub fn stamp(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header.map_or_else(|| self.node.state().store().current_revision(), |h| h.revision);
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.leadership().current_term(),
        })
    }

    pub fn header_now(&self) -> Option<ResponseHeader> {
        self.stamp(None)
    }
}

/// The one translation of mvcc's domain errors into etcd's gRPC statuses.
pub fn mvcc_status(error: MvccError) -> Status {
    match error {
        MvccError::Compacted { .. } => WireError::Compacted.into(),
        MvccError::FutureRevision { .. } => WireError::FutureRevision.into(),
        MvccError::KeyNotFound => WireError::KeyNotFound.into(),
        MvccError::LeaseNotFound => WireError::LeaseNotFound.into(),
        MvccError::LeaseExists => WireError::LeaseExists.into(),
        storage => {
            tracing::error!(error = %storage, "keyspace storage error");
            Status::internal(format!("etcdserver: {storage}"))
        }
    }
}

/// The translation of a failed leadership transfer into etcd's MoveLeader
/// statuses.
pub fn leader_transfer_status(error: LeaderTransferError) -> Status {
    match error {
        LeaderTransferError::NotLeader { .. } => WireError::NotLeader.into(),
        LeaderTransferError::NotAVoter(_) => WireError::BadLeaderTransferee.into(),
        LeaderTransferError::TimedOut { .. } => WireError::LeaderTransferTimedOut.into(),
        LeaderTransferError::Stopped(_) => WireError::Stopped.into(),
    }
}
