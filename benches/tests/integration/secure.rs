//! The secure scenario's clusters against a 1-member keel: with auth, the
//! load clients that authenticate as the bench user (`--user`) put and read
//! with no error, while the same load without `--user` is refused; with TLS,
//! the load clients verify the member against the CA (`--cacert`) and get no
//! error. Nothing here asserts a speed.

use keel_bench::compare::cluster::{BenchCluster, Security};
use keel_bench::load::{LoadSpec, Mode};
use keel_tests::Flavor;

/// Runs `keel-bench` with `spec` as `mode` and returns its one JSON report.
async fn run_bench(spec: &LoadSpec, mode: Mode) -> serde_json::Value {
    let command = spec.command_line(mode);
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args(&args)
        .output()
        .await
        .expect("running keel-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line from {command}:\n{stdout}"));
    serde_json::from_str(line).expect("the JSON line parses")
}

fn short_spec(cluster: &BenchCluster) -> LoadSpec {
    let mut spec = cluster.spec();
    spec.clients = 4;
    spec.conns = 2;
    spec.duration = Some(std::time::Duration::from_secs(1));
    spec.key_space = 100;
    spec
}

fn assert_clean(report: &serde_json::Value) {
    assert!(report["ops"].as_u64().expect("ops") > 0, "nothing done: {report}");
    assert_eq!(report["errors"], 0, "requests failed: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_load_clients_get_no_errors_and_anonymous_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = BenchCluster::start_secured(Flavor::Keel, 1, dir.path(), Security::Auth)
        .await
        .expect("keel with auth starts");
    let spec = short_spec(&cluster);
    assert!(spec.user.is_some(), "the auth cluster's spec names its user");
    assert_clean(&run_bench(&spec, Mode::Put).await);
    let preloaded = LoadSpec {
        preload: true,
        ..spec.clone()
    };
    let report = run_bench(&preloaded, Mode::Range).await;
    assert_clean(&report);
    assert_eq!(report["preloaded"], 100, "{report}");

    let anonymous = LoadSpec { user: None, ..spec };
    let refused = run_bench(&anonymous, Mode::Put).await;
    assert_eq!(refused["ops"], 0, "puts without a token succeeded: {refused}");
    assert!(refused["errors"].as_u64().expect("errors") > 0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_clients_verify_a_tls_member_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = BenchCluster::start_secured(Flavor::Keel, 1, dir.path(), Security::Tls)
        .await
        .expect("keel with TLS starts");
    assert!(cluster.endpoints()[0].starts_with("https://"));
    let spec = short_spec(&cluster);
    assert!(spec.cacert.is_some(), "the TLS cluster's spec names its CA");
    assert_clean(&run_bench(&spec, Mode::Put).await);
    assert_clean(&run_bench(&spec, Mode::Range).await);
}
