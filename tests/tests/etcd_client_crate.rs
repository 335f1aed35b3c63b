//! The Rust `etcd-client` crate (what Rust applications use to talk to
//! etcd) against keel, side by side with the real etcd: the same program
//! runs against both, and what it observes must be the same. Covers its
//! watch API: replay with `prev_kv`, a second watch multiplexed on the same
//! stream, progress, cancel, and a watch below the compacted revision.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
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

#[tokio::test]
async fn the_etcd_client_crate_watches_keel_as_it_watches_etcd() {
    let etcd = Cluster::start(ClusterOptions::etcd(1)).await.expect("etcd");
    let expected = program(etcd.endpoint(0)).await;
    drop(etcd);
    let keel = Cluster::start(ClusterOptions::keel(3)).await.expect("keel");
    let actual = program(keel.endpoint(0)).await;
    assert_eq!(actual, expected, "keel (left) and etcd (right) differ");
}
