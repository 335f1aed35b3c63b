//! A member whose storage fails for good stops, and says why, rather than
//! lingering as if it could still replicate (`keel_node::Node::failed`).
//! The member watches openraft's server metrics for this, which change with
//! leadership only; these tests keep that watch from missing a fatal error.

use std::time::Duration;

use keel_api::etcdserverpb::PutRequest;
use keel_raft::fail_points::BEFORE_SNAPSHOT_BUILD_COMMIT;
use keel_raft::FailPoints;
use keel_tests::in_process::InProcessCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_snapshot_build_fails_stops_and_names_the_fatal_error() {
    let mut cluster = InProcessCluster::start(3, &[]).await.expect("cluster");
    let leader = 0;
    cluster.elect(leader).await.expect("m1 leads");
    let victim = 1;
    let client = cluster.client(leader).expect("client");
    for i in 0..20 {
        client
            .put(put(&format!("k{i}")))
            .await
            .expect("put before the failure");
    }
    cluster.crash_member(victim).await;
    let fail_points = FailPoints::default();
    let build_commit = fail_points.arm(BEFORE_SNAPSHOT_BUILD_COMMIT);
    cluster
        .start_member(victim, fail_points)
        .await
        .expect("the member starts again");
    let _ = cluster.raft(victim).trigger().snapshot().await;
    let build_commit = tokio::task::spawn_blocking(move || {
        assert!(
            build_commit.wait_reached(Duration::from_secs(30)),
            "the snapshot build never reached its commit"
        );
        build_commit
    })
    .await
    .expect("join");
    build_commit.crash();

    let outcome = cluster
        .wait_until_stopped_by_itself(victim, Duration::from_secs(30))
        .await
        .expect("the member stopped by itself within 30 s of its storage failing");
    let error = outcome.expect_err("the member stopped with an error");
    let said = format!("{error:#}");
    assert!(said.contains("the member exits"), "it said: {said}");
    assert!(
        said.contains(BEFORE_SNAPSHOT_BUILD_COMMIT),
        "the error names the storage failure; it said: {said}"
    );

    // The others keep serving.
    client
        .put(put("after"))
        .await
        .expect("the rest of the cluster still writes");
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}
