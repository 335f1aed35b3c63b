//! keel-bench: the instrument for measuring keel side by side with the real
//! etcd. It owns three things:
//! - [`load`]: a load generator over etcd's v3 gRPC API (so the very same
//!   client drives keel and etcd), with HDR latency histograms;
//! - [`compare`]: the orchestration behind `benches/compare.sh`, which starts
//!   real etcd and keel clusters with the same durability and timeouts,
//!   runs the scenario matrix against both, alternating them, and writes
//!   `benches/RESULTS.md`;
//! - [`machine`]: facts about the machine a run measured on (cores, kernel,
//!   the disk's own fdatasync latency, members' resident memory).
//!
//! The criterion microbenchmarks of the mvcc keyspace and the Raft log store
//! live in `benches/benches/`.

pub mod compare;
pub mod load;
pub mod machine;
