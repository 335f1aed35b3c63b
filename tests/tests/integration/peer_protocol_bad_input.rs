//! Bad input on the peer protocol: a snapshot stream that is empty, cut
//! short of the size its header names, or has an undecodable header is
//! refused with InvalidArgument and leaves no partial file behind; an
//! undecodable Raft message (unary or on the replication stream) is refused
//! with InvalidArgument; the member keeps serving.

use std::time::Duration;

use keel_api::etcdserverpb::PutRequest;
use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{LeaseRenewalsRequest, RaftPayload, SnapshotChunk};
use keel_node::network::SnapshotHeader;
use keel_node::peer_codec::encode_payload;
use keel_raft::type_config::{SnapshotMeta, Vote};
use keel_tests::in_process::InProcessCluster;
use tokio_stream::StreamExt;
use tonic::Code;

fn partial_snapshot_files(cluster: &InProcessCluster) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cluster.data_dir(0).join("snap")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect()
}

async fn send_snapshot_stream(
    cluster: &InProcessCluster,
    chunks: Vec<SnapshotChunk>,
) -> Result<(), tonic::Status> {
    let mut client = PeerClient::connect(cluster.peer_url(0))
        .await
        .expect("connect to the peer port");
    client
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .map(|_| ())
}

fn header_claiming(size: u64) -> Vec<u8> {
    let header = SnapshotHeader {
        vote: Vote::new_committed(1, 1),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
        },
        size,
    };
    encode_payload(&header).expect("encode").data
}

/// A one-member in-process cluster once it leads.
async fn led_member() -> InProcessCluster {
    let cluster = InProcessCluster::start(1, &[]).await.expect("cluster");
    cluster
        .wait_for("a leader", Duration::from_secs(20), |_, metrics| {
            metrics.current_leader.is_some()
        })
        .await
        .expect("leader");
    cluster
}

/// A one-member in-process cluster once it leads, and a client of its peer port.
async fn led_member_and_its_peer_client() -> (InProcessCluster, PeerClient<tonic::transport::Channel>) {
    let cluster = led_member().await;
    let client = PeerClient::connect(cluster.peer_url(0))
        .await
        .expect("connect to the peer port");
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_empty_or_undecodable_snapshot_streams_are_refused_and_leave_no_partial_file() {
    let cluster = led_member().await;

    let empty = send_snapshot_stream(&cluster, Vec::new()).await;
    assert_eq!(
        empty.expect_err("empty stream refused").code(),
        Code::InvalidArgument
    );

    let short = send_snapshot_stream(
        &cluster,
        vec![SnapshotChunk {
            header: header_claiming(1000),
            data: vec![7u8; 10],
        }],
    )
    .await;
    let status = short.expect_err("short stream refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1000"), "{status:?}");

    let garbage = send_snapshot_stream(
        &cluster,
        vec![SnapshotChunk {
            header: vec![0xff; 3],
            data: Vec::new(),
        }],
    )
    .await;
    assert_eq!(
        garbage.expect_err("undecodable header refused").code(),
        Code::InvalidArgument
    );

    assert_eq!(partial_snapshot_files(&cluster), Vec::<String>::new());
    let client = cluster.client(0).expect("client");
    client
        .put(PutRequest {
            key: b"still".to_vec(),
            value: b"serving".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the member still serves writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_raft_messages_are_refused_with_invalid_argument_and_the_member_keeps_serving() {
    let (cluster, mut client) = led_member_and_its_peer_client().await;
    let garbage = || RaftPayload { data: vec![0xff; 5] };

    let unary = client.append_entries(garbage()).await;
    assert_eq!(unary.expect_err("refused").code(), Code::InvalidArgument);
    let vote = client.vote(garbage()).await;
    assert_eq!(vote.expect_err("refused").code(), Code::InvalidArgument);

    // On the replication stream the refusal ends the session's answers.
    let session = client
        .stream_append(tokio_stream::iter(vec![garbage()]))
        .await
        .expect("the session opens");
    let answers: Vec<Result<RaftPayload, tonic::Status>> = session.into_inner().collect().await;
    let refusal = answers
        .into_iter()
        .find_map(Result::err)
        .expect("the undecodable request is refused");
    assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal:?}");

    cluster
        .client(0)
        .expect("client")
        .put(PutRequest {
            key: b"still".to_vec(),
            value: b"serving".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the member still serves writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewal_batch_over_its_limit_is_refused_with_invalid_argument_and_one_within_is_answered() {
    let (_cluster, mut client) = led_member_and_its_peer_client().await;
    let too_many = LeaseRenewalsRequest {
        ids: (1..=1025).collect(),
    };
    let refused = client.lease_renewals(too_many).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let unknown_leases = LeaseRenewalsRequest { ids: vec![5, 6] };
    let answered = client
        .lease_renewals(unknown_leases)
        .await
        .expect("a batch within the limit is answered")
        .into_inner();
    assert_eq!(answered.outcomes.len(), 2, "one outcome per renewal");
}
