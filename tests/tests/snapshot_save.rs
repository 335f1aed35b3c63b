//! `Maintenance.Snapshot`: the real `etcdctl snapshot save` against keel
//! writes a file whose last 32 bytes are the SHA-256 of the rest, and whose
//! content is one consistent cut of the keyspace: taken while a client
//! writes, it holds exactly the writes up to one revision.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::{Cluster, ClusterOptions};
use sha2::{Digest, Sha256};

/// Each written key with the revision its put answered.
type WrittenKeys = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

async fn etcdctl_snapshot_save(endpoint: &str, file: &std::path::Path) {
    let output = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={endpoint}"), "snapshot", "save"])
        .arg(file)
        .output()
        .await
        .expect("etcdctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Snapshot saved at"),
        "etcdctl snapshot save: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dump in a saved file, after checking its SHA-256.
fn checked_content(file: &std::path::Path) -> Vec<u8> {
    let mut saved = std::fs::read(file).expect("the saved file");
    assert!(saved.len() > 32);
    let digest = saved.split_off(saved.len() - 32);
    assert_eq!(
        Sha256::digest(&saved).to_vec(),
        digest,
        "the file ends with the SHA-256 of its content"
    );
    saved
}

#[tokio::test]
async fn etcdctl_snapshot_save_taken_during_writes_holds_exactly_the_writes_up_to_one_revision() {
    let mut cluster = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let client = cluster.client().expect("client");
    // A writer puts keys one after another, recording each one's revision.
    let written: WrittenKeys = Arc::default();
    let writer = {
        let written = written.clone();
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..400u32 {
                let key = format!("key-{i:04}").into_bytes();
                let put = client
                    .put(PutRequest {
                        key: key.clone(),
                        value: vec![b'v'; 100],
                        ..Default::default()
                    })
                    .await
                    .expect("put");
                let revision = put.header.expect("header").revision;
                written.lock().expect("lock").push((key, revision));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keel.snapshot.db");
    etcdctl_snapshot_save(&cluster.endpoint(1), &file).await;
    writer.await.expect("writer");
    let content = checked_content(&file);

    let database = keel_storage::Database::open_temporary().expect("a temporary database");
    let store = keel_mvcc::MvccStore::open(&database).expect("a store");
    store
        .install_snapshot(&mut content.as_slice())
        .expect("the saved content is a keyspace dump");
    let cut = store.current_revision();
    let held = store
        .range(&RangeRequest {
            key: b"key-".to_vec(),
            range_end: b"key.".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .expect("range");
    let held_keys: Vec<Vec<u8>> = held.kvs.into_iter().map(|kv| kv.key).collect();
    let expected: Vec<Vec<u8>> = written
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, revision)| *revision <= cut)
        .map(|(key, _)| key.clone())
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < 400,
        "the snapshot was taken while writes went on ({} of 400 at revision {cut})",
        expected.len()
    );
    assert_eq!(held_keys, expected, "the snapshot is one cut at revision {cut}");
}
