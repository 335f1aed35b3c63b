//! The sending side of a pipelined replication session (openraft's
//! `stream_append`) over the peer protocol's bidirectional `StreamAppend`
//! RPC: every AppendEntries request is sent as soon as openraft produces it,
//! without waiting for the answers to earlier ones; the receiver answers in
//! request order on the same stream.
//!
//! Invariants:
//! - answers are yielded in request order, exactly as the receiver sent
//!   them; the stream ends after the first error (a conflict, a higher vote,
//!   a transport failure, a stall);
//! - a session that stops making progress fails: opening it must take
//!   less than its patience, and every answer owed must arrive within that
//!   patience plus the time the receiver needs to store the request at
//!   [`RECEIVER_FLOOR_BYTES_PER_SECOND`] (measured from the later of the
//!   last answer and the oldest unanswered request); an idle session with
//!   nothing unanswered never times out. A request too large to be stored
//!   within the patience alone (a new member catching up on a long log)
//!   would otherwise be sent, cut off and sent again forever;
//! - a session's patience is openraft's `soft_ttl`, doubled for every
//!   session to the same target in a row that stalled or opened too slowly
//!   (up to [`MAX_PATIENCE_DOUBLINGS`] times), and back to `soft_ttl` at the
//!   first answer: a receiver that is slower than any fixed bound (a loaded
//!   machine storing and applying a long log) still gets its requests
//!   answered, while a dead one is still detected within seconds;
//! - openraft's request stream lives exactly as long as its session: when
//!   the session ends (its answers dropped, or it failed to open), the
//!   request stream is dropped, even though the transport still holds the
//!   request body. All of a target's sessions share openraft's stream state;
//!   an abandoned request stream that the transport kept polling took the
//!   next session's entries, sent them where no one read the answers, and
//!   left the next session idle forever (a member stuck behind);
//! - a request on a link cut by [`LinkFaults`](crate::network::LinkFaults)
//!   is never sent: the session ends, and reports the peer unreachable once
//!   the requests already sent are answered;
//! - an entry-less request (a commit alone) may be folded into the next
//!   request (`commit_only_folding.rs`); its answer is then made from that
//!   one's and yielded right before it, so answers stay one per request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::RaftPayload;
use openraft::error::{NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::commit_only_folding::{
    answers_of_folded, fold_commit_only as fold_commit_only_requests, Outgoing, COMMIT_ONLY_HOLD,
};
use crate::network::{rpc_failure, PeerMessage, PeerNetwork, PeerUnavailable, RemoteFailure};
use crate::peer_codec::{decode_payload, encode_payload, PeerCodecError};
use keel_raft::type_config::LogId;
use keel_raft::{NodeId, TypeConfig};

/// The slowest a receiver may store a request's bytes before its session
/// counts as stalled (a loaded member writing and syncing its log).
const RECEIVER_FLOOR_BYTES_PER_SECOND: f64 = 4.0 * 1024.0 * 1024.0;

/// What a request of `bytes` may take beyond the session's patience.
fn storing_time(bytes: usize) -> Duration {
    Duration::from_secs_f64(bytes as f64 / RECEIVER_FLOOR_BYTES_PER_SECOND)
}

/// How many times a target's patience may double (64 × `soft_ttl`: 4.8 s
/// at etcd's default 100 ms heartbeat).
const MAX_PATIENCE_DOUBLINGS: u32 = 6;

/// A target's patience across the sessions openraft opens to it one after
/// another (one per [`PeerConnection`](crate::network::PeerConnection)).
#[derive(Clone, Default)]
pub(crate) struct SessionPatience {
    sessions_failed_in_a_row: Arc<AtomicU32>,
}

impl SessionPatience {
    /// `soft_ttl` doubled once for each session in a row that failed.
    fn for_next_session(&self, soft_ttl: Duration) -> Duration {
        let doublings = self
            .sessions_failed_in_a_row
            .load(Ordering::Relaxed)
            .min(MAX_PATIENCE_DOUBLINGS);
        soft_ttl * 2u32.pow(doublings)
    }

    fn session_stalled(&self, target: NodeId, waited: Duration) {
        let failed = self.sessions_failed_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            target_member = format_args!("{target:x}"),
            ?waited,
            sessions_failed_in_a_row = failed,
            "replication session stalled; the next one waits longer"
        );
    }

    fn answered(&self) {
        self.sessions_failed_in_a_row.store(0, Ordering::Relaxed);
    }
}

/// The request stream the transport polls, whose inner stream the session
/// drops when it ends ([`SessionRequestsCloser`]); once dropped, the
/// transport sees the end of the requests.
struct SessionRequests<R> {
    inner: Arc<Mutex<Option<R>>>,
}

impl<R: Stream + Unpin> Stream for SessionRequests<R> {
    type Item = R::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R::Item>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.as_mut() {
            Some(requests) => requests.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Drops a session's request stream when dropped itself.
struct SessionRequestsCloser {
    close: Box<dyn Fn() + Send + Sync>,
}

impl Drop for SessionRequestsCloser {
    fn drop(&mut self) {
        (self.close)();
    }
}

fn closable_requests<R: Send + 'static>(requests: R) -> (SessionRequests<R>, SessionRequestsCloser) {
    let inner = Arc::new(Mutex::new(Some(requests)));
    let shared = inner.clone();
    let closer = SessionRequestsCloser {
        close: Box::new(move || {
            let dropped = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(dropped);
        }),
    };
    (SessionRequests { inner }, closer)
}

/// One answer of a session, as openraft's replication consumes it.
pub type SessionAnswer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Why a session ended before its requests did.
#[derive(Debug, thiserror::Error)]
enum SessionFailure {
    #[error("opening a replication stream to member {target:x} took over {waited:?}")]
    OpenTimedOut { target: NodeId, waited: Duration },
    #[error("member {target:x} answered nothing for {waited:?} with requests outstanding")]
    Stalled { target: NodeId, waited: Duration },
    #[error("encoding an AppendEntries request: {0}")]
    Codec(#[from] PeerCodecError),
}

/// Why the sending half stopped early; reported after the receiver has
/// answered everything that was sent.
enum SendingStopped {
    LinkCut(PeerUnavailable),
    Codec(PeerCodecError),
}

/// State the sending half (polled by the transport) shares with the
/// answering half (polled by openraft).
#[derive(Default)]
struct Session {
    /// Each request still unanswered, oldest first.
    unanswered: Mutex<VecDeque<SentRequest>>,
    /// Signalled whenever a request is sent.
    request_sent: Notify,
    stopped: Mutex<Option<SendingStopped>>,
}

/// A request sent and not answered yet.
struct SentRequest {
    at: Instant,
    bytes: usize,
    /// The `prev_log_id` of an entry-less request folded into this one.
    folded: Option<Option<LogId>>,
}

impl Session {
    fn sent(&self, bytes: usize, folded: Option<Option<LogId>>) {
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(SentRequest {
                at: Instant::now(),
                bytes,
                folded,
            });
        self.request_sent.notify_one();
    }

    /// Records one answer and its round trip; the next one is owed from now
    /// on. Returns the time and the answered request's folded one, if any.
    fn answered(&self, round_trip: &keel_metrics::HistogramChild) -> (Instant, Option<Option<LogId>>) {
        let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let folded = unanswered.pop_front().and_then(|sent| {
            round_trip.observe(now.duration_since(sent.at).as_secs_f64());
            sent.folded
        });
        (now, folded)
    }

    /// When the next answer is overdue, if one is owed at all.
    fn next_answer_due(&self, last_answer: Instant, patience: Duration) -> Option<Instant> {
        let unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        unanswered
            .front()
            .map(|sent| sent.at.max(last_answer) + patience + storing_time(sent.bytes))
    }

    fn stop_sending(&self, why: SendingStopped) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn take_stop_reason(&self) -> Option<SendingStopped> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Opens a pipelined replication session to `target` on `client` and
/// returns openraft's stream of answers.
pub(crate) async fn open<S>(
    mut client: PeerClient<Channel>,
    network: PeerNetwork,
    target: NodeId,
    requests: S,
    option: RPCOption,
    target_patience: &SessionPatience,
    fold_commit_only: bool,
) -> Result<impl Stream<Item = SessionAnswer> + Send + 'static, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let patience = target_patience.for_next_session(option.soft_ttl());
    let session = Arc::new(Session::default());
    let backlog = network.proposal_backlog().clone();
    let commit_may_wait = move || fold_commit_only && backlog.commit_may_wait();
    let requests = Box::pin(fold_commit_only_requests(
        requests,
        COMMIT_ONLY_HOLD,
        commit_may_wait,
    ));
    let outgoing = futures::stream::unfold((requests, session.clone()), move |(mut requests, session)| {
        let network = network.clone();
        async move {
            let Outgoing { request, folded } = requests.next().await?;
            if let Err(cut) = network.check_link(target, PeerMessage::AppendEntries) {
                session.stop_sending(SendingStopped::LinkCut(cut));
                return None;
            }
            match encode_payload(&request) {
                Ok(payload) => {
                    session.sent(payload.data.len(), folded);
                    Some((payload, (requests, session)))
                }
                Err(error) => {
                    session.stop_sending(SendingStopped::Codec(error));
                    None
                }
            }
        }
    });
    let (outgoing, requests_closer) = closable_requests(Box::pin(outgoing));
    // On an early return below, `requests_closer` drops the requests.
    let opened = tokio::time::timeout(patience, client.stream_append(tonic::Request::new(outgoing))).await;
    let answers = match opened {
        Err(_elapsed) => {
            target_patience.session_stalled(target, patience);
            let failure = SessionFailure::OpenTimedOut {
                target,
                waited: patience,
            };
            return Err(RPCError::Unreachable(Unreachable::new(&failure)));
        }
        Ok(Err(status)) => {
            if keel_client::never_reached_server(&status) {
                // openraft opens the next session at once, and its backoff
                // delays only a session's requests, which a refused
                // connection never reads: without this pause a leader
                // redials a stopped peer thousands of times a second.
                tokio::time::sleep(patience).await;
            }
            return Err(rpc_failure(status));
        }
        Ok(Ok(answers)) => answers.into_inner(),
    };
    let state = AnswerState {
        answers,
        session,
        target,
        patience,
        target_patience: target_patience.clone(),
        _requests_closer: requests_closer,
        last_answer: Instant::now(),
        answer_next: None,
        finished: false,
        round_trip: keel_metrics::metrics()
            .peer_round_trip_seconds
            .with_label_values(&[&format!("{target:x}")]),
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        let answer = match state.answer_next.take() {
            Some(answer) => answer,
            None => state.next_answer().await?,
        };
        state.finished = !matches!(answer, Ok(Ok(_)));
        Some((answer, state))
    }))
}

/// What woke the answering half.
enum Woken {
    Answer(Result<Option<RaftPayload>, tonic::Status>),
    Overdue,
    RequestSent,
}

/// The error a session reports once the receiver has answered every
/// request sent before the sending half stopped.
fn stopped_early(why: SendingStopped) -> RPCError<TypeConfig> {
    match why {
        SendingStopped::LinkCut(cut) => RPCError::Unreachable(Unreachable::new(&cut)),
        SendingStopped::Codec(error) => RPCError::Network(NetworkError::new(&SessionFailure::from(error))),
    }
}

struct AnswerState {
    answers: tonic::Streaming<RaftPayload>,
    session: Arc<Session>,
    target: NodeId,
    patience: Duration,
    target_patience: SessionPatience,
    /// Dropped with the session's answers: ends openraft's request stream.
    _requests_closer: SessionRequestsCloser,
    last_answer: Instant,
    /// The answer of a request whose folded request was just answered.
    answer_next: Option<SessionAnswer>,
    finished: bool,
    /// `etcd_network_peer_round_trip_time_seconds{To="<target>"}`.
    round_trip: keel_metrics::HistogramChild,
}

impl AnswerState {
    /// The next answer, a failure, or `None` once the receiver ended the
    /// session after answering everything.
    async fn next_answer(&mut self) -> Option<SessionAnswer> {
        loop {
            // Registered before the deadline is read, so that a request sent
            // in between wakes this loop to start its clock.
            let request_sent = self.session.request_sent.notified();
            let due = self.session.next_answer_due(self.last_answer, self.patience);
            let overdue = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                message = self.answers.message() => Woken::Answer(message),
                _ = overdue => Woken::Overdue,
                _ = request_sent => Woken::RequestSent,
            };
            match woken {
                Woken::Answer(Ok(Some(payload))) => {
                    let (answered_at, folded) = self.session.answered(&self.round_trip);
                    self.last_answer = answered_at;
                    self.target_patience.answered();
                    let answer = self.decode(&payload);
                    let Some(folded_prev_log_id) = folded else {
                        return Some(answer);
                    };
                    let (folded_answer, own_answer) = answers_of_folded(folded_prev_log_id, answer);
                    self.answer_next = own_answer;
                    return Some(folded_answer);
                }
                Woken::Answer(Ok(None)) => {
                    return self.session.take_stop_reason().map(|why| Err(stopped_early(why)));
                }
                Woken::Answer(Err(status)) => return Some(Err(rpc_failure(status))),
                Woken::Overdue => {
                    self.target_patience.session_stalled(self.target, self.patience);
                    let failure = SessionFailure::Stalled {
                        target: self.target,
                        waited: self.patience,
                    };
                    return Some(Err(RPCError::Network(NetworkError::new(&failure))));
                }
                Woken::RequestSent => {}
            }
        }
    }

    fn decode(&self, payload: &RaftPayload) -> SessionAnswer {
        let answer: Result<StreamAppendResult<TypeConfig>, RaftError<TypeConfig>> =
            decode_payload(payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&SessionFailure::from(e))))?;
        answer.map_err(|remote| {
            RPCError::Network(NetworkError::new(&RemoteFailure {
                target: self.target,
                message: remote.to_string(),
            }))
        })
    }
}
