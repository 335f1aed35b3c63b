//! keel-bench's instrument tests, one module per scenario, built as one test
//! binary (one link instead of one per file); nextest still runs every test
//! in a process of its own. Nothing here asserts a speed.

mod leases;
mod membership;
mod secure;
mod smoke;
mod watchers;
