//! A keel member's Raft side as a library (the "stacked" topology: an
//! application embeds a member with one call, [`Node::start`]).
//!
//! - [`node`]: start-up (storage, openraft, bootstrap), the handle services
//!   use, shutdown.
//! - [`write_path`]: any member accepts a write; followers forward it to the
//!   leader, whose proposer group-commits.
//! - [`read_path`]: linearizable reads through ReadIndex on every member.
//! - [`leadership`]: who leads as this member sees it ("no leader" after an
//!   election timeout of silence); [`leader_transfer`]: moving leadership to
//!   a named member; [`leader_connection`]: campaigning at once when the
//!   leader's connection closes (failover without the election timeout).
//! - [`network`] (replication in pipelined streams, `append_stream`) and
//!   `peer_service`: both halves of the peer protocol; [`peer_codec`] is the
//!   payload encoding they share; [`peer_tls`]: TLS between members
//!   (both halves), [`tls_accept`]: the accepting side of TLS, which the
//!   server's client port shares.
//! - [`lessor`]: etcd's leases; the leader alone keeps their deadlines
//!   (`lease_clock`), expires them through Raft and checkpoints them.
//! - `leader_call`: having the leader answer a request made on any member
//!   (forwarded writes, lease renewals), retried only when that is safe.
//! - [`request_error`]: how requests fail, and how refusals cross peers.
//! - [`data_format`]: the data dir's format version.
//!
//! Storage (the log store, the state machine, snapshots) is `keel-raft`'s.

// tonic's and openraft's error types are large by design.
#![allow(clippy::result_large_err)]

mod append_stream;
mod batchless_leaders;
mod commit_only_folding;
pub mod config;
pub mod data_format;
mod forwarding_session;
pub mod join;
mod leader_batch_queue;
mod leader_call;
pub mod leader_connection;
mod leader_log;
pub mod leader_transfer;
pub mod leadership;
mod lease_clock;
pub mod lessor;
mod local_apply;
mod membership;
pub mod network;
pub mod node;
pub mod peer_codec;
mod peer_service;
pub mod peer_tls;
mod proposal_backlog;
pub mod read_path;
mod renewal_forwarder;
pub mod request_error;
pub mod restore;
mod snapshot_trigger;
pub mod tls_accept;
mod write_forwarder;
pub mod write_path;

pub use config::{Bootstrap, NodeConfig, NodeTestHooks, RaftTiming, DEFAULT_LEASE_CHECKPOINT_INTERVAL};
pub use node::{Node, NodeError, NodeHandle};
pub use peer_tls::{PeerTlsConfig, PeerTlsError};
pub use request_error::RequestError;
