//! etcd's `Lease` service as a typed API: grant, revoke, time-to-live and
//! the list of leases as unary calls (with the client's failover: grant and
//! revoke as writes, the others as reads), [`LeaseKeepAliveStream`] (one
//! renewal at a time over the bidirectional `LeaseKeepAlive` stream) and
//! [`LeaseKeeper`], a background task that renews a lease as etcd's Go
//! client does (every TTL/3 by default) and reports each renewal and the
//! loss of the lease.
//!
//! Invariant (the keeper's deadline): a keeper counts a lease alive until
//! the instant its last answered renewal was *sent* plus the TTL that
//! renewal answered (before the first answer: until the deadline it was
//! given, else 5 s, Go's default). The server starts a renewed lease's TTL
//! when it processes the renewal, which is after the send, so the keeper
//! never counts a lease alive that the server may already have expired.
//! Once that deadline passes without a newer answer, or the server answers
//! TTL <= 0 (no such lease), the keeper reports the lease lost and stops.

use std::time::Duration;

use futures::channel::mpsc as request_channel;
use futures::future::BoxFuture;
use futures::StreamExt;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use keel_api::WireError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use crate::{transport_failure, Client, ClientChannel, ClientError, Retry, MAX_RESPONSE_BYTES};

/// The deadline a keeper assumes before the first answer tells it the TTL
/// (etcd's Go client's `defaultTTL`).
pub const DEFAULT_FIRST_DEADLINE: Duration = Duration::from_secs(5);

/// How long a keeper waits before it opens a new stream after one failed
/// (etcd's Go client's `retryConnWait`), and its shortest renewal interval.
pub const RETRY_WAIT: Duration = Duration::from_millis(500);

/// Renewals a keeper holds for a reader that does not keep up; newer ones
/// are dropped (as etcd's Go client does), the lease is renewed regardless.
const RENEWALS_BUFFERED: usize = 16;

/// How a lease call fails. The variant is decided from the answer's type
/// (a renewal answered with TTL <= 0) or its gRPC code, never its text.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No such lease: it expired or was revoked (`NotFound`, or a renewal
    /// answered with TTL <= 0).
    #[error("{}", WireError::LeaseNotFound)]
    NotFound { id: i64 },
    /// A grant asked for a TTL above the server's maximum (`OutOfRange`).
    #[error("{}", .0.message())]
    TtlTooLarge(Box<Status>),
    /// A grant asked for an ID that is in use (`FailedPrecondition`).
    #[error("{}", .0.message())]
    AlreadyExists(Box<Status>),
    #[error(transparent)]
    Client(ClientError),
    /// The server ended the keep-alive stream.
    #[error("the lease keep-alive stream ended")]
    StreamEnded,
}

impl LeaseError {
    fn from_client(error: ClientError, id: i64) -> LeaseError {
        let Some(status) = error.status() else {
            return LeaseError::Client(error);
        };
        match status.code() {
            Code::NotFound => LeaseError::NotFound { id },
            Code::OutOfRange => LeaseError::TtlTooLarge(Box::new(status.clone())),
            Code::FailedPrecondition => LeaseError::AlreadyExists(Box::new(status.clone())),
            _ => LeaseError::Client(error),
        }
    }

    /// True when the stream's connection failed (a new stream may work).
    pub fn connection_lost(&self) -> bool {
        match self {
            LeaseError::Client(ClientError::Status(status)) => transport_failure(status),
            LeaseError::Client(ClientError::Unreachable { .. }) => true,
            _ => false,
        }
    }
}

fn lease_stub(channel: &ClientChannel) -> LeaseClient<ClientChannel> {
    LeaseClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

impl Client {
    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose it.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse, LeaseError> {
        let request = LeaseGrantRequest { ttl, id };
        self.call(Retry::Write, move |channel| {
            Box::pin(async move { lease_stub(&channel).lease_grant(request).await })
        })
        .await
        .map_err(|error| LeaseError::from_client(error, id))
    }

    /// Revokes a lease; the keys attached to it are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, LeaseError> {
        self.call(Retry::Write, move |channel| {
            Box::pin(async move { lease_stub(&channel).lease_revoke(LeaseRevokeRequest { id }).await })
        })
        .await
        .map_err(|error| LeaseError::from_client(error, id))
    }

    /// A lease's granted and remaining TTL (and with `keys` its keys). etcd
    /// answers a lease it does not know with TTL -1, not with an error.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, LeaseError> {
        self.call(Retry::Read, move |channel| {
            Box::pin(async move {
                lease_stub(&channel)
                    .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                    .await
            })
        })
        .await
        .map_err(|error| LeaseError::from_client(error, id))
    }

    /// Every live lease.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, LeaseError> {
        self.call(Retry::Read, |channel| {
            Box::pin(async move { lease_stub(&channel).lease_leases(LeaseLeasesRequest {}).await })
        })
        .await
        .map_err(|error| LeaseError::from_client(error, 0))
    }

    /// A keep-alive stream on the preferred endpoint, opened by its first
    /// renewal.
    pub fn lease_keep_alive_stream(&self) -> LeaseKeepAliveStream {
        let (endpoint, channel) = self.preferred_channel();
        let (requests, outgoing) = request_channel::unbounded::<LeaseKeepAliveRequest>();
        let client = self.clone();
        let call: StreamCall = Box::pin(async move {
            client.stream_token_ready().await?;
            lease_stub(&channel).lease_keep_alive(outgoing).await
        });
        LeaseKeepAliveStream {
            requests,
            state: StreamState::Calling(call),
            client: self.clone(),
            endpoint,
        }
    }

    /// Renews lease `id` in the background until it is lost or the keeper
    /// is dropped. `alive_until` is the deadline already known (a grant's
    /// send instant plus its TTL); `None` assumes [`DEFAULT_FIRST_DEADLINE`].
    pub fn keep_lease_alive(
        &self,
        id: i64,
        interval: KeepAliveInterval,
        alive_until: Option<Instant>,
    ) -> LeaseKeeper {
        let (renewals_sender, renewals) = mpsc::channel(RENEWALS_BUFFERED);
        let deadline = alive_until.unwrap_or_else(|| Instant::now() + DEFAULT_FIRST_DEADLINE);
        let (state_sender, state) = watch::channel(KeeperState {
            alive_until: deadline,
            renewed_at: None,
            lost: None,
        });
        let task = tokio::spawn(keep_alive_loop(
            self.clone(),
            id,
            interval,
            deadline,
            renewals_sender,
            state_sender,
        ));
        LeaseKeeper {
            id,
            renewals,
            state,
            task,
        }
    }
}

type StreamCall = BoxFuture<'static, Result<tonic::Response<Streaming<LeaseKeepAliveResponse>>, Status>>;

enum StreamState {
    Calling(StreamCall),
    Open(Box<Streaming<LeaseKeepAliveResponse>>),
    Ended,
}

/// One `LeaseKeepAlive` stream: each [`renew`](Self::renew) sends one
/// request and waits for its answer. A failed stream stays failed.
pub struct LeaseKeepAliveStream {
    requests: request_channel::UnboundedSender<LeaseKeepAliveRequest>,
    state: StreamState,
    client: Client,
    endpoint: usize,
}

impl LeaseKeepAliveStream {
    /// Renews lease `id` once: its answer, or [`LeaseError::NotFound`] when
    /// the server answers TTL <= 0 (the lease expired or was revoked).
    pub async fn renew(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, LeaseError> {
        self.requests
            .unbounded_send(LeaseKeepAliveRequest { id })
            .map_err(|_| LeaseError::StreamEnded)?;
        let response = self.next_answer().await?;
        if response.ttl <= 0 {
            return Err(LeaseError::NotFound { id });
        }
        Ok(response)
    }

    async fn next_answer(&mut self) -> Result<LeaseKeepAliveResponse, LeaseError> {
        loop {
            match &mut self.state {
                StreamState::Calling(call) => match call.await {
                    Ok(response) => self.state = StreamState::Open(Box::new(response.into_inner())),
                    Err(status) => return Err(self.failed(status)),
                },
                StreamState::Open(stream) => {
                    return match stream.next().await {
                        Some(Ok(answer)) => Ok(answer),
                        Some(Err(status)) => Err(self.failed(status)),
                        None => {
                            self.state = StreamState::Ended;
                            Err(LeaseError::StreamEnded)
                        }
                    }
                }
                StreamState::Ended => return Err(LeaseError::StreamEnded),
            }
        }
    }

    fn failed(&mut self, status: Status) -> LeaseError {
        self.state = StreamState::Ended;
        self.requests.close_channel();
        let error = LeaseError::from_client(ClientError::from(status), 0);
        if error.connection_lost() {
            self.client.stream_connection_lost(self.endpoint);
        }
        error
    }
}

/// When a keeper sends the next renewal after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAliveInterval {
    /// A third of the answered TTL in whole seconds, at least
    /// [`RETRY_WAIT`] (etcd's Go client).
    ThirdOfTtl,
    /// A fixed period (a leader elector's retry period).
    Every(Duration),
}

impl KeepAliveInterval {
    fn after(self, ttl_seconds: i64) -> Duration {
        match self {
            KeepAliveInterval::ThirdOfTtl => {
                Duration::from_secs(u64::try_from(ttl_seconds / 3).unwrap_or(0)).max(RETRY_WAIT)
            }
            KeepAliveInterval::Every(period) => period,
        }
    }
}

/// One answered renewal.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub response: LeaseKeepAliveResponse,
    /// When the renewal was sent (the lease lives at least until this
    /// plus the answered TTL).
    pub sent_at: Instant,
}

/// Why a keeper stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    /// The server answered that the lease does not exist.
    #[error("lease expired or revoked")]
    Expired,
    /// No renewal was answered before the lease's deadline.
    #[error("lease not renewed before its deadline ({last_error})")]
    NotRenewed { last_error: String },
}

#[derive(Debug, Clone)]
struct KeeperState {
    alive_until: Instant,
    /// The send instant of the last answered renewal.
    renewed_at: Option<Instant>,
    lost: Option<LeaseLost>,
}

/// A lease renewed in the background; dropping it stops the renewals.
pub struct LeaseKeeper {
    id: i64,
    renewals: mpsc::Receiver<Renewal>,
    state: watch::Receiver<KeeperState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The next answered renewal; `None` once the lease is lost and every
    /// buffered renewal was read.
    pub async fn next_renewal(&mut self) -> Option<Renewal> {
        self.renewals.recv().await
    }

    /// Why the lease was lost, once it is.
    pub fn lost_reason(&self) -> Option<LeaseLost> {
        self.state.borrow().lost.clone()
    }

    /// Waits until the lease is lost.
    pub async fn lost(&self) -> LeaseLost {
        let mut state = self.state.clone();
        loop {
            if let Some(lost) = state.borrow_and_update().lost.clone() {
                return lost;
            }
            if state.changed().await.is_err() {
                // The task is gone without saying why: it was aborted.
                return LeaseLost::NotRenewed {
                    last_error: "the keeper stopped".to_string(),
                };
            }
        }
    }

    /// The send instant of the last answered renewal (`None` before one).
    pub fn renewed_at(&self) -> Option<Instant> {
        self.state.borrow().renewed_at
    }

    /// Until when the lease is surely alive (see the invariant at the top).
    pub fn alive_until(&self) -> Instant {
        self.state.borrow().alive_until
    }
}

async fn keep_alive_loop(
    client: Client,
    id: i64,
    interval: KeepAliveInterval,
    mut deadline: Instant,
    renewals: mpsc::Sender<Renewal>,
    state: watch::Sender<KeeperState>,
) {
    let mut stream: Option<LeaseKeepAliveStream> = None;
    let mut last_error = String::from("no answer");
    let lost = loop {
        let sent_at = Instant::now();
        if sent_at >= deadline {
            break LeaseLost::NotRenewed { last_error };
        }
        let open = stream.get_or_insert_with(|| client.lease_keep_alive_stream());
        match tokio::time::timeout_at(deadline, open.renew(id)).await {
            Err(_) => {
                break LeaseLost::NotRenewed {
                    last_error: "no answer before the deadline".to_string(),
                }
            }
            Ok(Ok(response)) => {
                let ttl = response.ttl;
                deadline = sent_at + Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
                state.send_modify(|s| {
                    s.alive_until = deadline;
                    s.renewed_at = Some(sent_at);
                });
                if renewals.try_send(Renewal { response, sent_at }).is_err() {
                    tracing::debug!(lease = id, "keep-alive renewal not read; dropped");
                }
                tokio::time::sleep(interval.after(ttl)).await;
            }
            Ok(Err(LeaseError::NotFound { .. })) => break LeaseLost::Expired,
            Ok(Err(error)) => {
                tracing::debug!(lease = id, %error, "lease renewal failed; retrying on a new stream");
                last_error = error.to_string();
                stream = None;
                tokio::time::sleep_until((Instant::now() + RETRY_WAIT).min(deadline)).await;
            }
        }
    };
    tracing::debug!(lease = id, %lost, "lease keeper stopped");
    state.send_modify(|s| s.lost = Some(lost));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_interval_is_a_third_of_the_ttl_in_whole_seconds() {
        assert_eq!(KeepAliveInterval::ThirdOfTtl.after(10), Duration::from_secs(3));
        assert_eq!(KeepAliveInterval::ThirdOfTtl.after(60), Duration::from_secs(20));
        // Below 3 s Go's integer division gives 0: its send loop ticks every 500 ms.
        assert_eq!(KeepAliveInterval::ThirdOfTtl.after(2), RETRY_WAIT);
        let period = Duration::from_secs(2);
        assert_eq!(KeepAliveInterval::Every(period).after(15), period);
    }

    #[test]
    fn errors_are_told_apart_by_code_not_text() {
        let not_found = LeaseError::from_client(ClientError::from(WireError::LeaseNotFound.to_status()), 7);
        assert!(matches!(not_found, LeaseError::NotFound { id: 7 }));
        assert_eq!(not_found.to_string(), "etcdserver: requested lease not found");
        let too_large = LeaseError::from_client(ClientError::from(Status::out_of_range("some text")), 0);
        assert!(matches!(too_large, LeaseError::TtlTooLarge(_)));
        assert_eq!(too_large.to_string(), "some text");
        let exists = LeaseError::from_client(ClientError::from(Status::failed_precondition("x")), 0);
        assert!(matches!(exists, LeaseError::AlreadyExists(_)));
        let other = LeaseError::from_client(ClientError::from(Status::unimplemented("no lease here")), 0);
        assert!(matches!(other, LeaseError::Client(_)));
        assert!(!other.connection_lost());
    }

    #[tokio::test]
    async fn a_keeper_that_gets_no_answer_reports_the_lease_lost_at_its_deadline() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let client = Client::connect_lazy(crate::ClientConfig::new([endpoint])).expect("client");
        let started = Instant::now();
        let deadline = started + Duration::from_millis(1200);
        let mut keeper = client.keep_lease_alive(1, KeepAliveInterval::ThirdOfTtl, Some(deadline));
        let lost = tokio::time::timeout(Duration::from_secs(10), keeper.lost())
            .await
            .expect("lost within the deadline");
        assert!(matches!(lost, LeaseLost::NotRenewed { .. }), "{lost:?}");
        assert!(Instant::now() >= deadline, "not before the deadline");
        assert!(keeper.next_renewal().await.is_none());
        assert_eq!(keeper.lost_reason(), Some(lost));
        assert!(keeper.renewed_at().is_none());
    }
}
