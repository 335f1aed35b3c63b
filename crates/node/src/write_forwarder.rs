//! A follower's forwarding of client writes to the leader, in batches: the
//! writes that queue while this member waits to send go to the leader
//! together, as one batch on this member's forwarding session with it
//! (`forwarding_session.rs`), so a busy follower pays one message per batch,
//! not one call per write (the leader proposes a batch whole: its writes go
//! into one log entry, with whatever else is queued).
//!
//! Invariant: every write of a batch gets exactly the answer a
//! `ForwardWrite` call of its own would have got. A session that failed
//! fails each write of its unanswered batches (a not-leader refusal, which
//! the leader answers before proposing any of a batch, lets each be routed
//! again; a session broken in flight leaves each one's effect unknown); an
//! answered batch gives each write its own outcome. The routing loop that
//! decides what a failure means is `leader_call.rs`, unchanged by batching.
//!
//! A leader of an earlier keel serves only `ForwardWrite` (or also the
//! per-call `ForwardWrites`): it answers a session "unimplemented" without
//! reading it, so each of its writes is answered with a not-leader refusal
//! (routed again, never applied twice), and writes to that leader then go
//! one per call for a while.

use std::sync::Arc;
use std::time::Duration;

use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{forwarded_outcome, ForwardedOutcome, ForwardedWrites, WriteRequest, WriteResponse};
use keel_raft::NodeId;
use prost::Message;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::batchless_leaders::BatchlessLeaders;
use crate::forwarding_session::{ForwardingSession, OutgoingBatch};
use crate::leader_batch_queue::{batch_queue, latest_deadline, BatchQueue, BatchQueueSender};
use crate::local_apply::LocalApply;
use crate::request_error::RequestError;
use keel_api::WireError;

/// Batches sent to the leader and not answered yet; the writes that
/// arrive while this many are unanswered wait for the next batch. Batches
/// go out as soon as writes queue (a session makes a batch cheap), so
/// this only bounds what a stalled leader holds.
const MAX_BATCHES_IN_FLIGHT: usize = 64;
/// Most writes in one batch.
const MAX_WRITES_PER_BATCH: usize = 256;
/// Stop adding writes once a batch holds this many bytes of requests.
const MAX_BYTES_PER_BATCH: usize = 1024 * 1024;
/// How long writes to a leader that did not know `ForwardWrites` go one
/// per call before a batch is tried again (it may have been upgraded).
const SINGLE_WRITES_FOR: Duration = Duration::from_secs(60);

pub(crate) type ForwardAnswer = Result<WriteResponse, Status>;

/// The sending side of forwarded writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct WriteForwarder {
    queue: BatchQueueSender<WriteRequest, ForwardAnswer>,
    single_write_leaders: BatchlessLeaders,
}

impl WriteForwarder {
    /// Starts the forwarder; a batch's writes are answered once
    /// `local_apply` has applied the entry that carried them.
    pub(crate) fn start(local_apply: LocalApply) -> WriteForwarder {
        let (queue, queued) = batch_queue();
        let single_write_leaders = BatchlessLeaders::new(SINGLE_WRITES_FOR);
        tokio::spawn(run_forwarder(queued, single_write_leaders.clone(), local_apply));
        WriteForwarder {
            queue,
            single_write_leaders,
        }
    }

    /// Hands `request` to `leader` (over `client`), in a batch with the
    /// writes queued beside it, and returns its own answer.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        client: PeerClient<Channel>,
        request: WriteRequest,
        deadline: Instant,
    ) -> ForwardAnswer {
        if self.single_write_leaders.is_marked(leader) {
            let mut client = client;
            let mut call = tonic::Request::new(request);
            call.set_timeout(deadline.saturating_duration_since(Instant::now()));
            return client.forward_write(call).await.map(tonic::Response::into_inner);
        }
        let Some(answer) = self.queue.queue(leader, client, request, deadline).await else {
            return Err(stopped());
        };
        // The reply dropped unanswered: the member is shutting down, and the
        // batch may have reached the leader, so the effect is unknown.
        answer.await.unwrap_or_else(|_| {
            Err(effect_unknown(
                "the forwarder stopped before the leader's answer came back",
            ))
        })
    }
}

/// The forwarder has stopped (the member is shutting down) before the
/// write was queued: nothing was sent.
fn stopped() -> Status {
    Status::from(keel_api::WireError::Stopped)
}

async fn run_forwarder(
    mut queued: BatchQueue<WriteRequest, ForwardAnswer>,
    single_write_leaders: BatchlessLeaders,
    local_apply: LocalApply,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut session: Option<ForwardingSession> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = queued
            .next_batch(MAX_WRITES_PER_BATCH, MAX_BYTES_PER_BATCH, Message::encoded_len)
            .await
        else {
            return;
        };
        keel_metrics::metrics()
            .writes_per_forwarded_batch
            .observe(batch.len() as f64);
        let leader = batch[0].leader;
        let client = batch[0].client.clone();
        let Some(deadline) = latest_deadline(&batch) else {
            continue;
        };
        let (writes, replies) = batch
            .into_iter()
            .map(|write| (write.request, write.reply))
            .unzip();
        let mut unsent = OutgoingBatch {
            writes: ForwardedWrites { writes },
            replies,
            deadline,
            in_flight: permit,
        };
        loop {
            let current = match session.take() {
                Some(open) if open.leader == leader && !open.has_ended() => open,
                other => {
                    if let Some(previous) = other {
                        previous.end_for_another_leader();
                    }
                    let marks = single_write_leaders.clone();
                    ForwardingSession::open(leader, client.clone(), local_apply.clone(), move |leader| {
                        marks.mark(leader)
                    })
                }
            };
            let sent = current.send(unsent);
            session = Some(current);
            match sent {
                Ok(()) => break,
                // The session ended before this batch went out: a new one.
                Err(back) => unsent = back,
            }
        }
    }
}

/// One write's answer from the leader's outcome for it.
pub(crate) fn answer_of(outcome: ForwardedOutcome) -> ForwardAnswer {
    match outcome.outcome {
        Some(forwarded_outcome::Outcome::Response(response)) => Ok(response),
        Some(forwarded_outcome::Outcome::Failure(failure)) => {
            Err(Status::new(Code::from(failure.code), failure.message))
        }
        None => Err(effect_unknown(
            "the leader answered a forwarded write with no outcome",
        )),
    }
}

/// The answer to a forwarded write whose outcome this member cannot learn
/// (the leader answered unreadably, or the forwarder stopped with the call
/// in flight): it may have applied the write, so its effect is unknown, which etcd
/// answers "request timed out" (as for a proposal whose outcome it never
/// learned), never an error that says it failed.
pub(crate) fn effect_unknown(why: &str) -> Status {
    tracing::warn!(why, "a forwarded write's effect is unknown");
    Status::from(RequestError::Wire(WireError::Timeout))
}

/// The leader's outcome for one forwarded write: the status a
/// `ForwardWrite` call of its own would have answered it with.
pub(crate) fn outcome_of(answer: ForwardAnswer) -> ForwardedOutcome {
    let outcome = match answer {
        Ok(response) => forwarded_outcome::Outcome::Response(response),
        Err(status) => forwarded_outcome::Outcome::Failure(keel_api::keelpb::ForwardedFailure {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    };
    ForwardedOutcome {
        outcome: Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::keelpb::write_response;

    #[test]
    fn an_etcd_error_crosses_a_batch_as_the_status_a_single_forward_would_carry() {
        let answer = answer_of(outcome_of(Err(WireError::LeaseNotFound.into())));
        let status = answer.expect_err("an error stays an error");
        assert_eq!(WireError::from_status(&status), Some(WireError::LeaseNotFound));
    }

    #[test]
    fn a_response_crosses_a_batch_unchanged() {
        let response = WriteResponse {
            response: Some(write_response::Response::Put(Default::default())),
        };
        let answer = answer_of(outcome_of(Ok(response.clone())));
        assert_eq!(answer.expect("a response"), response);
    }

    /// A peer address that serves no keel method: every call is answered
    /// "unimplemented", as an earlier keel answers `ForwardWrites`.
    async fn a_peer_serving_nothing() -> PeerClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        PeerClient::new(channel)
    }

    #[tokio::test]
    async fn a_leader_without_batched_forwards_gets_a_refusal_to_route_again_then_single_forwards() {
        let leader = 7;
        let client = a_peer_serving_nothing().await;
        let forwarder = WriteForwarder::start(LocalApply::none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let put = || WriteRequest {
            request: Some(keel_api::keelpb::write_request::Request::Put(Default::default())),
            ..Default::default()
        };

        let batched = forwarder.forward(leader, client.clone(), put(), deadline).await;
        let refusal = batched.expect_err("nothing serves ForwardWrites");
        assert!(
            crate::request_error::is_not_leader_refusal(&refusal),
            "a batch the leader did not read is a refusal to route again: {refusal:?}"
        );

        // The next write to that leader goes as a single ForwardWrite; this
        // peer serves that neither, and its "unimplemented" comes back as is.
        let single = forwarder.forward(leader, client, put(), deadline).await;
        let answer = single.expect_err("nothing serves ForwardWrite");
        assert_eq!(answer.code(), Code::Unimplemented, "{answer:?}");
        assert!(!crate::request_error::is_not_leader_refusal(&answer));
    }

    /// Regression: writes queued together for a leader that does not take
    /// sessions were sent on the session, found it ended (its call already
    /// refused) and opened a new one; opening it cut the old session's
    /// reader off before it refused their batches, so they were answered
    /// "leader changed" (an unknown effect) instead of a refusal to route
    /// again, and the leader was never marked for single forwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_to_a_leader_without_sessions_are_each_refused_to_route_again() {
        let leader = 7;
        let client = a_peer_serving_nothing().await;
        let forwarder = WriteForwarder::start(LocalApply::none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let (forwarder, client) = (forwarder.clone(), client.clone());
            writes.spawn(async move {
                // Spread over the session's short life, so that some come
                // while its refused call is being torn down.
                tokio::time::sleep(Duration::from_micros(50 * i)).await;
                let put = WriteRequest {
                    request: Some(keel_api::keelpb::write_request::Request::Put(Default::default())),
                    ..Default::default()
                };
                forwarder.forward(leader, client, put, deadline).await
            });
        }
        while let Some(answer) = writes.join_next().await {
            let answer = answer.expect("the write's task ran");
            let status = answer.expect_err("nothing serves the session");
            // A write queued after the leader was marked goes single, and
            // this peer answers that "unimplemented" too.
            assert!(
                crate::request_error::is_not_leader_refusal(&status) || status.code() == Code::Unimplemented,
                "a write the leader never read must be routed again: {status:?}"
            );
        }
        assert!(forwarder.single_write_leaders.is_marked(leader));
    }

    /// Regression: a forwarder stopped with the batch in flight answered
    /// "server stopped", as if nothing had been sent.
    #[test]
    fn a_forwarder_stopped_with_the_batch_in_flight_answers_an_unknown_effect() {
        let forwarder_runtime = tokio::runtime::Runtime::new().expect("runtime");
        let caller_runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (forwarder, client, _silent_peer) = forwarder_runtime.block_on(async {
            // A peer that takes the connection and never answers.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let silent_peer = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((connection, _)) = listener.accept().await {
                    held.push(connection);
                }
            });
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("endpoint")
                .connect_lazy();
            (
                WriteForwarder::start(LocalApply::none()),
                PeerClient::new(channel),
                silent_peer,
            )
        });
        let answer = caller_runtime.block_on(async move {
            let put = WriteRequest {
                request: Some(keel_api::keelpb::write_request::Request::Put(Default::default())),
                ..Default::default()
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let forwarded = tokio::spawn(async move { forwarder.forward(7, client, put, deadline).await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!forwarded.is_finished(), "the silent peer answered nothing");
            forwarder_runtime.shutdown_background();
            tokio::time::timeout(Duration::from_secs(5), forwarded)
                .await
                .expect("answered once the forwarder stopped")
                .expect("the caller's task ran")
        });
        let status = answer.expect_err("the write's outcome never came back");
        assert_eq!(status.message(), "etcdserver: request timed out", "{status:?}");
    }

    /// A session whose leader takes the connection and never answers ends
    /// at its oldest batch's deadline: the write is answered "request timed
    /// out" (its effect unknown), and the next write opens a new session.
    #[tokio::test]
    async fn a_leader_that_never_answers_times_the_forwarded_writes_out_at_their_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        let client = PeerClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .expect("endpoint")
                .connect_lazy(),
        );
        let forwarder = WriteForwarder::start(LocalApply::none());
        let put = || WriteRequest {
            request: Some(keel_api::keelpb::write_request::Request::Put(Default::default())),
            ..Default::default()
        };
        for attempt in 0..2 {
            let deadline = Instant::now() + Duration::from_millis(300);
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                forwarder.forward(7, client.clone(), put(), deadline),
            )
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: no answer long after the deadline"));
            let status = answer.expect_err("the silent leader answered nothing");
            assert_eq!(
                status.message(),
                "etcdserver: request timed out",
                "attempt {attempt}: {status:?}"
            );
        }
    }

    #[test]
    fn an_outcome_with_nothing_in_it_is_an_unknown_effect_not_a_response() {
        let answer = answer_of(ForwardedOutcome { outcome: None });
        let expected = Status::from(RequestError::Wire(WireError::Timeout));
        let status = answer.expect_err("no outcome");
        assert_eq!(
            (status.code(), status.message()),
            (expected.code(), expected.message())
        );
        assert_eq!(status.message(), "etcdserver: request timed out");
    }
}
