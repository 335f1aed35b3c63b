//! keel's replication layer: openraft 0.10 (storage v2, network v2) wired to
//! keel's storage (sled, through keel-storage).
//!
//! - [`type_config`]: the openraft type configuration (node ids, member
//!   records, the log entry payload = a group-committed batch of etcd writes).
//! - [`log_store`]: the Raft log, vote and committed index in sled; durable
//!   before acknowledged.
//! - [`storage_codec`]: the protobuf records (`keelstoragepb`) all of that
//!   and the state machine's metadata are kept as on disk.
//! - [`state_machine`]: applies committed batches to the mvcc keyspace and
//!   builds / installs snapshots from / into it.
//! - [`network`]: the client side of the peer protocol, one cached gRPC
//!   channel per peer; [`peer_codec`] is the payload encoding both sides share.

// openraft's traits dictate its large error types (StorageError, RPCError).
#![allow(clippy::result_large_err)]

pub mod apply;
pub mod durable_applied;
pub mod fail_points;
pub mod log_store;
pub mod network;
pub mod peer_codec;
pub mod snapshot_files;
pub mod state_machine;
pub mod storage_codec;
pub mod type_config;

pub use durable_applied::DurableApplied;
pub use fail_points::FailPoints;
pub use log_store::SledLogStore;
pub use network::PeerNetwork;
pub use state_machine::KeelStateMachine;
pub use type_config::{KeelRaft, MemberNode, NodeId, TypeConfig};

/// Errors opening keel's Raft storage.
#[derive(Debug, thiserror::Error)]
pub enum RaftStorageError {
    #[error("storage: {0}")]
    Storage(#[from] keel_storage::StorageError),
    #[error("mvcc: {0}")]
    Mvcc(#[from] keel_mvcc::MvccError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error(transparent)]
    Decode(#[from] storage_codec::StorageDecodeError),
}

/// sled's errors, met inside the crate, are storage errors (sled is
/// keel-storage's implementation, not part of this crate's API).
impl From<keel_storage::sled::Error> for RaftStorageError {
    fn from(error: keel_storage::sled::Error) -> Self {
        RaftStorageError::Storage(keel_storage::StorageError::Sled(error))
    }
}
