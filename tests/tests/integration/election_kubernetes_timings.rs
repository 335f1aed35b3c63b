//! `keelctl elect` with Kubernetes' leader-election timings (lease
//! duration 15 s, renew deadline 10 s, retry period 2 s) on a 3-member
//! keel cluster: real `keelctl` processes against in-process members.
//!
//! Each candidate runs, while it leads, a writer (`elect ... -- sh -c`)
//! that makes guarded writes through `keelctl txn`: each puts a key of its
//! own under `fenced/<token>/`, and applies only while the election key
//! still has the leader's create revision (its fencing token). From those
//! writes the tests check that two leaders never acted at once: ordered by
//! revision, the committed writes of each token form one run, and the
//! tokens increase from run to run, also while the old leader's writer
//! keeps trying. And from the instants seen: a new leader within lease
//! duration + retry period (17 s) of the old one's death or isolation,
//! never before the old lease could have run out, and an isolated leader
//! that steps down (exits, its writer killed) before another takes over.

use crate::keelctl_support;

use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;

use keel_api::etcdserverpb::RangeRequest;
use keel_tests::in_process::{InProcessCluster, ALL_PEER_MESSAGES};
use keelctl_support::background::Background;
use keelctl_support::keelctl_path;

const ELECTION: &str = "kube-controller-manager";
/// Kubernetes' defaults, and keelctl's.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Lease duration + retry period: the issue's bound on a takeover.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(17);

/// The writer a leader runs: a guarded write every 300 ms, each announced
/// on stdout as `attempt <token> <n>` before keelctl prints its outcome.
fn fenced_writer(endpoint: &str) -> String {
    let keelctl = keelctl_path();
    format!(
        r#"n=0; while :; do n=$((n+1)); echo "attempt $KEEL_FENCING_TOKEN $n";
printf 'create("%s") = "%s"\n\nput fenced/%s/%s leader\n\n\n' "$KEEL_ELECT_KEY" "$KEEL_FENCING_TOKEN" "$KEEL_FENCING_TOKEN" "$n" |
"{keelctl}" --endpoints={endpoint} --command-timeout=3s txn; sleep 0.3; done"#,
        keelctl = keelctl.display()
    )
}

/// `keelctl elect` campaigning through member `index` with the writer.
fn candidate(cluster: &InProcessCluster, index: usize, proposal: &str) -> Background {
    let endpoint = cluster.client_endpoint(index);
    let writer = fenced_writer(&endpoint);
    Background::spawn_group(
        &keelctl_path(),
        &endpoint,
        &["elect", ELECTION, proposal, "--", "sh", "-c", &writer],
    )
}

/// Waits until `candidate` prints that it leads (its key, then its value).
async fn elected_within(candidate: &mut Background, limit: Duration) -> Option<Instant> {
    candidate.wait_for_lines(2, limit).await.then(Instant::now)
}

/// The committed fenced writes: (mod revision, token), in revision order.
async fn fenced_writes(cluster: &InProcessCluster, index: usize) -> Vec<(i64, i64)> {
    let response = cluster
        .client(index)
        .expect("client")
        .range(RangeRequest {
            key: b"fenced/".to_vec(),
            range_end: b"fenced0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("read the fenced writes");
    let mut writes: Vec<(i64, i64)> = response
        .kvs
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key);
            let token = key
                .split('/')
                .nth(1)
                .and_then(|t| t.parse().ok())
                .expect("fenced/<token>/<n>");
            (kv.mod_revision, token)
        })
        .collect();
    writes.sort_unstable();
    writes
}

/// The tokens of the runs of writes, in revision order; each token's
/// writes must form one run, and the tokens must increase.
fn assert_one_leader_at_a_time(writes: &[(i64, i64)]) -> Vec<i64> {
    let mut runs: Vec<i64> = Vec::new();
    for &(revision, token) in writes {
        if runs.last() != Some(&token) {
            assert!(
                runs.last().is_none_or(|last| *last < token),
                "write at revision {revision} with token {token} after a run of token {:?}: \
                 two leaders' writes interleave ({writes:?})",
                runs.last()
            );
            runs.push(token);
        }
    }
    runs
}

/// Attempts by the writer of `token` announced on `output`.
fn attempts_of(output: &[u8], token: i64) -> usize {
    let prefix = format!("attempt {token} ");
    String::from_utf8_lossy(output)
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .count()
}

/// The fencing token a leader's writer announced first.
fn announced_token(output: &[u8]) -> i64 {
    String::from_utf8_lossy(output)
        .lines()
        .find_map(|line| line.strip_prefix("attempt ")?.split(' ').next()?.parse().ok())
        .expect("the leader's writer announced its token")
}

/// A leader campaigning through member `first`, once it leads and its
/// writer announced its token, and a candidate through member `second`
/// that has waited 3 s without leading.
async fn leader_and_waiting_candidate(
    cluster: &InProcessCluster,
    first: usize,
    second: usize,
) -> (Background, Background, i64) {
    let mut leader = candidate(cluster, first, "first");
    elected_within(&mut leader, Duration::from_secs(20))
        .await
        .expect("the first candidate leads");
    let waiting = candidate(cluster, second, "second");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        waiting.stdout().is_empty(),
        "two leaders at once: {:?}",
        waiting.stdout()
    );
    let token = announced_token(&leader.stdout());
    (leader, waiting, token)
}

async fn started_cluster() -> InProcessCluster {
    let cluster = InProcessCluster::start(3, &[]).await.expect("cluster");
    cluster
        .wait_for("a leader", Duration::from_secs(15), |_, m| {
            m.current_leader.is_some()
        })
        .await
        .expect("a leader");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_lease_duration_plus_retry_period_and_its_writer_is_fenced() {
    let cluster = started_cluster().await;
    let (first, mut second, first_token) = leader_and_waiting_candidate(&cluster, 0, 1).await;

    // kill -9: no resignation; the writer it started lives on.
    first.kill();
    let killed_at = Instant::now();
    let elected_at = elected_within(&mut second, TAKEOVER_LIMIT + Duration::from_secs(10))
        .await
        .expect("the second candidate takes over");
    let takeover = elected_at - killed_at;
    eprintln!("the second candidate led {takeover:?} after the first was killed");
    assert!(takeover <= TAKEOVER_LIMIT, "takeover took {takeover:?}");
    // The lease was renewed at most a retry period before the kill.
    assert!(
        takeover >= LEASE_DURATION - RETRY_PERIOD - Duration::from_millis(500),
        "the first leader's lease ran out early: taken over {takeover:?} after the kill"
    );

    // The orphaned writer keeps trying with the old token while the new
    // leader writes: none of its writes may land.
    let orphan_attempts = attempts_of(&first.stdout(), first_token);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        attempts_of(&first.stdout(), first_token) > orphan_attempts,
        "the killed leader's writer stopped trying; the fence was not exercised"
    );
    let second_token = announced_token(&second.stdout());
    let runs = assert_one_leader_at_a_time(&fenced_writes(&cluster, 2).await);
    assert_eq!(
        runs,
        vec![first_token, second_token],
        "both leaders wrote, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_with_its_member_steps_down_before_another_takes_over_within_17s() {
    let cluster = started_cluster().await;
    let raft_leader = (0..3)
        .find(|&index| {
            cluster.raft(index).metrics().borrow_watched().current_leader == Some(cluster.id(index))
        })
        .expect("a Raft leader");
    // The first candidate talks to a follower, which is then cut off; the
    // lease lives on the Raft leader, which stays (a new Raft leader would
    // restart every lease's TTL when it takes office).
    let isolated = (raft_leader + 1) % 3;
    let (mut first, mut second, first_token) =
        leader_and_waiting_candidate(&cluster, isolated, raft_leader).await;

    let others: Vec<usize> = (0..3).filter(|&index| index != isolated).collect();
    cluster.cut(&[isolated], &others, &ALL_PEER_MESSAGES);
    cluster.cut(&others, &[isolated], &ALL_PEER_MESSAGES);
    let cut_at = Instant::now();

    let stepped_down_at = first
        .exited_within(TAKEOVER_LIMIT)
        .await
        .expect("the isolated leader steps down and exits");
    let elected_at = elected_within(&mut second, TAKEOVER_LIMIT + Duration::from_secs(10))
        .await
        .expect("the second candidate takes over");
    eprintln!(
        "isolated leader stepped down {:?} after the cut; the second candidate led {:?} after it",
        stepped_down_at - cut_at,
        elected_at - cut_at
    );
    let stderr = String::from_utf8_lossy(&first.stderr()).into_owned();
    assert!(
        stderr.contains("not renewed within the renew deadline"),
        "the isolated leader says why it stepped down: {stderr}"
    );
    assert!(
        stepped_down_at < elected_at,
        "the isolated leader still led when the second took over"
    );
    assert!(
        elected_at - cut_at <= TAKEOVER_LIMIT,
        "takeover took {:?}",
        elected_at - cut_at
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let second_token = announced_token(&second.stdout());
    let runs = assert_one_leader_at_a_time(&fenced_writes(&cluster, raft_leader).await);
    assert_eq!(
        runs,
        vec![first_token, second_token],
        "both leaders wrote, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_command_that_exits_ends_its_leadership_with_the_commands_status() {
    let cluster = started_cluster().await;
    let endpoint = cluster.client_endpoint(0);
    let command = "printf '%s %s\\n' \"$KEEL_ELECT_KEY\" \"$KEEL_FENCING_TOKEN\" >&2; exit 3";
    let ran = Background::spawn_group(
        &keelctl_path(),
        &endpoint,
        &["elect", ELECTION, "only", "--", "sh", "-c", command],
    )
    .finish(Duration::from_secs(30))
    .await;
    let stderr = String::from_utf8_lossy(&ran.stderr).into_owned();
    assert_ne!(ran.code, 0, "the command's failure is keelctl's: {stderr}");
    assert!(stderr.contains("exit status 3"), "{stderr}");
    // The command saw the leader's key and its create revision.
    let (key, token) = stderr
        .split_whitespace()
        .next()
        .zip(stderr.split_whitespace().nth(1))
        .expect("the command printed its key and token");
    assert!(key.starts_with(&format!("{ELECTION}/")), "{stderr}");
    assert!(token.parse::<i64>().is_ok_and(|t| t > 0), "{stderr}");
    // Leadership ended with the command: the key was resigned.
    let left = cluster
        .client(0)
        .expect("client")
        .range(RangeRequest {
            key: format!("{ELECTION}/").into_bytes(),
            range_end: format!("{ELECTION}0").into_bytes(),
            ..Default::default()
        })
        .await
        .expect("read the election");
    assert!(left.kvs.is_empty(), "the election key outlived its command");
}
