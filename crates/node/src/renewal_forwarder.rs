//! A follower's forwarding of lease renewals (keep-alives) to the leader, in
//! batches: the renewals that queue while earlier batches are in flight go
//! to the leader together, in one `LeaseRenewals` call, so a follower that
//! relays busy keep-alive streams pays one peer call per batch, not one per
//! renewal (and so does the leader that answers them).
//!
//! Invariant: every renewal of a batch gets the answer a `LeaseRenew` call
//! of its own would have got: the leader's outcome for it, a not-leader
//! refusal (routed again by `leader_call.rs`), or the failure of the call
//! that carried it. A renewal run twice has the effect of running once
//! (`Repeat::Harmless`), so a batch broken in flight is simply asked again.
//!
//! A leader of an earlier keel serves only `LeaseRenew`: it answers a batch
//! "unimplemented", and that batch's renewals, and later ones to that
//! leader for a while, go one per call.

use std::sync::Arc;
use std::time::Duration;

use keel_api::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{lease_renewal_outcome, ForwardedFailure, LeaseRenewalOutcome, LeaseRenewalsRequest};
use keel_api::WireError;
use keel_raft::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::batchless_leaders::BatchlessLeaders;
use crate::leader_batch_queue::{batch_queue, latest_deadline, BatchQueue, BatchQueueSender, QueuedRequest};
use crate::request_error::RequestError;

/// Batches sent to the leader and not answered yet; renewals that arrive
/// while this many are unanswered wait for the next batch.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Most renewals in one batch (the leader refuses larger ones).
pub(crate) const MAX_RENEWALS_PER_BATCH: usize = 1024;
/// How long renewals to a leader that did not know `LeaseRenewals` go one
/// per call before a batch is tried again (it may have been upgraded).
const SINGLE_RENEWALS_FOR: Duration = Duration::from_secs(60);

pub(crate) type RenewalAnswer = Result<LeaseKeepAliveResponse, Status>;

type QueuedRenewal = QueuedRequest<i64, RenewalAnswer>;

/// The sending side of forwarded renewals; cheap to clone.
#[derive(Clone)]
pub(crate) struct RenewalForwarder {
    queue: BatchQueueSender<i64, RenewalAnswer>,
    single_renewal_leaders: BatchlessLeaders,
}

impl RenewalForwarder {
    pub(crate) fn start() -> RenewalForwarder {
        let (queue, queued) = batch_queue();
        let single_renewal_leaders = BatchlessLeaders::new(SINGLE_RENEWALS_FOR);
        tokio::spawn(run_forwarder(queued, single_renewal_leaders.clone()));
        RenewalForwarder {
            queue,
            single_renewal_leaders,
        }
    }

    /// Hands the renewal of lease `id` to `leader` (over `client`), in a
    /// batch with the renewals queued beside it, and returns its own answer.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        client: PeerClient<Channel>,
        id: i64,
        deadline: Instant,
    ) -> RenewalAnswer {
        if self.single_renewal_leaders.is_marked(leader) {
            return renew_alone(client, id, deadline).await;
        }
        let Some(answer) = self.queue.queue(leader, client, id, deadline).await else {
            return Err(Status::from(WireError::Stopped));
        };
        // Dropped unanswered: the member is shutting down.
        answer
            .await
            .unwrap_or_else(|_| Err(Status::from(WireError::Stopped)))
    }
}

async fn run_forwarder(mut queued: BatchQueue<i64, RenewalAnswer>, single_renewal_leaders: BatchlessLeaders) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = queued.next_batch(MAX_RENEWALS_PER_BATCH, usize::MAX, |_| 0).await else {
            return;
        };
        keel_metrics::metrics()
            .renewals_per_forwarded_batch
            .observe(batch.len() as f64);
        tokio::spawn(send_batch(batch, single_renewal_leaders.clone(), permit));
    }
}

/// Sends one batch (all for one leader) and answers each of its renewals.
async fn send_batch(
    batch: Vec<QueuedRenewal>,
    single_renewal_leaders: BatchlessLeaders,
    _in_flight: OwnedSemaphorePermit,
) {
    let (Some(first), Some(deadline)) = (batch.first(), latest_deadline(&batch)) else {
        return;
    };
    let (leader, mut client) = (first.leader, first.client.clone());
    let mut call = tonic::Request::new(LeaseRenewalsRequest {
        ids: batch.iter().map(|renewal| renewal.request).collect(),
    });
    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
    match client.lease_renewals(call).await {
        Ok(answer) => {
            let outcomes = answer.into_inner().outcomes;
            if outcomes.len() != batch.len() {
                let wrong = Status::internal(format!(
                    "the leader answered {} outcomes for {} lease renewals",
                    outcomes.len(),
                    batch.len()
                ));
                for renewal in batch {
                    let _ = renewal.reply.send(Err(wrong.clone()));
                }
                return;
            }
            for (renewal, outcome) in batch.into_iter().zip(outcomes) {
                let _ = renewal.reply.send(answer_of(outcome));
            }
        }
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::info!(
                leader = %format_args!("{leader:x}"),
                "the leader does not take batched lease renewals (an earlier keel); sending them one per call for a while"
            );
            single_renewal_leaders.mark(leader);
            let alone = batch.into_iter().map(|renewal| async move {
                let answer = renew_alone(renewal.client, renewal.request, renewal.deadline).await;
                let _ = renewal.reply.send(answer);
            });
            futures::future::join_all(alone).await;
        }
        Err(status) => {
            for renewal in batch {
                let _ = renewal.reply.send(Err(status.clone()));
            }
        }
    }
}

/// One renewal in a `LeaseRenew` call of its own.
async fn renew_alone(mut client: PeerClient<Channel>, id: i64, deadline: Instant) -> RenewalAnswer {
    let mut call = tonic::Request::new(LeaseKeepAliveRequest { id });
    call.set_timeout(deadline.saturating_duration_since(Instant::now()));
    client.lease_renew(call).await.map(tonic::Response::into_inner)
}

/// One renewal's answer from the leader's outcome for it.
fn answer_of(outcome: LeaseRenewalOutcome) -> RenewalAnswer {
    match outcome.outcome {
        Some(lease_renewal_outcome::Outcome::Renewed(renewed)) => Ok(renewed),
        Some(lease_renewal_outcome::Outcome::Failure(failure)) => {
            Err(Status::new(Code::from(failure.code), failure.message))
        }
        Some(lease_renewal_outcome::Outcome::RefusedNotLeader(_)) => {
            Err(Status::from(RequestError::RefusedNotLeader))
        }
        None => Err(Status::internal(
            "the leader answered a lease renewal with no outcome",
        )),
    }
}

/// The leader's outcome for one renewal of a batch: what a `LeaseRenew`
/// call of its own would have answered.
pub(crate) fn outcome_of(answer: Result<LeaseKeepAliveResponse, RequestError>) -> LeaseRenewalOutcome {
    let outcome = match answer {
        Ok(renewed) => lease_renewal_outcome::Outcome::Renewed(renewed),
        Err(RequestError::RefusedNotLeader) => lease_renewal_outcome::Outcome::RefusedNotLeader(true),
        Err(error) => {
            let status = Status::from(error);
            lease_renewal_outcome::Outcome::Failure(ForwardedFailure {
                code: status.code() as i32,
                message: status.message().to_string(),
            })
        }
    };
    LeaseRenewalOutcome {
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_error::is_not_leader_refusal;
    use keel_api::keelpb::peer_server::{Peer, PeerServer};
    use keel_api::keelpb::LeaseRenewalsResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::{Request, Response};

    /// The TTL the fake leader answers for lease `id` (0: unknown lease).
    fn ttl_of(id: i64) -> i64 {
        if id % 10 == 0 {
            0
        } else {
            id % 7 + 5
        }
    }

    /// A leader's peer service that renews every lease (`ttl_of`) and
    /// serves nothing else; `takes_batches: false` is an earlier keel.
    struct RenewingLeader {
        takes_batches: bool,
        single_calls: Arc<AtomicUsize>,
        batch_calls: Arc<AtomicUsize>,
    }

    fn renewed(id: i64) -> LeaseKeepAliveResponse {
        LeaseKeepAliveResponse {
            header: None,
            id,
            ttl: ttl_of(id),
        }
    }

    type NoStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

    #[tonic::async_trait]
    impl Peer for RenewingLeader {
        async fn lease_renew(
            &self,
            request: Request<LeaseKeepAliveRequest>,
        ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
            self.single_calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(renewed(request.into_inner().id)))
        }
        async fn lease_renewals(
            &self,
            request: Request<LeaseRenewalsRequest>,
        ) -> Result<Response<LeaseRenewalsResponse>, Status> {
            if !self.takes_batches {
                return Err(Status::unimplemented("an earlier keel"));
            }
            self.batch_calls.fetch_add(1, Ordering::SeqCst);
            // Slow enough that renewals queue behind the batches in flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let outcomes = request
                .into_inner()
                .ids
                .into_iter()
                .map(|id| outcome_of(Ok(renewed(id))))
                .collect();
            Ok(Response::new(LeaseRenewalsResponse { outcomes }))
        }
        async fn append_entries(
            &self,
            _: Request<keel_api::keelpb::RaftPayload>,
        ) -> Result<Response<keel_api::keelpb::RaftPayload>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn vote(
            &self,
            _: Request<keel_api::keelpb::RaftPayload>,
        ) -> Result<Response<keel_api::keelpb::RaftPayload>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn install_snapshot(
            &self,
            _: Request<tonic::Streaming<keel_api::keelpb::SnapshotChunk>>,
        ) -> Result<Response<keel_api::keelpb::RaftPayload>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn forward_write(
            &self,
            _: Request<keel_api::keelpb::WriteRequest>,
        ) -> Result<Response<keel_api::keelpb::WriteResponse>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn forward_writes(
            &self,
            _: Request<keel_api::keelpb::ForwardedWrites>,
        ) -> Result<Response<keel_api::keelpb::ForwardedOutcomes>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        type StreamForwardWritesStream = NoStream<keel_api::keelpb::ForwardedOutcomes>;
        async fn stream_forward_writes(
            &self,
            _: Request<tonic::Streaming<keel_api::keelpb::ForwardedWrites>>,
        ) -> Result<Response<Self::StreamForwardWritesStream>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn read_index(
            &self,
            _: Request<keel_api::keelpb::ReadIndexRequest>,
        ) -> Result<Response<keel_api::keelpb::ReadIndexResponse>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn pre_vote(
            &self,
            _: Request<keel_api::keelpb::RaftPayload>,
        ) -> Result<Response<keel_api::keelpb::RaftPayload>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        type StreamAppendStream = NoStream<keel_api::keelpb::RaftPayload>;
        async fn stream_append(
            &self,
            _: Request<tonic::Streaming<keel_api::keelpb::RaftPayload>>,
        ) -> Result<Response<Self::StreamAppendStream>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn transfer_leader(
            &self,
            _: Request<keel_api::keelpb::RaftPayload>,
        ) -> Result<Response<keel_api::keelpb::RaftPayload>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn lease_time_to_live(
            &self,
            _: Request<keel_api::etcdserverpb::LeaseTimeToLiveRequest>,
        ) -> Result<Response<keel_api::etcdserverpb::LeaseTimeToLiveResponse>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn change_membership(
            &self,
            _: Request<keel_api::keelpb::MembershipChange>,
        ) -> Result<Response<keel_api::keelpb::MembershipChangeOutcome>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
        async fn cluster_members(
            &self,
            _: Request<keel_api::keelpb::ClusterMembersRequest>,
        ) -> Result<Response<keel_api::keelpb::ClusterMembersResponse>, Status> {
            Err(Status::unimplemented("renewals only"))
        }
    }

    /// Serves a `RenewingLeader` on a free 127.0.0.1 port; returns a client
    /// of it and its counts of single and batched calls.
    async fn renewing_leader(
        takes_batches: bool,
    ) -> (PeerClient<Channel>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("bound");
        let (single_calls, batch_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let leader = RenewingLeader {
            takes_batches,
            single_calls: single_calls.clone(),
            batch_calls: batch_calls.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(leader))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        (PeerClient::new(channel), single_calls, batch_calls)
    }

    /// Forwards `renewals` renewals at once (leases 1..=renewals) to
    /// leader 7 and checks that each got its own lease's answer.
    async fn forward_at_once(forwarder: &RenewalForwarder, client: &PeerClient<Channel>, renewals: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answers = tokio::task::JoinSet::new();
        for id in 1..=renewals {
            let (forwarder, client) = (forwarder.clone(), client.clone());
            answers.spawn(async move { (id, forwarder.forward(7, client, id, deadline).await) });
        }
        while let Some(answer) = answers.join_next().await {
            let (id, answer) = answer.expect("the renewal's task ran");
            assert_eq!(
                answer.expect("renewed"),
                renewed(id),
                "lease {id} got another lease's answer"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_queued_together_reach_the_leader_in_few_calls_each_with_its_own_answer() {
        let (client, single_calls, batch_calls) = renewing_leader(true).await;
        let forwarder = RenewalForwarder::start();
        forward_at_once(&forwarder, &client, 500).await;
        let batches = batch_calls.load(Ordering::SeqCst);
        assert!(
            (1..100).contains(&batches),
            "500 renewals took {batches} batched calls"
        );
        assert_eq!(single_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_to_a_leader_without_batches_go_one_per_call_and_each_is_answered() {
        let (client, single_calls, batch_calls) = renewing_leader(false).await;
        let forwarder = RenewalForwarder::start();
        forward_at_once(&forwarder, &client, 200).await;
        assert_eq!(
            single_calls.load(Ordering::SeqCst),
            200,
            "every renewal went alone"
        );
        assert!(forwarder.single_renewal_leaders.is_marked(7));
        forward_at_once(&forwarder, &client, 10).await;
        assert_eq!(
            single_calls.load(Ordering::SeqCst),
            210,
            "a marked leader gets single calls at once"
        );
        assert_eq!(batch_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn each_outcome_crosses_a_batch_as_the_answer_a_single_renewal_would_get() {
        let renewed = LeaseKeepAliveResponse {
            header: None,
            id: 7,
            ttl: 30,
        };
        assert_eq!(answer_of(outcome_of(Ok(renewed))).expect("renewed"), renewed);
        let refused = answer_of(outcome_of(Err(RequestError::RefusedNotLeader))).expect_err("refused");
        assert!(is_not_leader_refusal(&refused), "routed again: {refused:?}");
        let timed_out = answer_of(outcome_of(Err(WireError::Timeout.into()))).expect_err("failed");
        assert_eq!(WireError::from_status(&timed_out), Some(WireError::Timeout));
        let empty = answer_of(LeaseRenewalOutcome { outcome: None }).expect_err("no outcome");
        assert!(!is_not_leader_refusal(&empty));
    }
}
