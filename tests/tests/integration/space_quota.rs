//! `--quota-backend-bytes` and the NOSPACE alarm on 3 real members with a
//! tiny quota: a write over the quota is refused with etcd's "database space
//! exceeded" and raises NOSPACE through Raft, after which every member
//! refuses writes that need space while reads, deletes and compactions
//! still work; the alarm survives a restart and `alarm disarm` clears it
//! everywhere, after which (the compaction having freed space, and a
//! defragmentation) writes are taken again. `keelctl alarm list|disarm` print what etcdctl 3.4 prints,
//! against keel and against etcd over the same quota.
//!
//! Named exclusion: `alarm ... -w fields`, where etcdctl 3.4 itself crashes
//! (its fields printer reads the header etcd's alarm responses lack).

use crate::keelctl_support;

use std::time::Duration;

use keel_api::etcdserverpb::alarm_request::AlarmAction;
use keel_api::etcdserverpb::request_op;
use keel_api::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use keel_client::{Client, ClientError};
use keel_tests::{Cluster, ClusterOptions};
use keelctl_support::{args, etcdctl_path, keelctl_path, run, without_client_logs, Ran};

/// Small enough that a few dozen 20 kB values exceed it, for keel and etcd.
const QUOTA_BYTES: &str = "300000";

fn options(flavor: ClusterOptions) -> ClusterOptions {
    ClusterOptions {
        extra_args: vec![format!("--quota-backend-bytes={QUOTA_BYTES}")],
        ..flavor
    }
}

fn put(key: &str, value_bytes: usize) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'x'; value_bytes],
        ..Default::default()
    }
}

fn is_no_space(result: &Result<impl std::fmt::Debug, ClientError>) -> bool {
    match result {
        Err(ClientError::Status(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert_eq!(status.message(), "etcdserver: mvcc: database space exceeded");
            true
        }
        _ => false,
    }
}

/// Puts 20 kB values through `client` until one is refused for space; the
/// number of puts that succeeded.
async fn fill(client: &Client) -> usize {
    for i in 0..200 {
        let answer = client.put(put(&format!("big/{i:03}"), 20_000)).await;
        if is_no_space(&answer) {
            return i;
        }
        answer.expect("a put under the quota");
    }
    panic!("200 puts of 20 kB never exceeded a quota of {QUOTA_BYTES} bytes");
}

async fn etcdctl_stdout(cluster: &Cluster, index: usize, list: &[&str]) -> String {
    let mut full = vec![format!("--endpoints={}", cluster.endpoint(index)).into_bytes()];
    full.extend(args(list));
    let ran = run(&etcdctl_path(), &full, b"").await;
    assert_eq!(ran.code, 0, "etcdctl {list:?}: {}", ran.stderr_text());
    ran.stdout_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_quota_every_member_refuses_writes_that_need_space_until_disarmed() {
    let mut cluster = Cluster::start(options(ClusterOptions::keel(3)))
        .await
        .expect("keel starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let through_follower = cluster.member_client(follower).expect("client");
    let stored = fill(&through_follower).await;
    assert!(stored > 0, "the first put already exceeded the quota");

    // The follower that refused raised NOSPACE for itself, and every member
    // lists it once the alarm is applied there.
    let follower_id = through_follower
        .status(&cluster.endpoint(follower))
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id;
    let expected = format!("memberID:{follower_id} alarm:NOSPACE \n");
    for index in 0..3 {
        assert_eq!(
            etcdctl_stdout(&cluster, index, &["alarm", "list"]).await,
            expected
        );
        let status = through_follower
            .status(&cluster.endpoint(index))
            .await
            .expect("status");
        assert_eq!(
            status.errors,
            vec![format!("memberID:{follower_id} alarm:NOSPACE ")]
        );
    }

    // Writes that need space are refused everywhere, even tiny ones.
    for index in 0..3 {
        let client = cluster.member_client(index).expect("client");
        assert!(is_no_space(&client.put(put("small", 1)).await), "member {index}");
        let with_put = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("small", 1))),
            }],
            ..Default::default()
        };
        assert!(is_no_space(&client.txn(with_put).await), "member {index}");
        let grant = keel_api::etcdserverpb::lease_client::LeaseClient::connect(format!(
            "http://{}",
            cluster.endpoint(index)
        ))
        .await
        .expect("connect")
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await;
        assert_eq!(
            grant.map(|_| ()).map_err(|s| (s.code(), s.message().to_string())),
            Err((
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded".to_string()
            )),
            "member {index}"
        );
    }
    // Reads, deletes (also inside a txn) and compactions still work.
    let client = cluster.member_client(leader).expect("client");
    let read = client
        .range(RangeRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .expect("read");
    assert_eq!(read.kvs.len(), stored);
    let deleted = client
        .delete_range(DeleteRangeRequest {
            key: b"big/000".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert_eq!(deleted.deleted, 1);
    let delete_in_txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"big/001".to_vec(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    assert!(client.txn(delete_in_txn).await.expect("txn").succeeded);
    let revision = deleted.header.expect("header").revision;
    client
        .compact(keel_api::etcdserverpb::CompactionRequest {
            revision,
            physical: false,
        })
        .await
        .expect("compaction");

    // The alarm is replicated state: a restarted member still has it.
    let restarted = (leader + 2) % 3;
    cluster.stop(restarted).await.expect("stop");
    cluster.restart(restarted).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader after the restart");
    assert_eq!(
        etcdctl_stdout(&cluster, restarted, &["alarm", "list"]).await,
        expected
    );

    // Disarm clears it on every member.
    assert_eq!(
        etcdctl_stdout(&cluster, leader, &["alarm", "disarm"]).await,
        expected
    );
    for index in 0..3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listed = etcdctl_stdout(&cluster, index, &["alarm", "list"]).await;
            if listed.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {index} still lists {listed:?} after the disarm"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // etcd's way out: the compaction freed two values, a defragmentation
    // runs, and once disarmed the members take writes again.
    assert_eq!(
        etcdctl_stdout(&cluster, leader, &["defrag"]).await,
        format!(
            "Finished defragmenting etcd member[{}]\n",
            cluster.endpoint(leader)
        )
    );
    for index in 0..3 {
        let client = cluster.member_client(index).expect("client");
        client
            .put(put(&format!("after-disarm/{index}"), 1000))
            .await
            .unwrap_or_else(|error| panic!("member {index} refuses a write after the disarm: {error:?}"));
    }
}

fn check(mismatches: &mut Vec<String>, label: &str, etcdctl: &Ran, keelctl: &Ran) {
    let expected_stderr = without_client_logs(&etcdctl.stderr);
    if etcdctl.code != keelctl.code || etcdctl.stdout != keelctl.stdout || expected_stderr != keelctl.stderr {
        mismatches.push(format!(
            "{label}\n  etcdctl: exit {} stdout {:?} stderr {:?}\n  keelctl: exit {} stdout {:?} stderr {:?}",
            etcdctl.code,
            etcdctl.stdout_text(),
            String::from_utf8_lossy(&expected_stderr),
            keelctl.code,
            keelctl.stdout_text(),
            keelctl.stderr_text()
        ));
    }
}

/// The raised alarms, once no new one arrived for half a second (etcd's
/// members raise NOSPACE for themselves as they apply a write over the
/// quota, so more than one may arrive, each a little later).
async fn settled_alarms(client: &Client) -> Vec<AlarmMember> {
    let mut last = client
        .alarm(alarm_request(AlarmAction::Get, 0))
        .await
        .expect("alarm list");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = client
            .alarm(alarm_request(AlarmAction::Get, 0))
            .await
            .expect("alarm list");
        if now.alarms == last.alarms {
            return now.alarms;
        }
        last = now;
    }
}

fn alarm_request(action: AlarmAction, member_id: u64) -> AlarmRequest {
    AlarmRequest {
        action: action as i32,
        member_id,
        alarm: AlarmType::Nospace as i32,
    }
}

/// etcdctl and keelctl `alarm list` and `alarm disarm` against one cluster
/// over its quota; the differences found. Before each comparison the
/// alarms are set to one NOSPACE alarm of member 0 through the Alarm RPC,
/// so both tools see the same state whichever members raised it first.
async fn alarm_goldens(cluster: &Cluster) -> Vec<String> {
    let client = cluster.member_client(0).expect("client");
    fill(&client).await;
    assert!(!settled_alarms(&client).await.is_empty(), "NOSPACE was raised");
    let member_0 = client
        .status(&cluster.endpoint(0))
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id;
    let only_member_0 = || async {
        for raised in client
            .alarm(alarm_request(AlarmAction::Get, 0))
            .await
            .expect("list")
            .alarms
        {
            client
                .alarm(AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: raised.member_id,
                    alarm: raised.alarm,
                })
                .await
                .expect("deactivate");
        }
        client
            .alarm(alarm_request(AlarmAction::Activate, member_0))
            .await
            .expect("activate");
    };
    let endpoint = format!("--endpoints={}", cluster.endpoint(0)).into_bytes();
    let both = |list: &[&str]| {
        let mut full = vec![endpoint.clone()];
        full.extend(args(list));
        full
    };
    let mut mismatches = Vec::new();
    for format in ["simple", "json", "protobuf", "table"] {
        only_member_0().await;
        let list = both(&["alarm", "list", "-w", format]);
        let e = run(&etcdctl_path(), &list, b"").await;
        let k = run(&keelctl_path(), &list, b"").await;
        check(&mut mismatches, &format!("alarm list -w {format}"), &e, &k);
        let disarm = both(&["alarm", "disarm", "-w", format]);
        let e = run(&etcdctl_path(), &disarm, b"").await;
        only_member_0().await;
        let k = run(&keelctl_path(), &disarm, b"").await;
        check(&mut mismatches, &format!("alarm disarm -w {format}"), &e, &k);
    }
    for extra in [["alarm", "list", "x"], ["alarm", "disarm", "x"]] {
        let list = both(&extra);
        let e = run(&etcdctl_path(), &list, b"").await;
        let k = run(&keelctl_path(), &list, b"").await;
        check(&mut mismatches, &extra.join(" "), &e, &k);
    }
    mismatches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_alarm_prints_what_etcdctl_prints_against_keel_and_etcd() {
    let keel = Cluster::start(options(ClusterOptions::keel(3)))
        .await
        .expect("keel starts");
    let etcd = Cluster::start(options(ClusterOptions::etcd(3)))
        .await
        .expect("etcd starts");
    let from_keel = alarm_goldens(&keel).await;
    let from_etcd = alarm_goldens(&etcd).await;
    assert!(
        from_keel.is_empty() && from_etcd.is_empty(),
        "against keel:\n{}\n\nagainst etcd:\n{}",
        from_keel.join("\n\n"),
        from_etcd.join("\n\n")
    );
}
