//! What a Raft node is started with: who it is, where its data lives, its
//! peers, its Raft timing, and the hooks an in-process test cluster attaches;
//! and the openraft configuration derived from the timing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_raft::{FailPoints, MemberNode, NodeId};
use tokio::net::TcpListener;

use crate::leader_connection::LeaderConnectionWatch;
use crate::network::LinkFaults;
use crate::peer_tls::PeerTlsConfig;

/// How a node with no Raft state yet joins a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// A member of a new cluster: every initial member proposes the same
    /// initial membership, so whichever is elected, they agree.
    NewCluster,
    /// A member added to a running cluster: it waits for the leader.
    JoinExisting,
}

/// Raft's timing, etcd's meanings (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_interval_ms: u64,
    /// A follower that heard no leader for a fresh random time in
    /// [election timeout + 2 heartbeats, 2 x election timeout) campaigns.
    pub election_timeout_ms: u64,
    /// Applied client writes between two snapshots (etcd's unit; a log
    /// entry is a batch of writes), `snapshot_trigger.rs`.
    pub snapshot_count: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
        }
    }
}

impl RaftTiming {
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// How long a member works on a client request before it answers
    /// "request timed out" (etcd's request timeout: 5 s + 2 election
    /// timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout()
    }
}

/// What an in-process test cluster attaches to a node; production nodes
/// run with none.
#[derive(Default)]
pub struct NodeTestHooks {
    /// Links the test cuts per kind of message.
    pub link_faults: Option<LinkFaults>,
    /// Storage steps the test can stop the node at.
    pub fail_points: FailPoints,
    /// The node's accepted peer connections, which the test can reset.
    pub leader_connections: LeaderConnectionWatch,
}

/// Everything [`crate::Node::start`] needs.
pub struct NodeConfig {
    /// The cluster's id, which members started with
    /// `--initial-cluster-state existing` learn from a running member.
    pub cluster_id: u64,
    pub member_id: NodeId,
    /// The member's name, for its log.
    pub name: String,
    /// openraft's cluster name (keel passes etcd's initial cluster token).
    pub cluster_name: String,
    /// Where the node keeps its format file, keyspace, Raft log and snapshots.
    pub data_dir: PathBuf,
    /// The initial members, this one included.
    pub initial_members: BTreeMap<NodeId, MemberNode>,
    pub bootstrap: Bootstrap,
    /// Bound listeners for the peer protocol (bound by the caller, so an
    /// embedding application can bind port 0 and learn its port first).
    pub peer_listeners: Vec<TcpListener>,
    /// TLS between members: served on `peer_listeners` when
    /// `serve_on_listeners`, and used to dial `https://` peers.
    pub peer_tls: Option<PeerTlsConfig>,
    pub timing: RaftTiming,
    /// Page cache of the keyspace database, in bytes.
    pub keyspace_cache_bytes: u64,
    /// Addresses to dial instead of members' peer URLs (a fault-injection
    /// harness's proxies).
    pub peer_dial_overrides: HashMap<NodeId, String>,
    /// How often the leader records leases' remaining TTLs through Raft
    /// (etcd's lease checkpoints), so a new leader keeps their deadlines.
    pub lease_checkpoint_interval: Duration,
    pub test_hooks: NodeTestHooks,
}

/// etcd's default lease checkpoint interval.
pub const DEFAULT_LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// openraft's configuration for `timing`; `cluster_name` names the cluster.
pub(crate) fn openraft_config(
    cluster_name: &str,
    timing: &RaftTiming,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let election = timing.election_timeout_ms;
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: timing.heartbeat_interval_ms,
        // openraft's follower campaigns once its leader's lease (always
        // `election_timeout_max`: the time during which voters refuse any
        // other candidate, and a leader with no quorum acknowledgement
        // refuses proposals) and then a random timeout drawn afresh every
        // round from [min, max) have passed since it last heard the leader:
        // with max = the election timeout T and min = two heartbeats, between
        // T + 2 heartbeats and 2T of silence, as etcd's [T, 2T).
        election_timeout_min: 2 * timing.heartbeat_interval_ms,
        election_timeout_max: election,
        enable_elect: true,
        // A member that cannot win (stale log, minority side of a
        // partition) asks first and never raises its term.
        enable_pre_vote: Some(true),
        // The time to stream a whole snapshot and install it (network v2
        // sends it in one call, not in chunks with a timeout each).
        install_snapshot_timeout: (10 * election).max(120_000),
        max_payload_entries: 64,
        // A backstop: snapshots come every `snapshot_count` applied writes
        // (`snapshot_trigger.rs`), which an entry count never runs ahead of.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_count),
        max_in_snapshot_log_to_keep: timing.snapshot_count.min(5_000),
        // A restarted leader always runs an election and starts its new
        // term with a blank entry, which the read path's index relies on
        // (read_path.rs); openraft 0.10 would otherwise let it resume its
        // old term with a commit index read from disk.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
