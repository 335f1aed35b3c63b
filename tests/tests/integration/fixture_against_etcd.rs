//! The fixtures and the client against the real etcd: proves that the
//! `Cluster` interface and keel's client speak etcd's API, independently of
//! keel's server.

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::{Cluster, ClusterOptions};

#[tokio::test]
async fn client_writes_and_reads_through_every_member_of_a_real_etcd_cluster() {
    let mut cluster = Cluster::start(ClusterOptions::etcd(3))
        .await
        .expect("etcd cluster starts");
    let leader = cluster
        .wait_for_leader(std::time::Duration::from_secs(10))
        .await
        .expect("leader");
    for index in 0..3 {
        let client = cluster.member_client(index).expect("client");
        let key = format!("k{index}").into_bytes();
        client
            .put(PutRequest {
                key: key.clone(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .expect("put");
        for reader in 0..3 {
            let response = cluster
                .member_client(reader)
                .expect("client")
                .range(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .expect("range");
            assert_eq!(
                response.kvs.len(),
                1,
                "member {reader} sees the write through member {index}"
            );
        }
    }
    assert!(cluster.pid(leader).is_some());
}
