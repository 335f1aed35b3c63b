//! Drives the embedded three-member cluster of `keel-examples`: writes
//! through a follower are applied on every member, reads are linearizable
//! on each, and after the leader stops the remaining two elect a new one
//! and keep every acknowledged write.

use std::time::Duration;

use keel_examples::{get, put, StackedCluster};
use keel_node::RaftTiming;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_three_member_cluster_replicates_and_survives_its_leader() {
    let data_root = tempfile::tempdir().expect("temp dir");
    let timing = RaftTiming {
        heartbeat_interval_ms: 50,
        election_timeout_ms: 500,
        snapshot_count: 100_000,
    };
    let mut cluster = StackedCluster::start(data_root.path(), timing)
        .await
        .expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let first = put(cluster.member(follower).expect("follower"), "k", "v1")
        .await
        .expect("put via follower");
    let second = put(cluster.member(leader).expect("leader"), "k", "v2")
        .await
        .expect("put via leader");
    assert!(second > first, "revisions grow: {first} then {second}");
    for id in 1..=3 {
        let value = get(cluster.member(id).expect("member"), "k").await.expect("read");
        assert_eq!(value.as_deref(), Some("v2"), "member {id}");
    }

    assert!(
        cluster.member(leader).expect("leader").raft_log_size_on_disk() > 0,
        "the Raft log's database is measured"
    );
    cluster.stop(leader).await.expect("leader stops");
    assert!(cluster.member(leader).is_err(), "a stopped member has no handle");
    let next = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_ne!(next, leader);
    let survivor = (1..=3)
        .find(|id| *id != leader && *id != next)
        .expect("the other member");
    put(cluster.member(survivor).expect("survivor"), "k", "v3")
        .await
        .expect("put after failover");
    for id in [next, survivor] {
        let value = get(cluster.member(id).expect("member"), "k").await.expect("read");
        assert_eq!(value.as_deref(), Some("v3"), "member {id}");
    }
    cluster.shutdown().await.expect("clean shutdown");
}
