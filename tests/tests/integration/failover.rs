//! Failover (issue 12): a follower that sees its leader's connection close
//! campaigns at once instead of waiting out the election timeout, which
//! neither disturbs a live leader nor shortens a partition's wait; and
//! leadership moves to a named member on request without losing a write.
//! Each test runs real members in one process (`keel_tests::in_process`).

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_node::leader_transfer::{transfer_leadership, LeaderTransferError};
use keel_tests::in_process::{InProcessCluster, ALL_PEER_MESSAGES};
use openraft::ServerState;
use tokio::time::Instant;

const HEARTBEAT_MS: u64 = 100;

fn timing_flags(election_timeout_ms: u64) -> Vec<String> {
    vec![
        format!("--election-timeout={election_timeout_ms}"),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
    ]
}

async fn start(size: usize, election_timeout_ms: u64) -> InProcessCluster {
    let flags = timing_flags(election_timeout_ms);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    InProcessCluster::start(size, &flags).await.expect("cluster")
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

/// (term, leader) as member `index` sees them.
fn term_and_leader(cluster: &InProcessCluster, index: usize) -> (u64, Option<u64>) {
    let metrics = cluster.raft(index).metrics();
    let metrics = metrics.borrow_watched();
    (metrics.current_term, metrics.current_leader)
}

/// Waits until every running member follows one leader in a term after
/// `after_term`; returns that leader's index.
async fn wait_for_new_leader(cluster: &InProcessCluster, after_term: u64, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let leader = (0..cluster.size()).find(|&index| {
            cluster.is_running(index) && {
                let metrics = cluster.raft(index).metrics();
                let metrics = metrics.borrow_watched();
                metrics.state == ServerState::Leader && metrics.current_term > after_term
            }
        });
        if let Some(leader) = leader {
            let id = cluster.id(leader);
            let all_follow = (0..cluster.size())
                .filter(|&index| cluster.is_running(index))
                .all(|index| term_and_leader(cluster, index).1 == Some(id));
            if all_follow {
                return leader;
            }
        }
        assert!(Instant::now() < deadline, "no new leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Elects m1 and lets every member apply what it wrote.
async fn settle_with_m1_leading(cluster: &InProcessCluster) {
    cluster.elect(0).await.expect("m1 elected");
    let m1 = cluster.client(0).expect("client");
    m1.put(put("settled")).await.expect("a first write");
    let last = cluster
        .raft(0)
        .metrics()
        .borrow_watched()
        .last_log_index
        .unwrap_or(0);
    cluster
        .wait_until_all_applied(last, Duration::from_secs(10))
        .await
        .expect("every member applied the first writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_long_before_the_election_timeout() {
    // No member campaigns on a timeout in this test: the leader lease alone
    // is 20 s.
    let mut cluster = start(3, 20_000).await;
    settle_with_m1_leading(&cluster).await;
    let (term, _) = term_and_leader(&cluster, 0);
    cluster.crash_member(0).await;
    let crashed_at = Instant::now();
    let leader = wait_for_new_leader(&cluster, term, Duration::from_secs(5)).await;
    eprintln!("new leader m{} after {:?}", leader + 1, crashed_at.elapsed());
    let losses: u64 = (1..3)
        .map(|index| cluster.leader_connections(index).leader_losses())
        .sum();
    assert!(losses >= 1, "no follower acted on the closed connection");
    let client = cluster.client(leader).expect("client");
    client
        .put(put("after"))
        .await
        .expect("a write through the new leader");
    let read = client
        .range(RangeRequest {
            key: b"settled".to_vec(),
            ..Default::default()
        })
        .await
        .expect("read");
    assert_eq!(
        read.kvs.len(),
        1,
        "the write acknowledged before the crash survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_connection_to_the_live_leader_is_reset_raises_no_term() {
    const ELECTION_TIMEOUT_MS: u64 = 1000;
    let cluster = start(3, ELECTION_TIMEOUT_MS).await;
    settle_with_m1_leading(&cluster).await;
    let leader_id = cluster.id(0);
    let terms_before: Vec<u64> = (0..3).map(|index| term_and_leader(&cluster, index).0).collect();
    let follower = 1;
    for reset in 1..=3u64 {
        let connections = cluster.leader_connections(follower);
        let closed = connections.reset_connections_from(leader_id);
        assert!(
            closed >= 1,
            "reset {reset}: m2 had no connection carrying m1's messages"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while connections.leader_losses() < reset {
            assert!(Instant::now() < deadline, "reset {reset}: m2 did not act on it");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The follower campaigns for up to an election timeout; watch past
        // it, and past the time a timeout election would need.
        let watch_until = Instant::now() + Duration::from_millis(2 * ELECTION_TIMEOUT_MS);
        while Instant::now() < watch_until {
            for (index, term_before) in terms_before.iter().enumerate() {
                let (term, leader) = term_and_leader(&cluster, index);
                assert_eq!(
                    term,
                    *term_before,
                    "reset {reset}: m{} changed its term",
                    index + 1
                );
                if index != follower {
                    assert_eq!(leader, Some(leader_id), "reset {reset}: m{} lost m1", index + 1);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            term_and_leader(&cluster, follower).1,
            Some(leader_id),
            "reset {reset}: m2 follows m1 again"
        );
        cluster
            .client(follower)
            .expect("client")
            .put(put(&format!("after-reset-{reset}")))
            .await
            .expect("a write through m2 reaches m1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_only_after_the_election_timeout() {
    const ELECTION_TIMEOUT_MS: u64 = 1000;
    let cluster = start(3, ELECTION_TIMEOUT_MS).await;
    settle_with_m1_leading(&cluster).await;
    let (term, _) = term_and_leader(&cluster, 0);
    // Links cut, connections left open: packets lost, not a dead process.
    cluster.cut(&[0], &[1, 2], &ALL_PEER_MESSAGES);
    cluster.cut(&[1, 2], &[0], &ALL_PEER_MESSAGES);
    let cut_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    let replaced_after = loop {
        let replaced = (1..3).any(|index| {
            let metrics = cluster.raft(index).metrics();
            let metrics = metrics.borrow_watched();
            metrics.state == ServerState::Leader && metrics.current_term > term
        });
        if replaced {
            break cut_at.elapsed();
        }
        assert!(Instant::now() < deadline, "m1 was never replaced");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("m1 replaced {replaced_after:?} after the cut");
    // The followers' leases (the election timeout) ran from the last
    // heartbeat, at most one interval before the cut.
    let earliest = Duration::from_millis(ELECTION_TIMEOUT_MS - HEARTBEAT_MS);
    assert!(
        replaced_after >= earliest,
        "replaced after {replaced_after:?}, before the election timeout"
    );
    for index in 1..3 {
        assert_eq!(
            cluster.leader_connections(index).leader_losses(),
            0,
            "m{} saw its leader's connection close",
            index + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transferring_leadership_moves_it_to_the_named_member_and_loses_no_write() {
    const ELECTION_TIMEOUT_MS: u64 = 1000;
    let cluster = start(3, ELECTION_TIMEOUT_MS).await;
    settle_with_m1_leading(&cluster).await;
    let (term, _) = term_and_leader(&cluster, 0);
    let m2 = cluster.id(1);
    // A transfer waits for no timeout; an election after one (the leader
    // stops its heartbeats while it transfers) takes longer than this.
    let limit = Duration::from_millis(ELECTION_TIMEOUT_MS);

    assert!(matches!(
        transfer_leadership(cluster.raft(1), cluster.id(2), limit).await,
        Err(LeaderTransferError::NotLeader { .. })
    ));
    assert!(matches!(
        transfer_leadership(cluster.raft(0), 42, limit).await,
        Err(LeaderTransferError::NotAVoter(42))
    ));

    // Writes through m3 (a follower throughout) keep coming during the move.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = cluster.client(2).expect("client");
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w-{i:05}");
                if client.put(put(&key)).await.is_ok() {
                    acknowledged.lock().unwrap().insert(key);
                }
                i += 1;
            }
        })
    };
    let acknowledged_count = || acknowledged.lock().unwrap().len();
    while acknowledged_count() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    transfer_leadership(cluster.raft(0), m2, limit)
        .await
        .expect("leadership moves to m2");
    let moved_with = acknowledged_count();
    let leader = wait_for_new_leader(&cluster, term, Duration::from_secs(5)).await;
    assert_eq!(leader, 1, "m2 leads");
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged_count() < moved_with + 50 {
        assert!(Instant::now() < deadline, "writes did not resume after the move");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let acknowledged = acknowledged.lock().unwrap().clone();
    let read = cluster
        .client(1)
        .expect("client")
        .range(RangeRequest {
            key: b"w-".to_vec(),
            range_end: b"w.".to_vec(),
            ..Default::default()
        })
        .await
        .expect("read on the new leader");
    let stored: BTreeSet<String> = read
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}
