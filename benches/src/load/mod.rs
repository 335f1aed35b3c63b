//! The load generator: one run = one mode against a set of endpoints, as
//! the issue specifies it (see [`spec::LoadSpec`]); [`run::run`] does it and
//! returns a [`report::RunReport`]. Leases: [`leases`] (grant, revoke, the
//! connections the lease modes use) and [`keepalive`] (many leases renewed
//! over a few keep-alive streams).

pub mod counted_watch;
pub mod keepalive;
pub mod leases;
pub mod progress;
pub mod report;
pub mod run;
pub mod spec;
pub mod targets;
pub mod watchers;

pub use report::{LatencySummary, RunReport};
pub use run::{put_all, run, run_sampling_servers, PutAll, PutAllReport};
pub use spec::{parse_duration, KeyLayout, LoadSpec, Mode, Target};
pub use targets::{find_leader, member_status, open_connections, resolve_targets, Access, MemberStatus};
