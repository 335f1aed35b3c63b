//! The sending side of pipelined replication sessions (`stream_append`)
//! against a scripted receiver on 127.0.0.1: requests go out without
//! waiting for answers, answers come back in order, a receiver that stops
//! answering fails the session within openraft's soft_ttl (an idle one does
//! not), and a request on a cut link is never sent.

// tonic's service traits return `tonic::Status`, which is large by design.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use keel_api::keelpb::peer_server::{Peer, PeerServer};
use keel_api::keelpb::{
    RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk, WriteRequest, WriteResponse,
};
use keel_node::network::{LinkFaults, PeerMessage, PeerNetwork};
use keel_node::peer_codec::{decode_payload, encode_payload};
use keel_raft::type_config::{CommittedLeaderId, LogId, Vote};
use keel_raft::{MemberNode, TypeConfig};
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tonic::{Request, Response, Status, Streaming};

const SELF_ID: u64 = 1;
const TARGET_ID: u64 = 2;

/// How the scripted receiver answers a session.
#[derive(Clone, Copy)]
enum Script {
    /// Holds every answer until `n` requests arrived, then answers each in
    /// order, naming its prev_log_id.
    AnswerOnceArrived(usize),
    /// Reads requests, answers none.
    Silent,
    /// Answers each request, in order, this long after it arrived (a
    /// receiver slowly storing a large request).
    AnswerAfter(Duration),
}

struct ScriptedReceiver {
    script: Script,
    received: Arc<AtomicUsize>,
}

type Answers = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

fn answer_for(payload: &RaftPayload) -> Result<RaftPayload, Status> {
    let request: AppendEntriesRequest<TypeConfig> =
        decode_payload(payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let answer: Result<StreamAppendResult<TypeConfig>, RaftError<TypeConfig>> = Ok(Ok(request.prev_log_id));
    encode_payload(&answer).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Peer for ScriptedReceiver {
    type StreamAppendStream = Answers;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Answers>, Status> {
        let script = self.script;
        let received = self.received.clone();
        let requests = request
            .into_inner()
            .take_while(|message| std::future::ready(message.is_ok()))
            .filter_map(|message| std::future::ready(message.ok()));
        let counted = requests.inspect(move |_| {
            received.fetch_add(1, Ordering::SeqCst);
        });
        let answers: Answers = match script {
            Script::AnswerOnceArrived(n) => Box::pin(counted.chunks(n).flat_map(|arrived| {
                futures::stream::iter(arrived.iter().map(answer_for).collect::<Vec<_>>())
            })),
            Script::Silent => Box::pin(counted.filter_map(|_| std::future::ready(None))),
            Script::AnswerAfter(delay) => Box::pin(counted.then(move |payload| async move {
                tokio::time::sleep(delay).await;
                answer_for(&payload)
            })),
        };
        Ok(Response::new(answers))
    }

    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn install_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn forward_write(&self, _: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn forward_writes(
        &self,
        _: Request<keel_api::keelpb::ForwardedWrites>,
    ) -> Result<Response<keel_api::keelpb::ForwardedOutcomes>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    type StreamForwardWritesStream =
        Pin<Box<dyn Stream<Item = Result<keel_api::keelpb::ForwardedOutcomes, Status>> + Send + 'static>>;
    async fn stream_forward_writes(
        &self,
        _: Request<Streaming<keel_api::keelpb::ForwardedWrites>>,
    ) -> Result<Response<Self::StreamForwardWritesStream>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn lease_renew(
        &self,
        _: Request<keel_api::etcdserverpb::LeaseKeepAliveRequest>,
    ) -> Result<Response<keel_api::etcdserverpb::LeaseKeepAliveResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn lease_renewals(
        &self,
        _: Request<keel_api::keelpb::LeaseRenewalsRequest>,
    ) -> Result<Response<keel_api::keelpb::LeaseRenewalsResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn lease_time_to_live(
        &self,
        _: Request<keel_api::etcdserverpb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<keel_api::etcdserverpb::LeaseTimeToLiveResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn transfer_leader(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn change_membership(
        &self,
        _: Request<keel_api::keelpb::MembershipChange>,
    ) -> Result<Response<keel_api::keelpb::MembershipChangeOutcome>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
    async fn cluster_members(
        &self,
        _: Request<keel_api::keelpb::ClusterMembersRequest>,
    ) -> Result<Response<keel_api::keelpb::ClusterMembersResponse>, Status> {
        Err(Status::unimplemented("scripted receiver"))
    }
}

/// Serves `script` on a free 127.0.0.1 port; returns the receiver's member
/// record and its count of requests received.
async fn scripted_receiver(script: Script) -> (MemberNode, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let receiver = ScriptedReceiver {
        script,
        received: received.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let node = MemberNode {
        name: "receiver".into(),
        peer_url: format!("http://{address}"),
    };
    (node, received)
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1), index)
}

fn request(index: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, SELF_ID),
        prev_log_id: Some(log_id(index)),
        leader_commit: None,
        entries: Vec::new(),
    }
}

async fn wait_until_received(received: &AtomicUsize, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::SeqCst) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receiver got fewer than {count} requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_go_out_before_earlier_answers_and_answers_come_back_in_order() {
    let (node, received) = scripted_receiver(Script::AnswerOnceArrived(3)).await;
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let (requests, input) = mpsc::unbounded();
    let mut answers = connection
        .stream_append(input, RPCOption::new(Duration::from_secs(2)))
        .await
        .expect("the session opens");
    for index in 1..=3 {
        requests.unbounded_send(request(index)).unwrap();
    }
    // The receiver answers nothing before the third request arrived: a
    // session that waited for each answer would stall here.
    for index in 1..=3 {
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("answered in time")
            .expect("an answer");
        assert_eq!(answer.expect("no transport failure"), Ok(Some(log_id(index))));
    }
    assert_eq!(received.load(Ordering::SeqCst), 3);
    drop(requests);
    let end = tokio::time::timeout(Duration::from_secs(5), answers.next()).await;
    assert!(matches!(end, Ok(None)), "the session ends with its requests");
}

#[tokio::test]
async fn a_receiver_that_stops_answering_fails_the_session_but_an_idle_session_lives() {
    let (node, received) = scripted_receiver(Script::Silent).await;
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let (requests, input) = mpsc::unbounded();
    let option = RPCOption::new(Duration::from_millis(200));
    let soft_ttl = option.soft_ttl();
    let mut answers = connection
        .stream_append(input, option)
        .await
        .expect("the session opens");
    let idle = tokio::time::timeout(4 * soft_ttl, answers.next()).await;
    assert!(
        idle.is_err(),
        "an idle session ended: {:?}",
        idle.map(|a| a.map(|a| a.map(|_| ())))
    );
    requests.unbounded_send(request(1)).unwrap();
    let sent_at = tokio::time::Instant::now();
    let stalled = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("the stall is reported")
        .expect("an item");
    assert!(matches!(stalled, Err(RPCError::Network(_))), "{stalled:?}");
    assert!(sent_at.elapsed() >= soft_ttl, "reported before soft_ttl passed");
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert!(
        answers.next().await.is_none(),
        "the session ends after the failure"
    );
}

#[tokio::test]
async fn a_request_on_a_cut_link_is_not_sent_and_ends_the_session_as_unreachable() {
    let (node, received) = scripted_receiver(Script::AnswerOnceArrived(1)).await;
    let faults = LinkFaults::default();
    let mut connection = PeerNetwork::new()
        .with_link_faults(SELF_ID, faults.clone())
        .new_client(TARGET_ID, &node)
        .await;
    let (requests, input) = mpsc::unbounded();
    let mut answers = connection
        .stream_append(input, RPCOption::new(Duration::from_secs(2)))
        .await
        .expect("the session opens");
    requests.unbounded_send(request(1)).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), answers.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(Ok(_))))),
        "the first request is answered"
    );
    faults.cut(SELF_ID, TARGET_ID, PeerMessage::AppendEntries);
    requests.unbounded_send(request(2)).unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("the cut is reported")
        .expect("an item");
    assert!(matches!(cut, Err(RPCError::Unreachable(_))), "{cut:?}");
    wait_until_received(&received, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        1,
        "the request on the cut link was sent"
    );
    drop(answers);
    let reopened = connection
        .stream_append(futures::stream::empty(), RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(
        matches!(reopened, Err(RPCError::Unreachable(_))),
        "a new session on a cut link opens"
    );
}

/// Regression (a leader redialed a stopped follower thousands of times a
/// second, one core busy): openraft opens a new session as soon as one
/// fails, and its backoff delays only requests, which a refused connection
/// never reads; so a refused session reports its failure only after the
/// session's patience (soft_ttl).
#[tokio::test]
async fn a_refused_connection_fails_the_session_only_after_its_patience() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = MemberNode {
        name: "stopped".into(),
        peer_url: format!("http://{}", closed.local_addr().unwrap()),
    };
    drop(closed);
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let (_requests, input) = mpsc::unbounded();
    let option = RPCOption::new(Duration::from_millis(200));
    let soft_ttl = option.soft_ttl();
    let started = tokio::time::Instant::now();
    let opened = connection.stream_append(input, option).await;
    assert!(
        matches!(opened, Err(RPCError::Unreachable(_))),
        "not refused as unreachable"
    );
    assert!(
        started.elapsed() >= soft_ttl,
        "refused after {:?}, sooner than the session's patience {soft_ttl:?}",
        started.elapsed()
    );
}

/// Regression (a member added to a cluster holding 200,000 keys never caught
/// up): a request too large to be stored within soft_ttl was cut off as a
/// stall and sent again, forever. A large request is given the time to be
/// stored at the receiver floor rate; a small one still only soft_ttl.
#[tokio::test]
async fn a_large_request_gets_the_time_to_be_stored_before_its_session_counts_as_stalled() {
    let option = RPCOption::new(Duration::from_millis(200));
    let soft_ttl = option.soft_ttl();
    let slow_store = soft_ttl * 3;
    let (node, received) = scripted_receiver(Script::AnswerAfter(slow_store)).await;
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let (requests, input) = mpsc::unbounded();
    let mut answers = connection
        .stream_append(input, option)
        .await
        .expect("the session opens");
    let mut large = request(1);
    let batch = keel_api::keelpb::WriteBatch {
        requests: vec![keel_api::keelpb::WriteRequest {
            checked_auth_revision: 0,
            request: Some(keel_api::keelpb::write_request::Request::Put(
                keel_api::etcdserverpb::PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7u8; 3 * 1024 * 1024],
                    ..Default::default()
                },
            )),
        }],
    };
    large.entries = vec![keel_raft::type_config::Entry {
        log_id: log_id(2),
        payload: openraft::EntryPayload::Normal(batch.into()),
    }];
    requests.unbounded_send(large).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("answered in time")
        .expect("an answer");
    assert!(
        matches!(answer, Ok(Ok(_))),
        "a slowly stored large request counted as a stall: {answer:?}"
    );
    // A small request answered as slowly is a stall.
    requests.unbounded_send(request(3)).unwrap();
    let stalled = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("the stall is reported")
        .expect("an item");
    assert!(matches!(stalled, Err(RPCError::Network(_))), "{stalled:?}");
    assert_eq!(received.load(Ordering::SeqCst), 2);
}

/// Regression (a member added to a cluster holding 1,000,000 keys did not
/// catch up within 120 s on a loaded machine; its log showed the leader's
/// sessions reset over and over): a receiver slower than a session's
/// patience for every request was cut off and sent the same request again
/// forever. The sessions that follow a stall to the same target wait
/// longer, so such a receiver is answered after a few sessions.
#[tokio::test]
async fn a_receiver_slower_than_a_sessions_patience_is_answered_once_later_sessions_wait_longer() {
    let option = RPCOption::new(Duration::from_millis(200));
    let soft_ttl = option.soft_ttl();
    let (node, _received) = scripted_receiver(Script::AnswerAfter(soft_ttl * 3)).await;
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let mut stalled_sessions = 0;
    let answered = loop {
        assert!(
            stalled_sessions < 6,
            "{stalled_sessions} sessions in a row stalled on a receiver that answers every request after {:?}",
            soft_ttl * 3
        );
        let (requests, input) = mpsc::unbounded();
        let mut answers = connection
            .stream_append(input, option.clone())
            .await
            .expect("the session opens");
        requests.unbounded_send(request(1)).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("answered or stalled in time")
            .expect("an item");
        match answer {
            Ok(answered) => break answered,
            Err(RPCError::Network(_)) => stalled_sessions += 1,
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    };
    assert_eq!(answered, Ok(Some(log_id(1))));
    assert!(
        stalled_sessions >= 1,
        "the first session, at soft_ttl, should have stalled"
    );
    // Once answered, a session is back to soft_ttl: a slow answer stalls it at once.
    let (requests, input) = mpsc::unbounded();
    let mut answers = connection
        .stream_append(input, option.clone())
        .await
        .expect("the session opens");
    requests.unbounded_send(request(2)).unwrap();
    let started = tokio::time::Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("answered or stalled in time")
        .expect("an item");
    assert!(matches!(next, Err(RPCError::Network(_))), "{next:?}");
    assert!(
        started.elapsed() < soft_ttl * 3,
        "the patience was not reset by the answer"
    );
}

/// Regression (a member added to a cluster holding 300,000 keys stopped
/// receiving entries for good: the leader's next session found nothing to
/// send): a session that stalled left openraft's request stream with the
/// transport, which kept pulling requests from it after the session was
/// over. Those requests went where no one read the answers, and since all of
/// a target's sessions share openraft's stream state, they were the next
/// session's. The request stream is dropped when its session ends.
#[tokio::test]
async fn a_stalled_session_drops_its_request_stream() {
    let (node, received) = scripted_receiver(Script::Silent).await;
    let mut connection = PeerNetwork::new().new_client(TARGET_ID, &node).await;
    let (requests, input) = mpsc::unbounded();
    let option = RPCOption::new(Duration::from_millis(200));
    let mut answers = connection
        .stream_append(input, option)
        .await
        .expect("the session opens");
    requests.unbounded_send(request(1)).unwrap();
    let stalled = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("the stall is reported")
        .expect("an item");
    assert!(matches!(stalled, Err(RPCError::Network(_))), "{stalled:?}");
    drop(answers);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !requests.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request stream of a session that ended is still held (and may still be pulled from)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests.unbounded_send(request(2)).is_err());
    assert_eq!(received.load(Ordering::SeqCst), 1);
}
