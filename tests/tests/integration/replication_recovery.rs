//! A follower that stops answering for a while (SIGSTOP, as the partition
//! suite's `pause` nemesis does) while the leader keeps writing must be
//! brought up to date once it answers again: replication to it resumes,
//! and its applied revision reaches the leader's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::Client;
use keel_tests::{Cluster, ClusterOptions};

const WAIT: Duration = Duration::from_secs(30);

/// The member's own applied revision (a serializable read answers from
/// local state).
async fn local_revision(client: &Client) -> Option<i64> {
    let answer = client
        .range(RangeRequest {
            key: b"any".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .ok()?;
    answer.header.map(|header| header.revision)
}

/// Pauses the members `pauses` names (`None`: whoever leads then) one
/// after another for 3 s each while a client writes through every member,
/// then checks that every member reaches the revision of the last write.
async fn members_catch_up_after_pauses(pauses: &[Option<usize>]) {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let writer_client = cluster.client().expect("client");
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let writing = writing.clone();
        async move {
            let mut written = 0u64;
            while writing.load(Ordering::Relaxed) {
                let put = PutRequest {
                    key: format!("w/{}", written % 100).into_bytes(),
                    value: written.to_string().into_bytes(),
                    ..Default::default()
                };
                if writer_client.put(put).await.is_ok() {
                    written += 1;
                }
            }
            written
        }
    });
    for pause in pauses {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let member = match pause {
            Some(member) => *member,
            None => cluster.wait_for_leader(WAIT).await.expect("a leader to pause"),
        };
        cluster.pause(member).expect("pause");
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.resume(member).expect("resume");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(
        written > 0,
        "the leader took writes while the follower was paused"
    );

    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let leader_client = cluster.member_client(leader).expect("client");
    let target = local_revision(&leader_client)
        .await
        .expect("the leader's revision");
    for member in 0..3 {
        let member_client = cluster.member_client(member).expect("client");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut reached = None;
        while tokio::time::Instant::now() < deadline {
            reached = local_revision(&member_client).await;
            if reached.is_some_and(|revision| revision >= target) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            reached.is_some_and(|revision| revision >= target),
            "member {member} stopped at revision {reached:?}, the leader (member {leader}) is at {target}\n\
             its log:\n{}\nthe leader's log:\n{}",
            cluster.log_tail(member, 20),
            cluster.log_tail(leader, 20)
        );
    }
}

#[tokio::test]
async fn a_follower_paused_again_and_again_under_writes_catches_up_each_time() {
    members_catch_up_after_pauses(&[Some(1), Some(1), Some(1)]).await;
}

/// The partition suite's `pause` nemesis: the leader, the next leader,
/// then a member that is by then a follower (seen once in the set
/// workload: a member paused first as leader, then as follower, never
/// received another entry though it kept hearing heartbeats).
#[tokio::test]
async fn members_paused_as_leader_and_then_as_follower_catch_up() {
    members_catch_up_after_pauses(&[None, None, Some(0), Some(1), Some(2)]).await;
}
