//! keel's server as a library: a member's flags, etcd's client gRPC services
//! over its Raft node (`keel_node`), and `local-cluster`. The `keel` binary is a
//! thin shell over it, and in-process test clusters run members through [`member`].

// tonic's service traits return `tonic::Status`, which is large by design.
#![allow(clippy::result_large_err)]

mod auth_check;
mod auth_service;
mod authority_repair;
mod caller_deadline;
mod client_tls;
mod cluster_service;
pub mod config;
pub mod config_file;
mod context;
mod election_service;
pub mod etcd_flags;
mod health_endpoints;
mod identity;
mod kv_service;
mod lease_service;
pub mod local_cluster;
pub mod local_cluster_roster;
pub mod local_pki;
mod lock_service;
mod loopback;
mod maintenance_service;
pub mod member;
pub mod member_log;
pub mod member_runtime;
mod metrics_endpoint;
mod peer_tls_flags;
mod request_checks;
pub mod signals;
mod snapshot_stream;
mod space_quota;
mod stream_watchers;
mod tls_options;
mod watch_service;
mod watch_stream;
