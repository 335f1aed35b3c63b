//! The Rust `etcd-client` crate (what Rust applications use to talk to
//! etcd) against keel, side by side with the real etcd: the same program
//! runs against both, and what it observes must be the same. Covers its
//! watch API: replay with `prev_kv`, a second watch multiplexed on the same
//! stream, progress, cancel, and a watch below the compacted revision; and
//! its lease API: grant (chosen ID, duplicate ID, too large a TTL), keys put
//! on a lease, keep-alive, time-to-live with keys, the lease list, revoke
//! (the keys go, a watcher sees them deleted) and an unknown lease; its
//! lock API (a second lease waits until unlock, the holder's lease locks
//! again at once, a revoked holder's lease releases the lock, an unknown
//! lease, a canceled lock leaves no key); and its election API (campaign,
//! proclaim, leader, observe and resign, a second candidate waiting, a
//! proclaim by a candidate that does not lead, an unknown lease, a missing
//! leader key, no leader).

use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, LeaderKey, LeaseGrantOptions, LeaseTimeToLiveOptions, LockOptions,
    ObserveStream, ProclaimOptions, PutOptions, ResignOptions, ResponseHeader, WatchOptions, WatchResponse,
    WatchStream,
};
use keel_tests::{Cluster, ClusterOptions};

const WAIT: Duration = Duration::from_secs(10);

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream")
        .expect("stream open")
}

/// What the program saw of a response: ids, flags, header revision, events.
fn observed(response: &WatchResponse) -> String {
    let events: Vec<String> = response
        .events()
        .iter()
        .map(|event| {
            let kind = match event.event_type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            let kv = event.kv().map(|kv| {
                format!(
                    "{}={} mod {} create {} version {}",
                    String::from_utf8_lossy(kv.key()),
                    String::from_utf8_lossy(kv.value()),
                    kv.mod_revision(),
                    kv.create_revision(),
                    kv.version()
                )
            });
            let prev = event
                .prev_kv()
                .map(|kv| format!("{}@{}", String::from_utf8_lossy(kv.value()), kv.mod_revision()));
            format!("{kind} {kv:?} prev {prev:?}")
        })
        .collect();
    format!(
        "watch {} created {} canceled {} compact {} revision {:?} events {events:?}",
        response.watch_id(),
        response.created(),
        response.canceled(),
        response.compact_revision(),
        response.header().map(|header| header.revision())
    )
}

async fn program(endpoint: String) -> Vec<String> {
    let mut seen = Vec::new();
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    client.put("app/a", "1", None).await.expect("put"); // 2
    client.put("app/a", "2", None).await.expect("put"); // 3
    client.put("app/b", "1", None).await.expect("put"); // 4
    client.delete("app/a", None).await.expect("delete"); // 5
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(1)
        .with_prev_key();
    let (mut watcher, mut stream) = client.watch("app/", Some(options)).await.expect("watch");
    seen.push(format!("first watch id {}", watcher.watch_id()));
    let mut replayed = 0;
    while replayed < 4 {
        let response = next(&mut stream).await;
        replayed += response.events().len();
        seen.push(observed(&response));
    }
    watcher
        .watch("app/b", Some(WatchOptions::new().with_prev_key()))
        .await
        .expect("second watch on the stream");
    seen.push(observed(&next(&mut stream).await));
    client.put("app/b", "2", None).await.expect("put"); // 6
    let mut live = vec![
        observed(&next(&mut stream).await),
        observed(&next(&mut stream).await),
    ];
    live.sort(); // the order of two watchers' responses is not part of the protocol
    seen.extend(live);
    watcher.request_progress().await.expect("progress");
    seen.push(observed(&next(&mut stream).await));
    watcher.cancel().await.expect("cancel");
    seen.push(observed(&next(&mut stream).await));
    client.compact(5, None).await.expect("compact");
    let (_, mut compacted) = client
        .watch(
            "app/",
            Some(WatchOptions::new().with_prefix().with_start_revision(3)),
        )
        .await
        .expect("watch below the compacted revision");
    seen.push(observed(&next(&mut compacted).await));
    seen
}

/// What the program saw of a failed call: the gRPC code and message.
fn failure(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => format!("not a gRPC status: {other}"),
    }
}

/// A remaining TTL just read, as "about the granted TTL" (it may have
/// ticked down by a second between grant and read on either system).
fn remaining(ttl: i64, granted: i64) -> String {
    if (granted - 2..=granted).contains(&ttl) {
        format!("about {granted}")
    } else {
        format!("{ttl} of {granted}")
    }
}

async fn lease_program(endpoint: String) -> Vec<String> {
    const LEASE: i64 = 0x2a;
    let mut seen = Vec::new();
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let granted = client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(LEASE)))
        .await
        .expect("grant");
    seen.push(format!("granted {:x} ttl {}", granted.id(), granted.ttl()));
    let again = client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(LEASE)))
        .await
        .map(|response| format!("{:x}", response.id()))
        .unwrap_or_else(failure);
    seen.push(format!("the same id again: {again}"));
    let too_long = client
        .lease_grant(9_000_000_001, None)
        .await
        .map(|response| format!("{:x}", response.id()))
        .unwrap_or_else(failure);
    seen.push(format!("too long: {too_long}"));
    client
        .put("leased/a", "1", Some(PutOptions::new().with_lease(LEASE)))
        .await
        .expect("put on the lease");
    let unknown = client
        .put("leased/b", "1", Some(PutOptions::new().with_lease(0x99)))
        .await
        .map(|_| "put".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("put on an unknown lease: {unknown}"));
    let (mut keeper, mut kept) = client.lease_keep_alive(LEASE).await.expect("keep-alive");
    keeper.keep_alive().await.expect("renew");
    let renewed = tokio::time::timeout(WAIT, kept.message())
        .await
        .expect("a keep-alive answer in time")
        .expect("keep-alive stream")
        .expect("an answer");
    seen.push(format!("renewed {:x} ttl {}", renewed.id(), renewed.ttl()));
    let alive = client
        .lease_time_to_live(LEASE, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    let keys: Vec<String> = alive
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    seen.push(format!(
        "time to live {:x}: {} granted {} keys {keys:?}",
        alive.id(),
        remaining(alive.ttl(), alive.granted_ttl()),
        alive.granted_ttl()
    ));
    let listed: Vec<String> = client
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|lease| format!("{:x}", lease.id()))
        .collect();
    seen.push(format!("leases {listed:?}"));
    let (_deleted_watcher, mut deletes) = client
        .watch("leased/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch (its created answer is read by the crate)");
    client.lease_revoke(LEASE).await.expect("revoke");
    let deleted = next(&mut deletes).await;
    let deleted: Vec<String> = deleted
        .events()
        .iter()
        .map(|event| {
            let key = event
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
            format!("{:?} {key:?}", event.event_type())
        })
        .collect();
    seen.push(format!("revoke deleted {deleted:?}"));
    let left = client
        .get("leased/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    seen.push(format!("keys left {}", left.kvs().len()));
    let gone = client
        .lease_time_to_live(LEASE, None)
        .await
        .map(|response| format!("ttl {} granted {}", response.ttl(), response.granted_ttl()))
        .unwrap_or_else(failure);
    seen.push(format!("time to live after revoke: {gone}"));
    let revoke_again = client
        .lease_revoke(LEASE)
        .await
        .map(|_| "revoked".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("revoke again: {revoke_again}"));
    seen
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn revision(header: Option<&ResponseHeader>) -> String {
    header.map_or_else(
        || "no header".to_string(),
        |h| format!("revision {}", h.revision()),
    )
}

async fn grant_with_id(client: &mut Client, id: i64) {
    client
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .expect("grant");
}

fn with_lease(lease: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(lease))
}

/// The keys under `prefix` once they are `expected` (or at the deadline).
async fn keys_once(client: &mut Client, prefix: &str, expected: &[&str]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let keys: Vec<String> = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("get")
            .kvs()
            .iter()
            .map(|kv| text(kv.key()))
            .collect();
        if keys == expected || tokio::time::Instant::now() >= deadline {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lock_program(endpoint: String) -> Vec<String> {
    const FIRST: i64 = 0x1a;
    const SECOND: i64 = 0x1b;
    const THIRD: i64 = 0x1c;
    let mut seen = Vec::new();
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    for id in [FIRST, SECOND, THIRD] {
        grant_with_id(&mut client, id).await;
    }
    let held = client.lock("job", with_lease(FIRST)).await.expect("lock");
    seen.push(format!(
        "first holds {} at {}",
        text(held.key()),
        revision(held.header())
    ));
    let mut waiter = client.clone();
    let second = tokio::spawn(async move { waiter.lock("job", with_lease(SECOND)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push(format!(
        "second waits while the first holds: {}",
        !second.is_finished()
    ));
    let again = client.lock("job", with_lease(FIRST)).await.expect("lock again");
    seen.push(format!(
        "the holder's lease locks again: {} at {}",
        text(again.key()),
        revision(again.header())
    ));
    let unlocked = client.unlock(held.key()).await.expect("unlock");
    seen.push(format!("unlocked at {}", revision(unlocked.header())));
    let second = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second lock in time")
        .expect("task")
        .expect("second lock");
    seen.push(format!(
        "second holds {} at {}",
        text(second.key()),
        revision(second.header())
    ));
    let mut waiter = client.clone();
    let first_again = tokio::spawn(async move { waiter.lock("job", with_lease(FIRST)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push(format!(
        "first waits behind the second: {}",
        !first_again.is_finished()
    ));
    client
        .lease_revoke(SECOND)
        .await
        .expect("revoke the holder's lease");
    let first_again = tokio::time::timeout(WAIT, first_again)
        .await
        .expect("the lock after the revoke in time")
        .expect("task")
        .expect("lock after the revoke");
    seen.push(format!(
        "after the holder's lease is revoked, first holds {} at {}",
        text(first_again.key()),
        revision(first_again.header())
    ));
    let unknown = client
        .lock("other", with_lease(0x99))
        .await
        .map(|held| text(held.key()))
        .unwrap_or_else(failure);
    seen.push(format!("lock on an unknown lease: {unknown}"));
    let canceled =
        tokio::time::timeout(Duration::from_millis(500), client.lock("job", with_lease(THIRD))).await;
    seen.push(format!(
        "a lock behind the holder gave up waiting: {}",
        canceled.is_err()
    ));
    let left = keys_once(&mut client, "job/", &["job/1a"]).await;
    seen.push(format!("keys after the canceled lock: {left:?}"));
    seen
}

async fn observed_leader(stream: &mut ObserveStream) -> String {
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an observed leader in time")
        .expect("observe stream")
        .expect("stream open");
    let kv = update.kv().expect("a key-value");
    format!(
        "observed {}={} create {} mod {} at {}",
        text(kv.key()),
        text(kv.value()),
        kv.create_revision(),
        kv.mod_revision(),
        revision(update.header())
    )
}

fn leader_key(leader: &LeaderKey) -> String {
    format!(
        "{} key {} rev {} lease {:x}",
        text(leader.name()),
        text(leader.key()),
        leader.rev(),
        leader.lease()
    )
}

async fn election_program(endpoint: String) -> Vec<String> {
    const ALPHA: i64 = 0xa1;
    const BETA: i64 = 0xb2;
    let mut seen = Vec::new();
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    for id in [ALPHA, BETA] {
        grant_with_id(&mut client, id).await;
    }
    let none = client
        .leader("pick")
        .await
        .map(|_| "a leader".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("leader before any campaign: {none}"));
    // etcd answers Observe's headers only with its first leader, so the
    // call runs beside the campaign.
    let mut observing = client.clone();
    let observer = tokio::spawn(async move { observing.observe("pick").await });
    let elected = client.campaign("pick", "alpha", ALPHA).await.expect("campaign");
    let mut observer = tokio::time::timeout(WAIT, observer)
        .await
        .expect("observing in time")
        .expect("task")
        .expect("observe");
    let alpha = elected.leader().expect("a leader key").clone();
    seen.push(format!(
        "alpha leads: {} at {}",
        leader_key(&alpha),
        revision(elected.header())
    ));
    seen.push(observed_leader(&mut observer).await);
    let proclaimed = client
        .proclaim("alpha-2", Some(ProclaimOptions::new().with_leader(alpha.clone())))
        .await
        .expect("proclaim");
    seen.push(format!("proclaimed at {}", revision(proclaimed.header())));
    seen.push(observed_leader(&mut observer).await);
    let leader = client.leader("pick").await.expect("leader");
    let kv = leader.kv().expect("the leader's key-value");
    seen.push(format!("leader {}={}", text(kv.key()), text(kv.value())));
    let mut candidate = client.clone();
    let beta = tokio::spawn(async move { candidate.campaign("pick", "beta", BETA).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push(format!("beta waits while alpha leads: {}", !beta.is_finished()));
    let pretender = LeaderKey::new()
        .with_name("pick")
        .with_key(format!("pick/{BETA:x}"))
        .with_rev(alpha.rev())
        .with_lease(BETA);
    let not_leader = client
        .proclaim("beta-now", Some(ProclaimOptions::new().with_leader(pretender)))
        .await
        .map(|_| "proclaimed".to_string())
        .unwrap_or_else(failure);
    seen.push(format!(
        "proclaim by a candidate that does not lead: {not_leader}"
    ));
    let missing = client
        .proclaim("nobody", None)
        .await
        .map(|_| "proclaimed".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("proclaim without a leader key: {missing}"));
    let resigned = client
        .resign(Some(ResignOptions::new().with_leader(alpha)))
        .await
        .expect("resign");
    seen.push(format!("alpha resigned at {}", revision(resigned.header())));
    let elected = tokio::time::timeout(WAIT, beta)
        .await
        .expect("beta's campaign in time")
        .expect("task")
        .expect("beta's campaign");
    let beta = elected.leader().expect("a leader key").clone();
    seen.push(format!(
        "beta leads: {} at {}",
        leader_key(&beta),
        revision(elected.header())
    ));
    seen.push(observed_leader(&mut observer).await);
    let unknown = client
        .campaign("pick", "gamma", 0x99)
        .await
        .map(|_| "campaigned".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("campaign on an unknown lease: {unknown}"));
    client
        .resign(Some(ResignOptions::new().with_leader(beta)))
        .await
        .expect("resign");
    let none = client
        .leader("pick")
        .await
        .map(|_| "a leader".to_string())
        .unwrap_or_else(failure);
    seen.push(format!("leader after both resigned: {none}"));
    seen
}

#[tokio::test]
async fn the_etcd_client_crate_locks_on_keel_as_it_locks_on_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let expected = lock_program(etcd.endpoint(0)).await;
    drop(etcd);
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let actual = lock_program(keel.endpoint(0)).await;
    assert_eq!(actual, expected, "keel (left) and etcd (right) differ");
}

#[tokio::test]
async fn the_etcd_client_crate_elects_on_keel_as_it_elects_on_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let expected = election_program(etcd.endpoint(0)).await;
    drop(etcd);
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let actual = election_program(keel.endpoint(0)).await;
    assert_eq!(actual, expected, "keel (left) and etcd (right) differ");
}

#[tokio::test]
async fn the_etcd_client_crate_uses_keel_leases_as_it_uses_etcd_leases() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let expected = lease_program(etcd.endpoint(0)).await;
    drop(etcd);
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let actual = lease_program(keel.endpoint(0)).await;
    assert_eq!(actual, expected, "keel (left) and etcd (right) differ");
}

#[tokio::test]
async fn the_etcd_client_crate_watches_keel_as_it_watches_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let expected = program(etcd.endpoint(0)).await;
    drop(etcd);
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let actual = program(keel.endpoint(0)).await;
    assert_eq!(actual, expected, "keel (left) and etcd (right) differ");
}
