//! The queue a follower's forwarders take their batches from (forwarded
//! writes, lease renewals): requests waiting for the leader, taken a batch
//! at a time, every batch for one leader.
//!
//! Invariant: requests leave the queue in the order they entered it; a
//! request for another leader than the batch being filled ends that batch
//! and starts the next one.

use keel_api::keelpb::peer_client::PeerClient;
use keel_raft::NodeId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How many requests may wait in the queue.
const QUEUED_AT_MOST: usize = 16 * 1024;

/// One request waiting for its batch, and where its answer goes.
pub(crate) struct QueuedRequest<Request, Answer> {
    pub(crate) leader: NodeId,
    pub(crate) client: PeerClient<Channel>,
    pub(crate) request: Request,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// The queueing side; cheap to clone.
pub(crate) struct BatchQueueSender<Request, Answer>(mpsc::Sender<QueuedRequest<Request, Answer>>);

impl<Request, Answer> Clone for BatchQueueSender<Request, Answer> {
    fn clone(&self) -> Self {
        BatchQueueSender(self.0.clone())
    }
}

/// The batching side, read by one forwarder task.
pub(crate) struct BatchQueue<Request, Answer> {
    queued: mpsc::Receiver<QueuedRequest<Request, Answer>>,
    /// A request taken from the queue for another leader than the batch
    /// being filled; it starts the next batch.
    next_batch_start: Option<QueuedRequest<Request, Answer>>,
}

pub(crate) fn batch_queue<Request, Answer>(
) -> (BatchQueueSender<Request, Answer>, BatchQueue<Request, Answer>) {
    let (sender, queued) = mpsc::channel(QUEUED_AT_MOST);
    (
        BatchQueueSender(sender),
        BatchQueue {
            queued,
            next_batch_start: None,
        },
    )
}

impl<Request, Answer> BatchQueueSender<Request, Answer> {
    /// Queues `request` for `leader`; the receiver of its answer, or `None`
    /// when the forwarder has stopped (nothing was sent).
    pub(crate) async fn queue(
        &self,
        leader: NodeId,
        client: PeerClient<Channel>,
        request: Request,
        deadline: Instant,
    ) -> Option<oneshot::Receiver<Answer>> {
        let (reply, answer) = oneshot::channel();
        let queued = QueuedRequest {
            leader,
            client,
            request,
            deadline,
            reply,
        };
        self.0.send(queued).await.ok()?;
        Some(answer)
    }
}

impl<Request, Answer> BatchQueue<Request, Answer> {
    /// The next batch: the first request waiting (waited for), then those
    /// queued behind it for the same leader, at most `max_requests`, and no
    /// more once the batch's `weight` reached `max_weight`. `None` once
    /// every sender is gone.
    pub(crate) async fn next_batch(
        &mut self,
        max_requests: usize,
        max_weight: usize,
        weight: impl Fn(&Request) -> usize,
    ) -> Option<Vec<QueuedRequest<Request, Answer>>> {
        let first = match self.next_batch_start.take() {
            Some(first) => first,
            None => self.queued.recv().await?,
        };
        let mut batch_weight = weight(&first.request);
        let mut batch = vec![first];
        while batch.len() < max_requests && batch_weight < max_weight {
            let Ok(next) = self.queued.try_recv() else { break };
            if next.leader != batch[0].leader {
                self.next_batch_start = Some(next);
                break;
            }
            batch_weight += weight(&next.request);
            batch.push(next);
        }
        Some(batch)
    }
}

/// The latest deadline of `batch`'s requests (the batch's call may last
/// that long; each request's own deadline is kept by its caller).
pub(crate) fn latest_deadline<Request, Answer>(batch: &[QueuedRequest<Request, Answer>]) -> Option<Instant> {
    batch.iter().map(|queued| queued.deadline).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> PeerClient<Channel> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        PeerClient::new(channel)
    }

    #[tokio::test]
    async fn a_batch_holds_one_leaders_requests_in_order_within_its_limits() {
        let (sender, mut queue) = batch_queue::<usize, ()>();
        let deadline = Instant::now();
        let mut answers = Vec::new();
        for (leader, request) in [(1, 10), (1, 11), (1, 12), (2, 20), (1, 13)] {
            answers.push(
                sender
                    .queue(leader, client(), request, deadline)
                    .await
                    .expect("queued"),
            );
        }
        let requests =
            |batch: Vec<QueuedRequest<usize, ()>>| batch.into_iter().map(|q| q.request).collect::<Vec<_>>();
        let first = queue.next_batch(2, usize::MAX, |_| 0).await.expect("a batch");
        assert_eq!(requests(first), vec![10, 11], "at most 2 requests");
        let second = queue.next_batch(8, 1, |_| 1).await.expect("a batch");
        assert_eq!(requests(second), vec![12], "its weight reached the limit");
        let third = queue.next_batch(8, usize::MAX, |_| 0).await.expect("a batch");
        assert_eq!(
            requests(third),
            vec![20],
            "another leader's request starts a batch of its own"
        );
        let fourth = queue.next_batch(8, usize::MAX, |_| 0).await.expect("a batch");
        assert_eq!(requests(fourth), vec![13]);
        drop(sender);
        assert!(
            queue.next_batch(8, usize::MAX, |_| 0).await.is_none(),
            "no sender left"
        );
    }
}
