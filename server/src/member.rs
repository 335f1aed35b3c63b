//! Running one `keel` member: checks its flags and identity, starts its Raft
//! node (`keel_node::Node`), serves etcd's client services next to it (the
//! lock and election services through a client to itself),
//! publishes its attributes, and stops both halves in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use keel_api::etcdserverpb::auth_server::AuthServer;
use keel_api::etcdserverpb::cluster_server::ClusterServer;
use keel_api::etcdserverpb::kv_server::KvServer;
use keel_api::etcdserverpb::lease_server::LeaseServer;
use keel_api::etcdserverpb::maintenance_server::MaintenanceServer;
use keel_api::keelpb::{write_request, MemberAttributes, WriteRequest};
use keel_api::v3electionpb::election_server::ElectionServer;
use keel_api::v3lockpb::lock_server::LockServer;
use keel_client::Client;
use keel_node::{Bootstrap, Node, NodeConfig, NodeTestHooks, PeerTlsConfig, RaftTiming};
use keel_raft::{KeelRaft, MemberNode, NodeId};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::authority_repair::AuthorityRepairingStream;
use crate::client_tls::{accepted_connections, ClientTlsAcceptor, ClientTlsFiles};
use crate::cluster_service::ClusterService;
use crate::config::{listen_address, split_urls, InitialMember, ListenScheme, MemberFlags};
use crate::context::MemberContext;
use crate::election_service::ElectionService;
use crate::identity::{
    claim_data_dir, cluster_id, initial_member_ids, member_id, recorded_identity, DataDirIdentity,
};
use crate::kv_service::KvService;
use crate::lease_service::LeaseService;
use crate::lock_service::LockService;
use crate::loopback::loopback_client;
use crate::maintenance_service::MaintenanceService;
use crate::request_checks::RequestLimits;
use crate::watch_service::{WatchGrpcService, WatchService};

/// Headroom over --max-request-bytes that gRPC accepts, so that oversized
/// requests get etcd's "request is too large" instead of a transport error.
const GRPC_DECODE_HEADROOM: usize = 8 * 1024 * 1024;

/// How long a stopping member waits for open client connections to finish
/// their requests before closing them.
const CONNECTION_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What an in-process test cluster attaches to a member it runs; a `keel`
/// process runs with none.
#[derive(Default)]
pub struct MemberTestHooks {
    /// The node's hooks: cut links, storage fail points.
    pub node: NodeTestHooks,
    /// Receives the member's Raft handle once it serves.
    pub started: Option<tokio::sync::oneshot::Sender<KeelRaft>>,
}

/// Who this member is, as its flags and the initial cluster say.
struct MemberIdentity {
    member_id: NodeId,
    cluster_id: u64,
    initial: Vec<InitialMember>,
    initial_ids: Vec<NodeId>,
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
    let peer_tls = crate::peer_tls_flags::peer_tls_from_flags(&flags)?;
    if let Some(tls) = &peer_tls {
        tls.check().context(
            "the peer TLS files (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file, --peer-crl-file)",
        )?;
    }
    let identity = if flags.initial_cluster_state == "existing" {
        joining_identity(&flags, peer_tls.clone()).await?
    } else {
        check_identity(&flags)?
    };
    let data_dir = flags.data_dir();
    keel_node::data_format::check_or_record(&data_dir)?;
    claim_data_dir(
        &data_dir,
        &DataDirIdentity {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            name: flags.name.clone(),
        },
    )?;
    let client_tls = match ClientTlsFiles::from_flags(&flags)? {
        Some(files) => Some(ClientTlsAcceptor::new(files).context(
            "the client TLS files (--cert-file, --key-file, --trusted-ca-file, --client-crl-file)",
        )?),
        None => None,
    };
    // Both listener sets are bound before anything serves, so a taken port
    // fails the start at once.
    let peer_listeners = bind_all(&flags.listen_peer_urls, ListenerRole::Peer, None)
        .await?
        .into_iter()
        .map(|listener| listener.listener)
        .collect();
    let client_listeners = bind_all(
        &flags.listen_client_urls,
        ListenerRole::Client,
        client_tls.as_ref(),
    )
    .await?;
    let metrics_listeners = match &flags.listen_metrics_urls {
        Some(urls) => bind_all(urls, ListenerRole::Metrics, client_tls.as_ref()).await?,
        None => Vec::new(),
    };
    // The lock and election services' client to this member (see loopback.rs).
    let loopback = loopback_client(&client_listeners).context("the member's client to itself")?;
    let mut node = Node::start(node_config(
        &flags,
        &identity,
        peer_listeners,
        peer_tls,
        hooks.node,
    )?)
    .await
    .map_err(anyhow::Error::from)?;
    let context = Arc::new(MemberContext {
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
        node: node.handle().clone(),
        limits: RequestLimits {
            max_request_bytes: flags.max_request_bytes,
            max_txn_ops: flags.max_txn_ops,
        },
        space_quota: crate::space_quota::SpaceQuota::from_flag(flags.quota_backend_bytes),
        bcrypt_cost: flags.bcrypt_cost,
        jwt_tokens: flags.jwt_tokens()?.map(Arc::new),
    });
    context
        .node
        .state()
        .tokens()
        .set_ttl(std::time::Duration::from_secs(flags.auth_token_ttl));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut client_servers =
        serve_client_services(client_listeners, &context, &loopback, &flags, stop_rx.clone()).await;
    serve_metrics(&mut client_servers, metrics_listeners, &context, stop_rx);
    tokio::spawn(publish_attributes(
        context.clone(),
        MemberAttributes {
            member_id: identity.member_id,
            name: flags.name.clone(),
            client_urls: split_urls(&flags.advertise_client_urls),
        },
    ));
    if let Some(started) = hooks.started {
        let _ = started.send(node.handle().raft().clone());
    }
    tracing::info!(
        name = %flags.name,
        member_id = %format!("{:x}", identity.member_id),
        cluster_id = %format!("{:x}", identity.cluster_id),
        data_dir = %data_dir.display(),
        clients = %flags.listen_client_urls,
        peers = %flags.listen_peer_urls,
        "member started"
    );

    let failure = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down on signal");
            None
        }
        Some(result) = client_servers.join_next() => Some(match result {
            Ok(Ok(())) => anyhow!("a client gRPC server stopped unexpectedly"),
            Ok(Err(e)) => anyhow!("a client gRPC server failed: {e}"),
            Err(e) => anyhow!("a client gRPC server task failed: {e}"),
        }),
        // A storage error stops openraft for good; a member that can no
        // longer replicate must not linger as if it could.
        error = node.failed() => Some(anyhow!("{error}; the member exits")),
    };
    let _ = stop_tx.send(true);
    node.shutdown().await.context("stopping the Raft node")?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    // Open connections get GOAWAY and a bounded time to finish their
    // requests; a client that keeps an idle connection open (or never reads
    // the GOAWAY) must not keep a stopped member alive.
    let drained = tokio::time::timeout(CONNECTION_DRAIN_LIMIT, async {
        while client_servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            limit = ?CONNECTION_DRAIN_LIMIT,
            "closing connections still open after the drain limit"
        );
        client_servers.abort_all();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Checks the flags and logs those that have no effect in keel.
fn check_flags(flags: &MemberFlags) -> anyhow::Result<()> {
    flags.validate()?;
    for flag in flags.etcd_only.without_effect() {
        tracing::info!(flag = %flag, "etcd flag accepted; it has no effect in keel");
    }
    Ok(())
}

/// How long a member joining a running cluster tries to reach it.
const JOIN_LIMIT: Duration = Duration::from_secs(15);

/// The identity of a member started with `--initial-cluster-state
/// existing`: the one its data dir recorded, or else the id `member add`
/// gave the member with its peer URLs, learned from a running member.
async fn joining_identity(
    flags: &MemberFlags,
    peer_tls: Option<PeerTlsConfig>,
) -> anyhow::Result<MemberIdentity> {
    check_flags(flags)?;
    let initial = flags.initial_members()?;
    let token = &flags.initial_cluster_token;
    let own_peer_urls = split_urls(&flags.initial_advertise_peer_urls);
    if let Some(recorded) = recorded_identity(&flags.data_dir())? {
        return Ok(MemberIdentity {
            member_id: recorded.member_id,
            cluster_id: recorded.cluster_id,
            initial_ids: initial_member_ids(&initial, token),
            initial,
        });
    }
    let others: Vec<String> = initial
        .iter()
        .filter(|member| member.name != flags.name)
        .flat_map(|member| member.peer_urls.clone())
        .collect();
    tracing::info!(peers = ?others, "joining a running cluster: asking it for this member's id");
    let cluster = keel_node::join::ask_cluster_members(&others, peer_tls, JOIN_LIMIT).await?;
    let Some(own) = cluster
        .members
        .iter()
        .find(|member| own_peer_urls.contains(&member.peer_url))
    else {
        bail!(
            "cluster {:x} has no member with peer URLs {:?} (--initial-advertise-peer-urls); add it first \
             (etcdctl member add {} --peer-urls={})",
            cluster.cluster_id,
            own_peer_urls,
            flags.name,
            own_peer_urls.join(",")
        );
    };
    let initial_ids = initial
        .iter()
        .map(|member| {
            cluster
                .members
                .iter()
                .find(|known| member.peer_urls.contains(&known.peer_url))
                .map_or_else(|| member_id(&member.peer_urls, token), |known| known.id)
        })
        .collect();
    Ok(MemberIdentity {
        member_id: own.id,
        cluster_id: cluster.cluster_id,
        initial,
        initial_ids,
    })
}

/// Checks the flags and derives this member's and the cluster's ids.
fn check_identity(flags: &MemberFlags) -> anyhow::Result<MemberIdentity> {
    check_flags(flags)?;
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
    Ok(MemberIdentity {
        member_id: self_id,
        cluster_id: cluster_id(&ids, token),
        initial,
        initial_ids: ids,
    })
}

/// The Raft node's configuration from the member's flags.
fn node_config(
    flags: &MemberFlags,
    identity: &MemberIdentity,
    peer_listeners: Vec<TcpListener>,
    peer_tls: Option<PeerTlsConfig>,
    test_hooks: NodeTestHooks,
) -> anyhow::Result<NodeConfig> {
    let initial_members: BTreeMap<NodeId, MemberNode> = identity
        .initial
        .iter()
        .zip(&identity.initial_ids)
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
    let mut peer_dial_overrides = HashMap::new();
    if let Some(spec) = &flags.peer_dial_overrides {
        for entry in crate::config::parse_initial_cluster(spec)? {
            if entry.name.is_empty() {
                bail!(
                    "--peer-dial-overrides entry {:?} names no member",
                    entry.peer_urls[0]
                );
            }
            let Some(position) = identity.initial.iter().position(|m| m.name == entry.name) else {
                bail!("--peer-dial-overrides names unknown member {:?}", entry.name);
            };
            peer_dial_overrides.insert(identity.initial_ids[position], entry.peer_urls[0].clone());
        }
    }
    Ok(NodeConfig {
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
        name: flags.name.clone(),
        cluster_name: flags.initial_cluster_token.clone(),
        data_dir: flags.data_dir(),
        initial_members,
        bootstrap: if flags.initial_cluster_state == "existing" {
            Bootstrap::JoinExisting
        } else {
            Bootstrap::NewCluster
        },
        peer_listeners,
        peer_tls,
        timing: RaftTiming {
            heartbeat_interval_ms: flags.heartbeat_interval,
            election_timeout_ms: flags.election_timeout,
            snapshot_count: flags.snapshot_count,
        },
        keyspace_cache_bytes: flags.keyspace_cache_mb.saturating_mul(1024 * 1024),
        peer_dial_overrides,
        lease_checkpoint_interval: flags.lease_checkpoint_interval,
        test_hooks,
    })
}

/// Serves etcd's client services on every client listener.
async fn serve_client_services(
    listeners: Vec<BoundListener>,
    context: &Arc<MemberContext>,
    loopback: &Client,
    flags: &MemberFlags,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<Result<(), tonic::transport::Error>> {
    let (mut health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let decode_limit = flags.max_request_bytes + GRPC_DECODE_HEADROOM;
    let mut servers = tokio::task::JoinSet::new();
    let grpc_services = tonic::service::Routes::new(
        KvServer::new(KvService::new(context.clone()))
            .max_decoding_message_size(decode_limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(ClusterServer::new(ClusterService::new(context.clone())))
    .add_service(MaintenanceServer::new(MaintenanceService::new(context.clone())))
    .add_service(WatchGrpcService::new(
        WatchService::new(context.clone(), flags.experimental_watch_progress_notify_interval),
        decode_limit,
    ))
    .add_service(LeaseServer::new(LeaseService::new(context.clone())))
    .add_service(AuthServer::new(crate::auth_service::AuthService::new(
        context.clone(),
    )))
    .add_service(LockServer::new(LockService::new(
        context.clone(),
        loopback.clone(),
    )))
    .add_service(ElectionServer::new(ElectionService::new(
        context.clone(),
        loopback.clone(),
    )))
    .add_service(health_service);
    // etcd's HTTP/JSON gateway beside gRPC on the same port.
    let gateway_calls = tonic::service::Routes::from(
        grpc_services
            .clone()
            .into_axum_router()
            .layer(crate::metrics_endpoint::GrpcMetricsLayer),
    );
    let client_routes = keel_gateway::client_port_routes(
        grpc_services,
        gateway_calls,
        keel_gateway::GatewaySettings {
            max_request_bytes: flags.max_request_bytes,
        },
        crate::health_endpoints::health_routes(context.clone())
            .merge(crate::metrics_endpoint::metrics_routes(context.clone())),
    );
    for listener in listeners {
        let mut stop = stop.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .accept_http1(true)
                .max_concurrent_streams(flags.max_concurrent_streams)
                .layer(crate::metrics_endpoint::GrpcMetricsLayer)
                .layer(crate::caller_deadline::CallerDeadlineLayer)
                .add_routes(client_routes.clone())
                .serve_with_incoming_shutdown(client_connections(listener), async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                }),
        );
    }
    servers
}

/// `--listen-metrics-urls`: `/metrics` and `/health` over plain HTTP.
fn serve_metrics(
    servers: &mut tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
    listeners: Vec<BoundListener>,
    context: &Arc<MemberContext>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let routes = tonic::service::Routes::from(
        crate::health_endpoints::health_routes(context.clone())
            .merge(crate::metrics_endpoint::metrics_routes(context.clone())),
    );
    for listener in listeners {
        let mut stop = stop.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes.clone())
                .serve_with_incoming_shutdown(
                    accepted_connections(listener.listener, listener.tls),
                    async move {
                        let _ = stop.wait_for(|stopped| *stopped).await;
                    },
                ),
        );
    }
}

/// Accepted client connections: Nagle off, TLS on an `https://` URL, and
/// the `:authority` repair that lets etcd 3.4's per-endpoint calls through
/// (see authority_repair.rs).
fn client_connections(
    listener: BoundListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<AuthorityRepairingStream<keel_node::tls_accept::AcceptedConnection>>,
> {
    accepted_connections(listener.listener, listener.tls)
        .map(|accepted| accepted.map(AuthorityRepairingStream::new))
}

/// A bound listener, with the TLS its URL asks for.
pub(crate) struct BoundListener {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<ClientTlsAcceptor>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerRole {
    Peer,
    Client,
    Metrics,
}

impl ListenerRole {
    fn name(self) -> &'static str {
        match self {
            ListenerRole::Peer => "peer",
            ListenerRole::Client => "client",
            ListenerRole::Metrics => "metrics",
        }
    }
}

/// Binds every URL of `urls`; an `https://` one serves with `tls`, and is
/// refused when there is none (etcd's message); a peer URL's TLS is the
/// node's.
async fn bind_all(
    urls: &str,
    role: ListenerRole,
    tls: Option<&ClientTlsAcceptor>,
) -> anyhow::Result<Vec<BoundListener>> {
    let what = role.name();
    let mut listeners = Vec::new();
    for url in split_urls(urls) {
        let (address, scheme) = listen_address(&url).await?;
        let tls = match scheme {
            ListenScheme::Http => None,
            // The node serves the peer port's TLS (peer_tls_flags.rs
            // checked that it has a certificate for it).
            ListenScheme::Https if role == ListenerRole::Peer => None,
            ListenScheme::Https => Some(tls.cloned().with_context(|| {
                format!("TLS key/cert (--cert-file, --key-file) must be provided for {what} url {url} with HTTPS scheme")
            })?),
        };
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for {what} traffic on {url}"))?;
        listeners.push(BoundListener { listener, tls });
    }
    if listeners.is_empty() {
        bail!("no {what} URL to listen on");
    }
    Ok(listeners)
}

/// Publishes this member's name and client URLs through Raft (as etcd
/// does), retrying until it is applied.
async fn publish_attributes(context: Arc<MemberContext>, attributes: MemberAttributes) {
    loop {
        if context
            .node
            .state()
            .member_attributes()
            .get(&attributes.member_id)
            == Some(&attributes)
        {
            return;
        }
        let request = WriteRequest {
            checked_auth_revision: 0,
            request: Some(write_request::Request::MemberAttributes(attributes.clone())),
        };
        match context.node.write(request).await {
            Ok(_) => {
                tracing::info!(name = %attributes.name, "published member attributes");
                return;
            }
            Err(status) => tracing::debug!(%status, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
