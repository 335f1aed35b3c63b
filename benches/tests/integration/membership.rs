//! The membership scenario's steps against a 3-member etcd and keel: the
//! added member serves the last-written key from its own state, and the
//! snapshot streamed to a file is non-empty. Nothing here asserts a speed.

use keel_api::etcdserverpb::PutRequest;
use keel_bench::compare::cluster::BenchCluster;
use keel_bench::compare::membership::{add_member, save_snapshot, LAST_KEY};
use keel_client::{Client, ClientConfig};
use keel_tests::Flavor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_member_serves_and_snapshot_is_saved() {
    if keel_tests::which("etcd").is_none() {
        eprintln!("skipped: etcd is not on $PATH");
        return;
    }
    let root = tempfile::tempdir().expect("temporary dir");
    for flavor in [Flavor::Etcd, Flavor::Keel] {
        let mut cluster = BenchCluster::start(flavor, 3, root.path())
            .await
            .expect("cluster");
        let client = Client::connect(ClientConfig::new(cluster.endpoints()))
            .await
            .expect("client");
        client
            .put(PutRequest {
                key: LAST_KEY.to_vec(),
                value: b"last".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
        add_member(&mut cluster).await.expect("the added member serves");
        let file = root.path().join(format!("{flavor:?}.db"));
        let (_, bytes) = save_snapshot(&cluster.endpoints()[0], &file)
            .await
            .expect("snapshot");
        assert!(bytes > 0);
        assert_eq!(std::fs::metadata(&file).expect("snapshot file").len(), bytes);
    }
}
