//! keel-mvcc's behaviour through its public API: etcd's revision, range,
//! txn and compaction semantics, durability, snapshots, the in-memory
//! index, and a model check.

mod common;

mod changes;
mod compaction;
mod defrag;
mod durability;
mod index;
mod leases;
mod model;
mod puts_and_deletes;
mod ranges;
mod snapshot;
mod txns;
