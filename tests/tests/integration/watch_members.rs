//! Watch across a real 3-member keel cluster: every member serves the same
//! event sequence from its own applied state; a watcher whose client does
//! not read holds back only itself and later gets every event from
//! history; a follower that installs a snapshot skips no event, or cancels
//! its watchers with the compacted revision when history is gone.

use crate::watch_support;

use std::time::Duration;

use keel_api::etcdserverpb::request_op::Request as Op;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_api::mvccpb::Event;
use keel_client::Client;
use keel_tests::{Cluster, ClusterOptions};
use watch_support::{create_request, event_shape, open_watch, RawWatch};

const WAIT: Duration = Duration::from_secs(30);

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn current_revision(client: &Client) -> i64 {
    client
        .range(RangeRequest {
            key: b"any".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .header
        .expect("header")
        .revision
}

/// Opens a watch on `prefix` at `start_revision` and takes its `created` response.
async fn watch_prefix(endpoint: &str, prefix: &str, start_revision: i64) -> RawWatch {
    let range_end =
        String::from_utf8(keel_api::key_range::prefix_range_end(prefix.as_bytes())).expect("utf8");
    let mut watch = open_watch(
        endpoint,
        RequestUnion::CreateRequest(create_request(prefix, &range_end, start_revision)),
    )
    .await;
    let created = watch.responses.message().await.expect("stream").expect("created");
    assert!(created.created && !created.canceled, "{created:?}");
    watch
}

fn assert_gap_free(events: &[Event]) {
    for pair in events.windows(2) {
        let (a, b) = (pair[0].kv.as_ref().expect("kv"), pair[1].kv.as_ref().expect("kv"));
        assert!(
            b.mod_revision >= a.mod_revision,
            "events out of order: {} then {}",
            a.mod_revision,
            b.mod_revision
        );
    }
}

#[tokio::test]
async fn a_watch_on_every_member_sees_the_same_events_in_the_same_order() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let client = cluster.client().expect("client");
    let start = current_revision(&client).await + 1;
    let mut watches = Vec::new();
    for member in 0..3 {
        watches.push(watch_prefix(&cluster.endpoint(member), "w/", start).await);
    }
    let mut last = 0;
    for round in 0..60 {
        let writer = cluster.member_client(round % 3).expect("client");
        let key = format!("w/{}", round % 7);
        last = match round % 5 {
            3 => {
                writer
                    .txn(TxnRequest {
                        success: vec![
                            RequestOp {
                                request: Some(Op::RequestPut(put(&format!("w/t{round}"), "txn"))),
                            },
                            RequestOp {
                                request: Some(Op::RequestPut(put(&key, &format!("in-txn-{round}")))),
                            },
                        ],
                        ..Default::default()
                    })
                    .await
                    .expect("txn")
                    .header
                    .expect("header")
                    .revision
            }
            4 => {
                writer
                    .delete_range(DeleteRangeRequest {
                        key: key.clone().into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .expect("delete")
                    .header
                    .expect("header")
                    .revision
            }
            _ => {
                writer
                    .put(put(&key, &format!("v{round}")))
                    .await
                    .expect("put")
                    .header
                    .expect("header")
                    .revision
            }
        };
    }
    let mut sequences = Vec::new();
    for watch in &mut watches {
        let events = watch.events_through(last, WAIT).await;
        assert_gap_free(&events);
        sequences.push(events.iter().map(event_shape).collect::<Vec<_>>());
    }
    assert!(sequences[0].len() >= 60, "{} events", sequences[0].len());
    assert_eq!(
        sequences[0], sequences[1],
        "the leader's and a follower's watch differ"
    );
    assert_eq!(sequences[0], sequences[2], "two members' watches differ");
}

#[tokio::test]
async fn a_watcher_that_does_not_read_holds_back_only_itself_and_later_gets_every_event() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let client = cluster.client().expect("client");
    let start = current_revision(&client).await + 1;
    let endpoint = cluster.endpoint(0);
    let mut stalled = watch_prefix(&endpoint, "slow/", start).await;
    let mut reading = watch_prefix(&endpoint, "slow/", start).await;
    // 2,400 values of 8 KiB: more than the member keeps in memory for
    // watchers (16 MiB), so the stalled watcher must catch up from disk.
    let value = "x".repeat(8 * 1024);
    let writes = 2_400;
    let reader = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < writes {
            let response = reading.responses.message().await.expect("stream").expect("open");
            seen += response.events.len();
        }
        seen
    });
    let mut last = 0;
    for i in 0..writes {
        last = client
            .put(put(&format!("slow/{}", i % 50), &value))
            .await
            .expect("put")
            .header
            .expect("header")
            .revision;
    }
    let seen = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the reading watcher keeps up while the other one stalls")
        .expect("reader");
    assert_eq!(seen, writes);
    let events = stalled.events_through(last, WAIT).await;
    assert_eq!(events.len(), writes, "every event, once");
    for (index, event) in events.iter().enumerate() {
        let revision = event.kv.as_ref().expect("kv").mod_revision;
        assert_eq!(revision, start + index as i64, "event {index}");
    }
}

/// Pauses a follower with a watcher open on it while the leader writes
/// far past the snapshot threshold (so the follower must install a
/// snapshot), compacting at `compact_at_write` if given. Returns the
/// cluster, the watcher, the follower, the revision of the last write and
/// the compacted revision.
async fn follower_installs_a_snapshot_under_a_watch(
    compact_at_write: Option<usize>,
) -> (Cluster, RawWatch, usize, i64, Option<i64>) {
    let options = ClusterOptions {
        snapshot_count: Some(50),
        ..ClusterOptions::keel(3)
    };
    let mut cluster = Cluster::start(options).await.expect("cluster");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let follower = (leader + 1) % 3;
    let client = cluster.member_client(leader).expect("client");
    let start = current_revision(&client).await + 1;
    let watch = watch_prefix(&cluster.endpoint(follower), "s/", start).await;
    let paused_at = client
        .status(&cluster.endpoint(leader))
        .await
        .expect("status")
        .raft_index;
    cluster.pause(follower).expect("pause the follower");
    let mut last = 0;
    let mut compacted = None;
    for i in 0..400 {
        last = client
            .put(put(&format!("s/{}", i % 40), &format!("v{i}")))
            .await
            .expect("put while a follower is paused")
            .header
            .expect("header")
            .revision;
        if compact_at_write == Some(i) {
            client
                .compact(CompactionRequest {
                    revision: last,
                    physical: true,
                })
                .await
                .expect("compact");
            compacted = Some(last);
        }
    }
    assert!(
        cluster.wait_for_log_purged_past(leader, paused_at, WAIT).await,
        "the leader did not purge its log past the paused follower's:\n{}",
        cluster.log_tail(leader, 30)
    );
    cluster.resume(follower).expect("resume the follower");
    (cluster, watch, follower, last, compacted)
}

#[tokio::test]
async fn a_follower_that_installs_a_snapshot_gives_its_watchers_every_event_from_history() {
    let (cluster, mut watch, follower, last, _) = follower_installs_a_snapshot_under_a_watch(None).await;
    let events = watch.events_through(last, WAIT).await;
    assert_eq!(
        events.len(),
        400,
        "every write, once, across the snapshot install"
    );
    assert_gap_free(&events);
    assert!(
        cluster
            .wait_for_log_line(follower, "installed snapshot", Duration::from_secs(10))
            .await
            .is_some(),
        "the follower must have caught up through a snapshot:\n{}",
        cluster.log_tail(follower, 30)
    );
}

#[tokio::test]
async fn a_follower_whose_watcher_history_was_compacted_cancels_it_with_the_compacted_revision() {
    let (cluster, mut watch, follower, _, compacted) =
        follower_installs_a_snapshot_under_a_watch(Some(300)).await;
    let compacted = compacted.expect("compacted");
    // The follower may apply the first writes before the pause takes hold;
    // those come as events. Then history is gone below `compacted`.
    let mut events: Vec<Event> = Vec::new();
    let cancel = loop {
        let response = tokio::time::timeout(WAIT, watch.responses.message())
            .await
            .expect("an answer in time")
            .expect("stream")
            .expect("open");
        if response.canceled {
            break response;
        }
        events.extend(response.events);
    };
    let revisions: Vec<i64> = events
        .iter()
        .map(|e| e.kv.as_ref().expect("kv").mod_revision)
        .collect();
    let start = revisions.first().copied();
    for (index, revision) in revisions.iter().enumerate() {
        assert_eq!(
            Some(*revision),
            start.map(|s| s + index as i64),
            "gap-free: {revisions:?}"
        );
    }
    assert!(
        revisions.last().is_none_or(|last| last + 1 < compacted),
        "the watcher saw {revisions:?}, so it needed no cancel"
    );
    assert_eq!(
        cancel.compact_revision, compacted,
        "canceled with the compacted revision: {cancel:?}"
    );
    assert!(
        cluster
            .wait_for_log_line(follower, "installed snapshot", Duration::from_secs(10))
            .await
            .is_some(),
        "the follower must have caught up through a snapshot:\n{}",
        cluster.log_tail(follower, 30)
    );
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("member status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn ten_thousand_watchers_on_one_member_all_get_an_event_in_bounded_memory() {
    const STREAMS: usize = 10;
    const WATCHERS_PER_STREAM: usize = 1_000;
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let client = cluster.client().expect("client");
    let pid = cluster.pid(0).expect("member 0 runs");
    let before = resident_kib(pid);
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let mut watch = watch_prefix(&cluster.endpoint(0), "many/", 0).await;
        for _ in 1..WATCHERS_PER_STREAM {
            let range_end = String::from_utf8(keel_api::key_range::prefix_range_end(b"many/")).expect("utf8");
            watch
                .requests
                .send(keel_api::etcdserverpb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create_request(
                        "many/", &range_end, 0,
                    ))),
                })
                .await
                .expect("create");
        }
        let mut created = 1;
        while created < WATCHERS_PER_STREAM {
            let response = tokio::time::timeout(WAIT, watch.responses.message())
                .await
                .expect("created in time")
                .expect("stream")
                .expect("open");
            assert!(
                response.created && !response.canceled,
                "stream {stream}: {response:?}"
            );
            created += 1;
        }
        streams.push(watch);
    }
    let with_watchers = resident_kib(pid);
    let revision = client
        .put(put("many/k", "v"))
        .await
        .expect("put")
        .header
        .expect("header")
        .revision;
    for (stream, watch) in streams.iter_mut().enumerate() {
        let mut notified = std::collections::BTreeSet::new();
        while notified.len() < WATCHERS_PER_STREAM {
            let response = tokio::time::timeout(WAIT, watch.responses.message())
                .await
                .expect("every watcher notified in time")
                .expect("stream")
                .expect("open");
            assert_eq!(response.events.len(), 1, "stream {stream}: {response:?}");
            assert_eq!(
                response.events[0].kv.as_ref().map(|kv| kv.mod_revision),
                Some(revision)
            );
            assert!(
                notified.insert(response.watch_id),
                "watch {} notified twice",
                response.watch_id
            );
        }
    }
    let grown_kib = with_watchers.saturating_sub(before);
    eprintln!("member RSS {before} KiB, with 10,000 watchers {with_watchers} KiB");
    assert!(
        grown_kib < 100 * 1024,
        "10,000 idle watchers grew the member by {grown_kib} KiB"
    );
}

#[tokio::test]
async fn a_member_without_a_leader_refuses_a_watch_that_requires_one_and_serves_one_that_does_not() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    cluster.stop(1).await.expect("stop m2");
    cluster.stop(2).await.expect("stop m3");
    let endpoint = cluster.endpoint(0);
    let first = || RequestUnion::CreateRequest(create_request("k", "", 0));
    // The member gives up on its leader after an election timeout.
    let deadline = tokio::time::Instant::now() + WAIT;
    let refusal = loop {
        match watch_support::open_watch_asking(&endpoint, first(), true).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepted without a leader"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert_eq!(refusal.message(), "etcdserver: no leader");
    let mut served = watch_support::open_watch_asking(&endpoint, first(), false)
        .await
        .expect("a watch that does not require a leader is served");
    let created = served
        .responses
        .message()
        .await
        .expect("stream")
        .expect("created");
    assert!(created.created && !created.canceled, "{created:?}");
}

/// A pull shared between streams was served to a watch created after a
/// compaction, from a start below it (seen in CI as etcdctl printing the
/// compacted history instead of the compaction error): the compaction
/// leaves the revision as it was, so the shared pull still looked current.
#[tokio::test]
async fn a_watch_from_below_a_new_compaction_is_canceled_even_when_another_stream_just_pulled_that_history() {
    let cluster = Cluster::start(ClusterOptions::keel(1)).await.expect("cluster");
    let client = cluster.client().expect("client");
    let start = current_revision(&client).await + 1;
    let mut last = 0;
    for i in 0..5 {
        last = client
            .put(put("c/k", &format!("v{i}")))
            .await
            .expect("put")
            .header
            .expect("header")
            .revision;
    }
    let endpoint = cluster.endpoint(0);
    let mut before = watch_prefix(&endpoint, "c/", start).await;
    assert_eq!(before.events_through(last, WAIT).await.len(), 5);
    client
        .compact(CompactionRequest {
            revision: last - 1,
            physical: true,
        })
        .await
        .expect("compact");
    let range_end = String::from_utf8(keel_api::key_range::prefix_range_end(b"c/")).expect("utf8");
    let mut after = open_watch(
        &endpoint,
        RequestUnion::CreateRequest(create_request("c/", &range_end, start)),
    )
    .await;
    let created = after.responses.message().await.expect("stream").expect("created");
    assert!(created.created, "{created:?}");
    let canceled = tokio::time::timeout(WAIT, after.responses.message())
        .await
        .expect("an answer in time")
        .expect("stream")
        .expect("open");
    assert!(
        canceled.canceled && canceled.compact_revision == last - 1 && canceled.events.is_empty(),
        "{canceled:?}"
    );
}
