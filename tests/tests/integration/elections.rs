//! Elections (openraft 0.10's, with pre-vote): every round draws a fresh
//! random timeout, so killing the leader again and again never leaves the
//! cluster stuck in repeated split votes (openraft 0.9.25 drew once per
//! member, which keel's former timer worked around); and no term ever has
//! two leaders (openraft's default leader id lets a higher member id win a
//! term another member already won; keel uses `leader_id_std`).

use std::collections::BTreeMap;
use std::time::Duration;

use keel_api::etcdserverpb::PutRequest;
use keel_tests::{Cluster, ClusterOptions};
use tokio::time::Instant;

const ELECTION_TIMEOUT_MS: u64 = 500;

#[tokio::test]
async fn killing_the_leader_20_times_elects_a_new_one_each_time_within_10_election_timeouts() {
    let options = ClusterOptions {
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        heartbeat_interval_ms: 50,
        ..ClusterOptions::keel(3)
    };
    let mut cluster = Cluster::start(options).await.expect("cluster starts");
    let bound = Duration::from_millis(10 * ELECTION_TIMEOUT_MS);
    let mut leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("first leader");
    let mut waits = Vec::new();
    for round in 0..20 {
        cluster.kill(leader).expect("kill -9 the leader");
        let killed_at = Instant::now();
        let next = cluster
            .wait_for_leader(bound)
            .await
            .unwrap_or_else(|e| panic!("round {round}: no new leader within {bound:?}: {e}"));
        waits.push(killed_at.elapsed());
        assert_ne!(next, leader, "round {round}: the killed member cannot lead");
        let client = cluster.member_client(next).expect("client");
        client
            .put(PutRequest {
                key: format!("round-{round}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: write through the new leader: {e}"));
        cluster.restart(leader).expect("restart the killed member");
        // Let the restarted member come up before its peer is killed next.
        let restarted = cluster.member_client(leader).expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        while restarted.status(&cluster.endpoint(leader)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "round {round}: restarted member does not answer"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        leader = next;
    }
    assert_one_leader_per_term(&cluster);
    waits.sort();
    eprintln!(
        "time from kill to new leader: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
}

/// Members start their first election together at bootstrap, all in term 1:
/// without standard leader ids, a member with a higher id could win term 1
/// after another had won it (seen as two "elected leader ... term=1").
#[tokio::test]
async fn bootstrap_elections_never_give_one_term_two_leaders() {
    for attempt in 0..20 {
        let mut cluster = Cluster::start(ClusterOptions::keel(3))
            .await
            .expect("cluster starts");
        cluster
            .wait_for_leader(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: no leader: {e}"));
        // Let a second claimant of the first terms show itself, if any.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_one_leader_per_term(&cluster);
    }
}

/// Reads every member's log for its "elected leader ... term=N" lines and
/// fails if two members were elected in the same term.
fn assert_one_leader_per_term(cluster: &Cluster) {
    let mut leaders_by_term: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for index in 0..cluster.size() {
        let log = std::fs::read_to_string(cluster.log_path(index)).expect("member log");
        for line in log.lines().filter(|line| line.contains("elected leader")) {
            let term = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("term="))
                .and_then(|term| term.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no term in {line:?}"));
            let names = leaders_by_term.entry(term).or_default();
            let name = cluster.member_name(index).to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    assert!(!leaders_by_term.is_empty(), "no member logged an election");
    let doubled: Vec<_> = leaders_by_term
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .collect();
    assert!(doubled.is_empty(), "terms with two leaders: {doubled:?}");
}
