//! Regression tests for auth defects, each named after its bug and built in
//! an in-process cluster whose links the test cuts per kind of message.

use std::time::Duration;

use keel_api::authpb::permission::Type::Read;
use keel_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleRevokePermissionRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use keel_api::key_range::prefix_range_end;
use keel_api::WireError;
use keel_client::Client;
use keel_node::network::PeerMessage;
use keel_tests::auth_setup::AuthSetUp;
use keel_tests::in_process::InProcessCluster;

/// root, and alice with read on `/pub/`; `/pub/a` = 1; auth enabled; all
/// through `admin` (a client of the leader, before auth is on).
async fn alice_reads_pub(admin: &Client) {
    let setup = AuthSetUp {
        users: &[("root", "rootpw"), ("alice", "alicepw")],
        permissions: &[("reader", Read, b"/pub/")],
        user_roles: &[("root", "root"), ("alice", "reader")],
    };
    setup.apply(admin).await.expect("users and roles");
    admin
        .put(PutRequest {
            key: b"/pub/a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put");
    admin
        .auth_enable(AuthEnableRequest {})
        .await
        .expect("auth enable");
}

/// The bug: a linearizable Range checked its permission before its
/// ReadIndex wait, against the auth state its member had applied then. A
/// follower that had not yet applied a revocation, committed before the
/// read began, passed the check, caught up, and served the read: data
/// leaked to a user whose permission was already gone. The check now runs
/// after the wait, against the state the read sees (as etcd's does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_does_not_serve_a_read_on_a_permission_revoked_before_the_read() {
    let cluster = InProcessCluster::start(3, &["--election-timeout=1000", "--heartbeat-interval=100"])
        .await
        .expect("cluster");
    let everyone: Vec<usize> = (0..3).collect();
    // Elections only when the test calls them.
    cluster.cut(&everyone, &everyone, &[PeerMessage::PreVote]);
    cluster.elect(0).await.expect("m1 elected");
    let leader = cluster.client(0).expect("client");
    alice_reads_pub(&leader).await;
    let alice = leader
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("alice authenticates")
        .token;
    let settled = cluster.last_log_index(0);
    cluster
        .wait_until_all_applied(settled, Duration::from_secs(10))
        .await
        .expect("settled");
    let alice_on_follower = cluster
        .client(2)
        .expect("client")
        .with_token(&alice)
        .expect("token");
    let read = RangeRequest {
        key: b"/pub/a".to_vec(),
        ..Default::default()
    };
    let before = alice_on_follower
        .range(read.clone())
        .await
        .expect("alice reads on m3");
    assert_eq!(before.kvs[0].value, b"1");

    // m3 stops hearing m1's entries; m1 and m2 commit the revocation.
    cluster.cut(
        &[0],
        &[2],
        &[PeerMessage::AppendEntries, PeerMessage::InstallSnapshot],
    );
    let root_token = leader
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "rootpw".into(),
        })
        .await
        .expect("root authenticates")
        .token;
    leader
        .with_token(&root_token)
        .expect("token")
        .role_revoke_permission(AuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: b"/pub/".to_vec(),
            range_end: prefix_range_end(b"/pub/"),
        })
        .await
        .expect("root revokes alice's read");

    // alice's read begins on m3, which has not applied the revocation; it
    // waits for m3 to catch up, which it does once the link is back.
    let pending = tokio::spawn(async move { alice_on_follower.range(read).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster
        .links
        .restore(cluster.id(0), cluster.id(2), PeerMessage::AppendEntries);
    cluster
        .links
        .restore(cluster.id(0), cluster.id(2), PeerMessage::InstallSnapshot);
    let answer = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("the read answers")
        .expect("the read's task");
    match answer {
        Err(error) => assert_eq!(error.wire_error(), Some(WireError::PermissionDenied), "{error}"),
        Ok(leaked) => panic!("m3 served a read on a revoked permission: {leaked:?}"),
    }
}
