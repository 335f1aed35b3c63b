//! TLS on keel's client port, as etcd 3.4 serves it, checked with the real
//! etcdctl 3.4, keelctl, curl and keel's own client against single `keel`
//! members whose certificates rcgen makes at test time: server-only TLS
//! (gRPC, the JSON gateway, /health and /metrics on the one port; plaintext
//! and an untrusted server refused), mutual TLS (a client certificate from
//! the trusted CA required; none, another CA's, a revoked and an expired
//! one refused, and the member keeps serving), certificates read again for
//! each new connection (one rotated to an expired certificate refused by
//! the clients), `--auto-tls` with `--cipher-suites`, and starts refused for
//! an `https://` URL without a certificate or an unknown cipher suite. Where etcdctl and keelctl print the same thing, their
//! outputs are compared.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_api::v3lockpb::lock_client::LockClient;
use keel_api::v3lockpb::LockRequest;
use keel_client::TlsOptions;
use keel_tests::tls::TestCertificates;
use keel_tests::{built_binary, curl, which, ClientPortTls, Cluster, ClusterOptions};

/// What a command line client printed, and its exit code.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Short timeouts: the refused cases wait for them.
const CTL_TIMEOUTS: [&str; 2] = ["--dial-timeout=1s", "--command-timeout=3s"];

async fn run(program: &Path, endpoint: &str, args: &[String]) -> Ran {
    let child = tokio::process::Command::new(program)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(CTL_TIMEOUTS)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish", program.display()))
        .expect("runs");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn etcdctl() -> PathBuf {
    which("etcdctl").expect("etcdctl 3.4 on PATH")
}

fn keelctl() -> PathBuf {
    built_binary("keelctl").expect("keelctl is built")
}

/// The same command through etcdctl and keelctl.
async fn both(endpoint: &str, args: &[String]) -> (Ran, Ran) {
    (
        run(&etcdctl(), endpoint, args).await,
        run(&keelctl(), endpoint, args).await,
    )
}

fn with(flags: &[String], command: &[&str]) -> Vec<String> {
    flags
        .iter()
        .cloned()
        .chain(command.iter().map(|arg| arg.to_string()))
        .collect()
}

fn cacert(path: &Path) -> String {
    format!("--cacert={}", path.display())
}

/// Both clients failed to reach the member, as etcdctl reports it.
fn assert_both_unreachable(etcdctl: &Ran, keelctl: &Ran, case: &str) {
    assert_eq!(
        (etcdctl.code, keelctl.code),
        (1, 1),
        "{case}: {etcdctl:?} {keelctl:?}"
    );
    for ran in [etcdctl, keelctl] {
        assert!(
            ran.stderr.contains("Error: context deadline exceeded"),
            "{case}: {ran:?}"
        );
        assert!(ran.stdout.is_empty(), "{case}: {ran:?}");
    }
}

fn tls_cluster(member_flags: Vec<String>, client: TlsOptions) -> ClusterOptions {
    ClusterOptions {
        client_tls: Some(ClientPortTls { member_flags, client }),
        ..ClusterOptions::keel(1)
    }
}

fn trusting(ca: &Path) -> TlsOptions {
    TlsOptions {
        trusted_ca_file: Some(ca.to_path_buf()),
        ..TlsOptions::default()
    }
}

#[tokio::test]
async fn a_tls_client_port_serves_every_client_and_refuses_plaintext_and_untrusted_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::generate(dir.path()).expect("certificates");
    let cluster = Cluster::start(tls_cluster(certs.member_flags(false), trusting(&certs.ca)))
        .await
        .expect("keel serves TLS");
    let endpoint = cluster.endpoint(0);
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let trusted = [cacert(&certs.ca)];

    // keel's own client (the fixture's) over TLS.
    let client = cluster.client().expect("client");
    client
        .put(PutRequest {
            key: b"from-client".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put over TLS");
    let read = client
        .range(RangeRequest {
            key: b"from-client".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range over TLS");
    assert_eq!(read.kvs[0].value, b"1");

    let put = run(&etcdctl(), &endpoint, &with(&trusted, &["put", "k", "v"])).await;
    assert_eq!((put.code, put.stdout.as_str()), (0, "OK\n"), "{put:?}");
    let (etcd_get, keel_get) = both(&endpoint, &with(&trusted, &["get", "k"])).await;
    assert_eq!(etcd_get.stdout, "k\nv\n", "{etcd_get:?}");
    assert_eq!(keel_get.stdout, etcd_get.stdout, "{keel_get:?}");
    // A bare host:port endpoint is dialled over TLS once --cacert is given.
    let bare = endpoint.trim_start_matches("https://");
    let (etcd_bare, keel_bare) = both(bare, &with(&trusted, &["get", "k"])).await;
    assert_eq!(
        (etcd_bare.code, keel_bare.code),
        (0, 0),
        "{etcd_bare:?} {keel_bare:?}"
    );
    assert_eq!(keel_bare.stdout, etcd_bare.stdout);
    // --insecure-skip-tls-verify trusts any server. etcdctl 3.4 applies it
    // only when its client has a TLS configuration (a file named, or
    // --insecure-transport=false); keelctl on any TLS endpoint.
    let skip = [
        "--insecure-skip-tls-verify".to_string(),
        "--insecure-transport=false".to_string(),
    ];
    let (etcd_skip, keel_skip) = both(&endpoint, &with(&skip, &["get", "k"])).await;
    assert_eq!(
        (etcd_skip.code, keel_skip.code),
        (0, 0),
        "{etcd_skip:?} {keel_skip:?}"
    );
    assert_eq!(keel_skip.stdout, etcd_skip.stdout);
    let keel_skip_alone = run(&keelctl(), &endpoint, &with(&skip[..1], &["get", "k"])).await;
    assert_eq!(
        (keel_skip_alone.code, keel_skip_alone.stdout.as_str()),
        (0, "k\nv\n")
    );
    // The lock service runs through the member's client to its own TLS port.
    let locked = run(
        &etcdctl(),
        &endpoint,
        &with(&trusted, &["lock", "tls-lock", "echo", "held"]),
    )
    .await;
    assert_eq!((locked.code, locked.stdout.as_str()), (0, "held\n"), "{locked:?}");

    // /health, /metrics and the JSON gateway, over HTTP/2 and HTTP/1.1.
    let ca_path = certs.ca.display().to_string();
    for http in ["--http2", "--http1.1"] {
        let health = curl(
            &format!("{endpoint}/health"),
            &["--cacert", &ca_path, http, "--max-time", "10"],
        )
        .await;
        assert_eq!(
            (health.http_status, health.body.as_str()),
            (200, r#"{"health":"true"}"#),
            "{http}"
        );
        let range = curl(
            &format!("{endpoint}/v3/kv/range"),
            &[
                "--cacert",
                &ca_path,
                http,
                "--max-time",
                "10",
                "-X",
                "POST",
                "-d",
                r#"{"key":"aw=="}"#,
            ],
        )
        .await;
        assert_eq!(range.http_status, 200, "{http}: {range:?}");
        assert!(range.body.contains(r#""value":"dg==""#), "{http}: {range:?}");
    }
    let metrics = curl(
        &format!("{endpoint}/metrics"),
        &["--cacert", &ca_path, "--max-time", "10"],
    )
    .await;
    assert!(metrics.body.contains("etcd_server_has_leader 1"), "{metrics:?}");

    // Plaintext against the TLS port fails, for every client.
    let plain_endpoint = endpoint.replace("https://", "http://");
    let (etcd_plain, keel_plain) = both(&plain_endpoint, &["get".to_string(), "k".to_string()]).await;
    assert_both_unreachable(&etcd_plain, &keel_plain, "plaintext");
    let plain_health = curl(&format!("{plain_endpoint}/health"), &["--max-time", "10"]).await;
    assert_ne!(plain_health.http_status, 200, "{plain_health:?}");
    // A server the given CA did not sign is not trusted.
    let (etcd_wrong, keel_wrong) = both(&endpoint, &with(&[cacert(&certs.other_ca)], &["get", "k"])).await;
    assert_both_unreachable(&etcd_wrong, &keel_wrong, "another CA");
    let curl_wrong = curl(
        &format!("{endpoint}/health"),
        &[
            "--cacert",
            &certs.other_ca.display().to_string(),
            "--max-time",
            "10",
        ],
    )
    .await;
    assert_eq!(curl_wrong.http_status, 0, "{curl_wrong:?}");
    // A CA file that is not there: bad arguments, in etcdctl's words.
    let missing = dir.path().join("missing-ca.pem");
    let (etcd_missing, keel_missing) = both(&endpoint, &with(&[cacert(&missing)], &["get", "k"])).await;
    assert_eq!((etcd_missing.code, keel_missing.code), (128, 128));
    assert_eq!(
        keel_missing.stderr.trim(),
        format!("Error: open {}: no such file or directory", missing.display())
    );
    assert_eq!(keel_missing.stderr.trim(), etcd_missing.stderr.trim());
    let health_args = with(&[cacert(&missing)], &["endpoint", "health"]);
    let (etcd_health, keel_health) = both(&endpoint, &health_args).await;
    assert_eq!((etcd_health.code, keel_health.code), (128, 128));
    assert_eq!(keel_health.stderr.trim(), etcd_health.stderr.trim());

    // The refused connections left the member serving.
    let (etcd_after, keel_after) = both(&endpoint, &with(&trusted, &["get", "k"])).await;
    assert_eq!(
        (etcd_after.stdout.as_str(), keel_after.stdout.as_str()),
        ("k\nv\n", "k\nv\n")
    );
}

#[tokio::test]
async fn mutual_tls_takes_only_client_certificates_from_the_trusted_ca_that_are_not_revoked_or_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::generate(dir.path()).expect("certificates");
    let mut flags = certs.member_flags(true);
    flags.push(format!("--client-crl-file={}", certs.crl.display()));
    let cluster = Cluster::start(tls_cluster(flags, certs.client_options()))
        .await
        .expect("keel serves mutual TLS");
    let endpoint = cluster.endpoint(0);
    let good = certs.ctl_flags();

    let put = run(&keelctl(), &endpoint, &with(&good, &["put", "k", "v"])).await;
    assert_eq!((put.code, put.stdout.as_str()), (0, "OK\n"), "{put:?}");
    let (etcd_get, keel_get) = both(&endpoint, &with(&good, &["get", "k", "-w", "json"])).await;
    assert_eq!(etcd_get.code, 0, "{etcd_get:?}");
    let value = |ran: &Ran| -> serde_json::Value {
        let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
        json["kvs"].clone()
    };
    assert_eq!(value(&keel_get), value(&etcd_get));
    // Through the member's client to itself, which presents the member's
    // own certificate.
    let locked = run(
        &etcdctl(),
        &endpoint,
        &with(&good, &["lock", "mtls-lock", "echo", "held"]),
    )
    .await;
    assert_eq!((locked.code, locked.stdout.as_str()), (0, "held\n"), "{locked:?}");

    let presenting = |files: &keel_tests::tls::CertificateFiles| {
        vec![
            cacert(&certs.ca),
            format!("--cert={}", files.cert.display()),
            format!("--key={}", files.key.display()),
        ]
    };
    let cases = [
        ("no client certificate", vec![cacert(&certs.ca)]),
        (
            "another CA's client certificate",
            presenting(&certs.foreign_client),
        ),
        ("a revoked client certificate", presenting(&certs.revoked_client)),
        ("an expired client certificate", presenting(&certs.expired_client)),
    ];
    for (case, flags) in &cases {
        let (etcd_refused, keel_refused) = both(&endpoint, &with(flags, &["get", "k"])).await;
        assert_both_unreachable(&etcd_refused, &keel_refused, case);
    }
    let ca_path = certs.ca.display().to_string();
    let without_certificate = curl(
        &format!("{endpoint}/health"),
        &["--cacert", &ca_path, "--max-time", "10"],
    )
    .await;
    assert_ne!(without_certificate.http_status, 200, "{without_certificate:?}");
    let health = curl(
        &format!("{endpoint}/health"),
        &[
            "--cacert",
            &ca_path,
            "--cert",
            &certs.client.cert.display().to_string(),
            "--key",
            &certs.client.key.display().to_string(),
            "--max-time",
            "10",
        ],
    )
    .await;
    assert_eq!(
        (health.http_status, health.body.as_str()),
        (200, r#"{"health":"true"}"#)
    );

    // The refused handshakes left the member serving.
    let read = cluster
        .client()
        .expect("client")
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range after refused clients");
    assert_eq!(read.kvs[0].value, b"v");
}

#[tokio::test]
async fn rotated_certificate_files_serve_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::generate(dir.path()).expect("certificates");
    let live_cert = dir.path().join("live.pem");
    let live_key = dir.path().join("live-key.pem");
    std::fs::copy(&certs.server.cert, &live_cert).expect("copy");
    std::fs::copy(&certs.server.key, &live_key).expect("copy");
    let flags = vec![
        format!("--cert-file={}", live_cert.display()),
        format!("--key-file={}", live_key.display()),
    ];
    let cluster = Cluster::start(tls_cluster(flags, trusting(&certs.ca)))
        .await
        .expect("keel serves TLS");
    let endpoint = cluster.endpoint(0);
    let get = |ca: &Path| with(&[cacert(ca)], &["get", "k"]);
    let before = run(&keelctl(), &endpoint, &get(&certs.ca)).await;
    assert_eq!(before.code, 0, "{before:?}");

    // The key first: a handshake between the two writes fails alone.
    std::fs::copy(&certs.foreign_server.key, &live_key).expect("rotate the key");
    std::fs::copy(&certs.foreign_server.cert, &live_cert).expect("rotate the certificate");
    let (etcd_new, keel_new) = both(&endpoint, &get(&certs.other_ca)).await;
    assert_eq!(
        (etcd_new.code, keel_new.code),
        (0, 0),
        "{etcd_new:?} {keel_new:?}"
    );
    let (etcd_old, keel_old) = both(&endpoint, &get(&certs.ca)).await;
    assert_both_unreachable(&etcd_old, &keel_old, "the CA of the replaced certificate");

    // Rotated to a certificate of the trusted CA that has expired: clients
    // refuse the member, which keeps serving once a valid one is back.
    std::fs::copy(&certs.expired_server.key, &live_key).expect("rotate the key");
    std::fs::copy(&certs.expired_server.cert, &live_cert).expect("rotate the certificate");
    let (etcd_expired, keel_expired) = both(&endpoint, &get(&certs.ca)).await;
    assert_both_unreachable(&etcd_expired, &keel_expired, "an expired server certificate");
    std::fs::copy(&certs.server.key, &live_key).expect("rotate the key");
    std::fs::copy(&certs.server.cert, &live_cert).expect("rotate the certificate");
    let after = run(&keelctl(), &endpoint, &get(&certs.ca)).await;
    assert_eq!(after.code, 0, "{after:?}");
}

#[tokio::test]
async fn auto_tls_serves_a_self_signed_certificate_with_only_the_chosen_tls12_suites() {
    let skip_verify = TlsOptions {
        insecure_skip_verify: true,
        ..TlsOptions::default()
    };
    let flags = vec![
        "--auto-tls".to_string(),
        "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string(),
    ];
    let cluster = Cluster::start(tls_cluster(flags, skip_verify))
        .await
        .expect("keel serves auto TLS");
    let endpoint = cluster.endpoint(0);
    let generated = cluster.data_dir(0).join("fixtures/client/cert.pem");
    assert!(generated.is_file(), "{}", generated.display());
    let skip = [
        "--insecure-skip-tls-verify".to_string(),
        "--insecure-transport=false".to_string(),
    ];
    let put = run(&etcdctl(), &endpoint, &with(&skip, &["put", "k", "v"])).await;
    assert_eq!((put.code, put.stdout.as_str()), (0, "OK\n"), "{put:?}");
    let (etcd_get, keel_get) = both(&endpoint, &with(&skip, &["get", "k"])).await;
    assert_eq!(etcd_get.stdout, "k\nv\n", "{etcd_get:?}");
    assert_eq!(keel_get.stdout, etcd_get.stdout, "{keel_get:?}");
    // The generated certificate is no CA's: verifying it fails.
    let verified = run(&keelctl(), &endpoint, &["get".to_string(), "k".to_string()]).await;
    assert_eq!(verified.code, 1, "{verified:?}");

    let over_tls12 = |openssl_suite: &'static str| {
        let url = format!("{endpoint}/health");
        async move {
            curl(
                &url,
                &[
                    "--insecure",
                    "--tls-max",
                    "1.2",
                    "--ciphers",
                    openssl_suite,
                    "--max-time",
                    "10",
                ],
            )
            .await
        }
    };
    let chosen = over_tls12("ECDHE-ECDSA-AES128-GCM-SHA256").await;
    assert_eq!(chosen.http_status, 200, "{chosen:?}");
    let other = over_tls12("ECDHE-ECDSA-AES256-GCM-SHA384").await;
    assert_eq!(other.http_status, 0, "{other:?}");
}

#[tokio::test]
async fn an_https_url_without_a_certificate_and_client_auth_without_a_ca_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::generate(dir.path()).expect("certificates");
    let server_only = certs.member_flags(false);
    let cases = [
        (
            Vec::new(),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://",
        ),
        (
            [server_only.clone(), vec!["--client-cert-auth".to_string()]].concat(),
            "--client-cert-auth needs --trusted-ca-file",
        ),
        (
            vec![server_only[0].clone()],
            "--cert-file and --key-file must both be given",
        ),
        (
            [server_only.clone(), vec!["--cipher-suites=FOO_BAR".to_string()]].concat(),
            r#"unexpected TLS cipher suite "FOO_BAR""#,
        ),
    ];
    for (flags, expected) in cases {
        let mut cluster = Cluster::spawn(tls_cluster(flags.clone(), trusting(&certs.ca))).expect("spawns");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while cluster.exited_member().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{flags:?} was not refused:\n{}",
                cluster.log_tail(0, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(cluster.log_path(0)).expect("the member's log");
        assert!(log.contains(expected), "{flags:?}:\n{log}");
    }
}

/// With `--client-cert-auth` and auth enabled, a request with no token is
/// made by the user its client certificate names (the common name), as in
/// etcd: the test PKI's client certificate is "keel client".
#[tokio::test]
async fn with_client_cert_auth_a_certificates_common_name_is_the_user_when_no_token_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCertificates::generate(dir.path()).expect("certificates");
    let cluster = Cluster::start(tls_cluster(certs.member_flags(true), certs.client_options()))
        .await
        .expect("keel serves mutual TLS");
    let endpoint = cluster.endpoint(0);
    let good = certs.ctl_flags();
    let root = "--user=root:rootpw";
    for command in [
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec!["user", "add", "keel client", "--new-user-password=unused"],
        vec!["role", "add", "reader"],
        vec![
            "role",
            "grant-permission",
            "reader",
            "read",
            "/pub/",
            "--prefix=true",
        ],
        vec![
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "jobs",
            "--prefix=true",
        ],
        vec!["user", "grant-role", "keel client", "reader"],
        vec!["auth", "enable"],
        vec![root, "put", "/pub/a", "1"],
    ] {
        let ran = run(&etcdctl(), &endpoint, &with(&good, &command)).await;
        assert_eq!(ran.code, 0, "{command:?}: {ran:?}");
    }
    let read = run(&etcdctl(), &endpoint, &with(&good, &["get", "/pub/a"])).await;
    assert_eq!((read.code, read.stdout.as_str()), (0, "/pub/a\n1\n"), "{read:?}");
    let write = run(&etcdctl(), &endpoint, &with(&good, &["put", "/pub/a", "2"])).await;
    assert_eq!(write.code, 1, "{write:?}");
    assert!(
        write.stderr.contains("etcdserver: permission denied"),
        "{write:?}"
    );
    // etcdctl's lock runs its recipe client-side, as the certificate's
    // user; the v3lock service must act as that user too (through the
    // member's client to itself, with a token the member makes for it).
    let locked = run(
        &etcdctl(),
        &endpoint,
        &with(&good, &["lock", "jobs", "echo", "held"]),
    )
    .await;
    assert_eq!((locked.code, locked.stdout.as_str()), (0, "held\n"), "{locked:?}");
    let mut lock_service = LockClient::new(cluster.client().expect("client").channel());
    let lock = |name: &str| LockRequest {
        name: name.as_bytes().to_vec(),
        lease: 0,
    };
    let held = lock_service
        .lock(lock("jobs"))
        .await
        .expect("the certificate's user may lock under jobs")
        .into_inner();
    assert!(held.key.starts_with(b"jobs/"), "{:?}", held.key);
    let refused = lock_service
        .lock(lock("other"))
        .await
        .expect_err("nor outside it");
    assert!(refused.message().contains("permission denied"), "{refused:?}");
    // A token still wins over the certificate.
    let as_root = run(&etcdctl(), &endpoint, &with(&good, &[root, "put", "/pub/a", "3"])).await;
    assert_eq!(
        (as_root.code, as_root.stdout.as_str()),
        (0, "OK\n"),
        "{as_root:?}"
    );
}
