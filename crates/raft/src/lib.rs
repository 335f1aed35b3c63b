//! keel's Raft storage: openraft 0.10's type config and storage v2 (log
//! store, state machine, snapshots) on keel-storage's sled databases.
//!
//! - [`type_config`]: the openraft type configuration (node ids, member
//!   records, the log entry payload = a group-committed batch of etcd writes,
//!   shared rather than copied by every clone of its entry: [`shared_write_batch`]).
//! - [`log_store`]: the Raft log, vote and committed index in sled; durable
//!   before acknowledged; its newest entries also in memory
//!   (`recent_entries.rs`) for the reads that follow every append.
//! - [`storage_codec`]: the protobuf records (`keelstoragepb`) all of that
//!   and the state machine's metadata are kept as on disk.
//! - [`state_machine`]: applies committed batches to the mvcc keyspace and
//!   builds / installs snapshots from / into it.
//!
//! The peer protocol and the member's Raft behaviour are `keel-node`'s.

// openraft's traits dictate its large error types (StorageError, RPCError).
#![allow(clippy::result_large_err)]

pub mod applied_writes;
pub mod apply;
pub mod durable_applied;
pub mod fail_points;
pub mod log_store;
mod purged_entry_remover;
mod recent_entries;
pub mod shared_write_batch;
pub mod snapshot_files;
pub mod state_machine;
pub mod storage_codec;
pub mod type_config;

pub use applied_writes::AppliedWrites;
pub use durable_applied::DurableApplied;
pub use fail_points::FailPoints;
pub use log_store::SledLogStore;
pub use shared_write_batch::SharedWriteBatch;
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
