//! Regression tests for the Raft safety defects of issue 9, each named after
//! its bug, each building the bug's exact shape in an in-process cluster
//! (links cut per kind of message, storage stopped at a fail point).

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_api::WireError;
use keel_client::{Client, ClientError};
use keel_node::network::PeerMessage;
use keel_raft::fail_points::{BEFORE_SNAPSHOT_INSTALL_META_COMMIT, BEFORE_SNAPSHOT_INSTALL_SWITCH};
use keel_raft::FailPoints;
use keel_tests::in_process::InProcessCluster;

const KEY: &str = "register";

/// Election timeout of the scenario's members; openraft's voters refuse a
/// candidate for 1000 ms (the leader lease) after they last heard a leader.
const ELECTION_TIMEOUT_FLAGS: [&str; 2] = ["--election-timeout=1000", "--heartbeat-interval=100"];
const LEADER_LEASE_PASSED: Duration = Duration::from_millis(1500);

fn put(value: &str) -> PutRequest {
    PutRequest {
        key: KEY.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn read_register(client: &Client) -> (String, i64) {
    let response = client
        .range(RangeRequest {
            key: KEY.into(),
            ..Default::default()
        })
        .await
        .expect("read the register");
    let kv = response.kvs.first().expect("the register exists");
    (String::from_utf8_lossy(&kv.value).into_owned(), kv.version)
}

async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `write` (sent to m1) through the shape of issue 9's first defect,
/// on 5 members m1..m5 (indexes 0..4), and returns its outcome once the
/// cluster is healed:
/// 1. m1 leads term T; its entry for `write` reaches m2 only.
/// 2. m3 wins T+1 with m4, m5; its blank entry reaches m1 only and
///    truncates the entry there (openraft answers ForwardToLeader to the
///    write's waiter on m1).
/// 3. m2, still holding the entry, wins T+2 with m4, m5 and commits it; its
///    entries truncate m3's log, including anything m3 took since.
async fn through_a_truncation_on_the_deposed_leader<T: Send + 'static>(
    write: impl FnOnce(Client) -> futures::future::BoxFuture<'static, Result<T, ClientError>>,
) -> (Result<T, ClientError>, (String, i64)) {
    let cluster = InProcessCluster::start(5, &ELECTION_TIMEOUT_FLAGS)
        .await
        .expect("cluster");
    let everyone: Vec<usize> = (0..5).collect();
    // Elections happen only when the test calls them: openraft's own
    // elections start with a pre-vote, which never gets through.
    cluster.cut(&everyone, &everyone, &[PeerMessage::PreVote]);
    cluster.elect(0).await.expect("m1 elected");
    let m1 = cluster.client(0).expect("client");
    m1.put(put("v0")).await.expect("the first write");
    // Every member applied it (the members' attribute writes too).
    let settled = cluster.last_log_index(0);
    cluster
        .wait_until_all_applied(settled, Duration::from_secs(10))
        .await
        .expect("settled");

    // 1. m1's next entry reaches m2 only.
    cluster.cut(
        &[0],
        &[2, 3, 4],
        &[PeerMessage::AppendEntries, PeerMessage::InstallSnapshot],
    );
    let before = cluster.last_log_index(0);
    let write = tokio::spawn(write(m1.clone()));
    let on_m2 = {
        let m2 = cluster.raft(1).clone();
        move || m2.metrics().borrow_watched().last_log_index.unwrap_or(0) > before
    };
    wait_until("the write's entry to reach m2", Duration::from_secs(10), on_m2).await;

    // 2. m3 wins the next term with m4 and m5; its entries reach m1 only.
    tokio::time::sleep(LEADER_LEASE_PASSED).await;
    cluster.cut(
        &[2],
        &[1, 3, 4],
        &[PeerMessage::AppendEntries, PeerMessage::InstallSnapshot],
    );
    cluster.elect(2).await.expect("m3 elected");
    let m3_term = cluster.raft(2).metrics().borrow_watched().current_term;
    let m1_follows_m3 = {
        let m1 = cluster.raft(0).clone();
        move || m1.metrics().borrow_watched().current_term >= m3_term
    };
    wait_until("m1 to hear from m3", Duration::from_secs(10), m1_follows_m3).await;
    // Let a retry (if keel made one) reach m3 before it is cut off.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. m2, holding the first entry, wins with m4 and m5 and commits it.
    tokio::time::sleep(LEADER_LEASE_PASSED).await;
    cluster.elect(1).await.expect("m2 elected");
    let outcome = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("the write answers")
        .expect("the write task");
    cluster.links.heal();
    let m2 = cluster.client(1).expect("client");
    // Every member converges on m2's log before the verdict is read.
    let committed = cluster.last_log_index(1);
    cluster
        .wait_until_all_applied(committed, Duration::from_secs(15))
        .await
        .expect("converged");
    let register = read_register(&m2).await;
    (outcome, register)
}

fn indeterminate(error: &ClientError) -> bool {
    matches!(
        error.wire_error(),
        Some(WireError::LeaderChanged) | Some(WireError::Timeout)
    ) || matches!(error, ClientError::Timeout(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_truncated_on_a_deposed_leader_and_committed_by_another_is_not_applied_twice() {
    let (outcome, (value, version)) = through_a_truncation_on_the_deposed_leader(|client| {
        Box::pin(async move { client.put(put("v1")).await })
    })
    .await;
    if let Err(error) = &outcome {
        assert!(
            indeterminate(error),
            "a definite failure for a write that may apply: {error}"
        );
    }
    assert_eq!(value, "v1", "the put's original entry was committed by m2");
    assert_eq!(version, 2, "the put was applied {} times", version - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cas_truncated_on_a_deposed_leader_and_committed_by_another_is_not_applied_twice() {
    let cas = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: KEY.into(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Value(b"v0".to_vec())),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(put("v1"))),
        }],
        failure: Vec::new(),
    };
    let (outcome, (value, version)) = through_a_truncation_on_the_deposed_leader(move |client| {
        Box::pin(async move { client.txn(cas).await })
    })
    .await;
    assert_eq!(
        (value.as_str(), version),
        ("v1", 2),
        "the CAS's original entry was committed once"
    );
    match outcome {
        Ok(response) => assert!(
            response.succeeded,
            "the CAS was answered 'not applied' although its original entry was committed"
        ),
        Err(error) => assert!(
            indeterminate(&error),
            "a definite failure for a CAS that applied: {error}"
        ),
    }
}

/// Crashes a follower at `step` of a snapshot install, half a second after
/// it reached it (time for a log purge that does not wait), then checks
/// that it starts again and catches up.
async fn crash_a_follower_installing_a_snapshot_at(step: &'static str) {
    let mut cluster = InProcessCluster::start(3, &["--snapshot-count=50"])
        .await
        .expect("cluster");
    cluster
        .wait_for("a leader", Duration::from_secs(15), |_, m| {
            m.current_leader.is_some()
        })
        .await
        .expect("leader");
    // A follower misses enough entries that the leader's log no longer has
    // them. (Not the leader: openraft 0.10 purges no log entry that is in
    // flight to a member, and a new leader's first entries to a member that
    // was down since its term began stay in flight until it answers.)
    let leader = (0..3)
        .find(|index| cluster.raft(*index).metrics().borrow_watched().state == openraft::ServerState::Leader)
        .expect("a member leads");
    let victim = (leader + 1) % 3;
    let client = cluster.client(leader).expect("client");
    // Every member first takes a snapshot of its own, so the follower has
    // an older current snapshot when the new one arrives.
    for i in 0..80 {
        let request = PutRequest {
            key: format!("early-{i:04}").into_bytes(),
            value: vec![b'e'; 64],
            ..Default::default()
        };
        client.put(request).await.expect("early put");
    }
    cluster
        .wait_for("every member's own snapshot", Duration::from_secs(15), |_, m| {
            m.snapshot.is_some()
        })
        .await
        .expect("snapshots");
    let victim_last = cluster.last_log_index(leader);
    cluster.crash_member(victim).await;
    for i in 0..300 {
        let request = PutRequest {
            key: format!("key-{i:04}").into_bytes(),
            value: vec![b'x'; 256],
            ..Default::default()
        };
        let mut attempt = 0;
        while let Err(error) = client.put(request.clone()).await {
            attempt += 1;
            assert!(attempt < 20, "put {i}: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Only once the leader's log starts after the follower's can the
    // follower need a snapshot (openraft 0.10 purges after the snapshot is
    // built, asynchronously).
    let purged_past_the_victim = {
        let raft = cluster.raft(leader).clone();
        move || {
            let purged = raft.metrics().borrow_watched().purged;
            purged.is_some_and(|id| id.index > victim_last)
        }
    };
    wait_until(
        "the leader to purge the entries the follower lacks",
        Duration::from_secs(10),
        purged_past_the_victim,
    )
    .await;
    // The follower restarts, receives a snapshot and is crashed at `step`
    // (its log purge is issued at the same time as the install).
    let fail_points = FailPoints::default();
    let install = fail_points.arm(step);
    cluster
        .start_member(victim, fail_points)
        .await
        .expect("the follower restarts");
    let reached = tokio::task::spawn_blocking(move || {
        let reached = install.wait_reached(Duration::from_secs(30));
        (reached, install)
    })
    .await
    .expect("join");
    assert!(reached.0, "the follower never reached {step}");
    // Long enough for a purge that does not wait for the install to finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reached.1.crash();
    cluster.crash_member(victim).await;

    cluster
        .start_member(victim, FailPoints::default())
        .await
        .unwrap_or_else(|e| panic!("the follower starts again after a crash at {step}: {e:#}"));
    let leader_last = {
        let raft = cluster.raft(leader);
        let last = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        last
    };
    cluster
        .wait_until_all_applied(leader_last, Duration::from_secs(30))
        .await
        .expect("the follower caught up");
    let follower = cluster.client(victim).expect("client");
    let last = follower
        .range(RangeRequest {
            key: b"key-0299".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("read on the follower");
    assert_eq!(last.kvs.len(), 1, "the follower has the last write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_crashed_while_installing_a_snapshot_starts_again_and_catches_up() {
    crash_a_follower_installing_a_snapshot_at(BEFORE_SNAPSHOT_INSTALL_SWITCH).await;
}

/// The partition suite's watch runs found it (seed 207): the keyspace of a
/// received snapshot was durable and the log purged behind it before the
/// snapshot's meta file named it; a crash in between left a member whose
/// every start panicked in openraft (`purge_upto (1199) <=
/// snapshot_last_log_id (399)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_crashed_after_installing_a_snapshot_keyspace_but_before_its_meta_starts_again() {
    crash_a_follower_installing_a_snapshot_at(BEFORE_SNAPSHOT_INSTALL_META_COMMIT).await;
}
