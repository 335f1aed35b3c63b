//! TLS between members (`--peer-*` TLS flags), with real `keel` processes
//! and certificates made by the test: a mutual-TLS cluster replicates, a
//! restarted member rejoins and a member added with an `https://` peer URL
//! joins over TLS; a member whose peer certificate comes from
//! another CA, or carries a common name `--peer-cert-allowed-cn` does not
//! allow, is refused while the others keep serving; `--peer-auto-tls`
//! works; a plaintext peer request to a TLS peer port fails; an `https://`
//! peer URL without a certificate, and a missing certificate file, refuse
//! the start with a clear message.

use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::{Client, ClientConfig};
use keel_node::PeerTlsConfig;
use keel_tests::cluster::wait_for_published_members;
use keel_tests::tls::{CertificateFiles, TestCertificates};
use keel_tests::{Cluster, ClusterOptions};

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The value of `key` read (linearizably) on member `index`.
async fn read_on(
    cluster: &Cluster,
    index: usize,
    key: &str,
) -> Result<Option<Vec<u8>>, keel_client::ClientError> {
    let response = cluster
        .member_client(index)
        .expect("client")
        .range(get(key))
        .await?;
    Ok(response.kvs.first().map(|kv| kv.value.clone()))
}

async fn value_on(cluster: &Cluster, index: usize, key: &str) -> Option<Vec<u8>> {
    read_on(cluster, index, key).await.expect("range")
}

/// Mutual peer TLS with the test CA, every member presenting `member`.
fn mutual_peer_tls(certificates: &TestCertificates, size: usize) -> ClusterOptions {
    ClusterOptions {
        peer_tls: true,
        extra_args: [
            TestCertificates::peer_identity_flags(&certificates.server),
            certificates.peer_trust_flags(),
        ]
        .concat(),
        ..ClusterOptions::keel(size)
    }
}

/// What a member holding `member`'s certificate and trusting the test CA
/// dials peers with.
fn peer_tls_config(certificates: &TestCertificates, member: &CertificateFiles) -> PeerTlsConfig {
    PeerTlsConfig {
        cert_file: member.cert.clone(),
        key_file: member.key.clone(),
        trusted_ca_file: Some(certificates.ca.clone()),
        client_cert_auth: true,
        crl_file: None,
        allowed_cn: None,
        verify_peer_servers: true,
        serve_on_listeners: false,
    }
}

/// Asks the peer at `url` for the cluster's members (the call a joining
/// member makes), for at most a second.
async fn ask_peer(url: &str, tls: Option<PeerTlsConfig>) -> Result<usize, String> {
    keel_node::join::ask_cluster_members(&[url.to_string()], tls, Duration::from_secs(1))
        .await
        .map(|answer| answer.members.len())
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_peer_tls_cluster_replicates_and_a_restarted_member_rejoins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = TestCertificates::generate(dir.path()).expect("certificates");
    let mut cluster = Cluster::start(mutual_peer_tls(&certificates, 3))
        .await
        .expect("a mutual peer TLS cluster elects a leader");
    assert!(cluster.peer_url(0).starts_with("https://"));
    cluster
        .client()
        .expect("client")
        .put(put("k", "v1"))
        .await
        .expect("put");
    for index in 0..3 {
        assert_eq!(
            value_on(&cluster, index, "k").await.as_deref(),
            Some(&b"v1"[..]),
            "member {index}"
        );
    }
    // The peer port speaks TLS only: plaintext is refused, the CA's member
    // certificate is answered.
    let plain = format!("http://127.0.0.1:{}", cluster.peer_port(0));
    let refused = ask_peer(&plain, None).await;
    assert!(
        refused.is_err(),
        "a plaintext peer request was answered: {refused:?}"
    );
    let answered = ask_peer(
        &cluster.peer_url(0),
        Some(peer_tls_config(&certificates, &certificates.server)),
    )
    .await;
    assert_eq!(answered, Ok(3));

    cluster.stop(2).await.expect("stop");
    cluster
        .client()
        .expect("client")
        .put(put("k", "v2"))
        .await
        .expect("put with a member down");
    cluster.restart(2).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("leader");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), read_on(&cluster, 2, "k")).await;
        if let Ok(Ok(Some(value))) = read {
            if value == b"v2" {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted member never caught up:\n{}",
            cluster.log_tail(2, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_an_https_peer_url_joins_over_mutual_tls_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = TestCertificates::generate(dir.path()).expect("certificates");
    let mut cluster = Cluster::start(mutual_peer_tls(&certificates, 3))
        .await
        .expect("a mutual peer TLS cluster elects a leader");
    let client = cluster.client().expect("client");
    client.put(put("k", "before the add")).await.expect("put");
    // etcd's check before an add counts the members that published their
    // attributes; the followers publish theirs a moment after the start.
    wait_for_published_members(&client, 3).await;
    let joining = cluster.prepare_member("m4").expect("ports for m4");
    let peer_url = cluster.peer_url(joining);
    assert!(peer_url.starts_with("https://"), "{peer_url}");
    let added = client
        .member_add(vec![peer_url], false)
        .await
        .expect("member add");
    let initial_cluster = keel_client::launch::initial_cluster_after_add(&added, "m4");
    cluster
        .start_joining(joining, &initial_cluster)
        .expect("m4 starts");
    client.put(put("k", "after the add")).await.expect("put");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), read_on(&cluster, joining, "k")).await;
        if let Ok(Ok(Some(value))) = read {
            if value == b"after the add" {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the added member never served over peer TLS:\n{}",
            cluster.log_tail(joining, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts 3 members with `common_flags`, the first two presenting the CA's
/// member certificate and the third `outsider`; the first two elect a
/// leader and serve, the outsider gets nothing, and the first member's log
/// shows why (`refusal`).
async fn outsider_is_refused(
    certificates: &TestCertificates,
    common_flags: Vec<String>,
    outsider: &CertificateFiles,
    refusal: &str,
) {
    let member = TestCertificates::peer_identity_flags(&certificates.server);
    let options = ClusterOptions {
        peer_tls: true,
        extra_args: common_flags,
        member_args: vec![
            member.clone(),
            member,
            TestCertificates::peer_identity_flags(outsider),
        ],
        ..ClusterOptions::keel(3)
    };
    let mut cluster = Cluster::spawn(options).expect("spawn");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("the two members that trust each other elect a leader");
    assert_ne!(leader, 2, "the outsider cannot lead");
    cluster
        .client()
        .expect("client")
        .put(put("k", "v"))
        .await
        .expect("put");
    assert_eq!(value_on(&cluster, 1, "k").await.as_deref(), Some(&b"v"[..]));
    // The outsider never hears from the others: a read there finds no leader.
    let outsider = Client::connect_lazy(
        ClientConfig::new(vec![cluster.endpoint(2)])
            .with_request_timeout(Duration::from_secs(3))
            .with_tls(cluster.client_tls()),
    )
    .expect("client");
    let read = outsider.range(get("k")).await;
    assert!(
        read.is_err(),
        "the outsider answered a linearizable read: {read:?}"
    );
    assert!(
        cluster
            .wait_for_log_line(0, refusal, Duration::from_secs(10))
            .await
            .is_some(),
        "member 1's log lacks {refusal:?}:\n{}",
        cluster.log_tail(0, 40)
    );
    assert!(cluster.exited_member().is_none(), "a member exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_peer_certificate_comes_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = TestCertificates::generate(dir.path()).expect("certificates");
    // The outsider trusts the cluster's CA but presents another CA's
    // certificate.
    outsider_is_refused(
        &certificates,
        certificates.peer_trust_flags(),
        &certificates.foreign_server,
        "rejected peer connection: TLS handshake failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cert_allowed_cn_refuses_a_certificate_with_another_common_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certificates = TestCertificates::generate(dir.path()).expect("certificates");
    let mut common = certificates.peer_trust_flags();
    common.push("--peer-cert-allowed-cn=keel member".to_string());
    outsider_is_refused(
        &certificates,
        common,
        &certificates.other_cn_member,
        r#"CommonName authentication failed: the peer's certificate has CN "another member", not the allowed "keel member""#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_auto_tls_cluster_replicates() {
    let options = ClusterOptions {
        peer_tls: true,
        extra_args: vec!["--peer-auto-tls".to_string()],
        ..ClusterOptions::keel(3)
    };
    let cluster = Cluster::start(options)
        .await
        .expect("an auto TLS cluster elects a leader");
    cluster
        .client()
        .expect("client")
        .put(put("auto", "tls"))
        .await
        .expect("put");
    for index in 0..3 {
        assert_eq!(
            value_on(&cluster, index, "auto").await.as_deref(),
            Some(&b"tls"[..])
        );
        assert!(cluster.data_dir(index).join("fixtures/peer/cert.pem").is_file());
    }
    let plain = format!("http://127.0.0.1:{}", cluster.peer_port(1));
    assert!(
        ask_peer(&plain, None).await.is_err(),
        "plaintext answered on an auto TLS peer port"
    );
}

/// Starts one member with `flags` and returns its log once it exited
/// (failing if it serves instead).
async fn refused_start(peer_tls: bool, flags: Vec<String>) -> String {
    let options = ClusterOptions {
        peer_tls,
        extra_args: flags,
        ..ClusterOptions::keel(1)
    };
    let mut cluster = Cluster::spawn(options).expect("spawn");
    let status = cluster
        .wait_for_exit(0, Duration::from_secs(60))
        .await
        .expect("the member exits instead of serving");
    assert!(!status.success());
    std::fs::read_to_string(cluster.log_path(0)).expect("log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_tls_misconfiguration_refuses_the_start() {
    let log = refused_start(true, Vec::new()).await;
    assert!(
        log.contains("is https:// but no peer TLS is configured: give --peer-cert-file and --peer-key-file, or --peer-auto-tls"),
        "{log}"
    );
    let log = refused_start(
        true,
        vec![
            "--peer-cert-file=/nonexistent/peer.pem".to_string(),
            "--peer-key-file=/nonexistent/peer-key.pem".to_string(),
        ],
    )
    .await;
    assert!(log.contains("the peer TLS files"), "{log}");
    assert!(log.contains("/nonexistent/peer.pem"), "{log}");
    let log = refused_start(false, vec!["--peer-cert-file=/etc/peer.pem".to_string()]).await;
    assert!(
        log.contains("--peer-cert-file and --peer-key-file must both be given"),
        "{log}"
    );
}
