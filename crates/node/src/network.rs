//! The sending side of the peer protocol: openraft's `RaftNetworkFactory`
//! and `RaftNetworkV2` over gRPC (replication as pipelined bidirectional
//! streams, see [`crate::append_stream`]; a snapshot goes whole, as one client
//! stream of chunks). One lazily-connected tonic channel is cached per peer and
//! shared by every RPC to it (Raft messages, forwarded writes, read-index
//! requests); a channel is never opened per request.
//!
//! A test can cut a directed link for one kind of message ([`LinkFaults`]):
//! a message on a cut link is never sent, and the sender sees the peer as
//! unreachable, as if the connection could not be made.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::future::Future;

use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::SnapshotChunk;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::peer_codec::{decode_payload, encode_payload, MAX_PEER_MESSAGE_BYTES};
use crate::peer_tls::PeerTlsConfig;
use crate::proposal_backlog::ProposalBacklog;
use crate::request_error::is_member_removed_refusal;
use keel_raft::type_config::{MemberNode, NodeId, Snapshot, TypeConfig, Vote};

/// Bytes of snapshot dump per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The kinds of message a member sends its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerMessage {
    AppendEntries,
    Vote,
    InstallSnapshot,
    PreVote,
    ForwardWrite,
    ReadIndex,
    TransferLeader,
    LeaseRenew,
    LeaseTimeToLive,
    ChangeMembership,
}

impl PeerMessage {
    /// Every kind, so that a test cutting "every link" cuts a kind added later too.
    pub const ALL: [PeerMessage; 10] = [
        PeerMessage::AppendEntries,
        PeerMessage::Vote,
        PeerMessage::InstallSnapshot,
        PeerMessage::PreVote,
        PeerMessage::ForwardWrite,
        PeerMessage::ReadIndex,
        PeerMessage::TransferLeader,
        PeerMessage::LeaseRenew,
        PeerMessage::LeaseTimeToLive,
        PeerMessage::ChangeMembership,
    ];
}

/// Directed links cut per kind of message, shared by the members of an
/// in-process test cluster: `(from, to, kind)` in the set is not delivered.
#[derive(Clone, Default)]
pub struct LinkFaults {
    cut: Arc<RwLock<HashSet<(NodeId, NodeId, PeerMessage)>>>,
}

impl LinkFaults {
    /// Stops delivering `kind` messages from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId, kind: PeerMessage) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((from, to, kind));
    }

    /// Delivers `kind` messages from `from` to `to` again.
    pub fn restore(&self, from: NodeId, to: NodeId, kind: PeerMessage) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(from, to, kind));
    }

    /// Delivers every message again.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId, kind: PeerMessage) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to, kind))
    }
}

/// Cache of one gRPC channel per peer, keyed by member id and peer URL.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Addresses to dial instead of a member's advertised peer URL, by member
    /// id: lets a test harness route each directed link through its own proxy.
    dial_overrides: Arc<HashMap<NodeId, String>>,
    /// This member's id and the links a test cut (in-process test clusters).
    faults: Option<(NodeId, LinkFaults)>,
    /// Set once a peer refused a message because the cluster removed this member.
    removal: RemovalNotice,
    /// Each member's peer URL in the latest membership: a URL changed by
    /// MemberUpdate is dialed from then on (openraft keeps the node info
    /// it created a replication stream with).
    member_urls: Arc<RwLock<HashMap<NodeId, String>>>,
    /// The peer certificate and CAs `https://` peers are dialled with.
    tls: Option<Arc<PeerTlsConfig>>,
    /// This member's proposer queue, which replication sessions ask whether
    /// a next entry is coming (`commit_only_folding.rs`).
    proposal_backlog: ProposalBacklog,
}

/// The news that the cluster removed this member, from whoever learns it
/// first (a peer's refusal, or the applied removed-member list).
#[derive(Clone)]
pub struct RemovalNotice(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for RemovalNotice {
    fn default() -> Self {
        RemovalNotice(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl RemovalNotice {
    pub(crate) fn note_removed(&self) {
        if !self.0.send_replace(true) {
            tracing::warn!("this member was removed from the cluster");
        }
    }

    /// Resolves once this member is known to be removed.
    pub async fn removed(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.wait_for(|removed| *removed).await;
    }
}

/// Why no message could be sent to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerUnavailable {
    #[error("invalid peer url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the link to member {target:x} is cut for {kind:?} messages")]
    LinkCut { target: NodeId, kind: PeerMessage },
    #[error("peer URL {url} is https:// but this member has no peer TLS (--peer-cert-file, --peer-key-file or --peer-auto-tls)")]
    NoPeerTls { url: String },
}

/// A lazily-connecting channel to the peer at `peer_url`: an `https://` one
/// over TLS with `tls` (refused without it), an `http://` one plaintext.
pub(crate) fn peer_channel(
    peer_url: &str,
    tls: Option<&Arc<PeerTlsConfig>>,
) -> Result<Channel, PeerUnavailable> {
    let https = peer_url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    // tonic is given `http://` either way: the TLS is the connector's.
    let dialled = if https {
        format!("http://{}", &peer_url[8..])
    } else {
        peer_url.to_string()
    };
    let endpoint = Endpoint::from_shared(dialled)
        .map_err(|e| PeerUnavailable::InvalidUrl {
            url: peer_url.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    if !https {
        return Ok(endpoint.connect_lazy());
    }
    let tls = tls.cloned().ok_or_else(|| PeerUnavailable::NoPeerTls {
        url: peer_url.to_string(),
    })?;
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |uri| tls.clone().connect(uri))))
}

impl PeerNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// A network that dials `overrides[id]` instead of member `id`'s peer URL.
    pub fn with_dial_overrides(overrides: HashMap<NodeId, String>) -> Self {
        PeerNetwork {
            dial_overrides: Arc::new(overrides),
            ..Self::default()
        }
    }

    /// A network that dials `https://` peers with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<PeerTlsConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// A network from member `self_id` whose links `faults` can cut.
    pub fn with_link_faults(mut self, self_id: NodeId, faults: LinkFaults) -> Self {
        self.faults = Some((self_id, faults));
        self
    }

    /// Records every member's peer URL in the latest membership.
    pub(crate) fn learn_member_urls(&self, urls: HashMap<NodeId, String>) {
        *self.member_urls.write().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    /// The cached channel to `target`, created (lazily connecting) on first use.
    fn channel(&self, target: NodeId, peer_url: &str) -> Result<Channel, PeerUnavailable> {
        let latest_url = self
            .member_urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target)
            .cloned();
        let peer_url = latest_url.as_deref().unwrap_or(peer_url);
        let peer_url = self.dial_overrides.get(&target).map_or(peer_url, String::as_str);
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((url, channel)) = channels.get(&target) {
            if url == peer_url {
                return Ok(channel.clone());
            }
        }
        let channel = peer_channel(peer_url, self.tls.as_ref())?;
        channels.insert(target, (peer_url.to_string(), channel.clone()));
        Ok(channel)
    }

    /// The notice a peer's "you were removed" refusal sets.
    pub(crate) fn removal(&self) -> &RemovalNotice {
        &self.removal
    }

    pub(crate) fn proposal_backlog(&self) -> &ProposalBacklog {
        &self.proposal_backlog
    }

    /// Fails when a test cut the link to `target` for `kind` messages.
    pub(crate) fn check_link(&self, target: NodeId, kind: PeerMessage) -> Result<(), PeerUnavailable> {
        match &self.faults {
            Some((self_id, faults)) if faults.is_cut(*self_id, target, kind) => {
                Err(PeerUnavailable::LinkCut { target, kind })
            }
            _ => Ok(()),
        }
    }

    /// A peer-service client on the cached channel to `target`, for sending
    /// it one `kind` of message.
    pub fn client(
        &self,
        target: NodeId,
        peer_url: &str,
        kind: PeerMessage,
    ) -> Result<PeerClient<Channel>, PeerUnavailable> {
        self.check_link(target, kind)?;
        Ok(PeerClient::new(self.channel(target, peer_url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }
}

pub struct PeerConnection {
    target: NodeId,
    peer_url: String,
    network: PeerNetwork,
    /// Kept across the replication sessions openraft opens on this
    /// connection (`append_stream.rs`).
    session_patience: crate::append_stream::SessionPatience,
    /// Whether an entry-less request may wait for the next one to fold
    /// into (`commit_only_folding.rs`): on replication connections, never
    /// on heartbeat ones, whose requests confirm leadership for reads.
    fold_commit_only: bool,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            peer_url: node.peer_url.clone(),
            network: self.clone(),
            session_patience: Default::default(),
            fold_commit_only: true,
        }
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            fold_commit_only: false,
            ..self.new_client(target, node).await
        }
    }
}

/// Maps a failed gRPC call to openraft's error kinds: a transport failure
/// means the peer is unreachable (openraft backs off), anything else is a
/// network error (retried).
pub(crate) fn rpc_failure(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn network_error(error: &(impl std::error::Error + 'static)) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(error))
}

impl PeerConnection {
    fn client(&self, kind: PeerMessage) -> Result<PeerClient<Channel>, RPCError<TypeConfig>> {
        self.network
            .client(self.target, &self.peer_url, kind)
            .map_err(|unavailable| RPCError::Unreachable(Unreachable::new(&unavailable)))
    }

    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

/// The remote side's own failure (openraft stopped there), as a network error.
#[derive(Debug, thiserror::Error)]
#[error("member {target:x} failed: {message}")]
pub(crate) struct RemoteFailure {
    pub(crate) target: NodeId,
    pub(crate) message: String,
}

macro_rules! peer_call {
    ($self:ident, $method:ident, $kind:expr, $rpc:ident, $option:ident) => {{
        let mut client = $self.client($kind)?;
        let payload = encode_payload(&$rpc).map_err(|e| network_error(&e))?;
        let reply = client
            .$method(Self::request(payload, &$option))
            .await
            .map_err(|status| {
                if is_member_removed_refusal(&status) {
                    $self.network.removal.note_removed();
                }
                rpc_failure(status)
            })?;
        let result: Result<_, RaftError<TypeConfig>> =
            decode_payload(reply.get_ref()).map_err(|e| network_error(&e))?;
        result.map_err(|remote| {
            network_error(&RemoteFailure {
                target: $self.target,
                message: remote.to_string(),
            })
        })
    }};
}

/// The first chunk of a streamed snapshot: who sends it, what it is, and
/// how many bytes of dump follow (a shorter stream is refused).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: keel_raft::type_config::SnapshotMeta,
    pub size: u64,
}

/// Why a snapshot could not be streamed to a peer.
#[derive(Debug, thiserror::Error)]
enum SnapshotSendError {
    #[error("reading the snapshot file: {0}")]
    Read(#[from] std::io::Error),
    #[error("encoding the snapshot header: {0}")]
    Codec(#[from] crate::peer_codec::PeerCodecError),
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = keel_raft::state_machine::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        peer_call!(self, append_entries, PeerMessage::AppendEntries, rpc, option)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            let client = self.client(PeerMessage::AppendEntries)?;
            let answers = crate::append_stream::open(
                client,
                self.network.clone(),
                self.target,
                input,
                option,
                &self.session_patience,
                self.fold_commit_only,
            )
            .await?;
            let answers: BoxStream<'s, _> = Box::pin(answers);
            Ok(answers)
        })
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        peer_call!(self, transfer_leader, PeerMessage::TransferLeader, rpc, option)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let answer = peer_call!(self, vote, PeerMessage::Vote, rpc, option);
        if let Err(error) = &answer {
            // Expected while a peer is down (every cluster start sees it).
            tracing::debug!(peer = %format!("{:x}", self.target), %error, "vote request not answered");
        }
        answer
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        peer_call!(self, pre_vote, PeerMessage::PreVote, rpc, option)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self
            .network
            .client(self.target, &self.peer_url, PeerMessage::InstallSnapshot)
            .map_err(|unavailable| StreamingError::Unreachable(Unreachable::new(&unavailable)))?;
        // A snapshot without a dump (this member's keyspace) is dumped now:
        // the receiver installs the dump labelled with the point it holds,
        // at or after the snapshot's (openraft then sends the entries after
        // the snapshot's point; the receiver skips those it holds).
        let dump = snapshot
            .snapshot
            .into_dump(&snapshot.meta)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&SnapshotSendError::from(e))))?;
        let file = dump.file;
        let size = file
            .metadata()
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&SnapshotSendError::from(e))))?
            .len();
        let header = encode_payload(&SnapshotHeader {
            vote,
            meta: dump.meta,
            size,
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&SnapshotSendError::from(e))))?
        .data;
        // The dump is read lazily as gRPC pulls chunks; a read error ends
        // the stream early, which the receiver refuses as incomplete.
        let chunks = futures::stream::unfold((Some(file), header), |(file, header)| async move {
            let mut file = file?;
            let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                match file.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) => {
                        tracing::warn!(%error, "reading the snapshot to send");
                        return None;
                    }
                }
            }
            data.truncate(filled);
            let next = (filled == SNAPSHOT_CHUNK_BYTES).then_some(file);
            Some((SnapshotChunk { header, data }, (next, Vec::new())))
        });
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(option.hard_ttl());
        let sending = client.install_snapshot(request);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = sending => reply,
        };
        let reply = reply.map_err(|status| match rpc_failure(status) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        decode_payload(reply.get_ref()).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}
