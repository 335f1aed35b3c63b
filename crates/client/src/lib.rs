//! keel's Rust client, shared by `keelctl`, the `keel` server (local-cluster),
//! the tests and the benchmarks. It speaks etcd's v3 gRPC API, so it drives a
//! real etcd just as well as keel. [`launch`] holds what the two launchers of
//! member processes (local-cluster, the test fixtures) share; [`watch`] is
//! etcd's Watch stream as a typed API; [`lease`] etcd's Lease service (and a
//! keeper that renews a lease in the background); [`session`], [`lock`] and
//! [`election`] are etcd's concurrency recipes on top (a session lease, a
//! distributed mutex, leader election with a fencing token and Kubernetes'
//! timings).
//!
//! Endpoint failover, as etcd's client does it: the client keeps one cached
//! channel per endpoint and sends each call to its preferred endpoint; when
//! that endpoint cannot be reached it moves on to the next. Reads move on
//! after any transport failure; writes only when the failure proves the
//! request was never sent (or the member said "no leader", which keel answers
//! only before proposing), so a write is never applied twice by a retry.

mod auth;
mod auth_token;
pub mod election;
mod error;
pub mod launch;
pub mod leader_elector;
pub mod lease;
pub mod lock;
pub mod session;
pub mod tls;
pub mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use auth_token::CallerToken;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use keel_api::etcdserverpb::cluster_client::ClusterClient;
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_api::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentRequest,
    DefragmentResponse, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse,
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use keel_api::WireError;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

pub use auth_token::{ClientChannel, Credentials, TokenInterceptor};
pub use error::{membership_change_when_ready, never_reached_server, transport_failure, ClientError};
pub use lease::{KeepAliveInterval, LeaseError, LeaseKeepAliveStream, LeaseKeeper, LeaseLost, Renewal};
pub use tls::{TlsError, TlsOptions};
pub use watch::{WatchError, WatchReceiver, WatchSender, WatchStreamOptions};

/// etcdctl's default `--dial-timeout`.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest response the client accepts (etcd's client allows up to 2 GiB).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`, `http://host:port` or `https://host:port`, in order of
    /// preference.
    pub endpoints: Vec<String>,
    /// How long `connect` waits for the first endpoint to answer, and each
    /// later (re)connection attempt to one endpoint.
    pub dial_timeout: Duration,
    /// Bound on each call including its failover attempts (`None`: unbounded).
    pub request_timeout: Option<Duration>,
    /// How `https://` endpoints are dialled (see [`tls`]).
    pub tls: TlsOptions,
    /// Who the client authenticates as (see [`auth_token`]); `None`: no one.
    pub credentials: Option<Credentials>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            request_timeout: None,
            tls: TlsOptions::default(),
            credentials: None,
        }
    }

    /// Authenticate as `user` before the first call, and send its token on
    /// every call.
    pub fn with_credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

/// `http://` + `endpoint` unless it names a scheme already.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

struct ConnectedEndpoint {
    name: String,
    channel: Channel,
}

struct Shared {
    endpoints: Vec<ConnectedEndpoint>,
    preferred: AtomicUsize,
    config: ClientConfig,
    /// Built from `config.tls` once, when an endpoint or a flag needs it.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A cheap-to-clone handle; clones share the endpoints' channels and the
/// auth token.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    token: Arc<CallerToken>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Idempotent: move on after any transport failure.
    Read,
    /// Move on only when the request was provably not applied.
    Write,
}

/// The client's TLS configuration, built when an endpoint is dialled over
/// TLS or a certificate file is named.
fn tls_for(config: &ClientConfig) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
    let needed = config.tls.names_files() || config.endpoints.iter().any(|e| config.tls.dials_tls(e));
    Ok(if needed {
        Some(tls::client_tls_config(&config.tls)?)
    } else {
        None
    })
}

fn lazy_channel(
    endpoint: &str,
    config: &ClientConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Channel, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    // tonic gets `http://` either way: TLS is this client's own connector's
    // work, whichever features tonic was built with.
    let (url, tls) = if config.tls.dials_tls(endpoint) {
        let tls = tls.ok_or_else(|| invalid("no TLS configuration".to_string()))?;
        (format!("http://{}", tls::authority(endpoint)), Some(tls.clone()))
    } else {
        (endpoint_url(endpoint), None)
    };
    let builder = Endpoint::from_shared(url)
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(config.dial_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok(match tls {
        Some(tls) => builder
            .connect_with_connector_lazy(tower::service_fn(move |uri| tls::connect_tls(tls.clone(), uri))),
        None => builder.connect_lazy(),
    })
}

impl Client {
    /// Connects to the first endpoint that answers within the dial timeout
    /// (all are dialled at once); fails naming every endpoint tried. With
    /// credentials, also authenticates.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::connect_lazy(config)?;
        let timeout = client.shared.config.dial_timeout;
        let mut attempts: FuturesUnordered<_> = client
            .shared
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                let health = MaintenanceClient::new(endpoint.channel.clone());
                async move { (index, probe(health).await) }
            })
            .collect();
        let mut last_error = String::from("no answer");
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = attempts.next() => match next {
                    Some((index, Ok(()))) => {
                        client.shared.preferred.store(index, Ordering::Relaxed);
                        // As etcd's client: a wrong password fails the connect.
                        client.authenticate_now().await?;
                        return Ok(client);
                    }
                    Some((_, Err(error))) => last_error = error,
                    None => break,
                },
                _ = &mut deadline => {
                    last_error = "dial timed out".to_string();
                    break;
                }
            }
        }
        Err(ClientError::Unreachable {
            endpoints: client.endpoint_names(),
            timeout,
            last_error,
        })
    }

    /// A client whose channels connect on first use.
    pub fn connect_lazy(config: ClientConfig) -> Result<Client, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let tls = tls_for(&config)?;
        let endpoints = config
            .endpoints
            .iter()
            .map(|name| {
                Ok(ConnectedEndpoint {
                    name: name.clone(),
                    channel: lazy_channel(name, &config, tls.as_ref())?,
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let token = CallerToken::from_credentials(config.credentials.clone());
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                preferred: AtomicUsize::new(0),
                config,
                tls,
            }),
            token,
        })
    }

    /// The endpoints, as given.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.shared.endpoints.iter().map(|e| e.name.clone()).collect()
    }

    /// A client that talks to `endpoint` only (sharing its channel when it
    /// is one of this client's endpoints).
    pub fn pinned(&self, endpoint: &str) -> Result<Client, ClientError> {
        let config = ClientConfig {
            endpoints: vec![endpoint.to_string()],
            ..self.shared.config.clone()
        };
        let tls = match &self.shared.tls {
            Some(tls) => Some(tls.clone()),
            None => tls_for(&config)?,
        };
        let channel = match self.shared.endpoints.iter().find(|e| e.name == endpoint) {
            Some(known) => known.channel.clone(),
            None => lazy_channel(endpoint, &config, tls.as_ref())?,
        };
        let endpoints = vec![ConnectedEndpoint {
            name: endpoint.to_string(),
            channel,
        }];
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                preferred: AtomicUsize::new(0),
                config,
                tls,
            }),
            token: self.token.clone(),
        })
    }

    /// The same endpoints and channels, sending `token` on every call
    /// instead of this client's own (never authenticating itself): a member
    /// acting for its caller with the caller's token.
    pub fn with_token(&self, token: &str) -> Result<Client, ClientError> {
        Ok(Client {
            shared: self.shared.clone(),
            token: CallerToken::given(token)?,
        })
    }

    /// Authenticates now, if this client has credentials and no token yet
    /// (calls do it themselves; this surfaces a wrong password at once).
    pub async fn authenticate_now(&self) -> Result<(), ClientError> {
        let (_, channel) = self.preferred_raw_channel();
        self.token.ensure(&channel).await
    }

    fn preferred_raw_channel(&self) -> (usize, Channel) {
        let index = self.shared.preferred.load(Ordering::Relaxed) % self.shared.endpoints.len();
        (index, self.shared.endpoints[index].channel.clone())
    }

    /// `channel` sending this client's token.
    fn with_token_sent(&self, channel: Channel) -> ClientChannel {
        ClientChannel::new(channel, TokenInterceptor::new(self.token.clone()))
    }

    /// The preferred endpoint's index and channel, for a stream opened on
    /// it (streams do not fail over by themselves). The caller's stream
    /// call runs [`Client::stream_token_ready`] first.
    fn preferred_channel(&self) -> (usize, ClientChannel) {
        let (index, channel) = self.preferred_raw_channel();
        (index, self.with_token_sent(channel))
    }

    /// Before a stream is opened: authenticates if this client has
    /// credentials and no token yet.
    async fn stream_token_ready(&self) -> Result<(), Status> {
        let (_, channel) = self.preferred_raw_channel();
        match self.token.ensure(&channel).await {
            Ok(()) => Ok(()),
            Err(ClientError::Status(status)) => Err(*status),
            Err(other) => Err(Status::unauthenticated(other.to_string())),
        }
    }

    /// A stream on `endpoint` lost its connection: the next endpoint becomes
    /// the preferred one (unless another caller moved on already).
    fn stream_connection_lost(&self, endpoint: usize) {
        let shared = &self.shared;
        let next = (endpoint + 1) % shared.endpoints.len();
        let _ = shared
            .preferred
            .compare_exchange(endpoint, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The raw KV stub on the preferred endpoint's channel (no failover),
    /// for callers that drive the channel themselves, such as load generators.
    /// It sends no token; see [`Client::kv_stub_with_token`].
    pub fn kv_stub(&self) -> KvClient<Channel> {
        KvClient::new(self.preferred_raw_channel().1)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// The preferred endpoint's channel (its TLS, and the client's token as
    /// of each call), for stubs of services this client has no method for,
    /// such as etcd's v3lock and v3election. No failover.
    pub fn channel(&self) -> ClientChannel {
        self.preferred_channel().1
    }

    /// [`Client::kv_stub`] sending the client's token (as of each call;
    /// authenticate first with [`Client::authenticate_now`] when the client
    /// has credentials).
    pub fn kv_stub_with_token(&self) -> KvClient<ClientChannel> {
        kv_stub(&self.preferred_channel().1)
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, ClientError> {
        self.call(Retry::Read, move |channel| {
            let request = request.clone();
            Box::pin(async move { kv_stub(&channel).range(request).await })
        })
        .await
    }

    pub async fn put(&self, request: PutRequest) -> Result<PutResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = request.clone();
            Box::pin(async move { kv_stub(&channel).put(request).await })
        })
        .await
    }

    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = request.clone();
            Box::pin(async move { kv_stub(&channel).delete_range(request).await })
        })
        .await
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = request.clone();
            Box::pin(async move { kv_stub(&channel).txn(request).await })
        })
        .await
    }

    pub async fn compact(&self, request: CompactionRequest) -> Result<CompactionResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = request;
            Box::pin(async move { kv_stub(&channel).compact(request).await })
        })
        .await
    }

    pub async fn member_list(&self) -> Result<MemberListResponse, ClientError> {
        self.call(Retry::Read, |channel| {
            Box::pin(async move {
                ClusterClient::new(channel)
                    .member_list(MemberListRequest { linearizable: false })
                    .await
            })
        })
        .await
    }

    /// etcd's MemberAdd: a voter, or a learner with `is_learner`.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner,
            };
            Box::pin(async move { ClusterClient::new(channel).member_add(request).await })
        })
        .await
    }

    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            Box::pin(async move {
                ClusterClient::new(channel)
                    .member_remove(MemberRemoveRequest { id })
                    .await
            })
        })
        .await
    }

    /// etcd's MemberUpdate: the member's new peer URLs.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            let request = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls.clone(),
            };
            Box::pin(async move { ClusterClient::new(channel).member_update(request).await })
        })
        .await
    }

    /// etcd's MemberPromote: a learner in sync with the leader becomes a voter.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, ClientError> {
        self.call(Retry::Write, move |channel| {
            Box::pin(async move {
                ClusterClient::new(channel)
                    .member_promote(MemberPromoteRequest { id })
                    .await
            })
        })
        .await
    }

    /// `Maintenance.Status` of one endpoint (no failover: the answer is about
    /// that member).
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse, ClientError> {
        self.pinned(endpoint)?
            .call(Retry::Read, |channel| {
                Box::pin(async move { maintenance_stub(&channel).status(StatusRequest {}).await })
            })
            .await
    }

    /// `Maintenance.Snapshot` of one endpoint: its keyspace as a stream of
    /// blobs, the last one the SHA-256 of the others.
    pub async fn snapshot(&self, endpoint: &str) -> Result<tonic::Streaming<SnapshotResponse>, ClientError> {
        self.pinned(endpoint)?
            .call(Retry::Read, |channel| {
                Box::pin(async move { maintenance_stub(&channel).snapshot(SnapshotRequest {}).await })
            })
            .await
    }

    /// `Maintenance.HashKV` of one endpoint at `revision` (0 = its current).
    pub async fn hash_kv(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse, ClientError> {
        self.pinned(endpoint)?
            .call(Retry::Read, move |channel| {
                Box::pin(async move {
                    maintenance_stub(&channel)
                        .hash_kv(HashKvRequest { revision })
                        .await
                })
            })
            .await
    }

    /// `Maintenance.Defragment` of one endpoint (its own keyspace only).
    /// Sent once: a defragmentation is long and changes nothing a retry
    /// would need.
    pub async fn defragment(&self, endpoint: &str) -> Result<DefragmentResponse, ClientError> {
        self.pinned(endpoint)?
            .call(Retry::Write, |channel| {
                Box::pin(async move { maintenance_stub(&channel).defragment(DefragmentRequest {}).await })
            })
            .await
    }

    /// `Maintenance.Alarm`: GET lists (a read), ACTIVATE and DEACTIVATE go
    /// through Raft (a write: never sent twice).
    pub async fn alarm(&self, request: AlarmRequest) -> Result<AlarmResponse, ClientError> {
        let retry = if request.action() == alarm_request::AlarmAction::Get {
            Retry::Read
        } else {
            Retry::Write
        };
        self.call(retry, move |channel| {
            Box::pin(async move { maintenance_stub(&channel).alarm(request).await })
        })
        .await
    }

    /// `Maintenance.MoveLeader` on one endpoint (it must be the leader): makes
    /// member `target` the leader. No failover, and never sent twice.
    pub async fn move_leader(&self, endpoint: &str, target: u64) -> Result<MoveLeaderResponse, ClientError> {
        self.pinned(endpoint)?
            .call(Retry::Write, move |channel| {
                Box::pin(async move {
                    maintenance_stub(&channel)
                        .move_leader(MoveLeaderRequest { target_id: target })
                        .await
                })
            })
            .await
    }

    async fn call<T>(
        &self,
        retry: Retry,
        send: impl Fn(ClientChannel) -> BoxFuture<'static, Result<tonic::Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        let attempts = self.call_with_token(retry, send);
        match self.shared.config.request_timeout {
            None => attempts.await,
            Some(timeout) => tokio::time::timeout(timeout, attempts)
                .await
                .map_err(|_| ClientError::Timeout(timeout))?,
        }
    }

    /// The call with a token, sent once more with a new token when the
    /// member refused the one it carried (see [`auth_token`]).
    async fn call_with_token<T>(
        &self,
        retry: Retry,
        send: impl Fn(ClientChannel) -> BoxFuture<'static, Result<tonic::Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        let (_, channel) = self.preferred_raw_channel();
        self.token.ensure(&channel).await?;
        let sent = self.token.sent_token();
        match self.call_with_failover(retry, &send).await {
            Err(error) if self.token.may_renew_after(&error) => {
                let (_, channel) = self.preferred_raw_channel();
                self.token.renew(&channel, sent.as_ref()).await?;
                self.call_with_failover(retry, &send).await
            }
            outcome => outcome,
        }
    }

    async fn call_with_failover<T>(
        &self,
        retry: Retry,
        send: &impl Fn(ClientChannel) -> BoxFuture<'static, Result<tonic::Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        let count = self.shared.endpoints.len();
        let first = self.shared.preferred.load(Ordering::Relaxed) % count;
        let mut last_status = None;
        for offset in 0..count {
            let index = (first + offset) % count;
            let endpoint = &self.shared.endpoints[index];
            match send(self.with_token_sent(endpoint.channel.clone())).await {
                Ok(response) => {
                    if offset > 0 {
                        self.shared.preferred.store(index, Ordering::Relaxed);
                    }
                    return Ok(response.into_inner());
                }
                Err(status) if may_try_next_endpoint(retry, &status) => {
                    tracing::debug!(endpoint = %endpoint.name, %status, "endpoint failed; trying the next one");
                    last_status = Some(status);
                }
                Err(status) => return Err(status.into()),
            }
        }
        match last_status {
            Some(status) if count > 1 && transport_failure(&status) => Err(ClientError::Unreachable {
                endpoints: self.endpoint_names(),
                timeout: self.shared.config.dial_timeout,
                last_error: status.message().to_string(),
            }),
            Some(status) => Err(status.into()),
            None => Err(ClientError::NoEndpoints),
        }
    }
}

fn may_try_next_endpoint(retry: Retry, status: &Status) -> bool {
    if WireError::from_status(status) == Some(WireError::NoLeader) {
        return true;
    }
    match retry {
        Retry::Read => transport_failure(status),
        Retry::Write => never_reached_server(status),
    }
}

fn kv_stub(channel: &ClientChannel) -> KvClient<ClientChannel> {
    KvClient::new(channel.clone())
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(usize::MAX)
}

fn maintenance_stub(channel: &ClientChannel) -> MaintenanceClient<ClientChannel> {
    MaintenanceClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

async fn probe(mut maintenance: MaintenanceClient<Channel>) -> Result<(), String> {
    match maintenance.status(StatusRequest {}).await {
        Ok(_) => Ok(()),
        // An answer of any kind proves the endpoint is reachable.
        Err(status) if !transport_failure(&status) => Ok(()),
        Err(status) => Err(failure_text(&status)),
    }
}

/// A transport failure's message with its innermost cause (a TLS alert,
/// a refused connection), which tonic's message alone ("transport error")
/// leaves out.
fn failure_text(status: &Status) -> String {
    let mut innermost = None;
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        innermost = Some(error);
        source = error.source();
    }
    match innermost.map(|error| error.to_string()) {
        Some(cause) if !status.message().contains(&cause) => format!("{}: {cause}", status.message()),
        _ => status.message().to_string(),
    }
}
