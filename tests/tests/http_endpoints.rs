//! etcd's HTTP endpoints on the client port: `/health` and `/version` as
//! etcd 3.4 answers them, and etcd 3.5's `/livez` and `/readyz`; a member
//! that lost its quorum reports itself unhealthy and not ready, yet live.

use std::time::Duration;

use keel_tests::{Cluster, ClusterOptions};
use serde_json::Value;

async fn get(endpoint: &str, path: &str) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{endpoint}{path}"))
        .output()
        .await
        .expect("curl runs (Debian's curl package)");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
    (status.trim().parse().expect("an HTTP status"), body.to_string())
}

#[tokio::test]
async fn health_and_version_answer_as_etcds_do() {
    let mut etcd = Cluster::start(ClusterOptions::etcd(1))
        .await
        .expect("etcd starts");
    let mut keel = Cluster::start(ClusterOptions::keel(1))
        .await
        .expect("keel starts");
    etcd.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("etcd leader");
    keel.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("keel leader");
    for path in ["/health", "/health?serializable=true"] {
        assert_eq!(
            get(&keel.endpoint(0), path).await,
            get(&etcd.endpoint(0), path).await,
            "{path}"
        );
    }
    let (keel_status, keel_version) = get(&keel.endpoint(0), "/version").await;
    let (etcd_status, etcd_version) = get(&etcd.endpoint(0), "/version").await;
    assert_eq!((keel_status, etcd_status), (200, 200));
    let fields = |body: &str| -> Vec<String> {
        let json: Value = serde_json::from_str(body).expect("JSON");
        json.as_object().expect("an object").keys().cloned().collect()
    };
    assert_eq!(fields(&keel_version), fields(&etcd_version));
    for path in ["/livez", "/readyz"] {
        assert_eq!(
            get(&keel.endpoint(0), path).await,
            (200, "ok\n".to_string()),
            "{path}"
        );
    }
    let (status, verbose) = get(&keel.endpoint(0), "/readyz?verbose").await;
    assert_eq!(status, 200);
    assert!(verbose.contains("[+]linearizable_read ok\n"), "{verbose}");
}

#[tokio::test]
async fn a_member_without_a_quorum_is_unhealthy_and_not_ready_but_live() {
    let mut keel = Cluster::start(ClusterOptions::keel(3))
        .await
        .expect("keel starts");
    keel.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let survivor = keel.endpoint(0);
    assert_eq!(
        get(&survivor, "/health").await,
        (200, r#"{"health":"true"}"#.to_string())
    );
    keel.kill(1).expect("kill");
    keel.kill(2).expect("kill");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let health = get(&survivor, "/health").await;
        if health == (503, r#"{"health":"false"}"#.to_string()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {health:?} without a quorum"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = get(&survivor, "/readyz?verbose").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    assert_eq!(get(&survivor, "/livez").await, (200, "ok\n".to_string()));
}
