//! keel's integration tests, one module per area, built as one test binary:
//! each file here used to be a test binary of its own, each compiled and
//! linked against the whole server (90 s to rebuild them all after a fixture
//! change, 24 s as one). nextest still runs every test in a process of its
//! own; pick an area with
//! `cargo nextest run -p keel-tests -E 'test(/^leases::/)'`.
//!
//! `keelctl_support` and `watch_support` are shared helpers, not tests.

mod keelctl_support;
mod watch_support;

mod auth_members;
mod auth_regressions;
mod auth_services;
mod bad_input;
mod election_kubernetes_timings;
mod elections;
mod etcd_client_crate;
mod etcd_configuration;
mod etcdctl_compat;
mod failover;
mod fatal_storage_errors;
mod fixture_against_etcd;
mod forwarded_writes;
mod http_endpoints;
mod json_gateway;
mod keelctl_auth_golden;
mod keelctl_bad_input;
mod keelctl_golden;
mod keelctl_lease_golden;
mod keelctl_watch_golden;
mod leases;
mod local_cluster;
mod lock_election_services;
mod maintenance;
mod member_flags;
mod membership;
mod no_leader;
mod peer_protocol_bad_input;
mod peer_tls;
mod replicated_keyspace;
mod replication_recovery;
mod safety_regressions;
mod served_services;
mod snapshot_save;
mod space_quota;
mod tls;
mod watch_members;
mod watch_protocol;
