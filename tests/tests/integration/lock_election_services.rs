//! etcd's v3lock and v3election services on a real 3-member keel cluster,
//! through the raw gRPC stubs, each call to a chosen member (followers
//! included): a lock held by one lease blocks another lease's Lock until
//! Unlock, until the holder's lease is revoked, and until it expires; the
//! keys have etcd's layout (`<name>/<lease hex>`, attached to the lease);
//! an election's Campaign, Proclaim, Leader, Observe and Resign in
//! sequence; etcd's errors for unknown leases, missing leader keys,
//! proclaims by non-leaders and elections without a leader; and a canceled
//! Lock or Campaign (the caller gives up waiting) leaves no key.

use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, RangeRequest};
use keel_api::key_range::prefix_range_end;
use keel_api::mvccpb::KeyValue;
use keel_api::v3electionpb::election_client::ElectionClient;
use keel_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::{LockRequest, UnlockRequest};
use keel_tests::{Cluster, ClusterOptions};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(20);
/// Long enough for a waiting call to have answered if it were not waiting.
const STILL_WAITING: Duration = Duration::from_millis(700);

async fn channel(cluster: &Cluster, member: usize) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.endpoint(member)))
        .expect("endpoint url")
        .connect()
        .await
        .expect("connects to the member")
}

async fn locks(cluster: &Cluster, member: usize) -> LockClient<Channel> {
    LockClient::new(channel(cluster, member).await)
}

async fn elections(cluster: &Cluster, member: usize) -> ElectionClient<Channel> {
    ElectionClient::new(channel(cluster, member).await)
}

async fn grant(cluster: &Cluster, ttl: i64) -> i64 {
    let granted = LeaseClient::new(channel(cluster, 0).await)
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    granted.id
}

async fn revoke(cluster: &Cluster, lease: i64) {
    LeaseClient::new(channel(cluster, 1).await)
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect("revoke");
}

/// The key-values under `prefix`, read on member `member`.
async fn under(cluster: &Cluster, member: usize, prefix: &str) -> Vec<KeyValue> {
    KvClient::new(channel(cluster, member).await)
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_range_end(prefix.as_bytes()),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .kvs
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The keys under `prefix` once they are `expected`; what they are at the
/// deadline otherwise.
async fn keys_once(cluster: &Cluster, prefix: &str, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = keys(&under(cluster, 0, prefix).await);
        if now == expected || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lock_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

async fn lock(
    cluster: &Cluster,
    member: usize,
    name: &str,
    lease: i64,
) -> Result<(Vec<u8>, i64), tonic::Status> {
    let held = locks(cluster, member)
        .await
        .lock(LockRequest {
            name: name.as_bytes().to_vec(),
            lease,
        })
        .await?
        .into_inner();
    Ok((held.key, held.header.expect("a header").revision))
}

/// Starts a Lock that is expected to wait, and checks that it does.
async fn waiting_lock(
    cluster: &Cluster,
    member: usize,
    name: &str,
    lease: i64,
) -> tokio::task::JoinHandle<Result<(Vec<u8>, i64), tonic::Status>> {
    let mut client = locks(cluster, member).await;
    let name = name.as_bytes().to_vec();
    let waiting = tokio::spawn(async move {
        let held = client.lock(LockRequest { name, lease }).await?.into_inner();
        Ok((held.key, held.header.expect("a header").revision))
    });
    tokio::time::sleep(STILL_WAITING).await;
    assert!(
        !waiting.is_finished(),
        "the lock was taken while another lease held it"
    );
    waiting
}

async fn taken(waiting: tokio::task::JoinHandle<Result<(Vec<u8>, i64), tonic::Status>>) -> (Vec<u8>, i64) {
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting lock is taken in time")
        .expect("task")
        .expect("lock")
}

#[tokio::test]
async fn a_held_lock_blocks_another_lease_until_unlock_revoke_or_expiry() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let first = grant(&cluster, 60).await;
    let second = grant(&cluster, 60).await;

    let (key, revision) = lock(&cluster, 1, "job", first).await.expect("lock");
    assert_eq!(String::from_utf8_lossy(&key), lock_key("job", first));
    let held = under(&cluster, 2, "job/").await;
    assert_eq!(keys(&held), vec![lock_key("job", first)]);
    assert_eq!(held[0].lease, first, "the key is attached to the caller's lease");
    assert!(held[0].value.is_empty());
    assert_eq!(held[0].create_revision, revision);

    // Locking again with the holder's lease is the same acquisition.
    let (again, _) = lock(&cluster, 0, "job", first).await.expect("lock again");
    assert_eq!(again, key);

    let waiting = waiting_lock(&cluster, 2, "job", second).await;
    let unlocked = locks(&cluster, 0)
        .await
        .unlock(UnlockRequest { key: key.clone() })
        .await
        .expect("unlock")
        .into_inner();
    let unlocked_at = unlocked.header.expect("a header").revision;
    let (second_key, second_revision) = taken(waiting).await;
    assert_eq!(String::from_utf8_lossy(&second_key), lock_key("job", second));
    assert!(
        second_revision >= unlocked_at,
        "taken at {second_revision}, before the unlock at {unlocked_at}"
    );

    // A revoked holder's lease releases the lock.
    let waiting = waiting_lock(&cluster, 1, "job", first).await;
    revoke(&cluster, second).await;
    let (key, _) = taken(waiting).await;
    assert_eq!(String::from_utf8_lossy(&key), lock_key("job", first));

    // So does an expired one (nobody keeps it alive).
    let short = grant(&cluster, 3).await;
    let (short_key, _) = lock(&cluster, 2, "expiring", short).await.expect("lock");
    let waiting = waiting_lock(&cluster, 0, "expiring", first).await;
    let (key, _) = taken(waiting).await;
    assert_eq!(String::from_utf8_lossy(&key), lock_key("expiring", first));
    let left = keys(&under(&cluster, 0, "expiring/").await);
    assert!(
        !left.contains(&String::from_utf8_lossy(&short_key).into_owned()),
        "{left:?}"
    );
}

fn leader_key(leader: Option<LeaderKey>) -> LeaderKey {
    leader.expect("a leader key")
}

async fn next_leader(updates: &mut Streaming<LeaderResponse>) -> (String, String) {
    let update = tokio::time::timeout(WAIT, updates.message())
        .await
        .expect("an observed leader in time")
        .expect("observe stream")
        .expect("stream open");
    let kv = update.kv.expect("a key-value");
    (
        String::from_utf8_lossy(&kv.key).into_owned(),
        String::from_utf8_lossy(&kv.value).into_owned(),
    )
}

async fn current_leader(
    cluster: &Cluster,
    member: usize,
    name: &str,
) -> Result<(String, String), tonic::Status> {
    let answer = elections(cluster, member)
        .await
        .leader(LeaderRequest {
            name: name.as_bytes().to_vec(),
        })
        .await?
        .into_inner();
    let kv = answer.kv.expect("a key-value");
    Ok((
        String::from_utf8_lossy(&kv.key).into_owned(),
        String::from_utf8_lossy(&kv.value).into_owned(),
    ))
}

/// etcd's lock and election services answer their errors as plain Go
/// errors: gRPC's Unknown with etcd's text.
fn assert_election_error(answer: Result<impl std::fmt::Debug, tonic::Status>, message: &str) {
    match answer {
        Ok(reply) => panic!("expected {message:?}, got {reply:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unknown, "{status:?}");
            assert_eq!(status.message(), message);
        }
    }
}

#[tokio::test]
async fn campaign_proclaim_leader_observe_and_resign_in_sequence() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let alpha = grant(&cluster, 60).await;
    let beta = grant(&cluster, 60).await;
    assert_election_error(current_leader(&cluster, 0, "pick").await, "election: no leader");

    // Observing before anyone campaigns sees the first leader.
    let mut updates = elections(&cluster, 2)
        .await
        .observe(LeaderRequest {
            name: b"pick".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();

    let elected = elections(&cluster, 1)
        .await
        .campaign(CampaignRequest {
            name: b"pick".to_vec(),
            lease: alpha,
            value: b"a1".to_vec(),
        })
        .await
        .expect("campaign")
        .into_inner();
    let alpha_leads = leader_key(elected.leader);
    assert_eq!(alpha_leads.name, b"pick");
    assert_eq!(String::from_utf8_lossy(&alpha_leads.key), lock_key("pick", alpha));
    assert_eq!(alpha_leads.lease, alpha);
    assert_eq!(alpha_leads.rev, elected.header.expect("a header").revision);
    let stored = under(&cluster, 0, "pick/").await;
    assert_eq!(stored[0].create_revision, alpha_leads.rev);
    assert_eq!(stored[0].lease, alpha);
    assert_eq!(
        next_leader(&mut updates).await,
        (lock_key("pick", alpha), "a1".to_string())
    );

    elections(&cluster, 0)
        .await
        .proclaim(ProclaimRequest {
            leader: Some(alpha_leads.clone()),
            value: b"a2".to_vec(),
        })
        .await
        .expect("proclaim");
    assert_eq!(
        next_leader(&mut updates).await,
        (lock_key("pick", alpha), "a2".to_string())
    );
    assert_eq!(
        current_leader(&cluster, 2, "pick").await.expect("leader"),
        (lock_key("pick", alpha), "a2".to_string())
    );

    let mut candidate = elections(&cluster, 2).await;
    let beta_campaign = tokio::spawn(async move {
        candidate
            .campaign(CampaignRequest {
                name: b"pick".to_vec(),
                lease: beta,
                value: b"b1".to_vec(),
            })
            .await
    });
    tokio::time::sleep(STILL_WAITING).await;
    assert!(!beta_campaign.is_finished(), "beta was elected while alpha leads");
    let pretender = LeaderKey {
        name: b"pick".to_vec(),
        key: lock_key("pick", beta).into_bytes(),
        rev: alpha_leads.rev,
        lease: beta,
    };
    let proclaimed = elections(&cluster, 1)
        .await
        .proclaim(ProclaimRequest {
            leader: Some(pretender),
            value: b"b-now".to_vec(),
        })
        .await;
    assert_election_error(proclaimed, "election: not leader");

    elections(&cluster, 0)
        .await
        .resign(ResignRequest {
            leader: Some(alpha_leads.clone()),
        })
        .await
        .expect("resign");
    let elected = tokio::time::timeout(WAIT, beta_campaign)
        .await
        .expect("beta's campaign in time")
        .expect("task")
        .expect("beta's campaign")
        .into_inner();
    let beta_leads = leader_key(elected.leader);
    assert_eq!(String::from_utf8_lossy(&beta_leads.key), lock_key("pick", beta));
    assert_eq!(
        next_leader(&mut updates).await,
        (lock_key("pick", beta), "b1".to_string())
    );
    assert_eq!(
        current_leader(&cluster, 1, "pick").await.expect("leader"),
        (lock_key("pick", beta), "b1".to_string())
    );

    // The resigned leader's key no longer leads.
    let stale = elections(&cluster, 0)
        .await
        .proclaim(ProclaimRequest {
            leader: Some(alpha_leads),
            value: b"a3".to_vec(),
        })
        .await;
    assert_election_error(stale, "election: not leader");

    elections(&cluster, 1)
        .await
        .resign(ResignRequest {
            leader: Some(beta_leads),
        })
        .await
        .expect("resign");
    assert_election_error(current_leader(&cluster, 0, "pick").await, "election: no leader");
    assert!(under(&cluster, 0, "pick/").await.is_empty());
}

#[tokio::test]
async fn unknown_leases_and_missing_leader_keys_get_etcds_errors() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    const UNKNOWN: i64 = 0x5eed;
    let locked = lock(&cluster, 1, "job", UNKNOWN).await;
    // etcd relays the put's error as a plain error: Unknown, etcd's text.
    assert_election_error(locked, "etcdserver: requested lease not found");
    let campaigned = elections(&cluster, 2)
        .await
        .campaign(CampaignRequest {
            name: b"pick".to_vec(),
            lease: UNKNOWN,
            value: b"v".to_vec(),
        })
        .await;
    assert_election_error(campaigned, "etcdserver: requested lease not found");
    assert!(under(&cluster, 0, "job/").await.is_empty());
    assert!(under(&cluster, 0, "pick/").await.is_empty());

    let missing = "\"leader\" field must be provided";
    let proclaimed = elections(&cluster, 0)
        .await
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"v".to_vec(),
        })
        .await;
    assert_election_error(proclaimed, missing);
    let resigned = elections(&cluster, 0)
        .await
        .resign(ResignRequest { leader: None })
        .await;
    assert_election_error(resigned, missing);
}

#[tokio::test]
async fn a_canceled_lock_or_campaign_leaves_no_key() {
    let cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    let holder = grant(&cluster, 60).await;
    let quitter = grant(&cluster, 60).await;
    lock(&cluster, 0, "job", holder).await.expect("lock");
    let mut client = locks(&cluster, 1).await;
    let gave_up = tokio::time::timeout(
        STILL_WAITING,
        client.lock(LockRequest {
            name: b"job".to_vec(),
            lease: quitter,
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the lock was taken while another lease held it");
    let expected = vec![lock_key("job", holder)];
    assert_eq!(keys_once(&cluster, "job/", &expected).await, expected);

    let mut leader = elections(&cluster, 0).await;
    leader
        .campaign(CampaignRequest {
            name: b"pick".to_vec(),
            lease: holder,
            value: b"h".to_vec(),
        })
        .await
        .expect("campaign");
    let mut candidate = elections(&cluster, 2).await;
    let gave_up = tokio::time::timeout(
        STILL_WAITING,
        candidate.campaign(CampaignRequest {
            name: b"pick".to_vec(),
            lease: quitter,
            value: b"q".to_vec(),
        }),
    )
    .await;
    assert!(gave_up.is_err(), "elected while another candidate leads");
    let expected = vec![lock_key("pick", holder)];
    assert_eq!(keys_once(&cluster, "pick/", &expected).await, expected);
}
