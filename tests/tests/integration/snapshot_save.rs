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

async fn keelctl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(keel_tests::built_binary("keelctl").expect("keelctl is built"))
        .args(args)
        .output()
        .await
        .expect("keelctl runs")
}

/// Every key with its revisions, as a cluster answers a range over all keys.
async fn whole_keyspace(cluster: &Cluster, member: usize) -> (i64, Vec<keel_api::mvccpb::KeyValue>) {
    let all = cluster
        .member_client(member)
        .expect("client")
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .expect("range");
    (all.header.expect("header").revision, all.kvs)
}

#[tokio::test]
async fn keelctl_snapshot_restore_into_a_new_three_member_cluster_keeps_every_key_and_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let (revision, keyspace) = {
        let mut old = Cluster::start(ClusterOptions::keel(3)).await.expect("cluster");
        old.wait_for_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        let client = old.client().expect("client");
        for i in 0..60u32 {
            client
                .put(PutRequest {
                    key: format!("k{:02}", i % 40).into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    ..Default::default()
                })
                .await
                .expect("put");
        }
        client
            .delete_range(keel_api::etcdserverpb::DeleteRangeRequest {
                key: b"k05".to_vec(),
                ..Default::default()
            })
            .await
            .expect("delete");
        // A linearizable read on member 0 first: a snapshot is of the
        // member's own applied state (as in etcd), and a follower may not
        // have applied the last writes yet (failed once under load).
        let keyspace = whole_keyspace(&old, 0).await;
        let saved = keelctl(&[
            &format!("--endpoints={}", old.endpoint(0)),
            "snapshot",
            "save",
            &file.to_string_lossy(),
        ])
        .await;
        assert!(
            saved.status.success(),
            "{}",
            String::from_utf8_lossy(&saved.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&saved.stdout),
            format!("Snapshot saved at {}\n", file.display())
        );
        keyspace
    };
    // The old cluster is gone (its data dirs removed); only the file is left.
    let status = keelctl(&["snapshot", "status", &file.to_string_lossy(), "-w", "json"]).await;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(status["revision"], revision);
    assert_eq!(status["totalKey"], keyspace.len());

    let base = dir.path().join("restored");
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| {
            (
                keel_tests::free_port().expect("port"),
                keel_tests::free_port().expect("port"),
            )
        })
        .collect();
    let initial_cluster = (0..3)
        .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, ports[i].1))
        .collect::<Vec<_>>()
        .join(",");
    for (i, (_, peer)) in ports.iter().enumerate() {
        let restored = keelctl(&[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            &format!("--name=m{}", i + 1),
            &format!("--initial-cluster={initial_cluster}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--data-dir={}", base.join(format!("m{}.data", i + 1)).display()),
        ])
        .await;
        assert!(
            restored.status.success(),
            "{}",
            String::from_utf8_lossy(&restored.stderr)
        );
    }
    let mut options = ClusterOptions::keel(3);
    options.base_dir = Some(base);
    options.ports = Some(ports);
    let mut new = Cluster::start(options).await.expect("restored cluster");
    new.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    for member in 0..3 {
        let (new_revision, new_keyspace) = whole_keyspace(&new, member).await;
        assert_eq!(new_revision, revision, "member {member}'s revision");
        assert_eq!(
            new_keyspace, keyspace,
            "member {member}'s keys, values and revisions"
        );
    }
    let next = new
        .client()
        .expect("client")
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"restore".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a write on the restored cluster");
    assert_eq!(next.header.expect("header").revision, revision + 1);
}

#[tokio::test]
async fn a_corrupt_or_truncated_snapshot_file_is_refused_and_restores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(ClusterOptions::keel(1)).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let file = dir.path().join("backup.db");
    etcdctl_snapshot_save(&cluster.endpoint(0), &file).await;
    let good = std::fs::read(&file).expect("file");
    let mut corrupt = good.clone();
    corrupt[20] ^= 0xff;
    let truncated = &good[..good.len() - 100];
    for (what, bytes) in [("corrupt", corrupt.as_slice()), ("truncated", truncated)] {
        let bad = dir.path().join(format!("{what}.db"));
        std::fs::write(&bad, bytes).expect("write");
        let status = keelctl(&["snapshot", "status", &bad.to_string_lossy()]).await;
        assert!(!status.status.success(), "{what} status was accepted");
        assert!(
            String::from_utf8_lossy(&status.stderr).contains("sha256"),
            "{what}"
        );
        let data_dir = dir.path().join(format!("{what}.data"));
        let restore = keelctl(&[
            "snapshot",
            "restore",
            &bad.to_string_lossy(),
            &format!("--data-dir={}", data_dir.display()),
        ])
        .await;
        assert!(!restore.status.success(), "{what} restore was accepted");
        assert!(!data_dir.exists(), "a {what} file left a data dir behind");
    }
}
