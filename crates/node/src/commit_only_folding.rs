//! Commit-only AppendEntries folded into the request that follows them, on
//! the sending side of a replication session (`append_stream.rs`).
//!
//! openraft 0.10 carries a new commit index in the next request that has
//! entries, but when no entry is waiting it sends the commit alone at once.
//! keel's proposer puts the next entry in the log only after the previous
//! one is applied on the leader, so every entry was followed by an
//! entry-less request to each follower: two requests, two Raft core rounds
//! and two answers per entry on every follower (`benches/RESULTS.md`, "A
//! write's chain at 1 client").
//!
//! Here an entry-less request waits up to [`COMMIT_ONLY_HOLD`] for the next
//! request, but only while the leader's proposer says the commit may wait
//! (`proposal_backlog.rs`: proposals are queued for the next entry, and the
//! entry just committed carries no follower's forwarded writes, which that
//! follower answers only once it learned this commit). When that one continues from the same `prev_log_id` under the
//! same vote, only it is sent, and its answer answers the held request too
//! ([`answers_of_folded`]): the follower would have answered the held
//! request exactly so had it come just before (a success matching
//! `prev_log_id`, or the same conflict at `prev_log_id`, or the same higher
//! vote), and the later request carries a commit index at least as high.
//! Holding a request is the same as the network delaying it, which Raft
//! tolerates. Only replication sessions hold: openraft's heartbeats (which
//! also confirm leadership for linearizable reads) come on sessions of
//! their own, whose commit never may wait, and are sent at once.
//!
//! Invariant: every request openraft produced is either sent, in its order,
//! or folded into the next one sent, and then gets its answer, in its
//! order, right before that one's: answers stay one per request, in request
//! order.

use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;

use keel_raft::type_config::LogId;
use keel_raft::TypeConfig;

use crate::append_stream::SessionAnswer;

/// The longest an entry-less request waits for one to fold into (tokio's
/// timer rounds it up to the next millisecond tick).
pub(crate) const COMMIT_ONLY_HOLD: Duration = Duration::from_millis(1);

/// A request to send, and what it answers besides itself.
pub(crate) struct Outgoing {
    pub request: AppendEntriesRequest<TypeConfig>,
    /// The `prev_log_id` of the entry-less request folded into this one,
    /// whose answer comes from this one's.
    pub folded: Option<Option<LogId>>,
}

/// `requests` with each entry-less request held up to `hold` and folded
/// into the next request when that one continues from the same point; a
/// zero `hold`, or `commit_may_wait()` false when the request comes, passes
/// it on at once.
pub(crate) fn fold_commit_only<S>(
    requests: S,
    hold: Duration,
    commit_may_wait: impl Fn() -> bool + Send + 'static,
) -> impl Stream<Item = Outgoing> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let start = (
        requests.fuse(),
        None::<AppendEntriesRequest<TypeConfig>>,
        commit_may_wait,
    );
    futures::stream::unfold(
        start,
        move |(mut requests, mut next_up, commit_may_wait)| async move {
            let request = match next_up.take() {
                Some(request) => request,
                None => requests.next().await?,
            };
            if !request.entries.is_empty() || hold.is_zero() || !commit_may_wait() {
                return Some((
                    Outgoing {
                        request,
                        folded: None,
                    },
                    (requests, None, commit_may_wait),
                ));
            }
            match tokio::time::timeout(hold, requests.next()).await {
                Ok(Some(next)) if next.prev_log_id == request.prev_log_id && next.vote == request.vote => {
                    let folded = Some(request.prev_log_id);
                    Some((
                        Outgoing {
                            request: next,
                            folded,
                        },
                        (requests, None, commit_may_wait),
                    ))
                }
                Ok(Some(next)) => Some((
                    Outgoing {
                        request,
                        folded: None,
                    },
                    (requests, Some(next), commit_may_wait),
                )),
                Ok(None) | Err(_) => Some((
                    Outgoing {
                        request,
                        folded: None,
                    },
                    (requests, None, commit_may_wait),
                )),
            }
        },
    )
}

/// The answers of a sent request that had an entry-less request with
/// `folded_prev_log_id` folded into it, in request order: the folded one's,
/// then its own when the first was a success. A failure answers the folded
/// request alone, and ends the session as its answer would have.
pub(crate) fn answers_of_folded(
    folded_prev_log_id: Option<LogId>,
    answer: SessionAnswer,
) -> (SessionAnswer, Option<SessionAnswer>) {
    match answer {
        Ok(Ok(_)) => (Ok(Ok(folded_prev_log_id)), Some(answer)),
        failed => (failed, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_raft::type_config::{CommittedLeaderId, Vote};
    use openraft::entry::RaftEntry;
    use openraft::raft::StreamAppendError;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term), index)
    }

    fn request(
        term: u64,
        prev_index: u64,
        entries: usize,
        commit_index: u64,
    ) -> AppendEntriesRequest<TypeConfig> {
        let entries = (0..entries)
            .map(|i| keel_raft::type_config::Entry::new_blank(log_id(term, prev_index + 1 + i as u64)))
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(log_id(term, prev_index)),
            entries,
            leader_commit: Some(log_id(term, commit_index)),
        }
    }

    fn folding() -> (
        mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
        impl Stream<Item = Outgoing>,
    ) {
        let (requests, queue) = mpsc::unbounded_channel();
        let outgoing = fold_commit_only(
            UnboundedReceiverStream::new(queue),
            Duration::from_millis(50),
            || true,
        );
        (requests, outgoing)
    }

    #[tokio::test]
    async fn a_commit_only_request_followed_from_the_same_point_is_folded_into_the_next() {
        let (requests, outgoing) = folding();
        let mut outgoing = Box::pin(outgoing);
        requests.send(request(2, 7, 0, 7)).expect("send");
        requests.send(request(2, 7, 1, 7)).expect("send");
        let sent = outgoing.next().await.expect("one request");
        assert_eq!(sent.request.entries.len(), 1);
        assert_eq!(sent.folded, Some(Some(log_id(2, 7))));
    }

    #[tokio::test]
    async fn a_request_with_entries_is_sent_without_waiting() {
        let (requests, outgoing) = folding();
        let mut outgoing = Box::pin(outgoing);
        requests.send(request(2, 7, 2, 7)).expect("send");
        let sent = tokio::time::timeout(Duration::from_millis(20), outgoing.next())
            .await
            .expect("not held")
            .expect("one request");
        assert_eq!(sent.request.entries.len(), 2);
        assert_eq!(sent.folded, None);
    }

    #[tokio::test]
    async fn a_commit_only_request_nothing_follows_is_sent_alone_after_the_hold() {
        let (requests, outgoing) = folding();
        let mut outgoing = Box::pin(outgoing);
        requests.send(request(2, 7, 0, 7)).expect("send");
        let sent = outgoing.next().await.expect("sent after the hold");
        assert!(sent.request.entries.is_empty());
        assert_eq!(sent.folded, None);
        drop(requests);
        assert!(outgoing.next().await.is_none());
    }

    #[tokio::test]
    async fn with_a_zero_hold_a_commit_only_request_is_sent_at_once_and_never_folded() {
        let (requests, queue) = mpsc::unbounded_channel();
        let mut outgoing = Box::pin(fold_commit_only(
            UnboundedReceiverStream::new(queue),
            Duration::ZERO,
            || true,
        ));
        requests.send(request(2, 7, 0, 7)).expect("send");
        requests.send(request(2, 7, 1, 7)).expect("send");
        let first = outgoing.next().await.expect("first");
        let second = outgoing.next().await.expect("second");
        assert!(first.request.entries.is_empty() && first.folded.is_none());
        assert!(second.request.entries.len() == 1 && second.folded.is_none());
    }

    #[tokio::test]
    async fn a_commit_only_request_is_sent_at_once_and_never_folded_while_the_commit_may_not_wait() {
        let (requests, queue) = mpsc::unbounded_channel();
        let mut outgoing = Box::pin(fold_commit_only(
            UnboundedReceiverStream::new(queue),
            Duration::from_secs(60),
            || false,
        ));
        requests.send(request(2, 7, 0, 7)).expect("send");
        let first = tokio::time::timeout(Duration::from_secs(5), outgoing.next())
            .await
            .expect("not held")
            .expect("first");
        assert!(first.request.entries.is_empty() && first.folded.is_none());
    }

    #[tokio::test]
    async fn requests_from_another_point_or_vote_are_both_sent_in_order() {
        let (requests, outgoing) = folding();
        let outgoing = Box::pin(outgoing);
        requests.send(request(2, 7, 0, 7)).expect("send");
        requests.send(request(2, 8, 1, 7)).expect("send");
        requests.send(request(2, 9, 0, 9)).expect("send");
        requests.send(request(3, 9, 1, 9)).expect("send");
        drop(requests);
        let sent: Vec<Outgoing> = outgoing.collect().await;
        let shape: Vec<(u64, u64, usize, bool)> = sent
            .iter()
            .map(|o| {
                let prev = o.request.prev_log_id.map(|id| id.index).unwrap_or_default();
                (
                    o.request.vote.leader_id.term,
                    prev,
                    o.request.entries.len(),
                    o.folded.is_some(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, 7, 0, false),
                (2, 8, 1, false),
                (2, 9, 0, false),
                (3, 9, 1, false)
            ]
        );
    }

    #[test]
    fn a_folded_request_is_answered_first_with_its_own_point_and_a_failure_answers_it_alone() {
        let (first, second) = answers_of_folded(Some(log_id(2, 7)), Ok(Ok(Some(log_id(2, 8)))));
        assert!(matches!(first, Ok(Ok(Some(id))) if id == log_id(2, 7)));
        assert!(matches!(second, Some(Ok(Ok(Some(id)))) if id == log_id(2, 8)));

        let (first, second) = answers_of_folded(
            Some(log_id(2, 7)),
            Ok(Err(StreamAppendError::Conflict(log_id(2, 7)))),
        );
        assert!(matches!(first, Ok(Err(StreamAppendError::Conflict(id))) if id == log_id(2, 7)));
        assert!(second.is_none());
    }
}
