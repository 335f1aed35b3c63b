//! Starting and running one member: identity checks, storage, Raft, the
//! client and peer gRPC servers, bootstrap, and the background tasks
//! (proposer, read-index rounds, attribute publishing). Elections are
//! openraft's (pre-vote on, a fresh random timeout every round).

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use keel_api::etcdserverpb::cluster_server::ClusterServer;
use keel_api::etcdserverpb::kv_server::KvServer;
use keel_api::etcdserverpb::lease_server::LeaseServer;
use keel_api::etcdserverpb::maintenance_server::MaintenanceServer;
use keel_api::etcdserverpb::watch_server::WatchServer;
use keel_api::keelpb::peer_server::PeerServer;
use keel_api::keelpb::{write_request, MemberAttributes, WriteRequest};
use keel_mvcc::MvccStore;
use keel_raft::network::LinkFaults;
use keel_raft::peer_codec::MAX_PEER_MESSAGE_BYTES;
use keel_raft::{FailPoints, KeelRaft, KeelStateMachine, MemberNode, PeerNetwork, SledLogStore};
use keel_storage::Database;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::authority_repair::AuthorityRepairingStream;
use crate::cluster_service::ClusterService;
use crate::config::{listen_address, split_urls, MemberFlags};
use crate::context::MemberContext;
use crate::identity::{claim_data_dir, cluster_id, initial_member_ids, member_id, DataDirIdentity};
use crate::kv_service::KvService;
use crate::leadership::{LeaderContact, Leadership};
use crate::maintenance_service::MaintenanceService;
use crate::peer_service::PeerService;
use crate::read_path::ReadPath;
use crate::request_checks::RequestLimits;
use crate::unserved_services::{UnservedLease, UnservedWatch};
use crate::write_path::WritePath;

/// Headroom over --max-request-bytes that gRPC accepts, so that oversized
/// requests get etcd's "request is too large" instead of a transport error.
const GRPC_DECODE_HEADROOM: usize = 8 * 1024 * 1024;

/// What an in-process test cluster attaches to a member it runs; a `keel`
/// process runs with none.
#[derive(Default)]
pub struct MemberTestHooks {
    /// Links the test cuts per kind of message.
    pub link_faults: Option<LinkFaults>,
    /// Storage steps the test can stop the member at.
    pub fail_points: FailPoints,
    /// Receives the member's Raft handle once it serves.
    pub started: Option<tokio::sync::oneshot::Sender<KeelRaft>>,
}

/// Runs one member until `shutdown` resolves or it fails.
pub async fn run_member(
    flags: MemberFlags,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    run_member_with_test_hooks(flags, MemberTestHooks::default(), shutdown).await
}

/// [`run_member`], with an in-process test cluster's hooks attached.
pub async fn run_member_with_test_hooks(
    flags: MemberFlags,
    hooks: MemberTestHooks,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    flags.validate()?;
    let initial = flags.initial_members()?;
    if initial.len().is_multiple_of(2) {
        tracing::warn!(
            members = initial.len(),
            "an even number of members tolerates no more failures than one member fewer; use 3 or 5"
        );
    }
    let token = &flags.initial_cluster_token;
    let own_peer_urls = split_urls(&flags.initial_advertise_peer_urls);
    let self_id = member_id(&own_peer_urls, token);
    let ids = initial_member_ids(&initial, token);
    let Some(position) = ids.iter().position(|id| *id == self_id) else {
        bail!(
            "--initial-cluster has no member named {:?} with peer URLs {:?} (--initial-advertise-peer-urls)",
            flags.name,
            own_peer_urls
        );
    };
    if initial[position].name != flags.name {
        bail!(
            "--initial-cluster names the member with peer URLs {:?} {:?}, but --name is {:?}",
            own_peer_urls,
            initial[position].name,
            flags.name
        );
    }
    let cluster = cluster_id(&ids, token);
    let data_dir = flags.data_dir();
    crate::data_format::check_or_record(&data_dir)?;
    claim_data_dir(
        &data_dir,
        &DataDirIdentity {
            cluster_id: cluster,
            member_id: self_id,
            name: flags.name.clone(),
        },
    )?;

    let mvcc_db = Database::open(
        &data_dir.join("mvcc"),
        flags.keyspace_cache_mb.saturating_mul(1024 * 1024),
    )
    .context("opening the keyspace database")?;
    let store = MvccStore::open(&mvcc_db).context("opening the keyspace")?;
    let state_machine = KeelStateMachine::open(store, &data_dir.join("snap"), hooks.fail_points.clone())
        .context("opening the state machine")?;
    let state = state_machine.view();
    let log_store = SledLogStore::open_for_member(&data_dir.join("raft"), state_machine.durable_applied())
        .context("opening the Raft log")?;

    let raft_config = openraft_config(&flags)?;
    let network = match &flags.peer_dial_overrides {
        None => PeerNetwork::new(),
        Some(spec) => {
            let mut overrides = std::collections::HashMap::new();
            for entry in crate::config::parse_initial_cluster(spec)? {
                let Some(position) = initial.iter().position(|m| m.name == entry.name) else {
                    bail!("--peer-dial-overrides names unknown member {:?}", entry.name);
                };
                overrides.insert(ids[position], entry.peer_urls[0].clone());
            }
            PeerNetwork::with_dial_overrides(overrides)
        }
    };
    let network = match hooks.link_faults {
        Some(faults) => network.with_link_faults(self_id, faults),
        None => network,
    };
    let raft = KeelRaft::new(
        self_id,
        raft_config,
        network.clone(),
        log_store.clone(),
        state_machine,
    )
    .await
    .map_err(|e| anyhow!("starting Raft: {e}"))?;

    let election_timeout = flags.election_timeout();
    let contact = LeaderContact::new();
    let leadership = Leadership::new(raft.clone(), self_id, election_timeout, contact.clone());
    let request_timeout = Duration::from_secs(5) + 2 * election_timeout;
    let leader_wait = 3 * election_timeout;
    let heartbeat = Duration::from_millis(flags.heartbeat_interval);
    let write_path = WritePath::start(
        raft.clone(),
        leadership.clone(),
        network.clone(),
        request_timeout,
        leader_wait,
        heartbeat,
    );
    let read_path = ReadPath::start(
        raft.clone(),
        leadership.clone(),
        network.clone(),
        request_timeout,
        leader_wait,
        election_timeout,
    );
    let raft_db_path = data_dir.join("raft");
    let context = Arc::new(MemberContext {
        cluster_id: cluster,
        member_id: self_id,
        raft: raft.clone(),
        leadership,
        write_path: write_path.clone(),
        read_path,
        state,
        limits: RequestLimits {
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
        },
        raft_db_size: Box::new(move || dir_size(&raft_db_path)),
    });

    let peer_listeners = bind_all(&flags.listen_peer_urls, "peer").await?;
    let client_listeners = bind_all(&flags.listen_client_urls, "client").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in peer_listeners {
        let service = PeerServer::new(PeerService::new(context.clone(), contact.clone()))
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let mut stop = stop_rx.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(peer_connections(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
    }
    let (mut health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let decode_limit = flags.max_request_bytes + GRPC_DECODE_HEADROOM;
    for listener in client_listeners {
        let mut stop = stop_rx.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(
                    KvServer::new(KvService::new(context.clone()))
                        .max_decoding_message_size(decode_limit)
                        .max_encoding_message_size(usize::MAX),
                )
                .add_service(ClusterServer::new(ClusterService::new(context.clone())))
                .add_service(MaintenanceServer::new(MaintenanceService::new(context.clone())))
                .add_service(WatchServer::new(UnservedWatch))
                .add_service(LeaseServer::new(UnservedLease))
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(client_connections(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
    }

    bootstrap(&raft, &flags, &initial, &ids).await?;
    tokio::spawn(crate::leader_log::log_leadership_changes(
        raft.clone(),
        flags.name.clone(),
    ));
    tokio::spawn(publish_attributes(
        context.clone(),
        MemberAttributes {
            member_id: self_id,
            name: flags.name.clone(),
            client_urls: split_urls(&flags.advertise_client_urls),
        },
    ));
    if let Some(started) = hooks.started {
        let _ = started.send(raft.clone());
    }
    tracing::info!(
        name = %flags.name,
        member_id = %format!("{self_id:x}"),
        cluster_id = %format!("{cluster:x}"),
        data_dir = %data_dir.display(),
        clients = %flags.listen_client_urls,
        peers = %flags.listen_peer_urls,
        "member started"
    );

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down on signal"),
        Some(result) = servers.join_next() => {
            let error = match result {
                Ok(Ok(())) => anyhow!("a gRPC server stopped unexpectedly"),
                Ok(Err(e)) => anyhow!("a gRPC server failed: {e}"),
                Err(e) => anyhow!("a gRPC server task failed: {e}"),
            };
            let _ = raft.shutdown().await;
            return Err(error);
        }
        fatal = raft_stopped(&raft) => {
            // A storage error stops openraft for good; a member that can no
            // longer replicate must not linger as if it could.
            let _ = stop_tx.send(true);
            return Err(anyhow!("Raft stopped on a fatal error: {fatal}; the member exits"));
        }
    }
    let _ = stop_tx.send(true);
    if let Err(error) = raft.shutdown().await {
        tracing::warn!(%error, "raft shutdown");
    }
    mvcc_db
        .make_durable_async()
        .await
        .context("flushing the keyspace")?;
    // Open connections get GOAWAY and a bounded time to finish their
    // requests; a client that keeps an idle connection open (or never reads
    // the GOAWAY) must not keep a stopped member alive.
    let drained = tokio::time::timeout(CONNECTION_DRAIN_LIMIT, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            limit = ?CONNECTION_DRAIN_LIMIT,
            "closing connections still open after the drain limit"
        );
        servers.abort_all();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a stopping member waits for open client and peer connections to
/// finish their requests before closing them.
const CONNECTION_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Accepted peer connections, with Nagle's algorithm off (tonic sets it
/// only on listeners it binds itself).
fn peer_connections(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Accepted client connections: Nagle off, and the `:authority` repair
/// that lets etcd 3.4's per-endpoint calls through (see authority_repair.rs).
fn client_connections(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityRepairingStream>> {
    peer_connections(listener).map(|accepted| accepted.map(AuthorityRepairingStream::new))
}

/// Resolves when openraft's core has stopped on a fatal error.
async fn raft_stopped(raft: &KeelRaft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_watched().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the Raft core is gone".to_string();
        }
    }
}

fn openraft_config(flags: &MemberFlags) -> anyhow::Result<Arc<openraft::Config>> {
    let election = flags.election_timeout;
    let config = openraft::Config {
        cluster_name: flags.initial_cluster_token.clone(),
        heartbeat_interval: flags.heartbeat_interval,
        // openraft's follower campaigns once its leader's lease (always
        // `election_timeout_max`: the time during which voters refuse any
        // other candidate, and a leader with no quorum acknowledgement
        // refuses proposals) and then a random timeout drawn afresh every
        // round from [min, max) have passed since it last heard the leader:
        // with max = --election-timeout T and min = two heartbeats, between
        // T + 2 heartbeats and 2T of silence, as etcd's [T, 2T).
        election_timeout_min: 2 * flags.heartbeat_interval,
        election_timeout_max: election,
        enable_elect: true,
        // A member that cannot win (stale log, minority side of a
        // partition) asks first and never raises its term.
        enable_pre_vote: Some(true),
        // The time to stream a whole snapshot and install it (network v2
        // sends it in one call, not in chunks with a timeout each).
        install_snapshot_timeout: (10 * election).max(120_000),
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(flags.snapshot_count),
        max_in_snapshot_log_to_keep: flags.snapshot_count.min(5_000),
        // A restarted leader always runs an election and starts its new
        // term with a blank entry, which the read path's index relies on
        // (read_path.rs); openraft 0.10 would otherwise let it resume its
        // old term with a commit index read from disk.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .map_err(|e| anyhow!("invalid raft timing flags: {e}"))?,
    ))
}

async fn bind_all(urls: &str, what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for url in split_urls(urls) {
        let address = listen_address(&url).await?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for {what} traffic on {url}"))?;
        listeners.push(listener);
    }
    if listeners.is_empty() {
        bail!("no {what} URL to listen on");
    }
    Ok(listeners)
}

async fn bootstrap(
    raft: &KeelRaft,
    flags: &MemberFlags,
    initial: &[crate::config::InitialMember],
    ids: &[u64],
) -> anyhow::Result<()> {
    if raft.is_initialized().await.map_err(|e| anyhow!("{e}"))? {
        tracing::info!("restarting on existing data");
        return Ok(());
    }
    if flags.initial_cluster_state == "existing" {
        tracing::info!("joining an existing cluster; waiting for the leader to contact this member");
        return Ok(());
    }
    let members: BTreeMap<u64, MemberNode> = initial
        .iter()
        .zip(ids)
        .map(|(member, id)| {
            (
                *id,
                MemberNode {
                    name: member.name.clone(),
                    peer_url: member.peer_urls[0].clone(),
                },
            )
        })
        .collect();
    // Every member of a new cluster proposes the same initial membership at
    // log index 0, so whichever of them is elected, they agree.
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = initial.len(), "bootstrapped a new cluster"),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
        Err(e) => bail!("bootstrapping the cluster: {e}"),
    }
    Ok(())
}

/// Publishes this member's name and client URLs through Raft (as etcd
/// does), retrying until it is applied.
async fn publish_attributes(context: Arc<MemberContext>, attributes: MemberAttributes) {
    loop {
        if context.state.member_attributes().get(&attributes.member_id) == Some(&attributes) {
            return;
        }
        let request = WriteRequest {
            request: Some(write_request::Request::MemberAttributes(attributes.clone())),
        };
        match context.write_path.write(request).await {
            Ok(_) => {
                tracing::info!(name = %attributes.name, "published member attributes");
                return;
            }
            Err(status) => tracing::debug!(%status, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
