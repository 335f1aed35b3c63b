//! What a member serves besides KV: the standard `grpc.health.v1.Health`
//! service reports SERVING. (Every etcd RPC keel declares is served since
//! `Defragment`, the last one that answered UNIMPLEMENTED, is; it is tested
//! in `maintenance.rs`.)

use keel_tests::{Cluster, ClusterOptions};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn channel(cluster: &Cluster) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.endpoint(0)))
        .expect("endpoint url")
        .connect()
        .await
        .expect("connects to the member")
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_for_kv() {
    let cluster = Cluster::start(ClusterOptions::keel(1)).await.expect("cluster");
    let mut health = HealthClient::new(channel(&cluster).await);
    for service in ["", "etcdserverpb.KV"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?}: {status}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_string(),
        })
        .await
        .expect_err("an unknown service has no health status");
    assert_eq!(unknown.code(), Code::NotFound);
}
