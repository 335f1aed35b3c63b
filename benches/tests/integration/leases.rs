//! The lease scenario's instruments against a 1-member etcd and keel:
//! `lease-grant-revoke` revokes every lease it grants; `put-with-lease`
//! attaches its keys to the leases it grants (so revoking them after the
//! run leaves no key behind); the keep-alive fleet keeps leases alive past
//! their TTL with every answer matched to its request, and reports leases
//! the server no longer has as lost; the servers' CPU around a
//! put-with-lease run is read while its leases exist (after the grants,
//! before the revokes). Nothing here asserts a speed.

use std::sync::Mutex;
use std::time::Duration;

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{LeaseLeasesRequest, LeaseTimeToLiveRequest, RangeRequest};
use keel_api::key_range::prefix_range_end;
use keel_bench::load::keepalive::{KeepAliveFleet, Pace};
use keel_bench::load::leases::{grant_leases, open_lease_connections, revoke_leases};
use keel_bench::load::watchers::connect_channel;
use keel_bench::load::{run, run_sampling_servers, Access, LoadSpec, Mode};
use keel_tests::{Cluster, ClusterOptions};

const LEASE_TTL: i64 = 3;

async fn live_leases(endpoint: &str) -> Vec<i64> {
    let channel = connect_channel(endpoint).await.expect("connecting");
    LeaseClient::new(channel)
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("listing leases")
        .into_inner()
        .leases
        .iter()
        .map(|lease| lease.id)
        .collect()
}

/// How many leases `endpoint` has, asked on a thread and runtime of its own
/// (the bench reads its CPU sampler synchronously, inside its runtime).
fn live_lease_count_from_own_thread(endpoint: &str) -> usize {
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the lease count")
            .block_on(live_leases(&endpoint))
            .len()
    })
    .join()
    .expect("the lease count thread")
}

async fn keys_under(endpoint: &str, prefix: &str) -> i64 {
    let channel = connect_channel(endpoint).await.expect("connecting");
    let prefix = prefix.as_bytes().to_vec();
    KvClient::new(channel)
        .range(RangeRequest {
            range_end: prefix_range_end(&prefix),
            key: prefix,
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("counting keys")
        .into_inner()
        .count
}

fn spec(endpoint: &str) -> LoadSpec {
    let mut spec = LoadSpec::new(vec![endpoint.to_string()]);
    spec.clients = 8;
    spec.conns = 2;
    spec.duration = Some(Duration::from_millis(1500));
    spec
}

async fn grant_revoke_and_put(endpoint: &str) {
    let grant_revoke = run(Mode::LeaseGrantRevoke, &spec(endpoint))
        .await
        .expect("lease-grant-revoke runs");
    assert!(grant_revoke.ops > 0, "{grant_revoke:?}");
    assert_eq!(grant_revoke.errors, 0, "{grant_revoke:?}");
    assert!(grant_revoke.command.contains("lease-grant-revoke"));
    assert_eq!(
        live_leases(endpoint).await,
        Vec::<i64>::new(),
        "every granted lease was revoked"
    );

    for leases in [3, 0] {
        let mut spec = spec(endpoint);
        spec.prefix = "/leased/".into();
        spec.key_space = 50;
        spec.leases = leases;
        // The sampler stands in for the servers' CPU clock: it counts the
        // live leases each time it is read and returns 1.0, then 3.0.
        let leases_at_samples = Mutex::new(Vec::new());
        let sampler = || {
            let mut seen = leases_at_samples.lock().expect("sampler lock");
            seen.push(live_lease_count_from_own_thread(endpoint));
            Some(if seen.len() == 1 { 1.0 } else { 3.0 })
        };
        let put = run_sampling_servers(Mode::PutWithLease, &spec, &sampler)
            .await
            .expect("put-with-lease runs");
        let expected_leases = usize::try_from(spec.lease_count()).expect("lease count");
        assert_eq!(
            *leases_at_samples.lock().expect("sampler lock"),
            vec![expected_leases, expected_leases],
            "the servers' CPU is read twice, both times while the run's leases exist"
        );
        assert_eq!(put.server_cpu_s, Some(2.0), "{put:?}");
        assert!(put.ops > 0, "{put:?}");
        assert_eq!(put.errors, 0, "{put:?}");
        assert!(
            put.command.contains(&format!("--leases {leases}")),
            "{}",
            put.command
        );
        // The run revoked its leases: only keys attached to them are gone.
        assert_eq!(
            keys_under(endpoint, "/leased/").await,
            0,
            "every key was put with a lease"
        );
        assert_eq!(live_leases(endpoint).await, Vec::<i64>::new());
    }
}

async fn keep_alive(endpoint: &str) {
    let connections = open_lease_connections(&[endpoint.to_string()], 2, &Access::default())
        .await
        .expect("connecting");
    let leases = grant_leases(&connections, 200, LEASE_TTL, 32, Duration::from_secs(10))
        .await
        .expect("granting");
    assert_eq!(leases.len(), 200);
    let mut channels = Vec::new();
    for _ in 0..3 {
        channels.push(connect_channel(endpoint).await.expect("connecting"));
    }

    // Paced: every lease once a second, for longer than the TTL.
    let fleet = KeepAliveFleet::start(&channels, &leases, Pace::Every(Duration::from_secs(1)));
    fleet.start_window();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    fleet.end_window();
    let paced = fleet.stop().await;
    assert_eq!(paced.failures, Vec::<String>::new());
    assert_eq!(paced.lost_leases, 0, "{paced:?}");
    assert_eq!(paced.mismatched, 0, "{paced:?}");
    assert_eq!(paced.answered, paced.sent, "every renewal answered: {paced:?}");
    assert!(
        (700..=910).contains(&paced.answered_in_window),
        "about 200 renewals a second over 4.5 s: {paced:?}"
    );
    assert!(paced.latency.p50 > 0.0, "{paced:?}");
    let mut stub = connections[0].lease.clone();
    for &id in &leases {
        let ttl = stub
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .expect("time to live")
            .into_inner()
            .ttl;
        assert!(ttl > 0, "lease {id:x} expired despite the keep-alives");
    }

    // Saturation: answers as fast as the server gives them.
    let fleet = KeepAliveFleet::start(&channels, &leases, Pace::Saturate { in_flight: 16 });
    fleet.start_window();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fleet.end_window();
    let saturated = fleet.stop().await;
    assert_eq!(saturated.failures, Vec::<String>::new());
    assert_eq!(saturated.mismatched, 0, "{saturated:?}");
    assert_eq!(saturated.lost_leases, 0, "{saturated:?}");
    assert!(saturated.renewals_per_s > 0.0, "{saturated:?}");

    // Revoked leases are reported lost.
    revoke_leases(&connections, &leases, 32, Duration::from_secs(10))
        .await
        .expect("revoking");
    let fleet = KeepAliveFleet::start(&channels, &leases, Pace::Saturate { in_flight: 16 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revoked = fleet.stop().await;
    assert_eq!(revoked.lost_leases, leases.len(), "{revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_instruments_drive_etcd() {
    let cluster = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("starting etcd");
    grant_revoke_and_put(&cluster.endpoint(0)).await;
    keep_alive(&cluster.endpoint(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_instruments_drive_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("starting keel");
    grant_revoke_and_put(&cluster.endpoint(0)).await;
    keep_alive(&cluster.endpoint(0)).await;
}
