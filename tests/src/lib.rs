//! keel's test fixtures, in their own crate so that the integration tests,
//! the keelctl golden tests, the partition suite and the benchmarks start
//! clusters the same way: real `keel` (or real `etcd`) processes on
//! 127.0.0.1, on free ports, with data dirs and logs in a temporary
//! directory. A cluster kills its members and removes its directory when
//! dropped, also when a test fails (it then prints the members' log tails).
//! [`in_process`] runs real members inside the test process instead, for
//! tests that cut links per kind of message or stop storage at a fail point.

pub mod auth_setup;
pub mod bare_http2;
pub mod binaries;
pub mod cluster;
pub mod curl;
pub mod in_process;
pub mod ports;
pub mod tls;

pub use binaries::{built_binary, BinaryError};
pub use cluster::{which, ClientPortTls, Cluster, ClusterOptions, FixtureError, Flavor, MemberState};
pub use curl::{curl, CurlAnswer};
pub use ports::free_port;
