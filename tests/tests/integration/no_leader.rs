//! With no leader, requests fail with etcd's Unavailable "etcdserver: no
//! leader" within a bounded time and never hang; serializable reads keep
//! answering from the member's own state.

use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::ClientConfig;
use keel_tests::{Cluster, ClusterOptions};
use tokio::time::Instant;
use tonic::Code;

#[tokio::test]
async fn a_member_left_alone_answers_no_leader_in_bounded_time_and_still_serves_serializable_reads() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("cluster starts");
    let client = cluster.member_client(0).expect("client");
    client
        .put(PutRequest {
            key: b"before".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put while the cluster is whole");
    // The put may have committed without member 1; a linearizable read
    // through it waits until member 1 has applied it too.
    let seen = client
        .range(RangeRequest {
            key: b"before".to_vec(),
            ..Default::default()
        })
        .await
        .expect("linearizable get while the cluster is whole");
    assert_eq!(seen.kvs.len(), 1);
    cluster.kill(1).expect("kill -9 member 2");
    cluster.kill(2).expect("kill -9 member 3");

    // Bounded: well under the client's own 15 s request timeout.
    let alone = keel_client::Client::connect_lazy(
        ClientConfig::new([cluster.endpoint(0)]).with_request_timeout(Duration::from_secs(15)),
    )
    .expect("client");

    // Right after the kills the survivor may still be (or trust) a leader for
    // up to an election timeout: a write it accepts in that window cannot
    // complete and ends, as in etcd, with Unavailable "etcdserver: request
    // timed out" at the member's request timeout (5 s + 2 election timeouts),
    // or "etcdserver: leader changed" when it was forwarded to the killed
    // leader (a forward must not be retried: it may have been applied).
    let started = Instant::now();
    let first_put = alone
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("a write cannot succeed without a quorum");
    assert_eq!(first_put.code(), Code::Unavailable, "{first_put}");
    assert!(
        [
            "etcdserver: no leader",
            "etcdserver: request timed out",
            "etcdserver: leader changed"
        ]
        .contains(&first_put.to_string().as_str()),
        "{first_put}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );

    // From then on the member knows it has no leader.
    for attempt in 0..3 {
        let started = Instant::now();
        let put = alone
            .put(PutRequest {
                key: b"after".to_vec(),
                value: b"2".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("a write cannot succeed without a quorum");
        assert_eq!(put.code(), Code::Unavailable, "attempt {attempt}: {put}");
        assert_eq!(put.to_string(), "etcdserver: no leader", "attempt {attempt}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let read = alone
            .range(RangeRequest {
                key: b"before".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("a linearizable read cannot succeed without a quorum");
        assert_eq!(read.code(), Code::Unavailable, "attempt {attempt}: {read}");
        assert_eq!(read.to_string(), "etcdserver: no leader", "attempt {attempt}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
    }
    let local = alone
        .range(RangeRequest {
            key: b"before".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("a serializable read answers from local state");
    assert_eq!(local.kvs.len(), 1);

    // The lost members come back: the cluster serves writes again.
    cluster.restart(1).expect("restart");
    cluster.restart(2).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader again");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let put = alone
            .put(PutRequest {
                key: b"after".to_vec(),
                value: b"3".to_vec(),
                ..Default::default()
            })
            .await;
        if put.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "writes never resumed: {put:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
