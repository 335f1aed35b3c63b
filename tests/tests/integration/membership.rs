//! Membership changes (etcd's MemberAdd, MemberRemove, MemberUpdate,
//! MemberPromote) driven by the real etcdctl 3.4: the same cases run
//! against keel and against etcd through one `Cluster` fixture, and
//! keelctl prints what etcdctl prints.

use crate::keelctl_support;

use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::{Cluster, ClusterOptions, Flavor};
use keelctl_support::{args, etcdctl_path, keelctl_path, run, without_client_logs, Ran};

/// The cluster's first three members, which every test starts with.
const FIRST_MEMBERS: usize = 3;

async fn ctl(program: &std::path::Path, cluster: &Cluster, list: &[&str]) -> Ran {
    let endpoints: Vec<String> = (0..FIRST_MEMBERS).map(|index| cluster.endpoint(index)).collect();
    let mut full = vec![format!("--endpoints={}", endpoints.join(",")).into_bytes()];
    full.extend(args(list));
    run(program, &full, b"").await
}

async fn etcdctl(cluster: &Cluster, list: &[&str]) -> Ran {
    ctl(&etcdctl_path(), cluster, list).await
}

/// etcdctl's stdout, which must have succeeded.
async fn etcdctl_ok(cluster: &Cluster, list: &[&str]) -> String {
    let ran = etcdctl(cluster, list).await;
    assert_eq!(ran.code, 0, "etcdctl {list:?}: {}", ran.stderr_text());
    ran.stdout_text()
}

/// `etcdctl member add ...`, tried again while the cluster answers
/// "unhealthy cluster" or "not enough started members": etcd refuses a
/// member add until every member has been connected to the leader for 5
/// seconds (keel checks the same connections, but without etcd's 5 seconds
/// of history), and until enough members published their attributes, which
/// a member does just after it starts. (etcdctl prints only the message.)
async fn etcdctl_member_add(cluster: &Cluster, list: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ran = etcdctl(cluster, list).await;
        if ran.code == 0 {
            return ran.stdout_text();
        }
        let refused_before_proposing = [
            keel_api::WireError::Unhealthy,
            keel_api::WireError::MemberNotEnoughStarted,
        ]
        .iter()
        .any(|refusal| ran.stderr_text().contains(&refusal.to_string()));
        assert!(
            refused_before_proposing && tokio::time::Instant::now() < deadline,
            "etcdctl {list:?}: {}",
            ran.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The member id and `ETCD_INITIAL_CLUSTER` that `member add` printed.
fn added_member(printed: &str) -> (String, String) {
    let id = printed
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("Member "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no member id in {printed:?}"))
        .trim()
        .to_string();
    let initial_cluster = printed
        .lines()
        .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {printed:?}"))
        .trim_matches('"')
        .to_string();
    (id, initial_cluster)
}

/// Waits until member `index` serves `key` from its own state.
async fn wait_until_member_serves(cluster: &Cluster, index: usize, key: &[u8], expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = cluster.member_client(index) {
            let read = RangeRequest {
                key: key.to_vec(),
                serializable: true,
                ..Default::default()
            };
            if let Ok(response) = client.range(read).await {
                if response.kvs.first().is_some_and(|kv| kv.value == expected) {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member {index} never served {key:?}:\n{}",
            cluster.log_tail(index, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn options(options: ClusterOptions) -> ClusterOptions {
    ClusterOptions {
        election_timeout_ms: 1000,
        heartbeat_interval_ms: 100,
        ..options
    }
}

/// Ports for a fourth member `m4`, then `etcdctl member add m4
/// --peer-urls=... <flags>`: its index, peer URL and what etcdctl printed.
async fn add_m4_with_etcdctl(cluster: &mut Cluster, flags: &[&str]) -> (usize, String, String) {
    let index = cluster.prepare_member("m4").expect("ports for m4");
    let peer_url = cluster.peer_url(index);
    let peer_urls = format!("--peer-urls={peer_url}");
    let mut command = vec!["member", "add", "m4"];
    command.extend_from_slice(flags);
    command.push(&peer_urls);
    let printed = etcdctl_member_add(cluster, &command).await;
    (index, peer_url, printed)
}

/// A cluster of the first members with a leader, holding `k` = `v` (what
/// a member that joins later must serve).
async fn start_led_holding_k(flavor: ClusterOptions) -> Cluster {
    let cluster = Cluster::start_led(options(flavor)).await.expect("cluster starts");
    let client = cluster.client().expect("client");
    client
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    cluster
}

/// A voter added with `etcdctl member add` and started with what it
/// printed catches up and serves; removed, it stops, and restarted on its
/// data dir it is refused and stops again (an id never comes back).
async fn add_serve_remove(flavor: ClusterOptions) {
    let mut cluster = Cluster::start_led(options(flavor)).await.expect("cluster starts");
    let client = cluster.client().expect("client");
    for i in 0..50 {
        let put = PutRequest {
            key: format!("key-{i}").into_bytes(),
            value: format!("value-{i}").into_bytes(),
            ..Default::default()
        };
        client.put(put).await.expect("put");
    }
    let (joining, peer_url, printed) = add_m4_with_etcdctl(&mut cluster, &[]).await;
    let (id, initial_cluster) = added_member(&printed);
    assert!(initial_cluster.contains(&format!("m4={peer_url}")), "{printed}");
    let listed = etcdctl_ok(&cluster, &["member", "list"]).await;
    assert!(
        listed.contains(&format!("{id}, unstarted, , {peer_url}, , false")),
        "{listed}"
    );

    cluster
        .start_joining(joining, &initial_cluster)
        .expect("m4 starts");
    wait_until_member_serves(&cluster, joining, b"key-49", b"value-49").await;
    if cluster.flavor() == Flavor::Keel {
        // With a snapshot every 20 writes the leader's log no longer starts
        // at the beginning: the new member must have installed a snapshot.
        assert!(
            cluster
                .wait_for_log_line(
                    joining,
                    "installed snapshot received from the leader",
                    Duration::from_secs(10)
                )
                .await
                .is_some(),
            "the added member did not catch up by snapshot:\n{}",
            cluster.log_tail(joining, 200)
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = etcdctl_ok(&cluster, &["member", "list"]).await;
        if listed.contains(&format!("{id}, started, m4, {peer_url}")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "m4 never published itself: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let removed = etcdctl_ok(&cluster, &["member", "remove", &id]).await;
    assert!(
        removed.contains(&format!("{id} removed from cluster ")),
        "{removed}"
    );
    let status = cluster.wait_for_exit(joining, Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "the removed member still runs:\n{}",
        cluster.log_tail(joining, 20)
    );
    let log = cluster.log_tail(joining, 200);
    assert!(
        log.contains("the member has been permanently removed from the cluster"),
        "{log}"
    );
    let listed = etcdctl_ok(&cluster, &["member", "list"]).await;
    assert!(!listed.contains(&id), "{listed}");
    client
        .put(PutRequest {
            key: b"after-removal".to_vec(),
            value: b"ok".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the cluster writes after the removal");

    if cluster.flavor() == Flavor::Keel {
        // etcd 3.4 lets a removed member's restart run until its peers'
        // answers tell it; keel refuses it at its first vote as well.
        cluster.restart(joining).expect("the removed member restarts");
        let status = cluster.wait_for_exit(joining, Duration::from_secs(30)).await;
        assert!(
            status.is_some(),
            "the removed member serves again:\n{}",
            cluster.log_tail(joining, 20)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_etcdctl_catches_up_serves_and_stops_once_removed_on_keel() {
    add_serve_remove(ClusterOptions {
        snapshot_count: Some(20),
        ..ClusterOptions::keel(3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_etcdctl_catches_up_serves_and_stops_once_removed_on_etcd() {
    add_serve_remove(ClusterOptions::etcd(3)).await;
}

/// `member add` prints an empty name for a member that has not yet
/// published its own (it happens when the cluster has just started); etcd
/// joins with that `--initial-cluster`, and keel refused it ("entry
/// \"=http://...\" is not name=url"). One old member's name is blanked
/// here, so the case does not depend on timing (etcd merges several
/// unnamed entries into one member and then refuses the count).
async fn joins_with_an_initial_cluster_naming_an_unnamed_member(flavor: ClusterOptions) {
    let mut cluster = start_led_holding_k(flavor).await;
    let (joining, _, printed) = add_m4_with_etcdctl(&mut cluster, &[]).await;
    let (_, initial_cluster) = added_member(&printed);
    let one_unnamed = initial_cluster.replacen("m3=", "=", 1);
    assert!(
        one_unnamed.contains(",=http") || one_unnamed.starts_with("=http"),
        "{one_unnamed}"
    );
    cluster.start_joining(joining, &one_unnamed).expect("m4 starts");
    wait_until_member_serves(&cluster, joining, b"k", b"v").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_with_the_unnamed_member_member_add_printed_on_keel() {
    joins_with_an_initial_cluster_naming_an_unnamed_member(ClusterOptions::keel(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_with_the_unnamed_member_member_add_printed_on_etcd() {
    joins_with_an_initial_cluster_naming_an_unnamed_member(ClusterOptions::etcd(3)).await;
}

/// What differs between two clusters in etcdctl's printouts, masked: the
/// member and cluster ids of "Member <id> ... cluster <id>" lines (Go's
/// `%16x`), and in `ETCD_INITIAL_CLUSTER` the ports and the order (by
/// member id).
fn masked_ids(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let masked =
            if let (Some(rest), Some(cluster_at)) = (body.strip_prefix("Member "), body.rfind(" cluster ")) {
                let verb = rest.get(16..cluster_at.saturating_sub(7)).unwrap_or_default();
                format!("Member <id>{verb} cluster <id>")
            } else if let Some(value) = body.strip_prefix("ETCD_INITIAL_CLUSTER=") {
                let mut members: Vec<String> = value
                    .trim_matches('"')
                    .split(',')
                    .map(|member| member.split(':').next().unwrap_or_default().to_string())
                    .collect();
                members.sort();
                format!("ETCD_INITIAL_CLUSTER={}", members.join(","))
            } else if body.starts_with("ETCD_INITIAL_ADVERTISE_PEER_URLS=") {
                "ETCD_INITIAL_ADVERTISE_PEER_URLS=<url>".to_string()
            } else {
                body.to_string()
            };
        out.push_str(&masked);
        out.push_str(&line[body.len()..]);
    }
    out.into_bytes()
}

fn comparable(ran: &Ran) -> (i32, Vec<u8>, Vec<u8>) {
    (
        ran.code,
        masked_ids(&ran.stdout),
        masked_ids(&without_client_logs(&ran.stderr)),
    )
}

/// Runs the membership cases against `cluster` with `program`; what each
/// printed, ids masked.
async fn membership_cases(
    program: &std::path::Path,
    cluster: &mut Cluster,
) -> Vec<(String, (i32, Vec<u8>, Vec<u8>))> {
    let voter = etcdctl_ok(cluster, &["member", "list"]).await;
    let voter_id = voter.split(',').next().unwrap_or_default().to_string();
    let learner = cluster.prepare_member("learner").expect("ports");
    let learner_url = format!("--peer-urls={}", cluster.peer_url(learner));
    let second = cluster.prepare_member("second").expect("ports");
    let second_url = format!("--peer-urls={}", cluster.peer_url(second));
    let taken_url = format!("--peer-urls={}", cluster.peer_url(0));
    let cases: Vec<Vec<String>> = [
        vec!["member", "add"],
        vec!["member", "add", "a", "http://127.0.0.1:1"],
        vec!["member", "add", "a"],
        vec!["member", "add", "a", "--peer-urls=bad"],
        vec!["member", "add", "a", "--peer-urls=http://127.0.0.1:1/x"],
        vec!["member", "add", "a", "--peer-urls=http://127.0.0.1"],
        vec!["member", "add", "a", &taken_url],
        vec!["member", "remove"],
        vec!["member", "remove", "zz"],
        vec!["member", "remove", "1234"],
        vec!["member", "update", "1234"],
        vec!["member", "update", "1234", "--peer-urls=http://127.0.0.1:1"],
        vec!["member", "promote", "1234"],
        vec!["member", "promote", &voter_id],
        vec!["member", "add", "learner", "--learner", &learner_url],
    ]
    .iter()
    .map(|case| case.iter().map(|a| a.to_string()).collect())
    .collect();
    let mut printed = Vec::new();
    for case in &cases {
        let list: Vec<&str> = case.iter().map(String::as_str).collect();
        printed.push((case.join(" "), comparable(&ctl(program, cluster, &list).await)));
    }
    let listed = etcdctl_ok(cluster, &["member", "list"]).await;
    let learner_id = listed
        .lines()
        .find(|line| line.ends_with("true"))
        .and_then(|line| line.split(',').next())
        .unwrap_or_else(|| panic!("no learner in {listed}"))
        .to_string();
    let later: Vec<Vec<&str>> = vec![
        vec!["member", "promote", &learner_id],
        vec!["member", "add", "second", "--learner", &second_url],
        vec!["member", "remove", &learner_id],
    ];
    for list in &later {
        let ran = ctl(program, cluster, list).await;
        printed.push((list.join(" ").replace(&learner_id, "<learner>"), comparable(&ran)));
    }
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_commands_print_and_fail_as_etcdctl_against_etcd() {
    let mut keel = Cluster::start_led(options(ClusterOptions::keel(3)))
        .await
        .expect("keel starts");
    let mut etcd = Cluster::start_led(options(ClusterOptions::etcd(3)))
        .await
        .expect("etcd starts");
    // etcd refuses membership changes ("unhealthy cluster") until every
    // member has been connected to the leader for 5 seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let from_etcd = membership_cases(&etcdctl_path(), &mut etcd).await;
    let from_keel = membership_cases(&keelctl_path(), &mut keel).await;
    let mismatches: Vec<String> = from_etcd
        .iter()
        .zip(&from_keel)
        .filter(|(etcd, keel)| etcd.1 != keel.1)
        .map(|(etcd, keel)| {
            format!(
                "{}\n  etcdctl/etcd: {} {:?} {:?}\n  keelctl/keel: {} {:?} {:?}",
                etcd.0,
                etcd.1 .0,
                String::from_utf8_lossy(&etcd.1 .1),
                String::from_utf8_lossy(&etcd.1 .2),
                keel.1 .0,
                String::from_utf8_lossy(&keel.1 .1),
                String::from_utf8_lossy(&keel.1 .2),
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_promoted_once_in_sync_and_then_counts_as_a_voter() {
    let mut cluster = start_led_holding_k(ClusterOptions::keel(3)).await;
    let (learner, peer_url, printed) = add_m4_with_etcdctl(&mut cluster, &["--learner"]).await;
    let (id, initial_cluster) = added_member(&printed);
    let early = etcdctl(&cluster, &["member", "promote", &id]).await;
    assert!(
        early
            .stderr_text()
            .contains("can only promote a learner member which is in sync with leader"),
        "{early:?}"
    );
    cluster
        .start_joining(learner, &initial_cluster)
        .expect("m4 starts");
    wait_until_member_serves(&cluster, learner, b"k", b"v").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let promoted = etcdctl(&cluster, &["member", "promote", &id]).await;
        if promoted.code == 0 {
            assert!(
                promoted
                    .stdout_text()
                    .contains(&format!("{id} promoted in cluster ")),
                "{promoted:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never promoted: {promoted:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let listed = etcdctl_ok(&cluster, &["member", "list"]).await;
    assert!(
        listed.contains(&format!("{id}, started, m4, {peer_url}")),
        "{listed}"
    );
    assert!(!listed.contains("true"), "no learner is left: {listed}");
    // A voter can lead (a learner cannot): leadership moves to it.
    let endpoints: Vec<String> = (0..=learner).map(|index| cluster.endpoint(index)).collect();
    let moved = run(
        &etcdctl_path(),
        &args(&[
            &format!("--endpoints={}", endpoints.join(",")),
            "move-leader",
            &id,
        ]),
        b"",
    )
    .await;
    assert!(moved.stdout_text().ends_with(&format!(" to {id}\n")), "{moved:?}");
}
