//! Auth across members, over raw gRPC on real `keel` processes: users,
//! roles and auth enabled on one member are enforced by a follower and
//! survive its restart (the auth store is replicated state, written with
//! the entries it came in), and a token stops working on every member once
//! its user is deleted.

use std::time::Duration;

use keel_api::authpb::permission::Type as PermissionType;
use keel_api::etcdserverpb::auth_client::AuthClient;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::{
    AuthUserAddRequest, AuthUserDeleteRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use keel_tests::auth_setup::{with_token, AuthSetUp};
use keel_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(cluster: &Cluster, index: usize) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.endpoint(index)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

async fn token(cluster: &Cluster, index: usize, name: &str, password: &str) -> String {
    AuthClient::new(channel(cluster, index).await)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// root (root role) and alice (read on `/pub/`), auth enabled, through
/// member `index`.
async fn set_up_auth(cluster: &Cluster, index: usize) {
    let setup = AuthSetUp {
        users: &[("root", "rootpw"), ("alice", "alicepw")],
        permissions: &[("reader", PermissionType::Read, b"/pub/")],
        user_roles: &[("root", "root"), ("alice", "reader")],
    };
    let admin = cluster.member_client(index).expect("client");
    setup
        .apply_and_enable(&admin)
        .await
        .expect("auth set up and enabled");
}

/// alice reads `/pub/a` on member `index`, and may not write it.
async fn alice_reads_and_may_not_write(cluster: &Cluster, index: usize) {
    let alice = token(cluster, index, "alice", "alicepw").await;
    let mut kv = KvClient::new(channel(cluster, index).await);
    let read = kv
        .range(with_token(get("/pub/a"), &alice))
        .await
        .expect("alice reads under her prefix");
    assert_eq!(read.into_inner().kvs[0].value, b"1");
    let refused = kv
        .put(with_token(
            PutRequest {
                key: b"/pub/a".to_vec(),
                value: b"2".to_vec(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .expect_err("alice may not write");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: permission denied");
    let unauthenticated = kv.range(get("/pub/a")).await.expect_err("no token");
    assert_eq!(unauthenticated.message(), "etcdserver: user name is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_set_on_one_member_is_enforced_by_a_follower_across_its_restart_and_a_deleted_users_token_dies()
{
    let mut cluster = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = (leader + 1) % 3;
    set_up_auth(&cluster, leader).await;
    let root = token(&cluster, leader, "root", "rootpw").await;
    KvClient::new(channel(&cluster, leader).await)
        .put(with_token(
            PutRequest {
                key: b"/pub/a".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            },
            &root,
        ))
        .await
        .expect("root writes");

    alice_reads_and_may_not_write(&cluster, follower).await;
    cluster.restart(follower).expect("restart the follower");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = match Channel::from_shared(format!("http://{}", cluster.endpoint(follower)))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(channel) => AuthClient::new(channel)
                .authenticate(AuthenticateRequest {
                    name: "alice".into(),
                    password: "alicepw".into(),
                })
                .await
                .is_ok(),
            Err(_) => false,
        };
        if answered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted follower never authenticated alice:\n{}",
            cluster.log_tail(follower, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alice_reads_and_may_not_write(&cluster, follower).await;

    // A token of a deleted user is refused everywhere.
    let alice_on_follower = token(&cluster, follower, "alice", "alicepw").await;
    AuthClient::new(channel(&cluster, leader).await)
        .user_delete(with_token(AuthUserDeleteRequest { name: "alice".into() }, &root))
        .await
        .expect("root deletes alice");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut kv = KvClient::new(channel(&cluster, follower).await);
        match kv.range(with_token(get("/pub/a"), &alice_on_follower)).await {
            Err(refused) => {
                assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
                assert_eq!(refused.message(), "etcdserver: invalid auth token");
                break;
            }
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the deleted user's token still reads on the follower"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wrong = AuthClient::new(channel(&cluster, follower).await)
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect_err("a deleted user cannot authenticate");
    assert_eq!(
        wrong.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
}

/// A simple token unused for longer than `--auth-token-ttl` is gone, as
/// etcd's; using it keeps it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_token_expires_after_its_ttl_unused_and_lives_while_used() {
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--auth-token-ttl=2".to_string()],
        ..ClusterOptions::keel(1)
    })
    .await
    .expect("keel starts");
    set_up_auth(&cluster, 0).await;
    let used = token(&cluster, 0, "alice", "alicepw").await;
    let idle = token(&cluster, 0, "alice", "alicepw").await;
    let mut kv = KvClient::new(channel(&cluster, 0).await);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        kv.range(with_token(get("/pub/a"), &used))
            .await
            .expect("a token in use stays valid");
    }
    let expired = kv
        .range(with_token(get("/pub/a"), &idle))
        .await
        .expect_err("a token idle for 3 s with a 2 s TTL");
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert_eq!(expired.message(), "etcdserver: invalid auth token");
}

/// Regression: while auth was disabled, writes still carried the auth
/// revision their member read, and an auth change applied in between (a user
/// added before enabling auth) refused them with "revision of auth store is
/// old". With auth disabled nothing is checked, so nothing may be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_disabled_writes_beside_auth_changes_are_never_refused() {
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--bcrypt-cost=4".to_string()],
        ..ClusterOptions::keel(1)
    })
    .await
    .expect("keel starts");
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let channel = channel(&cluster, 0).await;
        writers.spawn(async move {
            let mut kv = KvClient::new(channel);
            for i in 0..40 {
                kv.put(PutRequest {
                    key: format!("w/{writer}/{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
                .map_err(|refused| format!("put {writer}/{i}: {refused:?}"))?;
            }
            Ok::<(), String>(())
        });
    }
    let mut auth = AuthClient::new(channel(&cluster, 0).await);
    for user in 0..30 {
        auth.user_add(AuthUserAddRequest {
            name: format!("user-{user}"),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .expect("user add");
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer task").expect("no write refused");
    }
}
