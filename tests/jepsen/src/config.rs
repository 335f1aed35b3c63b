//! What a run is asked to do: the workload, the nemeses and their schedule,
//! the cluster's size and timings, the client timeouts and the key rotation.
//! A run saves its `RunConfig` as `run.json` in its directory so that
//! `keel-jepsen check DIR` re-checks it with the same checks.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown nemesis {0:?} (expected partition-halves, partition-leader, partition-ring, kill, pause, partition-leader-pair, kill-during-snapshot, kill-all, member, all or none)")]
    UnknownNemesis(String),
    #[error("{0}")]
    Invalid(String),
}

/// What the client workers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// read / write / compare-and-set on a few keys, linearizable reads.
    Register,
    /// unique adds under a prefix, one read of the prefix per member at the end.
    Set,
    /// as `register`, but reads are `serializable` (may be stale).
    RegisterSerializable,
    /// puts, deletes and Txns on a few keys under a prefix that a watcher on
    /// every member watches from revision 1, reconnecting through faults.
    Watch,
    /// leases granted with short TTLs, keys attached to them, some kept
    /// alive, some left to expire, some revoked; reads on every member.
    Lease,
    /// a fenced read-modify-write of a counter under the client crate's
    /// lock recipe (a session lease with a short TTL).
    Lock,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::RegisterSerializable => "register-serializable",
            Workload::Watch => "watch",
            Workload::Lease => "lease",
            Workload::Lock => "lock",
        }
    }

    pub const ALL: [Workload; 6] = [
        Workload::Register,
        Workload::Set,
        Workload::RegisterSerializable,
        Workload::Watch,
        Workload::Lease,
        Workload::Lock,
    ];
}

impl Workload {
    /// Whether the workload's clients follow a member's replacement (their
    /// workers address a roster slot); the watch and lock workloads keep
    /// their first members' connections.
    pub fn follows_member_changes(self) -> bool {
        match self {
            Workload::Register | Workload::RegisterSerializable | Workload::Set | Workload::Lease => true,
            Workload::Watch | Workload::Lock => false,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// A random minority cut off from the majority.
    PartitionHalves,
    /// The current leader cut off from everyone.
    PartitionLeader,
    /// Every member sees only its ring neighbours (majorities overlap).
    PartitionRing,
    /// kill -9 a member (the leader half of the time), restarted later.
    Kill,
    /// SIGSTOP a member (the leader half of the time), SIGCONT later.
    Pause,
    /// The leader and one follower cut off together (the leader's new
    /// entries reach 2 members and cannot commit), then a new majority
    /// around that follower that leaves out the old leader and the leader
    /// the others elected meanwhile; repeated within the fault interval.
    PartitionLeaderPair,
    /// A follower falls behind (killed or cut off) until the leader's log
    /// is compacted past it, then is killed -9 while it receives and
    /// installs the leader's snapshot, and restarted on its data dir.
    KillDuringSnapshot,
    /// kill -9 every member at once, all restarted later. Not part of
    /// `all`: name it explicitly.
    KillAll,
    /// `MemberRemove` a member (the leader half of the time), wait until it
    /// stopped, then `MemberAdd` a fresh one (new name, data dir and ports)
    /// in its place and start it. Not part of `all` (the watch and lock
    /// workloads stay with their first members): name it explicitly.
    Member,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 7] = [
        NemesisKind::PartitionHalves,
        NemesisKind::PartitionLeader,
        NemesisKind::PartitionRing,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::PartitionLeaderPair,
        NemesisKind::KillDuringSnapshot,
    ];

    /// Kinds that `all` leaves out and that must be named.
    pub const EXTRA: [NemesisKind; 2] = [NemesisKind::KillAll, NemesisKind::Member];

    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::PartitionHalves => "partition-halves",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::PartitionRing => "partition-ring",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::PartitionLeaderPair => "partition-leader-pair",
            NemesisKind::KillDuringSnapshot => "kill-during-snapshot",
            NemesisKind::KillAll => "kill-all",
            NemesisKind::Member => "member",
        }
    }
}

impl fmt::Display for NemesisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The members' `--snapshot-count` of runs that name `kill-during-snapshot`
/// and no count of their own: small, so that a member that falls behind
/// for a few seconds needs a snapshot to catch up.
pub const SNAPSHOT_NEMESIS_COUNT: u64 = 200;

/// The `--snapshot-count` a run uses: the one asked for, else
/// [`SNAPSHOT_NEMESIS_COUNT`] when `kill-during-snapshot` is among the
/// nemeses, else keel's own default (None).
pub fn snapshot_count_for(asked: Option<u64>, nemeses: &[NemesisKind]) -> Option<u64> {
    asked.or_else(|| {
        nemeses
            .contains(&NemesisKind::KillDuringSnapshot)
            .then_some(SNAPSHOT_NEMESIS_COUNT)
    })
}

/// Parses `--nemesis`: a comma list of kinds, `all`, or `none`.
pub fn parse_nemeses(spec: &str) -> Result<Vec<NemesisKind>, ConfigError> {
    let mut kinds = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => kinds.extend(NemesisKind::ALL),
            "none" => {}
            other => {
                let kind = NemesisKind::ALL
                    .into_iter()
                    .chain(NemesisKind::EXTRA)
                    .find(|k| k.name() == other)
                    .ok_or_else(|| ConfigError::UnknownNemesis(other.to_string()))?;
                kinds.push(kind);
            }
        }
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// Everything a run needs to know; saved as the run directory's `run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    pub nodes: usize,
    /// Client workers per member.
    pub concurrency_per_member: usize,
    pub workload: Workload,
    pub nemeses: Vec<NemesisKind>,
    /// Quiet time between faults, and how long each fault lasts.
    pub interval_ms: u64,
    /// How long the workload runs (the healing and checks come after).
    pub time_limit_ms: u64,
    /// Register keys in use at any time.
    pub keys: usize,
    /// Operations on one register key before it is replaced by a fresh one.
    pub ops_per_key: u64,
    /// Client timeout of one operation.
    pub op_timeout_ms: u64,
    /// Target rate of operations per second over all workers (0: unpaced).
    pub rate: u64,
    pub election_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub seed: u64,
    /// Wall-clock bound for the linearizability search.
    pub check_time_limit_ms: u64,
    /// Members' `--snapshot-count` (None: keel's default), small values
    /// make killed members catch up through snapshots.
    #[serde(default)]
    pub snapshot_count: Option<u64>,
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes != 3 && self.nodes != 5 {
            return Err(ConfigError::Invalid(format!(
                "--nodes must be 3 or 5, not {}",
                self.nodes
            )));
        }
        if self.concurrency_per_member == 0 {
            return Err(ConfigError::Invalid("--concurrency must be at least 1".into()));
        }
        if !(1..=64).contains(&self.keys) {
            return Err(ConfigError::Invalid("--keys must be between 1 and 64".into()));
        }
        if self.ops_per_key == 0 {
            return Err(ConfigError::Invalid("--ops-per-key must be at least 1".into()));
        }
        if !(100..=10_000).contains(&self.op_timeout_ms) {
            return Err(ConfigError::Invalid(
                "--op-timeout-ms must be between 100 and 10000".into(),
            ));
        }
        if self.interval_ms < 100 {
            return Err(ConfigError::Invalid("--interval must be at least 0.1 s".into()));
        }
        if self.nemeses.contains(&NemesisKind::Member) && !self.workload.follows_member_changes() {
            return Err(ConfigError::Invalid(format!(
                "the member nemesis does not run with the {} workload (its clients stay with the first members)",
                self.workload
            )));
        }
        Ok(())
    }

    pub fn workers(&self) -> usize {
        self.nodes * self.concurrency_per_member
    }

    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit_ms)
    }

    /// The pause each worker takes between its operations to hold `rate`.
    pub fn worker_pace(&self) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let per_worker_ns = 1_000_000_000u64.saturating_mul(self.workers() as u64) / self.rate;
        Duration::from_nanos(per_worker_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_lists_parse() {
        assert_eq!(parse_nemeses("all").unwrap(), NemesisKind::ALL.to_vec());
        assert_eq!(
            parse_nemeses("kill, partition-leader,kill").unwrap(),
            vec![NemesisKind::PartitionLeader, NemesisKind::Kill]
        );
        assert_eq!(parse_nemeses("none").unwrap(), vec![]);
        assert!(!parse_nemeses("all").unwrap().contains(&NemesisKind::KillAll));
        assert_eq!(
            parse_nemeses("all,kill-all").unwrap().last(),
            Some(&NemesisKind::KillAll)
        );
        assert_eq!(
            parse_nemeses("partition-leader-pair,kill-during-snapshot").unwrap(),
            vec![NemesisKind::PartitionLeaderPair, NemesisKind::KillDuringSnapshot]
        );
        let all = parse_nemeses("all").unwrap();
        assert!(all.contains(&NemesisKind::PartitionLeaderPair));
        assert!(all.contains(&NemesisKind::KillDuringSnapshot));
        for kind in NemesisKind::ALL.into_iter().chain(NemesisKind::EXTRA) {
            assert!(
                ConfigError::UnknownNemesis(String::new())
                    .to_string()
                    .contains(kind.name()),
                "the error message lists {kind}"
            );
        }
        assert_eq!(
            parse_nemeses("all,member").unwrap().last(),
            Some(&NemesisKind::Member)
        );
        assert!(!parse_nemeses("all").unwrap().contains(&NemesisKind::Member));
        assert_eq!(
            parse_nemeses("kill,bogus"),
            Err(ConfigError::UnknownNemesis("bogus".into()))
        );
    }

    #[test]
    fn the_snapshot_nemesis_gets_a_small_snapshot_count_unless_one_is_asked() {
        let snapshot = [NemesisKind::Kill, NemesisKind::KillDuringSnapshot];
        assert_eq!(snapshot_count_for(None, &snapshot), Some(SNAPSHOT_NEMESIS_COUNT));
        assert_eq!(snapshot_count_for(Some(5000), &snapshot), Some(5000));
        assert_eq!(snapshot_count_for(None, &[NemesisKind::Kill]), None);
        assert_eq!(snapshot_count_for(Some(300), &[]), Some(300));
    }

    #[test]
    fn the_member_nemesis_runs_only_with_workloads_that_follow_replaced_members() {
        let config = |workload, nemeses: &str| RunConfig {
            nodes: 3,
            concurrency_per_member: 2,
            workload,
            nemeses: parse_nemeses(nemeses).unwrap(),
            interval_ms: 1_000,
            time_limit_ms: 1_000,
            keys: 10,
            ops_per_key: 200,
            op_timeout_ms: 1_500,
            rate: 0,
            election_timeout_ms: 500,
            heartbeat_ms: 50,
            seed: 1,
            check_time_limit_ms: 1_000,
            snapshot_count: None,
        };
        for workload in Workload::ALL {
            let with_member = config(workload, "all,member").validate();
            assert_eq!(
                with_member.is_ok(),
                workload.follows_member_changes(),
                "{workload}"
            );
            assert_eq!(config(workload, "all").validate(), Ok(()), "{workload}");
        }
        assert!(matches!(
            config(Workload::Watch, "member").validate(),
            Err(ConfigError::Invalid(why)) if why.contains("watch")
        ));
    }

    #[test]
    fn workload_names_round_trip_through_json() {
        for workload in Workload::ALL {
            let json = serde_json::to_string(&workload).unwrap();
            assert_eq!(json, format!("\"{}\"", workload.name()));
        }
    }
}
