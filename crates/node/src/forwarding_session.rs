//! Both ends of a forwarding session (the peer protocol's
//! `StreamForwardWrites`): one long-lived stream from a follower to the
//! leader that carries the follower's batches of client writes as soon as
//! they queue, and the leader's answers back, one per batch.
//!
//! A stream, not a call per batch: a call costs the leader an HTTP/2 stream
//! and a service dispatch, so the follower had to cap its calls in flight,
//! and writes then queued twice (for a free call on the follower, then for
//! the next log entry on the leader), which halved the writes per log entry
//! against the same clients writing through the leader.
//!
//! Invariants:
//! - the leader answers every batch it read, in the order it read them,
//!   each with the outcomes `ForwardWrites` would have answered, or with
//!   `refused_not_leader` when it did not lead (none of that batch
//!   proposed); answers are matched to batches by that order alone;
//! - on the follower, a batch is put in the session's unanswered queue and
//!   sent under one lock, which the session's end takes too: a batch is
//!   either answered by the leader or failed by the session's end, never
//!   both and never neither;
//! - a session that ends with batches unanswered fails each of them with a
//!   status that says what is known: the call's own failure (which the
//!   write path's routing loop reads: a connection never made is routed
//!   again, a broken one is "leader changed"), "request timed out" once the
//!   oldest batch's deadline passed, "leader changed" when the follower
//!   moved to another leader. Never a refusal, unless the leader never read
//!   the batches (an earlier keel that answers the call "unimplemented").

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{ForwardedOutcomes, ForwardedWrites};
use keel_api::WireError;
use keel_raft::NodeId;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::local_apply::LocalApply;
use crate::request_error::RequestError;
use crate::write_forwarder::{answer_of, effect_unknown, ForwardAnswer};
use crate::write_path::WritePath;

/// The leader's answers to one session's batches.
pub(crate) type ForwardedAnswers =
    Pin<Box<dyn Stream<Item = Result<ForwardedOutcomes, Status>> + Send + 'static>>;

/// Batches of one session the leader proposes at once; it reads the next
/// batch only when the oldest of these is answered.
const LEADER_BATCHES_UNANSWERED: usize = 256;

/// The leader's end: proposes every batch the follower sends as it arrives
/// (each into one log entry, with whatever else is queued), and answers
/// them in the order they came.
pub(crate) fn answer_forwarded_batches(
    write_path: WritePath,
    mut batches: Streaming<ForwardedWrites>,
) -> ForwardedAnswers {
    let (answers, in_order) =
        mpsc::channel::<oneshot::Receiver<ForwardedOutcomes>>(LEADER_BATCHES_UNANSWERED);
    tokio::spawn(async move {
        // A broken or ended request stream ends the reading; the batches
        // already read are still proposed and answered.
        while let Ok(Some(batch)) = batches.message().await {
            let (answer, answered) = oneshot::channel();
            let write_path = write_path.clone();
            tokio::spawn(async move {
                let count = batch.writes.len();
                let outcomes = match write_path.propose_batch_as_leader(batch.writes).await {
                    Ok(outcomes) => outcomes,
                    Err(RequestError::RefusedNotLeader) => ForwardedOutcomes {
                        outcomes: Vec::new(),
                        refused_not_leader: true,
                        log_index: 0,
                    },
                    Err(other) => {
                        let failed = crate::write_forwarder::outcome_of(Err(Status::from(other)));
                        ForwardedOutcomes {
                            outcomes: vec![failed; count],
                            refused_not_leader: false,
                            log_index: 0,
                        }
                    }
                };
                let _ = answer.send(outcomes);
            });
            if answers.send(answered).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(in_order).then(|answered| async move {
        // The proposing task cannot drop its answer unsent but by a panic:
        // the follower then learns nothing of this batch or the later ones.
        answered
            .await
            .map_err(|_| Status::internal("keel peer: a forwarded batch was dropped unanswered"))
    }))
}

/// A batch of writes for the leader, with where each one's answer goes.
pub(crate) struct OutgoingBatch {
    pub(crate) writes: ForwardedWrites,
    pub(crate) replies: Vec<oneshot::Sender<ForwardAnswer>>,
    /// The latest deadline among its writes.
    pub(crate) deadline: Instant,
    /// One of the forwarder's batches in flight.
    pub(crate) in_flight: OwnedSemaphorePermit,
}

/// A batch the follower sent and the leader has not answered yet.
struct UnansweredBatch {
    replies: Vec<oneshot::Sender<ForwardAnswer>>,
    /// The latest deadline among its writes: past it, no caller waits.
    deadline: Instant,
    /// Released when the batch is answered or failed.
    _in_flight: OwnedSemaphorePermit,
}

#[derive(Default)]
struct SessionQueue {
    ended: bool,
    unanswered: VecDeque<UnansweredBatch>,
}

/// How often a session with nothing unanswered looks again at its queue
/// (for a batch sent meanwhile whose deadline it must watch).
const IDLE_LOOK: Duration = Duration::from_millis(200);

/// The follower's end of a session with one leader.
pub(crate) struct ForwardingSession {
    pub(crate) leader: NodeId,
    batches: mpsc::UnboundedSender<ForwardedWrites>,
    queue: Arc<Mutex<SessionQueue>>,
    reader: tokio::task::JoinHandle<()>,
}

/// What a session's end does with its unanswered batches.
enum SessionEnd {
    /// Each write gets this status.
    Failed(Status),
    /// Each write's effect is unknown, for this reason (logged only when
    /// the session left writes unanswered).
    EffectUnknown(String),
    /// The leader never read them (an earlier keel): each write is refused
    /// so that it is routed again; `leader` then gets single forwards.
    NotRead,
}

impl ForwardingSession {
    /// Opens a session to `leader` over `client`; `not_read` is told when
    /// the leader turns out not to serve sessions.
    pub(crate) fn open(
        leader: NodeId,
        mut client: PeerClient<Channel>,
        local_apply: LocalApply,
        not_read: impl FnOnce(NodeId) + Send + 'static,
    ) -> ForwardingSession {
        let (batches, outgoing) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(SessionQueue::default()));
        let reader_queue = queue.clone();
        let reader = tokio::spawn(async move {
            let end = read_answers(&mut client, outgoing, &reader_queue, &local_apply).await;
            if matches!(end, SessionEnd::NotRead) {
                not_read(leader);
                tracing::info!(
                    leader = %format_args!("{leader:x}"),
                    "the leader does not take forwarding sessions; forwarding writes one by one"
                );
            }
            end_session(&reader_queue, end);
        });
        ForwardingSession {
            leader,
            batches,
            queue,
            reader,
        }
    }

    /// Sends a batch; gives it back when the session has ended (nothing was
    /// sent: it goes on a new session).
    pub(crate) fn send(&self, batch: OutgoingBatch) -> Result<(), OutgoingBatch> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.ended {
            return Err(batch);
        }
        let OutgoingBatch {
            writes,
            replies,
            deadline,
            in_flight,
        } = batch;
        if let Err(unsent) = self.batches.send(writes) {
            // The call is gone (its reader is ending the session): this
            // session takes no more, so the batch goes on a new one.
            queue.ended = true;
            return Err(OutgoingBatch {
                writes: unsent.0,
                replies,
                deadline,
                in_flight,
            });
        }
        queue.unanswered.push_back(UnansweredBatch {
            replies,
            deadline,
            _in_flight: in_flight,
        });
        Ok(())
    }

    /// Ends the session because writes now go to another leader: what it
    /// left unanswered may or may not be applied ("leader changed"). A
    /// session that has already ended is left to its reader, which answers
    /// what it left as the call's end says (a leader that never read the
    /// batches refuses them, to be routed again).
    pub(crate) fn end_for_another_leader(self) {
        if self.has_ended() {
            return;
        }
        self.reader.abort();
        end_session(&self.queue, SessionEnd::Failed(WireError::LeaderChanged.into()));
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).ended
    }
}

/// Fails every unanswered batch as `end` says, and takes no more.
fn end_session(queue: &Mutex<SessionQueue>, end: SessionEnd) {
    let unanswered = {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.ended = true;
        std::mem::take(&mut queue.unanswered)
    };
    if unanswered.is_empty() {
        return;
    }
    let status = match end {
        SessionEnd::Failed(status) => status,
        SessionEnd::EffectUnknown(why) => effect_unknown(&why),
        SessionEnd::NotRead => Status::from(RequestError::RefusedNotLeader),
    };
    for batch in unanswered {
        for reply in batch.replies {
            let _ = reply.send(Err(status.clone()));
        }
    }
}

/// Runs the session's call and hands each answer to its batch's writes,
/// until the call ends; how it ended.
async fn read_answers(
    client: &mut PeerClient<Channel>,
    outgoing: mpsc::UnboundedReceiver<ForwardedWrites>,
    queue: &Mutex<SessionQueue>,
    local_apply: &LocalApply,
) -> SessionEnd {
    let oldest_deadline = || {
        queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unanswered
            .front()
            .map(|batch| batch.deadline)
    };
    let call = client.stream_forward_writes(UnboundedReceiverStream::new(outgoing));
    tokio::pin!(call);
    let opened = loop {
        let look_until = oldest_deadline().unwrap_or_else(|| Instant::now() + IDLE_LOOK);
        match tokio::time::timeout_at(look_until, &mut call).await {
            Ok(opened) => break opened,
            Err(_) if oldest_deadline().is_some_and(|deadline| deadline <= Instant::now()) => {
                return SessionEnd::Failed(Status::from(WireError::Timeout));
            }
            Err(_) => continue,
        }
    };
    let mut answers = match opened {
        Ok(answers) => answers.into_inner(),
        Err(refused) if refused.code() == Code::Unimplemented => return SessionEnd::NotRead,
        Err(failed) => return SessionEnd::Failed(failed),
    };
    loop {
        let look_until = oldest_deadline().unwrap_or_else(|| Instant::now() + IDLE_LOOK);
        let answer = match tokio::time::timeout_at(look_until, answers.message()).await {
            Ok(answer) => answer,
            Err(_) if oldest_deadline().is_some_and(|deadline| deadline <= Instant::now()) => {
                return SessionEnd::Failed(Status::from(WireError::Timeout));
            }
            Err(_) => continue,
        };
        let outcomes = match answer {
            Ok(Some(outcomes)) => outcomes,
            // The leader ended the session (it shut down) with batches of
            // this member's unanswered: their effect is unknown.
            Ok(None) => return SessionEnd::EffectUnknown("the leader ended the forwarding session".into()),
            Err(failed) => return broken_session_end(failed),
        };
        let Some(batch) = queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unanswered
            .pop_front()
        else {
            return SessionEnd::EffectUnknown("the leader answered a batch this member did not send".into());
        };
        answer_once_applied_here(batch, outcomes, local_apply);
    }
}

/// Answers `batch` once this member has applied the entry that carried it
/// (`local_apply.rs`); on a task of its own when that is still to come, so
/// the session reads on (the batch is out of its queue: the session's end
/// no longer fails it).
fn answer_once_applied_here(batch: UnansweredBatch, answer: ForwardedOutcomes, local_apply: &LocalApply) {
    let log_index = answer.log_index;
    if log_index == 0 || local_apply.has_applied(log_index) {
        answer_batch(batch, answer);
        return;
    }
    let local_apply = local_apply.clone();
    tokio::spawn(async move {
        local_apply.until_applied(log_index, batch.deadline).await;
        answer_batch(batch, answer);
    });
}

/// What the unanswered writes of a session that failed after it opened
/// get: a transport failure as it is (the routing loop answers it "leader
/// changed"); any other status (the leader lost a batch's answer) as an
/// unknown effect, never as a failure that says the writes did not apply.
fn broken_session_end(failed: Status) -> SessionEnd {
    if keel_client::transport_failure(&failed) {
        SessionEnd::Failed(failed)
    } else {
        SessionEnd::EffectUnknown(format!("the forwarding session failed: {}", failed.message()))
    }
}

/// Gives each write of `batch` its own outcome from the leader's answer.
fn answer_batch(batch: UnansweredBatch, answer: ForwardedOutcomes) {
    if answer.refused_not_leader {
        let refusal = Status::from(RequestError::RefusedNotLeader);
        for reply in batch.replies {
            let _ = reply.send(Err(refusal.clone()));
        }
        return;
    }
    if answer.outcomes.len() != batch.replies.len() {
        // The leader acted on the batch but its answer cannot be matched to
        // the writes: each one's effect is unknown.
        let unknown = effect_unknown(&format!(
            "the leader answered {} outcomes for {} forwarded writes",
            answer.outcomes.len(),
            batch.replies.len()
        ));
        for reply in batch.replies {
            let _ = reply.send(Err(unknown.clone()));
        }
        return;
    }
    for (reply, outcome) in batch.replies.into_iter().zip(answer.outcomes) {
        let _ = reply.send(answer_of(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a write left unanswered by a session that ended as `end` gets.
    fn answer_left_by(end: SessionEnd) -> ForwardAnswer {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("a free permit");
        let (reply, mut answer) = oneshot::channel();
        let queue = Mutex::new(SessionQueue::default());
        queue
            .lock()
            .expect("queue")
            .unanswered
            .push_back(UnansweredBatch {
                replies: vec![reply],
                deadline: Instant::now(),
                _in_flight: in_flight,
            });
        end_session(&queue, end);
        assert!(queue.lock().expect("queue").ended);
        answer.try_recv().expect("the session's end answered the write")
    }

    /// Regression: a session that the leader ended with an error of its
    /// own (a batch's answer lost) failed every unanswered write with that
    /// error, as if none of them had applied.
    #[test]
    fn a_session_broken_by_the_leaders_error_leaves_its_writes_effect_unknown() {
        let answered = answer_left_by(broken_session_end(Status::internal(
            "a forwarded batch was dropped unanswered",
        )))
        .expect_err("no outcome came back");
        assert_eq!(
            answered.message(),
            "etcdserver: request timed out",
            "{answered:?}"
        );
        let broken = Status::unavailable("connection reset");
        let answered = answer_left_by(broken_session_end(broken.clone())).expect_err("no outcome came back");
        assert_eq!(answered.message(), broken.message());
    }
}
