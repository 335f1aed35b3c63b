//! etcd's Maintenance calls keel serves beyond Status and HashKV: MoveLeader
//! (through the real `etcdctl move-leader` 3.4, and its errors side by side
//! with etcd's) and Hash (every member agrees), `etcdctl endpoint
//! hashkv --cluster` against keel, and Defragment (through the real
//! `etcdctl defrag [--cluster]`, with Status' sizes around it), and
//! Status' term and leader taken together.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{HashRequest, PutRequest, RangeRequest};
use keel_client::ClientError;
use keel_tests::cluster::wait_for_published_members;
use keel_tests::{which, Cluster, ClusterOptions};
use tokio::time::Instant;

async fn etcdctl(endpoints: &[String], args: &[&str]) -> (bool, String, String) {
    let binary = which("etcdctl").expect("etcdctl 3.4 on PATH (Debian's etcd-client)");
    let output = tokio::process::Command::new(binary)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("etcdctl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Each member's ID (hex, as etcdctl prints it), by endpoint index.
async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let client = cluster.member_client(0).expect("client");
    let mut ids = Vec::new();
    for index in 0..cluster.size() {
        let status = client.status(&cluster.endpoint(index)).await.expect("status");
        ids.push(status.header.expect("header").member_id);
    }
    ids
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_move_leader_makes_the_named_member_lead_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let target = (leader + 1) % 3;
    let writer_member = (leader + 2) % 3;
    let ids = member_ids(&cluster).await;

    // Writes through a member that follows before and after the move.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = cluster.member_client(writer_member).expect("client");
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
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

    let target_hex = format!("{:x}", ids[target]);
    let (ok, stdout, stderr) = etcdctl(&cluster.endpoints(), &["move-leader", &target_hex]).await;
    assert!(ok, "etcdctl move-leader failed: {stderr}");
    assert_eq!(
        stdout,
        format!("Leadership transferred from {:x} to {target_hex}\n", ids[leader])
    );
    // The old leader answered once the transferee led; a follower learns
    // the new leader from its first message, so it may name no leader for
    // a moment, but never another member.
    let client = cluster.member_client(0).expect("client");
    let named_by = Instant::now() + Duration::from_secs(5);
    for index in 0..3 {
        loop {
            let status = client.status(&cluster.endpoint(index)).await.expect("status");
            assert!(
                status.leader == ids[target] || status.leader == 0,
                "member {index} names {:x}, not the transferee, after the move",
                status.leader
            );
            if status.leader == ids[target] {
                break;
            }
            assert!(
                Instant::now() < named_by,
                "member {index} names no leader 5 s after the move"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let moved_with = acknowledged_count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acknowledged_count() < moved_with + 50 {
        assert!(Instant::now() < deadline, "writes did not resume after the move");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for index in 0..3 {
        let stored: BTreeSet<String> = cluster
            .member_client(index)
            .expect("client")
            .range(RangeRequest {
                key: b"w-".to_vec(),
                range_end: b"w.".to_vec(),
                ..Default::default()
            })
            .await
            .expect("linearizable read")
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        let lost: Vec<_> = acknowledged.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "member {index} lost acknowledged writes: {lost:?}"
        );
    }
}

/// Status on every member, as fast as it answers, while the leadership
/// moves round the cluster: every term has at most one leader in all the
/// answers. (Status once read the term and the leader apart, and the long
/// partition suite saw a member pair its old term with the next term's
/// leader; that interleaving is too rare for this test to catch, which
/// guards the pairing across members.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_pairs_a_term_with_another_terms_leader() {
    const MOVES: usize = 24;
    let mut cluster = Cluster::start_led(ClusterOptions::keel(3))
        .await
        .expect("keel starts and elects");
    let ids = member_ids(&cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let samplers: Vec<_> = (0..3)
        .map(|index| {
            let client = cluster.member_client(index).expect("client");
            let endpoint = cluster.endpoint(index);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut pairs = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(status) = client.status(&endpoint).await {
                        if status.leader != 0 {
                            pairs.push((status.raft_term, status.leader));
                        }
                    }
                }
                pairs
            })
        })
        .collect();
    for round in 0..MOVES {
        let leader = cluster
            .wait_for_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        let target = (leader + 1 + round % 2) % 3;
        let moved = cluster
            .member_client(leader)
            .expect("client")
            .move_leader(&cluster.endpoint(leader), ids[target])
            .await;
        assert!(moved.is_ok(), "move {round} to member {target}: {moved:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut leaders_by_term: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    let mut samples = 0;
    for sampler in samplers {
        for (term, leader) in sampler.await.expect("sampler") {
            samples += 1;
            leaders_by_term.entry(term).or_default().insert(leader);
        }
    }
    assert!(
        leaders_by_term.len() >= MOVES,
        "{} terms seen in {samples} answers for {MOVES} moves",
        leaders_by_term.len()
    );
    let torn: Vec<_> = leaders_by_term
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .collect();
    assert!(
        torn.is_empty(),
        "terms with two leaders in {samples} answers: {torn:x?}"
    );
}

/// MoveLeader's refusals as a client sees them: (code, message).
async fn move_leader_refusals(cluster: &mut Cluster) -> Vec<(tonic::Code, String)> {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let ids = member_ids(cluster).await;
    let client = cluster.member_client(0).expect("client");
    let refusal = |result: Result<_, ClientError>| match result {
        Err(ClientError::Status(status)) => (status.code(), status.message().to_string()),
        Err(other) => panic!("not a status: {other}"),
        Ok(response) => panic!("moved: {response:?}"),
    };
    vec![
        // Asked of a follower, even to move it to the leader it already has.
        refusal(client.move_leader(&cluster.endpoint(follower), ids[leader]).await),
        refusal(
            client
                .move_leader(&cluster.endpoint(follower), ids[follower])
                .await,
        ),
        // A member ID the cluster does not have.
        refusal(client.move_leader(&cluster.endpoint(leader), 0x1234).await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_refuses_a_follower_and_an_unknown_transferee_as_etcd_does() {
    let mut etcd = Cluster::start(ClusterOptions::etcd(3))
        .await
        .expect("etcd starts");
    let mut keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let from_etcd = move_leader_refusals(&mut etcd).await;
    let from_keel = move_leader_refusals(&mut keel).await;
    assert_eq!(from_keel, from_etcd);
    let not_leader = (
        tonic::Code::FailedPrecondition,
        "etcdserver: not leader".to_string(),
    );
    let bad_transferee = (
        tonic::Code::FailedPrecondition,
        "etcdserver: bad leader transferee".to_string(),
    );
    assert_eq!(from_keel, vec![not_leader.clone(), not_leader, bad_transferee]);
}

/// Every member's `Hash` after a linearizable read on it (so each has
/// applied everything acknowledged): (hash, header revision).
async fn hashes(cluster: &Cluster) -> Vec<(u32, i64)> {
    let mut answers = Vec::new();
    for index in 0..cluster.size() {
        cluster
            .member_client(index)
            .expect("client")
            .range(RangeRequest {
                key: b"sync".to_vec(),
                ..Default::default()
            })
            .await
            .expect("linearizable read");
        let mut maintenance = MaintenanceClient::connect(format!("http://{}", cluster.endpoint(index)))
            .await
            .expect("connect");
        let response = maintenance.hash(HashRequest {}).await.expect("hash").into_inner();
        answers.push((response.hash, response.header.expect("header").revision));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_agree_on_hash_and_hashkv_and_a_write_changes_them() {
    let cluster = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let client = cluster.client().expect("client");
    for key in ["a", "b", "a"] {
        client.put(put(key)).await.expect("put");
    }
    let before = hashes(&cluster).await;
    assert_eq!(before[0].1, 4, "the header carries the revision hashed");
    assert!(before.iter().all(|h| *h == before[0]), "{before:?}");

    let hashkv_lines = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|line| line.rsplit(", ").next().unwrap_or_default().to_string())
            .collect()
    };
    wait_for_published_members(&client, 3).await;
    let (ok, first, stderr) = etcdctl(&cluster.endpoints(), &["endpoint", "hashkv", "--cluster"]).await;
    assert!(ok, "{stderr}");
    let first = hashkv_lines(&first);
    assert_eq!(first.len(), 3, "one line per member");
    assert!(first.iter().all(|h| *h == first[0]), "{first:?}");

    client.put(put("c")).await.expect("put");
    let after = hashes(&cluster).await;
    assert!(after.iter().all(|h| *h == after[0]), "{after:?}");
    assert_eq!(after[0].1, 5);
    assert_ne!(after[0].0, before[0].0, "a write changes Hash");
    let (ok, second, stderr) = etcdctl(&cluster.endpoints(), &["endpoint", "hashkv", "--cluster"]).await;
    assert!(ok, "{stderr}");
    let second = hashkv_lines(&second);
    assert!(second.iter().all(|h| *h == second[0]), "{second:?}");
    assert_ne!(second[0], first[0], "a write changes HashKV");
}

/// `etcdctl endpoint status -w json` of one endpoint: (dbSize, dbSizeInUse).
async fn db_sizes(endpoint: &str) -> (i64, i64) {
    let (ok, stdout, stderr) = etcdctl(&[endpoint.to_string()], &["endpoint", "status", "-w", "json"]).await;
    assert!(ok, "{stderr}");
    let parsed: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let status = &parsed[0]["Status"];
    (
        status["dbSize"].as_i64().expect("dbSize"),
        status["dbSizeInUse"].as_i64().expect("dbSizeInUse"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_defrag_keeps_every_member_s_data_and_status_shows_what_compaction_freed() {
    let cluster = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let client = cluster.client().expect("client");
    wait_for_published_members(&client, 3).await;
    let (fresh_size, fresh_in_use) = db_sizes(&cluster.endpoint(0)).await;
    assert!(fresh_in_use <= fresh_size, "{fresh_in_use} of {fresh_size}");

    // 4 MB written, then all but one key deleted and compacted away.
    let value = vec![b'x'; 10_000];
    for i in 0..400 {
        let request = PutRequest {
            key: format!("big/{i:03}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        client.put(request).await.expect("put");
    }
    client.put(put("kept")).await.expect("put");
    let (written_size, written_in_use) = db_sizes(&cluster.endpoint(0)).await;
    assert!(written_in_use > 4_000_000, "{written_in_use}");
    assert!(
        written_size >= written_in_use,
        "{written_in_use} of {written_size}"
    );
    let deleted = client
        .delete_range(keel_api::etcdserverpb::DeleteRangeRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert_eq!(deleted.deleted, 400);
    let revision = deleted.header.expect("header").revision;
    client
        .compact(keel_api::etcdserverpb::CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .expect("compaction");
    // Member 0 may apply the compaction a moment after the member that
    // answered it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (compacted_size, compacted_in_use) = loop {
        let (size, in_use) = db_sizes(&cluster.endpoint(0)).await;
        if in_use + 4_000_000 < written_in_use {
            break (size, in_use);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the compaction freed 4 MB: in use {written_in_use} -> {in_use}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The file still holds what the compaction freed. (Both figures count
    // the Raft log too, whose size depends on its sled segments, so the
    // freed space is compared in bytes, not as a share.)
    assert!(
        compacted_size - compacted_in_use > 3_000_000,
        "{compacted_in_use} of {compacted_size}"
    );
    let hashes_before = hashes(&cluster).await;

    let (ok, stdout, stderr) = etcdctl(&[cluster.endpoint(0)], &["defrag"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!("Finished defragmenting etcd member[{}]\n", cluster.endpoint(0))
    );
    let (ok, stdout, stderr) = etcdctl(&[cluster.endpoint(1)], &["defrag", "--cluster"]).await;
    assert!(ok, "{stderr}");
    let mut finished: Vec<&str> = stdout.lines().collect();
    finished.sort_unstable();
    let mut expected: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|endpoint| format!("Finished defragmenting etcd member[http://{endpoint}]"))
        .collect();
    expected.sort_unstable();
    assert_eq!(finished, expected);

    // Every record and revision is still there, on every member.
    assert_eq!(hashes(&cluster).await, hashes_before);
    let (defragmented_size, defragmented_in_use) = db_sizes(&cluster.endpoint(0)).await;
    // The keyspace's live bytes are the same records; the Raft log's size,
    // counted in too, may move by a record of its own (a committed index).
    assert!(
        (defragmented_in_use - compacted_in_use).abs() < 64 * 1024,
        "defragmentation keeps the records: in use {compacted_in_use} before, {defragmented_in_use} after"
    );
    // The keyspace's freed space went back to the file system (the Raft
    // log, counted in both figures, is not defragmented). The fresh
    // keyspace file is one 512 KiB segment for a few KiB of records (sled
    // keeps no zeroed segment past the keyspace's tip).
    assert!(
        compacted_size - defragmented_size > 3_000_000 && defragmented_size < defragmented_in_use + 1_000_000,
        "db size {compacted_size} before the defragmentation, {defragmented_size} after \
         ({defragmented_in_use} in use)"
    );
    eprintln!(
        "member 0 db size: fresh {fresh_size} (in use {fresh_in_use}), written {written_size} \
         ({written_in_use}), compacted {compacted_size} ({compacted_in_use}), defragmented \
         {defragmented_size} ({defragmented_in_use})"
    );
    let kept = client
        .range(RangeRequest {
            key: b"kept".to_vec(),
            ..Default::default()
        })
        .await
        .expect("read");
    assert_eq!(kept.kvs.len(), 1);
    let written = client
        .put(put("after-defrag"))
        .await
        .expect("a write after the defragmentation");
    assert_eq!(written.header.expect("header").revision, revision + 1);

    // keelctl does the same, and refuses etcdctl's offline --data-dir.
    let keelctl = keel_tests::built_binary("keelctl").expect("keelctl is built");
    let output = tokio::process::Command::new(&keelctl)
        .arg(format!("--endpoints={}", cluster.endpoint(2)))
        .args(["defrag", "--cluster"])
        .output()
        .await
        .expect("keelctl runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
    let output = tokio::process::Command::new(&keelctl)
        .arg(format!("--endpoints={}", cluster.endpoint(2)))
        .args(["defrag", "--data-dir", "/nonexistent"])
        .output()
        .await
        .expect("keelctl runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("Failed to defragment etcd data[/nonexistent] ("),
        "{output:?}"
    );
    assert_eq!(hashes(&cluster).await[0].1, revision + 1);
}

/// `etcdctl move-leader` to a member that cannot take over (paused): what
/// etcdctl reports, and whether the cluster serves writes again afterwards.
async fn move_to_a_paused_member(cluster: &mut Cluster) -> (bool, String, bool) {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let target = (leader + 1) % 3;
    let ids = member_ids(cluster).await;
    cluster.pause(target).expect("pause");
    let (ok, _, stderr) = etcdctl(
        &[cluster.endpoint(leader)],
        &[
            "--command-timeout=2s",
            "move-leader",
            &format!("{:x}", ids[target]),
        ],
    )
    .await;
    cluster.resume(target).expect("resume");
    let error = stderr
        .lines()
        .filter(|line| line.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join("\n");
    let client = cluster.client().expect("client");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut recovered = false;
    while !recovered && Instant::now() < deadline {
        recovered = client.put(put("after-failed-move")).await.is_ok();
        if !recovered {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (ok, error, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_member_that_cannot_take_over_ends_at_the_callers_deadline_as_etcds_does() {
    let mut etcd = Cluster::start(ClusterOptions::etcd(3))
        .await
        .expect("etcd starts");
    let mut keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let from_etcd = move_to_a_paused_member(&mut etcd).await;
    let from_keel = move_to_a_paused_member(&mut keel).await;
    // etcd's own transfer limit and etcdctl's 2 s deadline race: etcd
    // answers either; keel, whose limit is the caller's deadline, the first.
    let deadline_exceeded = (false, "Error: context deadline exceeded".to_string(), true);
    let etcd_gave_up = (
        false,
        "Error: rpc error: code = Unknown desc = etcdserver: request timed out, leader transfer took too long"
            .to_string(),
        true,
    );
    assert!(
        from_etcd == deadline_exceeded || from_etcd == etcd_gave_up,
        "etcd: {from_etcd:?}"
    );
    assert_eq!(from_keel, deadline_exceeded, "keel");
}

/// Regression (etcdctl move-leader sometimes printed "OK: HTTP status code
/// 200; transport: missing content-type field"): a call still unanswered at
/// its caller's deadline was answered by tonic's own timeout, with bare
/// `grpc-status` headers and no `content-type`, which grpc-go cannot read.
/// It must be answered as a gRPC status, `DeadlineExceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_unanswered_at_the_callers_deadline_is_answered_deadline_exceeded_as_a_grpc_status() {
    use keel_tests::bare_http2::unary_call_head;
    use prost::Message;
    use tonic::codegen::http;

    let mut keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let leader = keel
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let target = (leader + 1) % 3;
    let ids = member_ids(&keel).await;
    keel.pause(target).expect("pause");
    let message = keel_api::etcdserverpb::MoveLeaderRequest {
        target_id: ids[target],
    }
    .encode_to_vec();
    // A bare HTTP/2 connection: tonic's own client would time the call out
    // itself at the same deadline, before the member answers.
    let address = keel.endpoint(leader);
    for timeout in ["300m", "1S"] {
        let answer = unary_call_head(
            &address,
            "/etcdserverpb.Maintenance/MoveLeader",
            &message,
            timeout,
            Duration::from_secs(10),
        )
        .await
        .expect("answered near the caller's deadline");
        let headers = &answer.headers;
        assert_eq!(answer.status, http::StatusCode::OK, "{timeout}");
        assert_eq!(
            headers.get("content-type").map(|value| value.as_bytes()),
            Some(&b"application/grpc"[..]),
            "{timeout}: {headers:?}"
        );
        assert_eq!(
            headers.get("grpc-status").map(|value| value.as_bytes()),
            Some(&b"4"[..]),
            "{timeout}: {headers:?}"
        );
        assert_eq!(
            headers.get("grpc-message").map(|value| value.as_bytes()),
            Some(&b"context%20deadline%20exceeded"[..]),
            "{timeout}: {headers:?}"
        );
    }
    keel.resume(target).expect("resume");
}
