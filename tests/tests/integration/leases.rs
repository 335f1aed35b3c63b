//! etcd's Lease service on a real 3-member keel cluster: grant, revoke,
//! TimeToLive and the list from every member with etcd's errors; keys
//! attached by puts and deleted by a revoke at one revision (DELETE events
//! on a follower's watch); expiry through Raft (the same revision on every
//! member, never before the TTL) and keep-alives through a follower;
//! checkpointed remaining TTLs across a leader failover; leases that
//! survive a restart and a snapshot install, with equal HashKV (which folds
//! the leases in) on every member.

use crate::watch_support;

use std::time::Duration;

use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest,
};
use keel_api::mvccpb::event::EventType;
use keel_tests::{which, Cluster, ClusterOptions, MemberState};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use watch_support::{create_request, open_watch};

const WAIT: Duration = Duration::from_secs(30);

async fn lease_client(endpoint: &str) -> LeaseClient<Channel> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))
        .expect("endpoint url")
        .connect()
        .await
        .expect("connects to the member");
    LeaseClient::new(channel)
}

async fn grant(endpoint: &str, ttl: i64, id: i64) -> i64 {
    let granted = lease_client(endpoint)
        .await
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .expect("grant")
        .into_inner();
    assert!(granted.id != 0);
    granted.id
}

async fn time_to_live(endpoint: &str, id: i64) -> (i64, i64, Vec<String>) {
    let answer = lease_client(endpoint)
        .await
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("time to live")
        .into_inner();
    let keys = answer
        .keys
        .into_iter()
        .map(|key| String::from_utf8(key).expect("utf8"))
        .collect();
    (answer.ttl, answer.granted_ttl, keys)
}

async fn listed(endpoint: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = lease_client(endpoint)
        .await
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner()
        .leases
        .iter()
        .map(|lease| lease.id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn keep_alive_once(endpoint: &str, id: i64) -> i64 {
    let mut client = lease_client(endpoint).await;
    let requests = tokio_stream::iter(vec![LeaseKeepAliveRequest { id }]);
    let mut answers = client
        .lease_keep_alive(requests)
        .await
        .expect("keep-alive stream")
        .into_inner();
    answers
        .message()
        .await
        .expect("keep-alive answer")
        .expect("one answer")
        .ttl
}

fn put_with_lease(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

/// Member `index`'s own applied value of `key` (a serializable read).
async fn local_get(cluster: &Cluster, index: usize, key: &str) -> Option<i64> {
    let response = cluster
        .member_client(index)
        .expect("client")
        .range(RangeRequest {
            key: key.into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("range");
    response.kvs.first().map(|kv| kv.lease)
}

/// Waits until `key` is gone on every running member; returns when it
/// was first seen gone.
async fn wait_until_gone_everywhere(cluster: &Cluster, key: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    let mut gone_on: Vec<Option<Instant>> = (0..cluster.size())
        .map(|index| (cluster.state(index) != MemberState::Running).then(Instant::now))
        .collect();
    loop {
        for (index, gone) in gone_on.iter_mut().enumerate() {
            if gone.is_none() && local_get(cluster, index, key).await.is_none() {
                *gone = Some(Instant::now());
            }
        }
        if gone_on.iter().all(Option::is_some) {
            let running = (0..cluster.size()).filter(|index| cluster.state(*index) == MemberState::Running);
            return running
                .filter_map(|index| gone_on[index])
                .min()
                .expect("a running member");
        }
        assert!(
            Instant::now() < deadline,
            "{key} still present after {limit:?}: {gone_on:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running_count(cluster: &Cluster) -> usize {
    (0..cluster.size())
        .filter(|index| cluster.state(*index) == MemberState::Running)
        .count()
}

/// Waits until every member's HashKV at the current revision is equal, and
/// returns it (the leases are folded into it).
async fn equal_hash_everywhere(cluster: &Cluster) -> u32 {
    let client = cluster.client().expect("client");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        let running = (0..cluster.size()).filter(|index| cluster.state(*index) == MemberState::Running);
        for endpoint in running.map(|index| cluster.endpoint(index)) {
            // A member just restarted may not listen yet: asked again below.
            match client.hash_kv(&endpoint, 0).await {
                Ok(answer) => seen.push(Some((answer.header.expect("header").revision, answer.hash))),
                Err(_) => seen.push(None),
            }
        }
        let seen: Vec<(i64, u32)> = seen.into_iter().flatten().collect();
        if seen.len() == running_count(cluster) && seen.windows(2).all(|pair| pair[0] == pair[1]) {
            return seen[0].1;
        }
        assert!(Instant::now() < deadline, "members never agreed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grant_revoke_time_to_live_and_list_answer_alike_on_every_member_with_etcds_errors() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let endpoints = cluster.endpoints();
    let mut ids = Vec::new();
    for endpoint in &endpoints {
        ids.push(grant(endpoint, 60, 0).await);
    }
    ids.push(grant(&endpoints[1], 60, 4242).await);
    assert!(ids.contains(&4242));
    ids.sort_unstable();
    for endpoint in &endpoints {
        // The list is each member's applied state: wait for it to catch up.
        let deadline = Instant::now() + WAIT;
        while listed(endpoint).await != ids {
            assert!(
                Instant::now() < deadline,
                "{endpoint} lists {:?}",
                listed(endpoint).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client = cluster.member_client(2).expect("client");
    client.put(put_with_lease("attached/b", 4242)).await.expect("put");
    client.put(put_with_lease("attached/a", 4242)).await.expect("put");
    for endpoint in &endpoints {
        let (ttl, granted, keys) = time_to_live(endpoint, 4242).await;
        assert_eq!(granted, 60);
        assert!((50..=60).contains(&ttl), "remaining {ttl}");
        assert_eq!(keys, vec!["attached/a", "attached/b"]);
        assert_eq!(keep_alive_once(endpoint, 4242).await, 60);
    }

    // etcd's errors, codes and special answers.
    let mut lease = lease_client(&endpoints[0]).await;
    let exists = lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 4242 })
        .await
        .expect_err("a taken id");
    assert_eq!(
        (exists.code(), exists.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let too_large = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .expect_err("too large");
    assert_eq!(
        (too_large.code(), too_large.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    let raised = lease
        .lease_grant(LeaseGrantRequest { ttl: 0, id: 0 })
        .await
        .expect("a short TTL is raised")
        .into_inner();
    assert_eq!(
        raised.ttl, 1,
        "etcd's minimum TTL for 500 ms elections and 50 ms heartbeats"
    );
    let unknown = client
        .put(put_with_lease("k", 777))
        .await
        .expect_err("unknown lease");
    assert!(
        unknown
            .to_string()
            .contains("etcdserver: requested lease not found"),
        "{unknown}"
    );
    let not_found = lease
        .lease_revoke(LeaseRevokeRequest { id: 777 })
        .await
        .expect_err("revoke of an unknown lease");
    assert_eq!(
        (not_found.code(), not_found.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    assert_eq!(time_to_live(&endpoints[1], 777).await.0, -1);
    assert_eq!(keep_alive_once(&endpoints[2], 777).await, 0);

    lease_client(&endpoints[1])
        .await
        .lease_revoke(LeaseRevokeRequest { id: 4242 })
        .await
        .expect("revoke");
    wait_until_gone_everywhere(&cluster, "attached/a", WAIT).await;
    assert_eq!(time_to_live(&endpoints[0], 4242).await.0, -1);
    equal_hash_everywhere(&cluster).await;
}

#[tokio::test]
async fn a_revoke_deletes_its_keys_at_one_revision_seen_as_delete_events_by_a_watch_on_a_follower() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let follower = (leader + 1) % 3;
    let id = grant(&cluster.endpoint(leader), 60, 0).await;
    let client = cluster.client().expect("client");
    for key in ["r/3", "r/1", "r/2"] {
        client.put(put_with_lease(key, id)).await.expect("put");
    }
    client
        .put(PutRequest {
            key: b"r/free".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    let revision = client
        .range(RangeRequest {
            key: b"r/".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .header
        .expect("header")
        .revision;
    let mut watch = open_watch(
        &cluster.endpoint(follower),
        RequestUnion::CreateRequest(create_request("r/", "r0", revision + 1)),
    )
    .await;
    assert!(
        watch
            .responses
            .message()
            .await
            .expect("stream")
            .expect("created")
            .created
    );
    let revoked = lease_client(&cluster.endpoint(follower))
        .await
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.header.expect("header").revision, revision + 1);
    let mut events = Vec::new();
    while events.len() < 3 {
        let response = tokio::time::timeout(WAIT, watch.responses.message())
            .await
            .expect("events in time")
            .expect("stream")
            .expect("response");
        events.extend(response.events);
    }
    let seen: Vec<(EventType, String, i64)> = events
        .iter()
        .map(|event| {
            let kv = event.kv.as_ref().expect("kv");
            (
                event.r#type(),
                String::from_utf8(kv.key.clone()).expect("utf8"),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        seen,
        ["r/1", "r/2", "r/3"]
            .iter()
            .map(|key| (EventType::Delete, key.to_string(), revision + 1))
            .collect::<Vec<_>>()
    );
    assert!(local_get(&cluster, follower, "r/free").await.is_some());
}

#[tokio::test]
async fn an_unrenewed_lease_expires_through_raft_not_before_its_ttl_while_a_kept_alive_one_lives() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let follower = (leader + 1) % 3;
    let client = cluster.client().expect("client");
    let asked = Instant::now();
    let expiring = grant(&cluster.endpoint(follower), 3, 0).await;
    let kept = grant(&cluster.endpoint(follower), 3, 0).await;
    client
        .put(put_with_lease("x/expiring", expiring))
        .await
        .expect("put");
    client.put(put_with_lease("x/kept", kept)).await.expect("put");

    // Keep-alives through a follower, one a second, on one stream.
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let mut keep_alive_client = lease_client(&cluster.endpoint(follower)).await;
    let mut answers = keep_alive_client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("stream")
        .into_inner();
    let ttls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keeper = tokio::spawn({
        let ttls = ttls.clone();
        async move {
            while requests.send(LeaseKeepAliveRequest { id: kept }).await.is_ok() {
                match answers.message().await {
                    Ok(Some(answer)) => ttls.lock().expect("ttls").push(answer.ttl),
                    _ => return,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });

    let gone = wait_until_gone_everywhere(&cluster, "x/expiring", WAIT).await;
    assert!(
        gone.duration_since(asked) >= Duration::from_secs(3),
        "expired after {:?}, before its TTL",
        gone.duration_since(asked)
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    for member in 0..3 {
        assert_eq!(
            local_get(&cluster, member, "x/kept").await,
            Some(kept),
            "member {member}"
        );
    }
    keeper.abort();
    let ttls = ttls.lock().expect("ttls").clone();
    assert!(
        ttls.len() >= 5 && ttls.iter().all(|ttl| *ttl == 3),
        "keep-alive answers {ttls:?}"
    );
    let hash = equal_hash_everywhere(&cluster).await;
    assert_ne!(hash, 0);
    assert_eq!(listed(&cluster.endpoint(leader)).await, vec![kept]);
}

/// A 3-member cluster whose leader checkpoints remaining TTLs every second.
async fn checkpointing_cluster() -> (Cluster, usize) {
    let mut options = ClusterOptions::keel(3);
    options.extra_args = vec!["--lease-checkpoint-interval".into(), "1s".into()];
    let mut cluster = Cluster::start(options).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    (cluster, leader)
}

/// Waits until lease `id`'s remaining TTL, as the leader tells it, is at
/// most `remaining` seconds.
async fn wait_for_remaining(endpoint: &str, id: i64, remaining: i64) {
    let deadline = Instant::now() + WAIT;
    while time_to_live(endpoint, id).await.0 > remaining {
        assert!(
            Instant::now() < deadline,
            "lease {id} never got down to {remaining}s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn after_the_leader_is_killed_a_checkpointed_lease_expires_at_its_remaining_ttl_not_its_ttl() {
    let (mut cluster, leader) = checkpointing_cluster().await;
    let follower = (leader + 1) % 3;
    let asked = Instant::now();
    let id = grant(&cluster.endpoint(follower), 20, 0).await;
    cluster
        .member_client(follower)
        .expect("client")
        .put(put_with_lease("cp/key", id))
        .await
        .expect("put");
    wait_for_remaining(&cluster.endpoint(follower), id, 11).await;
    // At least one checkpoint of at most 11 s (ceil) was applied since.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    cluster.kill(leader).expect("kill the leader");
    let gone = wait_until_gone_everywhere(&cluster, "cp/key", Duration::from_secs(60)).await;
    assert!(
        gone.duration_since(asked) >= Duration::from_secs(20),
        "expired {:?} after the grant, before its TTL",
        gone.duration_since(asked)
    );
    assert!(
        gone.duration_since(killed) < Duration::from_secs(18),
        "expired {:?} after the failover: restarted at its full TTL, not its remaining one",
        gone.duration_since(killed)
    );
    equal_hash_everywhere(&cluster).await;
}

#[tokio::test]
async fn a_keep_alive_after_a_checkpoint_leaves_no_stale_shorter_remaining_ttl_for_the_next_leader() {
    let (mut cluster, leader) = checkpointing_cluster().await;
    let follower = (leader + 1) % 3;
    let id = grant(&cluster.endpoint(follower), 16, 0).await;
    cluster
        .member_client(follower)
        .expect("client")
        .put(put_with_lease("renewed/key", id))
        .await
        .expect("put");
    wait_for_remaining(&cluster.endpoint(follower), id, 8).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A checkpoint of at most 8 s is recorded; the renewal must clear it.
    let renewed = Instant::now();
    assert_eq!(keep_alive_once(&cluster.endpoint(follower), id).await, 16);
    cluster.kill(leader).expect("kill the leader");
    tokio::time::sleep_until(renewed + Duration::from_secs(12)).await;
    for member in [follower, (leader + 2) % 3] {
        assert_eq!(
            local_get(&cluster, member, "renewed/key").await,
            Some(id),
            "m{member}: the new leader expired the renewed lease at its stale checkpoint"
        );
    }
    let gone = wait_until_gone_everywhere(&cluster, "renewed/key", Duration::from_secs(60)).await;
    assert!(gone.duration_since(renewed) >= Duration::from_secs(16));
}

#[tokio::test]
async fn leases_survive_a_snapshot_install_on_a_lagging_member_and_a_restart_of_every_member() {
    let mut options = ClusterOptions::keel(3);
    options.snapshot_count = Some(20);
    let mut cluster = Cluster::start(options).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let lagging = (leader + 1) % 3;
    let client = cluster.member_client(leader).expect("client");
    let endpoint = cluster.endpoint(leader);
    let stopped_at = client.status(&endpoint).await.expect("status").raft_index;
    cluster.stop(lagging).await.expect("stop a follower");
    let id = grant(&endpoint, 300, 0).await;
    let gone = grant(&endpoint, 300, 0).await;
    for key in ["s/b", "s/a"] {
        client.put(put_with_lease(key, id)).await.expect("put");
    }
    client.put(put_with_lease("s/gone", gone)).await.expect("put");
    lease_client(&endpoint)
        .await
        .lease_revoke(LeaseRevokeRequest { id: gone })
        .await
        .expect("revoke");
    for i in 0..120 {
        client
            .put(PutRequest {
                key: format!("fill/{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
    }
    assert!(
        cluster.wait_for_log_purged_past(leader, stopped_at, WAIT).await,
        "the leader did not purge its log past the stopped member's:\n{}",
        cluster.log_tail(leader, 30)
    );
    cluster.restart(lagging).expect("restart the follower");
    let hash = equal_hash_everywhere(&cluster).await;
    assert!(
        cluster
            .wait_for_log_line(lagging, "installed snapshot received from the leader", WAIT)
            .await
            .is_some(),
        "the lagging member caught up without a snapshot:\n{}",
        cluster.log_tail(lagging, 40)
    );
    assert_eq!(listed(&cluster.endpoint(lagging)).await, vec![id]);
    assert_eq!(local_get(&cluster, lagging, "s/a").await, Some(id));

    for member in 0..3 {
        cluster.stop(member).await.expect("stop");
    }
    for member in 0..3 {
        cluster.restart(member).expect("restart");
    }
    cluster.wait_for_leader(WAIT).await.expect("leader after restart");
    assert_eq!(equal_hash_everywhere(&cluster).await, hash);
    for endpoint in cluster.endpoints() {
        assert_eq!(listed(&endpoint).await, vec![id]);
        let (ttl, granted, keys) = time_to_live(&endpoint, id).await;
        assert_eq!((granted, keys), (300, vec!["s/a".to_string(), "s/b".to_string()]));
        assert!((1..=300).contains(&ttl), "remaining {ttl}");
    }
    lease_client(&cluster.endpoint(lagging))
        .await
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect("revoke after restart");
    wait_until_gone_everywhere(&cluster, "s/b", WAIT).await;
    equal_hash_everywhere(&cluster).await;
}

struct Ran {
    ok: bool,
    stdout: String,
    errors: Vec<String>,
}

fn etcdctl(endpoints: &[String], args: &[&str]) -> Ran {
    let binary = which("etcdctl").expect("etcdctl 3.4 on PATH (Debian's etcd-client)");
    let output = std::process::Command::new(binary)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("etcdctl runs");
    Ran {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        // etcdctl's own error lines (its client's retry logs carry timestamps).
        errors: String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| line.starts_with("Error:"))
            .map(str::to_string)
            .collect(),
    }
}

/// One side of the side-by-side run: its endpoints and the lease it granted.
struct Side {
    endpoints: Vec<String>,
    lease_hex: String,
}

impl Side {
    /// Runs `args` with `{id}` replaced by this side's lease ID, and blanks
    /// that ID and the seconds left (which tick) in what it prints.
    fn run(&self, args: &[&str]) -> (bool, String, Vec<String>) {
        let args: Vec<String> = args
            .iter()
            .map(|arg| arg.replace("{id}", &self.lease_hex))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = etcdctl(&self.endpoints, &args);
        let blank = |text: &str| {
            let text = text.replace(&self.lease_hex, "ID");
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("remaining(") {
                out.push_str(&rest[..at + "remaining(".len()]);
                rest = &rest[at + "remaining(".len()..];
                rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                out.push('N');
            }
            out.push_str(rest);
            sorted_attached_keys(&out)
        };
        (
            ran.ok,
            blank(&ran.stdout),
            ran.errors.iter().map(|line| blank(line)).collect(),
        )
    }
}

/// `text` with the key list of `attached keys([...])` sorted: etcd lists a
/// lease's keys in Go map order, which changes from call to call.
fn sorted_attached_keys(text: &str) -> String {
    const OPEN: &str = "attached keys([";
    let Some(start) = text.find(OPEN).map(|at| at + OPEN.len()) else {
        return text.to_string();
    };
    let Some(len) = text[start..].find(']') else {
        return text.to_string();
    };
    let mut keys: Vec<&str> = text[start..start + len].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &text[..start], keys.join(" "), &text[start + len..])
}

fn granted_lease_hex(endpoints: &[String]) -> String {
    let ran = etcdctl(endpoints, &["lease", "grant", "60"]);
    assert!(ran.ok, "lease grant: {:?}", ran.errors);
    let hex = ran
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    assert_eq!(ran.stdout, format!("lease {hex} granted with TTL(60s)\n"));
    hex
}

#[tokio::test]
async fn etcdctl_lease_commands_print_on_keel_what_they_print_on_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let sides = [&etcd, &keel].map(|cluster| Side {
        endpoints: cluster.endpoints(),
        lease_hex: granted_lease_hex(&cluster.endpoints()),
    });
    let script: &[&[&str]] = &[
        &["put", "--lease={id}", "leased", "v"],
        &["put", "--lease={id}", "leased2", "v"],
        &["lease", "timetolive", "{id}"],
        &["lease", "timetolive", "{id}", "--keys"],
        &["lease", "list"],
        &["lease", "keep-alive", "--once", "{id}"],
        &["get", "leased", "-w", "fields"],
        &["lease", "grant", "9000000001"],
        &["lease", "revoke", "{id}"],
        &["get", "leased", "--prefix", "--count-only"],
        &["lease", "timetolive", "{id}"],
        &["lease", "revoke", "{id}"],
        &["lease", "keep-alive", "--once", "{id}"],
        &["put", "--lease={id}", "leased", "v"],
        &["lease", "list"],
    ];
    for args in script {
        let [from_etcd, from_keel] = [&sides[0], &sides[1]].map(|side| side.run(args));
        if args.contains(&"fields") {
            // Revisions and ids differ; the lease field must name the lease.
            for (side, (_, stdout, _)) in sides.iter().zip([&from_etcd, &from_keel]) {
                let lease = u64::from_str_radix(&side.lease_hex, 16).expect("hex");
                assert!(stdout.contains(&format!("\"Lease\" : {lease}")), "{stdout}");
            }
            continue;
        }
        assert_eq!(from_keel, from_etcd, "etcdctl {args:?}");
    }
}

/// Grants leases `ids` (TTL 60 s and 90 s) at `endpoint`, sends `count`
/// keep-alives at once on one stream, cycling over the two and the never
/// granted lease `unknown`, and checks that each answer, in request order,
/// carries its own lease's TTL (0 for `unknown`).
async fn keep_alive_two_leases_and_an_unknown_at_once(
    endpoint: &str,
    ids: [i64; 2],
    unknown: i64,
    count: usize,
) {
    let [first, second] = [
        grant(endpoint, 60, ids[0]).await,
        grant(endpoint, 90, ids[1]).await,
    ];
    let ttl_of = |id: i64| match id {
        id if id == first => 60,
        id if id == second => 90,
        _ => 0,
    };
    let asked: Vec<i64> = [first, unknown, second].into_iter().cycle().take(count).collect();
    let requests = tokio_stream::iter(
        asked
            .iter()
            .map(|&id| LeaseKeepAliveRequest { id })
            .collect::<Vec<_>>(),
    );
    let mut answers = lease_client(endpoint)
        .await
        .lease_keep_alive(requests)
        .await
        .expect("keep-alive stream")
        .into_inner();
    for (n, &id) in asked.iter().enumerate() {
        let answer = tokio::time::timeout(WAIT, answers.message())
            .await
            .expect("answered in time")
            .expect("keep-alive answer")
            .expect("an answer per request");
        assert_eq!((answer.id, answer.ttl), (id, ttl_of(id)), "answer {n}");
    }
}

#[tokio::test]
async fn keep_alives_sent_at_once_on_one_stream_are_answered_in_request_order() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    keep_alive_two_leases_and_an_unknown_at_once(&cluster.endpoint(1), [11, 12], 999, 300).await;
}

/// Keep-alives taken by a follower reach the leader in batches (one peer
/// call for many renewals, `keel_lease_renewals_per_forwarded_batch`), and
/// each is still answered with its own lease's TTL, in request order.
#[tokio::test]
async fn keep_alives_on_a_follower_reach_the_leader_in_batches_each_answered_for_its_own_lease() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let follower = (leader + 1) % 3;
    keep_alive_two_leases_and_an_unknown_at_once(&cluster.endpoint(follower), [21, 22], 998, 600).await;
    let metric = |name: &'static str| {
        let cluster = &cluster;
        async move { cluster.metric(follower, name).await.expect(name) }
    };
    let batches = metric("keel_lease_renewals_per_forwarded_batch_count").await;
    let forwarded = metric("keel_lease_renewals_per_forwarded_batch_sum").await;
    assert!(
        forwarded >= 600.0,
        "every renewal went to the leader: {forwarded}"
    );
    assert!(
        batches < forwarded,
        "{forwarded} renewals in {batches} calls: none batched"
    );
}
