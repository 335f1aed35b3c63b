//! Smoke test of the load generator: `keel-bench put` and `keel-bench range`
//! run for about 2 s against a 1-member etcd and a 1-member keel cluster and
//! must print exactly one JSON line reporting requests done and no errors.
//! Nothing here asserts a speed: timing belongs in benchmarks, not tests.

use keel_tests::{Cluster, ClusterOptions};

/// Runs `keel-bench <args>` and returns its one JSON report.
async fn run_bench(args: &[&str]) -> serde_json::Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args(args)
        .output()
        .await
        .expect("running keel-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "keel-bench {args:?} failed ({}):\n{stderr}",
        output.status
    );
    let json_lines: Vec<&str> = stdout.lines().filter(|line| line.starts_with('{')).collect();
    assert_eq!(
        json_lines.len(),
        1,
        "expected one JSON line, stdout was:\n{stdout}"
    );
    serde_json::from_str(json_lines[0]).expect("the JSON line parses")
}

async fn smoke(options: ClusterOptions) {
    let cluster = Cluster::start(options).await.expect("starting the cluster");
    let endpoint = cluster.endpoint(0);
    for mode in ["put", "range"] {
        let mut args = vec![
            mode,
            "--endpoints",
            &endpoint,
            "--clients",
            "4",
            "--conns",
            "2",
            "--duration",
            "2s",
            "--key-space",
            "100",
            "--label",
            "smoke",
        ];
        if mode == "range" {
            args.push("--preload");
        }
        let report = run_bench(&args).await;
        assert_eq!(report["mode"], mode);
        assert_eq!(report["label"], "smoke");
        let ops = report["ops"].as_u64().expect("ops is a number");
        let errors = report["errors"].as_u64().expect("errors is a number");
        assert!(ops > 0, "{mode}: no request succeeded: {report}");
        assert_eq!(errors, 0, "{mode}: requests failed: {report}");
        if mode == "range" {
            assert_eq!(report["preloaded"], 100, "{report}");
        }
        for field in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                report["latency_ms"][field].is_number(),
                "{field} missing: {report}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_drives_etcd() {
    smoke(ClusterOptions::etcd(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_drives_keel() {
    smoke(ClusterOptions::keel(1)).await;
}
