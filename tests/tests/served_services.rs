//! What a member serves besides KV: the standard `grpc.health.v1.Health`
//! service reports SERVING, and every etcd RPC keel declares but does not
//! serve answers UNIMPLEMENTED (never a silent success), while the member
//! keeps serving afterwards.

use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{DefragmentRequest, RangeRequest};
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

fn assert_unimplemented<T: std::fmt::Debug>(rpc: &str, answer: Result<T, tonic::Status>) {
    match answer {
        Ok(reply) => panic!("{rpc} answered {reply:?}; keel does not serve it"),
        Err(status) => assert_eq!(status.code(), Code::Unimplemented, "{rpc}: {status}"),
    }
}

#[tokio::test]
async fn every_declared_but_unserved_etcd_rpc_answers_unimplemented() {
    let cluster = Cluster::start(ClusterOptions::keel(1)).await.expect("cluster");
    let channel = channel(&cluster).await;
    let mut maintenance = MaintenanceClient::new(channel.clone());

    assert_unimplemented("Defragment", maintenance.defragment(DefragmentRequest {}).await);

    // The member still serves after refusing them.
    let client = cluster.client().expect("client");
    let range = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    client.range(range).await.expect("a range still succeeds");
}
