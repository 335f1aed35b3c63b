//! keel's server as a library: a member (flags, gRPC services, the Raft
//! wiring) and `local-cluster`. The `keel` binary is a thin shell over it,
//! and in-process test clusters run members through [`member`].

// tonic's service traits return `tonic::Status`, which is large by design.
#![allow(clippy::result_large_err)]

mod authority_repair;
mod cluster_service;
pub mod config;
mod context;
pub mod data_format;
mod identity;
mod kv_service;
pub mod leader_connection;
mod leader_log;
pub mod leader_transfer;
mod leadership;
pub mod local_cluster;
mod maintenance_service;
pub mod member;
pub mod member_log;
mod peer_service;
mod read_path;
mod request_checks;
pub mod signals;
mod unserved_services;
mod write_path;
