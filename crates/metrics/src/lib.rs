//! keel's Prometheus metrics, one registry per process, exposed in the text
//! format at `/metrics`. Metric names, types, labels and buckets are etcd
//! 3.4's where etcd has the metric, so existing etcd dashboards and alerts
//! work; keel's own are under `keel_`. Counters and histograms are fed where
//! the event happens (a flush, a leader change, a gRPC call); gauges that
//! mirror a member's state are set when scraped ([`MemberGauges`]).

use std::sync::LazyLock;

pub use prometheus::Histogram as HistogramChild;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric keel exports.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub wal_fsync_seconds: Histogram,
    pub backend_commit_seconds: Histogram,
    pub db_total_size_bytes: IntGauge,
    pub peer_round_trip_seconds: HistogramVec,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub writes_per_raft_entry: Histogram,
    pub writes_per_forwarded_batch: Histogram,
    pub renewals_per_forwarded_batch: Histogram,
    pub read_index_round_seconds: Histogram,
    pub raft_log_purged_index: IntGauge,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::registered);
    &METRICS
}

/// The values of a member's state gauges at a scrape.
pub struct MemberGauges {
    pub has_leader: bool,
    pub is_leader: bool,
    pub committed_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// The last Raft log entry purged behind a snapshot (0: none).
    pub purged_index: u64,
    pub db_total_size_bytes: u64,
}

impl Metrics {
    fn registered() -> Metrics {
        let registry = Registry::new();
        // etcd's disk histograms: 1 ms doubling to about 8 s.
        let disk_buckets = exponential_buckets(0.001, 2.0, 14).unwrap_or_default();
        // etcd's peer round-trip histogram: 0.1 ms doubling to about 3 s.
        let round_trip_buckets = exponential_buckets(0.0001, 2.0, 16).unwrap_or_default();
        let metrics = Metrics {
            has_leader: IntGauge::with_opts(Opts::new(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ))
            .expect("valid metric"),
            is_leader: IntGauge::with_opts(Opts::new(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ))
            .expect("valid metric"),
            leader_changes_seen: IntCounter::with_opts(Opts::new(
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ))
            .expect("valid metric"),
            proposals_committed: IntGauge::with_opts(Opts::new(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ))
            .expect("valid metric"),
            proposals_applied: IntGauge::with_opts(Opts::new(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ))
            .expect("valid metric"),
            proposals_pending: IntGauge::with_opts(Opts::new(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ))
            .expect("valid metric"),
            proposals_failed: IntCounter::with_opts(Opts::new(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ))
            .expect("valid metric"),
            wal_fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_wal_fsync_duration_seconds",
                    "The latency distributions of fsync called by WAL.",
                )
                .buckets(disk_buckets.clone()),
            )
            .expect("valid metric"),
            backend_commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                )
                .buckets(disk_buckets),
            )
            .expect("valid metric"),
            db_total_size_bytes: IntGauge::with_opts(Opts::new(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ))
            .expect("valid metric"),
            peer_round_trip_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                )
                .buckets(round_trip_buckets),
                &["To"],
            )
            .expect("valid metric"),
            grpc_started: IntCounterVec::new(
                Opts::new(
                    "grpc_server_started_total",
                    "Total number of RPCs started on the server.",
                ),
                &["grpc_type", "grpc_service", "grpc_method"],
            )
            .expect("valid metric"),
            grpc_handled: IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "Total number of RPCs completed on the server, regardless of success or failure.",
                ),
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            )
            .expect("valid metric"),
            writes_per_raft_entry: Histogram::with_opts(
                HistogramOpts::new(
                    "keel_writes_per_raft_entry",
                    "How many client writes the leader's group commit put into one Raft log entry.",
                )
                .buckets(exponential_buckets(1.0, 2.0, 12).unwrap_or_default()),
            )
            .expect("valid metric"),
            writes_per_forwarded_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "keel_writes_per_forwarded_batch",
                    "How many client writes a follower forwarded to the leader in one call.",
                )
                .buckets(exponential_buckets(1.0, 2.0, 10).unwrap_or_default()),
            )
            .expect("valid metric"),
            renewals_per_forwarded_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "keel_lease_renewals_per_forwarded_batch",
                    "How many lease renewals (keep-alives) a follower forwarded to the leader in one call.",
                )
                .buckets(exponential_buckets(1.0, 2.0, 11).unwrap_or_default()),
            )
            .expect("valid metric"),
            read_index_round_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "keel_read_index_round_duration_seconds",
                    "How long a linearizable read waited for its ReadIndex round and the apply up to it.",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
            )
            .expect("valid metric"),
            raft_log_purged_index: IntGauge::with_opts(Opts::new(
                "keel_raft_log_purged_index",
                "The index of the last Raft log entry this member purged behind its snapshot; \
                 a follower whose log ends before it catches up by snapshot.",
            ))
            .expect("valid metric"),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 18] = [
            Box::new(self.has_leader.clone()),
            Box::new(self.is_leader.clone()),
            Box::new(self.leader_changes_seen.clone()),
            Box::new(self.proposals_committed.clone()),
            Box::new(self.proposals_applied.clone()),
            Box::new(self.proposals_pending.clone()),
            Box::new(self.proposals_failed.clone()),
            Box::new(self.wal_fsync_seconds.clone()),
            Box::new(self.backend_commit_seconds.clone()),
            Box::new(self.db_total_size_bytes.clone()),
            Box::new(self.peer_round_trip_seconds.clone()),
            Box::new(self.grpc_started.clone()),
            Box::new(self.grpc_handled.clone()),
            Box::new(self.writes_per_raft_entry.clone()),
            Box::new(self.writes_per_forwarded_batch.clone()),
            Box::new(self.renewals_per_forwarded_batch.clone()),
            Box::new(self.read_index_round_seconds.clone()),
            Box::new(self.raft_log_purged_index.clone()),
        ];
        for collector in collectors {
            // Names are fixed and distinct: registering cannot collide.
            let _ = self.registry.register(collector);
        }
    }

    /// Sets the gauges that mirror a member's state.
    pub fn set_member_gauges(&self, gauges: &MemberGauges) {
        self.has_leader.set(i64::from(gauges.has_leader));
        self.is_leader.set(i64::from(gauges.is_leader));
        self.proposals_committed.set(gauges.committed_index as i64);
        self.proposals_applied.set(gauges.applied_index as i64);
        self.proposals_pending
            .set(gauges.last_log_index.saturating_sub(gauges.committed_index) as i64);
        self.raft_log_purged_index.set(gauges.purged_index as i64);
        self.db_total_size_bytes.set(gauges.db_total_size_bytes as i64);
    }

    /// Every metric in Prometheus' text exposition format.
    pub fn exposition(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# keel: encoding the metrics failed: {error}\n"))
    }
}
