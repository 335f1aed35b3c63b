//! The openraft type configuration for keel: u64 member ids (etcd's member
//! ids), member records carrying name and peer URL, and a log entry payload
//! that is one group-committed batch of etcd write requests.

use std::fmt;

use keel_api::keelpb::{WriteBatch, WriteBatchOutcome};
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
        D = WriteBatch,
        R = WriteBatchOutcome,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type KeelRaft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
