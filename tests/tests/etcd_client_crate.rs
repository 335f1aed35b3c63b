//! The Rust `etcd-client` crate (what Rust applications use to talk to
//! etcd) against keel, side by side with the real etcd: the same program
//! runs against both, and what it observes must be the same. Covers its
//! watch API: replay with `prev_kv`, a second watch multiplexed on the same
//! stream, progress, cancel, and a watch below the compacted revision; and
//! its lease API: grant (chosen ID, duplicate ID, too large a TTL), keys put
//! on a lease, keep-alive, time-to-live with keys, the lease list, revoke
//! (the keys go, a watcher sees them deleted) and an unknown lease.

use std::time::Duration;

use etcd_client::{
    Client, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions, WatchResponse,
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
