//! keel's partition suite (`keel-jepsen`): starts a real keel cluster on
//! 127.0.0.1 with a cuttable TCP proxy on every member-to-member link, runs
//! client workloads while a nemesis partitions, kills and pauses members,
//! records the history as JSON lines, and checks it: linearizability of the
//! register workloads, no lost or phantom elements in the set workload, the
//! watch workload's event streams (gap-free, duplicate-free, one order on
//! every member, matching the final state), leases that neither outlive a
//! revoke or an observed expiry nor expire early, fenced lock holders that
//! never interleave, at most one leader per term, and convergence after
//! healing.

pub mod check;
pub mod config;
pub mod finale;
pub mod history;
pub mod invariants;
pub mod lease_check;
pub mod lease_workload;
pub mod linearizable;
pub mod lock_check;
pub mod lock_workload;
pub mod model;
pub mod monitor;
pub mod nemesis;
pub mod outcome;
pub mod pairing;
pub mod partition;
pub mod proxy;
pub mod register_check;
pub mod roster;
pub mod run;
pub mod set_check;
pub mod shrink;
pub mod stats;
pub mod verdict;
pub mod watch_check;
pub mod watch_log;
pub mod watcher;
pub mod worker;
pub mod workload;
