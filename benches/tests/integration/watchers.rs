//! The watch scenarios' instrument against a 1-member etcd and keel: a
//! fleet of watchers over several streams receives every event of a
//! fixed-rate writer's measured puts exactly once per watcher, each with a
//! delivery latency; a watcher from revision 1 receives the whole history.
//! Nothing here asserts a speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::key_range::prefix_range_end;
use keel_bench::load::watchers::{
    place_streams, settle, write_at_rate, PutLedger, WatchTarget, WatcherFleet,
};
use keel_bench::load::{open_connections, Access};
use keel_tests::{Cluster, ClusterOptions};

const WATCHERS: usize = 250;

async fn fan_out_and_replay(options: ClusterOptions) {
    let cluster = Cluster::start(options).await.expect("starting the cluster");
    let endpoints = cluster.endpoints();
    assert!(
        place_streams(WATCHERS, 1, 0).len() >= 3,
        "several streams share the connection"
    );

    let ledger = Arc::new(PutLedger::new(b"/fan/", 1000));
    let prefix = b"/fan/".to_vec();
    let target = WatchTarget {
        range_end: prefix_range_end(&prefix),
        key: prefix.clone(),
        start_revision: 0,
    };
    let fleet = WatcherFleet::open(&endpoints, 0, &vec![target; WATCHERS], Some(ledger.clone()), None)
        .await
        .expect("opening the watchers");
    let stub = open_connections(&endpoints, 1, &Access::default())
        .await
        .expect("connecting")[0]
        .clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let next_seq = Arc::new(AtomicU64::new(0));
    ledger.start_window(0);
    let writer = tokio::spawn(write_at_rate(
        stub,
        ledger.clone(),
        100,
        vec![b'v'; 64],
        stopped,
        next_seq.clone(),
        16,
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    ledger.end_window(next_seq.load(Ordering::Relaxed));
    stop.send(true).expect("stopping the writer");
    let writer = writer.await.expect("the writer");
    assert_eq!(writer.failed, 0, "{writer:?}");
    let measured = ledger.measured_acked();
    assert!(
        measured >= 10 && measured <= writer.acked,
        "{measured} of {writer:?}"
    );
    let expected = measured * WATCHERS as u64;
    let complete = fleet
        .wait_for(Duration::from_secs(30), || {
            ledger.measured_events.load(Ordering::Relaxed) >= expected
        })
        .await;
    assert!(complete, "not every event arrived");
    // Anything duplicated would show up after a short wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tallies = fleet.close().await;
    for tally in &tallies {
        assert_eq!(tally.failure, None);
    }
    let delivered: u64 = tallies.iter().map(|t| t.measured_events).sum();
    assert_eq!(delivered, expected, "each watcher gets each put exactly once");
    let settled = settle(&tallies, &ledger);
    assert_eq!(
        settled.from_ack_us.len(),
        expected,
        "every delivered event has a latency"
    );
    assert_eq!(settled.from_send_us.len(), expected);
    assert!(settled.from_send_us.max() >= settled.from_ack_us.min());

    // A watcher from revision 1 sees the whole history of the prefix.
    let replay = WatchTarget {
        range_end: prefix_range_end(&prefix),
        key: prefix,
        start_revision: 1,
    };
    let fleet = WatcherFleet::open(&endpoints, 0, &[replay], None, Some(writer.acked))
        .await
        .expect("opening the replay watcher");
    fleet.wait_for(Duration::from_secs(30), || false).await;
    let tallies = fleet.close().await;
    assert_eq!(tallies[0].failure, None);
    assert_eq!(tallies[0].events, writer.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_etcd() {
    fan_out_and_replay(ClusterOptions::etcd(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_keel() {
    fan_out_and_replay(ClusterOptions::keel(1)).await;
}
