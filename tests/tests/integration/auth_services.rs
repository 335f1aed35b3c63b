//! Auth beyond KV, on a real `keel` process: the lock and election
//! services act as their caller (they run their recipes through the
//! member's client to itself, which must carry the caller's token),
//! LeaseTimeToLive names a lease's keys only to who may read them, the
//! HTTP/JSON gateway takes a token from the `Authorization` header, and
//! `keel_client` authenticates with credentials and again when its token
//! expires; and JWT tokens (`--auth-token jwt,...`): verified by every
//! member without being replicated, alive across a restart, dead after an
//! auth change.

use std::time::Duration;

use keel_api::authpb::permission::Type::Readwrite;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{
    AuthEnableRequest, AuthUserGrantRoleRequest, AuthenticateRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest,
};
use keel_api::v3electionpb::election_client::ElectionClient;
use keel_api::v3electionpb::{CampaignRequest, LeaderRequest};
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::{LockRequest, UnlockRequest};
use keel_api::WireError;
use keel_client::{Client, ClientConfig};
use keel_tests::auth_setup::{with_token, AuthSetUp};
use keel_tests::{curl, Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(cluster: &Cluster) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.endpoint(0)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// root; alice (readwrite on `jobs`, `web` and `secret/`); bob (readwrite
/// on `other/`); a key `secret/x` on a lease; auth enabled. Answers the
/// lease's ID.
async fn set_up_auth(cluster: &Cluster) -> i64 {
    let admin = Client::connect(ClientConfig::new([cluster.endpoint(0)]))
        .await
        .expect("connect");
    let setup = AuthSetUp {
        users: &[("root", "rootpw"), ("alice", "alicepw"), ("bob", "bobpw")],
        permissions: &[
            ("worker", Readwrite, b"jobs"),
            ("worker", Readwrite, b"web"),
            ("worker", Readwrite, b"secret/"),
            ("outsider", Readwrite, b"other/"),
        ],
        user_roles: &[("root", "root"), ("alice", "worker"), ("bob", "outsider")],
    };
    setup.apply(&admin).await.expect("users and roles");
    let lease = admin.lease_grant(600, 0).await.expect("lease grant").id;
    admin
        .put(PutRequest {
            key: b"secret/x".to_vec(),
            value: b"1".to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .expect("put on the lease");
    admin
        .auth_enable(AuthEnableRequest {})
        .await
        .expect("auth enable");
    lease
}

async fn token(cluster: &Cluster, name: &str, password: &str) -> String {
    Client::connect(ClientConfig::new([cluster.endpoint(0)]))
        .await
        .expect("connect")
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .expect("authenticate")
        .token
}

async fn one_member_with_auth(extra_args: Vec<String>) -> (Cluster, i64) {
    members_with_auth(1, extra_args).await
}

async fn members_with_auth(size: usize, extra_args: Vec<String>) -> (Cluster, i64) {
    let cluster = Cluster::start(ClusterOptions {
        extra_args,
        ..ClusterOptions::keel(size)
    })
    .await
    .expect("keel starts");
    let lease = set_up_auth(&cluster).await;
    (cluster, lease)
}

/// Regression: the lock and election services ran their recipes through
/// the member's client to itself without the caller's token, so with auth
/// on every Lock and Campaign was refused ("user name is empty") whoever
/// called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_act_as_their_caller_with_auth_on() {
    let (cluster, _) = one_member_with_auth(Vec::new()).await;
    let alice = token(&cluster, "alice", "alicepw").await;
    let bob = token(&cluster, "bob", "bobpw").await;
    let mut lock = LockClient::new(channel(&cluster).await);
    let held = lock
        .lock(with_token(
            LockRequest {
                name: b"jobs".to_vec(),
                lease: 0,
            },
            &alice,
        ))
        .await
        .expect("alice may lock under her prefix")
        .into_inner();
    assert!(held.key.starts_with(b"jobs/"), "{:?}", held.key);
    lock.unlock(with_token(UnlockRequest { key: held.key }, &alice))
        .await
        .expect("alice unlocks");
    let refused = lock
        .lock(with_token(
            LockRequest {
                name: b"jobs".to_vec(),
                lease: 0,
            },
            &bob,
        ))
        .await
        .expect_err("bob may not lock outside his prefix");
    assert!(refused.message().contains("permission denied"), "{refused:?}");
    let anonymous = lock
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: 0,
        })
        .await
        .expect_err("no token, auth on");
    assert!(
        anonymous.message().contains("user name is empty"),
        "{anonymous:?}"
    );
    let invalid = lock
        .lock(with_token(
            LockRequest {
                name: b"jobs".to_vec(),
                lease: 0,
            },
            "no-such-token",
        ))
        .await
        .expect_err("an invalid token");
    assert_eq!(invalid.code(), Code::Unauthenticated, "{invalid:?}");

    let mut election = ElectionClient::new(channel(&cluster).await);
    let leader = election
        .campaign(with_token(
            CampaignRequest {
                name: b"web".to_vec(),
                lease: 0,
                value: b"node-a".to_vec(),
            },
            &alice,
        ))
        .await
        .expect("alice campaigns under her prefix")
        .into_inner()
        .leader
        .expect("a leader key");
    assert!(leader.key.starts_with(b"web/"), "{:?}", leader.key);
    let read = election
        .leader(with_token(
            LeaderRequest {
                name: b"web".to_vec(),
            },
            &alice,
        ))
        .await
        .expect("alice reads the leader")
        .into_inner();
    assert_eq!(read.kv.expect("the leader's key").value, b"node-a");
    let refused = election
        .leader(with_token(
            LeaderRequest {
                name: b"web".to_vec(),
            },
            &bob,
        ))
        .await
        .expect_err("bob may not read the election");
    assert!(refused.message().contains("permission denied"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_time_to_live_names_the_attached_keys_only_to_who_may_read_them() {
    let (cluster, lease) = one_member_with_auth(Vec::new()).await;
    let alice = token(&cluster, "alice", "alicepw").await;
    let bob = token(&cluster, "bob", "bobpw").await;
    let mut leases = LeaseClient::new(channel(&cluster).await);
    let asked = |keys: bool, token: &str| with_token(LeaseTimeToLiveRequest { id: lease, keys }, token);
    let seen = leases
        .lease_time_to_live(asked(true, &alice))
        .await
        .expect("alice may read secret/")
        .into_inner();
    assert_eq!(seen.keys, vec![b"secret/x".to_vec()]);
    let ttl_only = leases
        .lease_time_to_live(asked(false, &bob))
        .await
        .expect("the TTL alone is anyone's")
        .into_inner();
    assert!(ttl_only.ttl > 0 && ttl_only.keys.is_empty(), "{ttl_only:?}");
    let refused = leases
        .lease_time_to_live(asked(true, &bob))
        .await
        .expect_err("bob may not learn the names of keys he cannot read");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: permission denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_takes_the_token_from_the_authorization_header() {
    let (cluster, _) = one_member_with_auth(Vec::new()).await;
    let alice = token(&cluster, "alice", "alicepw").await;
    // "secret/x" in base64, as the gateway's JSON carries bytes.
    let secret_x = "c2VjcmV0L3g=";
    let body = format!(r#"{{"key":"{secret_x}"}}"#);
    let url = format!("http://{}/v3/kv/range", cluster.endpoint(0));
    let authorized = curl(
        &url,
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: {alice}"),
            "-d",
            &body,
        ],
    )
    .await;
    assert_eq!(authorized.http_status, 200, "{}", authorized.body);
    assert!(authorized.body.contains(secret_x), "{}", authorized.body);
    let anonymous = curl(&url, &["-X", "POST", "-d", &body]).await;
    assert!(
        anonymous.body.contains("user name is empty"),
        "{} {}",
        anonymous.http_status,
        anonymous.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_credentials_authenticates_and_again_once_its_token_expired() {
    let (cluster, _) = one_member_with_auth(vec!["--auth-token-ttl=1".to_string()]).await;
    let config = || ClientConfig::new([cluster.endpoint(0)]);
    let alice = Client::connect(config().with_credentials("alice", "alicepw"))
        .await
        .expect("connect");
    let put = |key: &str| PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    alice
        .put(put("jobs/a"))
        .await
        .expect("alice writes under her prefix");
    let refused = alice.put(put("other/a")).await.expect_err("outside her prefix");
    assert_eq!(refused.wire_error(), Some(WireError::PermissionDenied));

    // Her token dies idle after 1 s; the client authenticates again.
    let given = alice
        .with_token(&token(&cluster, "alice", "alicepw").await)
        .expect("a token as metadata");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    alice
        .range(RangeRequest {
            key: b"jobs/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a new token after the old one expired");
    let expired = given
        .range(RangeRequest {
            key: b"jobs/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("a given token is never renewed");
    assert_eq!(expired.wire_error(), Some(WireError::InvalidAuthToken));

    let wrong = Client::connect_lazy(config().with_credentials("alice", "wrong")).expect("client");
    let error = wrong.authenticate_now().await.expect_err("a wrong password");
    assert_eq!(error.wire_error(), Some(WireError::AuthFailed));
    drop(cluster);
}

/// `--auth-token` for ES256 JWTs with a fresh key pair written into `dir`.
fn jwt_flag(dir: &std::path::Path) -> String {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let (public, private) = (dir.join("jwt.pub"), dir.join("jwt.key"));
    std::fs::write(&public, pair.public_key_pem()).expect("write");
    std::fs::write(&private, pair.serialize_pem()).expect("write");
    format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m",
        public.display(),
        private.display()
    )
}

async fn read_with(cluster: &Cluster, index: usize, token: &str) -> Result<Vec<u8>, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{}", cluster.endpoint(index)))
        .expect("endpoint")
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let read = keel_api::etcdserverpb::kv_client::KvClient::new(channel)
        .range(with_token(
            RangeRequest {
                key: b"secret/x".to_vec(),
                ..Default::default()
            },
            token,
        ))
        .await?;
    Ok(read
        .into_inner()
        .kvs
        .first()
        .map(|kv| kv.value.clone())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_believed_by_every_member_and_across_a_restart_until_auth_changes() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (mut cluster, _) = members_with_auth(3, vec![jwt_flag(keys.path())]).await;
    let alice = token(&cluster, "alice", "alicepw").await;
    assert_eq!(alice.split('.').count(), 3, "a JWT: {alice}");
    for member in 0..3 {
        assert_eq!(
            read_with(&cluster, member, &alice)
                .await
                .expect("every member verifies it"),
            b"1"
        );
    }
    // Signed, not stored: a restarted member still believes it.
    cluster.stop(2).await.expect("stop");
    cluster.restart(2).expect("restart");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match read_with(&cluster, 2, &alice).await {
            Ok(value) => break assert_eq!(value, b"1"),
            Err(status) => assert!(
                tokio::time::Instant::now() < deadline,
                "the restarted member never served alice's JWT: {status:?}\n{}",
                cluster.log_tail(2, 30)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let forged = {
        let other_keys = tempfile::tempdir().expect("tempdir");
        let flag = jwt_flag(other_keys.path());
        let options = flag.trim_start_matches("--auth-token=jwt,");
        keel_auth::jwt::JwtTokens::from_options(options, keel_api::go_format::parse_duration)
            .expect("other keys")
            .issue("root", u64::MAX)
            .expect("a token signed by another key")
    };
    let refused = read_with(&cluster, 0, &forged)
        .await
        .expect_err("another key's token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // An auth change kills every token issued before it; a client with
    // credentials authenticates again by itself.
    let alice_client =
        Client::connect(ClientConfig::new([cluster.endpoint(0)]).with_credentials("alice", "alicepw"))
            .await
            .expect("alice connects");
    let root = Client::connect(ClientConfig::new([cluster.endpoint(0)]).with_credentials("root", "rootpw"))
        .await
        .expect("root connects");
    root.user_grant_role(AuthUserGrantRoleRequest {
        user: "bob".into(),
        role: "worker".into(),
    })
    .await
    .expect("root changes auth");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match read_with(&cluster, 0, &alice).await {
            Err(old) => {
                assert_eq!(
                    old.message(),
                    "etcdserver: revision of auth store is old",
                    "{old:?}"
                );
                break;
            }
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the old JWT still reads"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = alice_client
        .range(RangeRequest {
            key: b"secret/x".to_vec(),
            ..Default::default()
        })
        .await
        .expect("alice's client authenticates again");
    assert_eq!(read.kvs[0].value, b"1");
}

/// As etcd's client: credentials given while auth is disabled are not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_credentials_works_while_auth_is_disabled() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let client = Client::connect(ClientConfig::new([cluster.endpoint(0)]).with_credentials("nobody", "pw"))
        .await
        .expect("connects although Authenticate answers that auth is disabled");
    client
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect("writes with no token");
}
