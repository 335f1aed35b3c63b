//! The openraft type configuration for keel: u64 member ids (etcd's member
//! ids), member records carrying name and peer URL, a log entry payload that
//! is one group-committed batch of etcd write requests (shared between the
//! entry's clones, `shared_write_batch.rs`), and standard Raft
//! leader ids (`leader_id_std`: at most one leader per term, as in the Raft
//! paper; openraft's default lets a higher member id win a term already won).

use std::fmt;

use keel_api::keelpb::WriteBatchOutcome;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// A member as Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_url: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_url)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = crate::shared_write_batch::SharedWriteBatch,
        R = WriteBatchOutcome,
        NodeId = NodeId,
        Node = MemberNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type KeelRaft = openraft::Raft<TypeConfig, crate::state_machine::KeelStateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::state_machine::SnapshotData>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
