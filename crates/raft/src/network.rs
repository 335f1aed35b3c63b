//! The sending side of the peer protocol: openraft's `RaftNetworkFactory`
//! over gRPC. One lazily-connected tonic channel is cached per peer and
//! shared by every RPC to it (Raft messages, forwarded writes, read-index
//! requests); a channel is never opened per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_api::keelpb::peer_client::PeerClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::peer_codec::{decode_payload, encode_payload, MAX_PEER_MESSAGE_BYTES};
use crate::type_config::{MemberNode, NodeId, TypeConfig};

/// Cache of one gRPC channel per peer, keyed by member id and peer URL.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Addresses to dial instead of a member's advertised peer URL, by member
    /// id: lets a test harness route each directed link through its own proxy.
    dial_overrides: Arc<HashMap<NodeId, String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid peer url {url:?}: {reason}")]
pub struct InvalidPeerUrl {
    pub url: String,
    pub reason: String,
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

    /// The cached channel to `target`, created (lazily connecting) on first use.
    pub fn channel(&self, target: NodeId, peer_url: &str) -> Result<Channel, InvalidPeerUrl> {
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
        let endpoint = Endpoint::from_shared(peer_url.to_string())
            .map_err(|e| InvalidPeerUrl {
                url: peer_url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(target, (peer_url.to_string(), channel.clone()));
        Ok(channel)
    }

    /// A peer-service client on the cached channel to `target`.
    pub fn client(&self, target: NodeId, peer_url: &str) -> Result<PeerClient<Channel>, InvalidPeerUrl> {
        Ok(PeerClient::new(self.channel(target, peer_url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }
}

pub struct PeerConnection {
    target: NodeId,
    client: Result<PeerClient<Channel>, InvalidPeerUrl>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            client: self.client(target, &node.peer_url),
        }
    }
}

/// Maps a failed gRPC call to openraft's error kinds: a transport failure
/// means the peer is unreachable (openraft backs off), anything else is a
/// network error (retried).
fn rpc_failure<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, MemberNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerConnection {
    fn client<E: std::error::Error>(&self) -> Result<PeerClient<Channel>, RPCError<NodeId, MemberNode, E>> {
        match &self.client {
            Ok(client) => Ok(client.clone()),
            Err(invalid) => Err(RPCError::Unreachable(Unreachable::new(invalid))),
        }
    }

    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

macro_rules! peer_call {
    ($self:ident, $method:ident, $rpc:ident, $option:ident, $err:ty) => {{
        let mut client = $self.client::<$err>()?;
        let payload = encode_payload(&$rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = client
            .$method(Self::request(payload, &$option))
            .await
            .map_err(rpc_failure::<$err>)?;
        let result: Result<_, $err> =
            decode_payload(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|remote| RPCError::RemoteError(RemoteError::new($self.target, remote)))
    }};
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        peer_call!(self, append_entries, rpc, option, RaftError<NodeId>)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        peer_call!(self, install_snapshot, rpc, option, RaftError<NodeId, InstallSnapshotError>)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        peer_call!(self, vote, rpc, option, RaftError<NodeId>)
    }
}
