//! One Raft member as a library: [`Node::start`] opens the member's storage,
//! starts openraft with keel's network, the proposer (write path), the
//! ReadIndex batchers (read path), the lessor's expiry loop (leases) and the leadership view, serves the peer
//! protocol on the given listeners (watching the leader's connection, see
//! `leader_connection.rs`) and bootstraps a new cluster. An
//! application embeds a member with that one call and talks to it through
//! [`NodeHandle`]; the `keel` server adds etcd's client services on top.

use std::sync::Arc;
use std::time::Duration;

use keel_api::keelpb::peer_server::PeerServer;
use keel_api::keelpb::{MembershipChange, WriteRequest, WriteResponse};
use keel_mvcc::MvccStore;
use keel_raft::state_machine::StateView;
use keel_raft::{KeelRaft, KeelStateMachine, MemberNode, NodeId, RaftStorageError, SledLogStore};
use keel_storage::Database;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::task::TaskTracker;

use crate::config::{openraft_config, Bootstrap, NodeConfig};
use crate::data_format::DataFormatError;
use crate::leader_connection::{CampaignTiming, LeaderConnectionWatch};
use crate::leadership::{LeaderContact, LeaderRoute, Leadership};
use crate::lease_clock::LeaseClock;
use crate::lessor::{min_lease_ttl, Lessor};
use crate::membership::MembershipChanges;
use crate::network::{PeerNetwork, RemovalNotice};
use crate::peer_codec::MAX_PEER_MESSAGE_BYTES;
use crate::peer_service::PeerService;
use crate::peer_tls::PeerTlsAcceptor;
use crate::read_path::ReadPath;
use crate::request_error::RequestError;
use crate::tls_accept::{handshaken_connections, AcceptedConnection};
use crate::write_path::WritePath;

/// How long a stopping node waits for open peer connections to finish their
/// requests before closing them.
const CONNECTION_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Why a node could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataFormat(#[from] DataFormatError),
    #[error("opening the keyspace database: {0}")]
    KeyspaceDatabase(#[from] keel_storage::StorageError),
    #[error("making the keyspace durable at shutdown: {0}")]
    KeyspaceNotDurable(#[source] keel_mvcc::MvccError),
    #[error("making the keyspace durable at shutdown: the flush task failed: {0}")]
    KeyspaceFlushTask(#[source] tokio::task::JoinError),
    #[error("opening the keyspace: {0}")]
    Keyspace(#[from] keel_mvcc::MvccError),
    #[error("opening {what}: {source}")]
    Storage {
        what: &'static str,
        source: RaftStorageError,
    },
    #[error("invalid Raft timing: {0}")]
    Timing(#[from] openraft::ConfigError),
    #[error("starting Raft: {0}")]
    RaftStart(String),
    #[error("bootstrapping the cluster: {0}")]
    Bootstrap(String),
    #[error(transparent)]
    PeerTls(#[from] crate::peer_tls::PeerTlsError),
    #[error("no peer listener to serve the peer protocol on")]
    NoPeerListener,
    #[error("the peer server failed: {0}")]
    PeerServer(String),
    #[error("Raft stopped on a fatal error: {0}")]
    RaftFatal(String),
    /// etcd's words for a member that learns the cluster removed it.
    #[error("the member has been permanently removed from the cluster")]
    RemovedFromCluster,
}

/// A running member's Raft side, cheap to clone: what services and
/// embedding applications use.
#[derive(Clone)]
pub struct NodeHandle {
    member_id: NodeId,
    raft: KeelRaft,
    leadership: Leadership,
    write_path: WritePath,
    read_path: ReadPath,
    lessor: Lessor,
    state: StateView,
    raft_log_database: Database,
    membership: MembershipChanges,
    removal: RemovalNotice,
}

impl NodeHandle {
    pub fn member_id(&self) -> NodeId {
        self.member_id
    }

    /// The openraft handle (metrics, membership).
    pub fn raft(&self) -> &KeelRaft {
        &self.raft
    }

    /// Who leads, as this member sees it.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The applied keyspace and member table.
    pub fn state(&self) -> &StateView {
        &self.state
    }

    /// Performs a write from this member (forwarded to the leader when this
    /// member follows); answers once it is applied here or on the leader.
    pub async fn write(&self, request: WriteRequest) -> Result<WriteResponse, RequestError> {
        self.write_path.write(request).await
    }

    /// Returns once a read of this member's state is linearizable.
    pub async fn linearize(&self) -> Result<(), RequestError> {
        self.read_path.linearize().await
    }

    /// etcd's leases: grant, revoke, keep-alive, TimeToLive, list.
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    /// Moves leadership to member `to` (etcd's `MoveLeader`); called on the
    /// leader, returns once `to` leads (`leader_transfer.rs`).
    pub async fn transfer_leadership(
        &self,
        to: NodeId,
        limit: Duration,
    ) -> Result<(), crate::leader_transfer::LeaderTransferError> {
        crate::leader_transfer::transfer_leadership(&self.raft, to, limit).await
    }

    /// Makes a membership change (etcd's MemberAdd, MemberRemove,
    /// MemberUpdate, MemberPromote) through the leader; answers the id of
    /// the member it was about (for an add, the id it got).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<NodeId, RequestError> {
        self.membership.change(change).await
    }

    /// Bytes the Raft log database takes on disk.
    pub fn raft_log_size_on_disk(&self) -> u64 {
        self.raft_log_database.size_on_disk().unwrap_or(0)
    }
}

/// A running member's Raft side and the tasks serving its peer protocol.
pub struct Node {
    handle: NodeHandle,
    peer_servers: JoinSet<Result<(), tonic::transport::Error>>,
    stop_peer_servers: tokio::sync::watch::Sender<bool>,
    /// The peer protocol's Raft calls in progress: Raft is shut down after
    /// them (or after `CONNECTION_DRAIN_LIMIT`), since a message left inside
    /// a stopped Raft is reported by openraft as an error.
    peer_raft_calls: TaskTracker,
    /// Acts on the leader's connection closing by calling into Raft; it is
    /// stopped before Raft is, so it never calls a stopped Raft (which
    /// openraft reports as an error).
    leader_connection_watch: tokio::task::JoinHandle<()>,
    /// Holds the state machine open: stopped with the node.
    membership_watch: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Starts a member: storage, Raft, the read and write paths, the peer
    /// protocol, and (for a new cluster) the bootstrap.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        crate::data_format::check_or_record(&config.data_dir)?;
        if let Some(tls) = &config.peer_tls {
            tls.check()?;
        }
        let peer_tls = config.peer_tls.clone().map(Arc::new);
        let (state_machine, log_store) = open_storage(&config)?;
        let raft_log_database = log_store.database().clone();
        let state = state_machine.view();
        let applied_writes = state_machine.applied_writes();
        let network = peer_network(&config).with_tls(peer_tls.clone());
        let raft = KeelRaft::new(
            config.member_id,
            openraft_config(&config.cluster_name, &config.timing)?,
            network.clone(),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::RaftStart(e.to_string()))?;

        let contact = LeaderContact::new();
        let handle = start_paths(
            &config,
            raft,
            state,
            raft_log_database,
            network.clone(),
            contact.clone(),
        );
        let (stop_peer_servers, stopping) = tokio::sync::watch::channel(false);
        let peer_raft_calls = TaskTracker::new();
        let leader_connections = config.test_hooks.leader_connections;
        let peer_servers = serve_peer_protocol(
            config.cluster_id,
            config.peer_listeners,
            peer_tls
                .filter(|tls| tls.serve_on_listeners)
                .map(PeerTlsAcceptor::new),
            &handle,
            contact.clone(),
            &leader_connections,
            PeerProtocolStop {
                stopping,
                raft_calls: peer_raft_calls.clone(),
            },
        )?;
        bootstrap(&handle.raft, config.bootstrap, config.initial_members).await?;
        let membership_watch = tokio::spawn(follow_membership(
            handle.raft.clone(),
            handle.state.clone(),
            handle.member_id,
            network.clone(),
        ));
        let leader_connection_watch = tokio::spawn(leader_connections.run(
            handle.raft.clone(),
            contact,
            CampaignTiming {
                heartbeat: config.timing.heartbeat_interval(),
                election_timeout: config.timing.election_timeout(),
            },
        ));
        tokio::spawn(crate::leader_log::log_leadership_changes(
            handle.raft.clone(),
            config.name,
        ));
        tokio::spawn(crate::snapshot_trigger::snapshot_every_n_writes(
            handle.raft.clone(),
            applied_writes,
            config.timing.snapshot_count,
        ));
        Ok(Node {
            handle,
            peer_servers,
            stop_peer_servers,
            peer_raft_calls,
            leader_connection_watch,
            membership_watch,
        })
    }

    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// Resolves when the node can no longer serve: its peer server stopped,
    /// or openraft stopped on a fatal (storage) error.
    pub async fn failed(&mut self) -> NodeError {
        tokio::select! {
            Some(result) = self.peer_servers.join_next() => match result {
                Ok(Ok(())) => NodeError::PeerServer("it stopped unexpectedly".to_string()),
                Ok(Err(e)) => NodeError::PeerServer(e.to_string()),
                Err(e) => NodeError::PeerServer(e.to_string()),
            },
            fatal = raft_stopped(&self.handle.raft) => NodeError::RaftFatal(fatal),
            _ = self.handle.removal.removed() => NodeError::RemovedFromCluster,
        }
    }

    /// Stops the node: the peer protocol, Raft, then makes the keyspace's
    /// applied state durable so a restart replays as little as possible.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let _ = self.stop_peer_servers.send(true);
        // The members of a stopping cluster close their connections to each
        // other: a follower would take its stopping leader for dead and call
        // into its own Raft while that stops.
        self.leader_connection_watch.abort();
        let _ = (&mut self.leader_connection_watch).await;
        self.membership_watch.abort();
        let _ = (&mut self.membership_watch).await;
        self.peer_raft_calls.close();
        if tokio::time::timeout(CONNECTION_DRAIN_LIMIT, self.peer_raft_calls.wait())
            .await
            .is_err()
        {
            tracing::warn!("peer Raft calls still in progress at shutdown");
        }
        if let Err(error) = self.handle.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        let store = self.handle.state.store().clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(NodeError::KeyspaceFlushTask)?
            .map_err(NodeError::KeyspaceNotDurable)?;
        // Open connections get GOAWAY and a bounded time to finish.
        let drained = tokio::time::timeout(CONNECTION_DRAIN_LIMIT, async {
            while self.peer_servers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.peer_servers.abort_all();
        }
        Ok(())
    }
}

fn open_storage(config: &NodeConfig) -> Result<(KeelStateMachine, SledLogStore), NodeError> {
    let data_dir = &config.data_dir;
    let keyspace_database = Database::open(&data_dir.join("mvcc"), config.keyspace_cache_bytes)?;
    let store = MvccStore::open(&keyspace_database)?;
    let state_machine = KeelStateMachine::open(
        store,
        &data_dir.join("snap"),
        config.test_hooks.fail_points.clone(),
    )
    .map_err(|source| NodeError::Storage {
        what: "the state machine",
        source,
    })?;
    let log_store = SledLogStore::open_for_member(&data_dir.join("raft"), state_machine.durable_applied())
        .map_err(|source| NodeError::Storage {
            what: "the Raft log",
            source,
        })?;
    let log_last = log_store.last_log_id().map_err(|error| NodeError::Storage {
        what: "the Raft log",
        source: error.into(),
    })?;
    state_machine
        .finish_interrupted_install(log_last)
        .map_err(|source| NodeError::Storage {
            what: "the state machine",
            source,
        })?;
    Ok((state_machine, log_store))
}

fn peer_network(config: &NodeConfig) -> PeerNetwork {
    let network = if config.peer_dial_overrides.is_empty() {
        PeerNetwork::new()
    } else {
        PeerNetwork::with_dial_overrides(config.peer_dial_overrides.clone())
    };
    match &config.test_hooks.link_faults {
        Some(faults) => network.with_link_faults(config.member_id, faults.clone()),
        None => network,
    }
}

/// Starts the proposer and the read-index batchers.
fn start_paths(
    config: &NodeConfig,
    raft: KeelRaft,
    state: StateView,
    raft_log_database: Database,
    network: PeerNetwork,
    contact: LeaderContact,
) -> NodeHandle {
    let election_timeout = config.timing.election_timeout();
    let leadership = Leadership::new(raft.clone(), config.member_id, election_timeout, contact);
    let request_timeout = config.timing.request_timeout();
    let leader_wait = 3 * election_timeout;
    let route = LeaderRoute {
        raft: raft.clone(),
        leadership: leadership.clone(),
        network,
        request_timeout,
        leader_wait,
    };
    let heartbeat = config.timing.heartbeat_interval();
    let lease_clock = LeaseClock::default();
    let write_path = WritePath::start(route.clone(), heartbeat, lease_clock.clone());
    let membership = MembershipChanges::new(&route, state.clone(), &config.cluster_name);
    let removal = route.network.removal().clone();
    let read_path = ReadPath::start(route.clone(), election_timeout);
    let lessor = Lessor::new(
        lease_clock,
        route,
        write_path.clone(),
        read_path.clone(),
        state.store().clone(),
        min_lease_ttl(election_timeout, heartbeat),
        heartbeat,
    );
    let expiry_tick = heartbeat.clamp(Duration::from_millis(50), Duration::from_millis(500));
    tokio::spawn(
        lessor
            .clone()
            .run_expiry(expiry_tick, config.lease_checkpoint_interval),
    );
    NodeHandle {
        member_id: config.member_id,
        raft,
        leadership,
        write_path,
        read_path,
        lessor,
        state,
        raft_log_database,
        membership,
        removal,
    }
}

/// Follows membership changes: the network dials each member at its
/// latest peer URL, and this member's removal is noted once its applied
/// state lists it as removed (a peer's refusal of its votes is the other
/// way it learns it).
async fn follow_membership(raft: KeelRaft, state: StateView, member_id: NodeId, network: PeerNetwork) {
    // The server metrics change with the membership (not with every write,
    // as the full metrics do); the URLs only with the membership's log id.
    let mut metrics = raft.server_metrics();
    let mut learned = None;
    loop {
        let membership = metrics.borrow_watched().membership_config.clone();
        if learned != Some(*membership.log_id()) {
            let urls = membership
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.peer_url.clone()))
                .collect();
            network.learn_member_urls(urls);
            learned = Some(*membership.log_id());
        }
        if state.is_removed(member_id) {
            network.removal().note_removed();
            return;
        }
        // The removed list is applied state, not a metric: look again soon.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await {
            return;
        }
    }
}

/// What tells the peer servers that the member stops, and counts the Raft
/// calls they have in progress.
struct PeerProtocolStop {
    stopping: tokio::sync::watch::Receiver<bool>,
    raft_calls: TaskTracker,
}

fn serve_peer_protocol(
    cluster_id: u64,
    listeners: Vec<TcpListener>,
    tls: Option<PeerTlsAcceptor>,
    handle: &NodeHandle,
    contact: LeaderContact,
    leader_connections: &LeaderConnectionWatch,
    stop: PeerProtocolStop,
) -> Result<JoinSet<Result<(), tonic::transport::Error>>, NodeError> {
    if listeners.is_empty() {
        return Err(NodeError::NoPeerListener);
    }
    let mut servers = JoinSet::new();
    for listener in listeners {
        let service = PeerServer::new(PeerService {
            member_id: handle.member_id,
            cluster_id,
            membership: handle.membership.clone(),
            raft: handle.raft.clone(),
            state: handle.state.clone(),
            write_path: handle.write_path.clone(),
            read_path: handle.read_path.clone(),
            lessor: handle.lessor.clone(),
            contact: contact.clone(),
            stopping: stop.stopping.clone(),
            raft_calls: stop.raft_calls.clone(),
        })
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let mut stop = stop.stopping.clone();
        let watch = leader_connections.clone();
        let accepted = accepted_without_nagle(listener);
        let connections: std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = std::io::Result<AcceptedConnection>> + Send>,
        > = match tls.clone() {
            None => Box::pin(accepted.map(|accepted| accepted.map(AcceptedConnection::Plain))),
            Some(acceptor) => handshaken_connections(accepted, move |tcp| acceptor.clone().handshake(tcp)),
        };
        let connections = connections.map(move |accepted| accepted.map(|stream| watch.accept(stream)));
        servers.spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(connections, async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
    }
    Ok(servers)
}

/// Accepted connections with Nagle's algorithm off (tonic sets it only on
/// listeners it binds itself).
pub fn accepted_without_nagle(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn bootstrap(
    raft: &KeelRaft,
    mode: Bootstrap,
    initial_members: std::collections::BTreeMap<NodeId, MemberNode>,
) -> Result<(), NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Bootstrap(e.to_string()))?;
    if initialized {
        tracing::info!("restarting on existing data");
        return Ok(());
    }
    if mode == Bootstrap::JoinExisting {
        tracing::info!("joining an existing cluster; waiting for the leader to contact this member");
        return Ok(());
    }
    let members = initial_members.len();
    // Every member of a new cluster proposes the same initial membership at
    // log index 0, so whichever of them is elected, they agree.
    match raft.initialize(initial_members).await {
        Ok(()) => tracing::info!(members, "bootstrapped a new cluster"),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
        Err(e) => return Err(NodeError::Bootstrap(e.to_string())),
    }
    Ok(())
}

/// Resolves when openraft's core has stopped on a fatal error.
///
/// It waits on openraft's server metrics, which change only with the
/// member's state, leader or membership, not on its full metrics, which
/// change several times per write: this future runs for the member's whole
/// life (on the thread that runs `main`, where every wake-up is a thread
/// switch). openraft drops the metrics' senders when its core stops, fatal
/// error or not; the error itself is in the full metrics.
async fn raft_stopped(raft: &KeelRaft) -> String {
    let mut server_metrics = raft.server_metrics();
    loop {
        if let Err(fatal) = &raft.metrics().borrow_watched().running_state {
            return fatal.to_string();
        }
        if server_metrics.changed().await.is_err() {
            return match &raft.metrics().borrow_watched().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "the Raft core is gone".to_string(),
            };
        }
    }
}
