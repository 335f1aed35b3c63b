//! keelctl on bad input: unknown flags, a missing or empty key, malformed
//! txns, an unreachable cluster. Each gets a clear `Error: ...` on stderr
//! and a non-zero exit (etcdctl's codes), and an unreachable cluster fails
//! within the dial timeout naming the endpoints tried. Also keelctl's own
//! additions: `get -w table` and `--help`.

use crate::keelctl_support;

use std::time::{Duration, Instant};

use keel_tests::{free_port, Cluster, ClusterOptions};
use keelctl_support::{args, keelctl_path, run, run_with_variables, Ran};

async fn keelctl(list: &[&str], stdin: &str) -> Ran {
    run(&keelctl_path(), &args(list), stdin.as_bytes()).await
}

fn assert_error(ran: &Ran, code: i32, needle: &str) {
    let stderr = ran.stderr_text();
    assert_eq!(ran.code, code, "exit code; stderr: {stderr}");
    assert!(
        stderr.starts_with("Error: ") && stderr.contains(needle),
        "stderr {stderr:?} should name {needle:?}"
    );
    assert!(
        ran.stdout.is_empty(),
        "nothing on stdout: {:?}",
        ran.stdout_text()
    );
}

#[tokio::test]
async fn usage_errors_need_no_cluster() {
    let nowhere = format!("--endpoints=127.0.0.1:{}", free_port().expect("port"));
    assert_error(
        &keelctl(&[&nowhere, "get", "k", "--bogus"], "").await,
        1,
        "unknown flag: --bogus",
    );
    assert_error(
        &keelctl(&["--nope", "get", "k"], "").await,
        1,
        "unknown flag: --nope",
    );
    // Regression: a non-ASCII short flag once panicked slicing its first byte.
    assert_error(
        &keelctl(&[&nowhere, "get", "k", "-\u{e9}x"], "").await,
        1,
        "unknown shorthand flag: '\u{e9}' in -\u{e9}x",
    );
    assert_error(
        &keelctl(&[&nowhere, "get", "k", "-zq"], "").await,
        1,
        "unknown shorthand flag: 'z' in -zq",
    );
    assert_error(
        &keelctl(&["frobnicate"], "").await,
        1,
        "unknown command \"frobnicate\"",
    );
    assert_error(
        &keelctl(&[&nowhere, "get"], "").await,
        128,
        "get command needs one argument",
    );
    assert_error(
        &keelctl(&[&nowhere, "put"], "").await,
        128,
        "put command needs 1 argument",
    );
    assert_error(
        &keelctl(&[&nowhere, "put", "k"], "").await,
        128,
        "input from stdin",
    );
    assert_error(
        &keelctl(&[&nowhere, "del"], "").await,
        128,
        "del command needs one argument",
    );
    assert_error(
        &keelctl(&[&nowhere, "get", "k", "--limit", "x"], "").await,
        1,
        "x",
    );
    assert_error(
        &keelctl(&[&nowhere, "-w", "yaml", "get", "k"], "").await,
        4,
        "unsupported output format",
    );
    assert_error(
        &keelctl(&[&nowhere, "--dial-timeout", "5", "get", "k"], "").await,
        1,
        "missing unit",
    );
    for (txn, needle) in [
        ("bad\n\n\n\n", "malformed comparison: bad"),
        ("mod(\"k\") >> \"1\"\n\n\n\n", "unknown result op >>"),
        ("mod(\"k\") > \"one\"\n\n\n\n", "invalid txn compare request"),
        ("\nfrob k v\n\n\n", "invalid txn request: frob k v"),
        ("\nput \"unterminated\n\n\n", "invalid txn request"),
        ("mod(\"k\") > \"0\"\n\nput k v\n", "EOF"),
    ] {
        assert_error(&keelctl(&[&nowhere, "txn"], txn).await, 3, needle);
    }
}

#[tokio::test]
async fn an_unreachable_cluster_fails_within_the_dial_timeout_naming_the_endpoints() {
    // A listener that never answers (accepts nothing) and a closed port.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = silent.local_addr().expect("addr").to_string();
    let closed = format!("127.0.0.1:{}", free_port().expect("port"));
    let started = Instant::now();
    let endpoints = format!("--endpoints={closed},{silent}");
    let ran = keelctl(&[&endpoints, "--dial-timeout=1s", "get", "k"], "").await;
    let took = started.elapsed();
    assert_error(&ran, 1, &closed);
    assert!(ran.stderr_text().contains(&silent), "{}", ran.stderr_text());
    assert!(
        took < Duration::from_secs(4),
        "failed after {took:?}, dial timeout is 1s"
    );
}

/// `keelctl FLAGS --dial-timeout=200ms get k` with `variables` set.
async fn get_with_variables(variables: &[(&str, &str)], flags: &[&str]) -> Ran {
    let mut list = flags.to_vec();
    list.extend(["--dial-timeout=200ms", "get", "k"]);
    run_with_variables(&keelctl_path(), &args(&list), b"", variables).await
}

#[tokio::test]
async fn keelctl_variables_win_over_etcdctl_ones_and_flags_over_both() {
    let closed = || format!("127.0.0.1:{}", free_port().expect("port"));
    let (keel, etcd, flag) = (closed(), closed(), closed());
    let etcd_only = [("ETCDCTL_ENDPOINTS", etcd.as_str())];
    let ran = get_with_variables(&etcd_only, &[]).await;
    assert_error(&ran, 1, &format!("(tried {etcd})"));
    let both = [
        ("ETCDCTL_ENDPOINTS", etcd.as_str()),
        ("KEELCTL_ENDPOINTS", keel.as_str()),
    ];
    let ran = get_with_variables(&both, &[]).await;
    assert_error(&ran, 1, &format!("(tried {keel})"));
    let ran = get_with_variables(&both, &[&format!("--endpoints={flag}")]).await;
    assert_error(&ran, 1, &format!("(tried {flag})"));
    // An empty variable sets nothing, and an empty KEELCTL_ one hides ETCDCTL_'s.
    let hidden = [("ETCDCTL_ENDPOINTS", etcd.as_str()), ("KEELCTL_ENDPOINTS", "")];
    let ran = get_with_variables(&hidden, &[]).await;
    assert!(!ran.stderr_text().contains(&etcd), "{}", ran.stderr_text());
    // Every global flag reads them, through the flag's own checks.
    let yaml = [
        ("ETCDCTL_WRITE_OUT", "yaml"),
        ("ETCDCTL_ENDPOINTS", etcd.as_str()),
    ];
    assert_error(
        &get_with_variables(&yaml, &[]).await,
        4,
        "unsupported output format",
    );
    let maybe = [("ETCDCTL_HEX", "maybe"), ("ETCDCTL_ENDPOINTS", etcd.as_str())];
    let ran = get_with_variables(&maybe, &[]).await;
    assert_error(&ran, 1, "strconv.ParseBool: parsing \"maybe\": invalid syntax");
}

#[tokio::test]
async fn endpoint_status_and_health_of_unreachable_endpoints_report_each_endpoint_as_etcdctl_does() {
    let closed = format!("127.0.0.1:{}", free_port().expect("port"));
    let endpoints = format!("--endpoints={closed}");
    let status = keelctl(&[&endpoints, "--dial-timeout=1s", "endpoint", "status"], "").await;
    assert_eq!(status.code, 1, "{}", status.stderr_text());
    assert!(status.stdout.is_empty(), "{}", status.stdout_text());
    assert!(
        status.stderr_text().starts_with(&format!(
            "Failed to get the status of endpoint {closed} (context deadline exceeded"
        )),
        "etcdctl's per-endpoint line, no 'Error:': {}",
        status.stderr_text()
    );

    let health = keelctl(
        &[
            &endpoints,
            "--dial-timeout=1s",
            "endpoint",
            "health",
            "-w",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(health.code, 1, "{}", health.stderr_text());
    let answer: serde_json::Value = serde_json::from_slice(&health.stdout).expect("health JSON");
    let first = &answer[0];
    assert_eq!(first["endpoint"], closed.as_str());
    assert_eq!(first["health"], false);
    let took = first["took"].as_str().unwrap_or_default();
    assert!(
        took.ends_with('s') && took.len() > 1,
        "took is a Go duration: {took:?}"
    );
    assert!(health.stderr_text().contains("Error: unhealthy cluster"));
}

#[tokio::test]
async fn server_errors_and_keelctl_additions_against_keel() {
    let cluster = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    let endpoints = format!("--endpoints={}", cluster.endpoint(0));
    assert_error(
        &keelctl(&[&endpoints, "put", "", "v"], "").await,
        1,
        "etcdserver: key is not provided",
    );
    assert_error(
        &keelctl(&[&endpoints, "get", "k", "--rev", "99999"], "").await,
        1,
        "required revision is a future revision",
    );
    assert_eq!(keelctl(&[&endpoints, "put", "a/1", "one"], "").await.code, 0);
    assert_eq!(keelctl(&[&endpoints, "put", "a/2", "two"], "").await.code, 0);
    let table = keelctl(&[&endpoints, "get", "a", "--prefix", "-w", "table"], "").await;
    assert_eq!(table.code, 0, "{}", table.stderr_text());
    let text = table.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "| KEY | VALUE | REVISION |", "{text}");
    assert!(lines[3].starts_with("| a/1 |   one |"), "{text}");
    assert!(lines[4].starts_with("| a/2 |   two |"), "{text}");

    // A failover: the first endpoint is down, the second answers.
    let dead = format!("127.0.0.1:{}", free_port().expect("port"));
    let both = format!("--endpoints={dead},{}", cluster.endpoint(0));
    let ran = keelctl(&[&both, "get", "a/1", "--print-value-only"], "").await;
    assert_eq!(
        (ran.code, ran.stdout_text()),
        (0, "one\n".to_string()),
        "{}",
        ran.stderr_text()
    );

    let help = keelctl(&["--help"], "").await;
    assert_eq!(help.code, 0);
    let help = help.stdout_text();
    for command in ["put", "get", "del", "txn", "compaction", "member", "endpoint"] {
        assert!(
            help.contains(&format!("\n  {command} ")) && help.contains(&format!("keelctl {command}")),
            "--help lists {command} with an example:\n{help}"
        );
    }
}
