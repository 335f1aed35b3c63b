//! The clusters a comparison measures: real etcd or real keel members from
//! the `keel-tests` fixture, both with etcd's default timings (election
//! 1000 ms, heartbeat 100 ms) and fsync on (no unsafe flags), with data
//! under the comparison's data root (the filesystem whose fdatasync latency
//! is reported), removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_tests::{Cluster, ClusterOptions, Flavor};

use crate::load::{member_status, LoadSpec};
use crate::machine::{cpu_seconds, process_memory, Memory};

/// etcd's default election timeout, used for both systems.
pub const ELECTION_TIMEOUT_MS: u64 = 1000;
/// etcd's default heartbeat interval, used for both systems.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

pub fn system_name(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::Etcd => "etcd",
        Flavor::Keel => "keel",
    }
}

/// The order the two systems run in at repetition `rep`: alternating, so
/// that drift (page cache, other load, thermal) hits both alike.
pub fn order(rep: usize) -> [Flavor; 2] {
    if rep.is_multiple_of(2) {
        [Flavor::Etcd, Flavor::Keel]
    } else {
        [Flavor::Keel, Flavor::Etcd]
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

pub struct BenchCluster {
    cluster: Option<Cluster>,
    dir: PathBuf,
    pub flavor: Flavor,
}

impl BenchCluster {
    /// Starts `size` members of `flavor` under `data_root` and waits for a leader.
    pub async fn start(flavor: Flavor, size: usize, data_root: &Path) -> anyhow::Result<BenchCluster> {
        let name = system_name(flavor);
        let dir = data_root.join(format!(
            "{name}-{size}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = match flavor {
            Flavor::Etcd => ClusterOptions::etcd(size),
            Flavor::Keel => ClusterOptions::keel(size),
        };
        options.election_timeout_ms = ELECTION_TIMEOUT_MS;
        options.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
        options.base_dir = Some(dir.clone());
        let mut bench = BenchCluster {
            cluster: Some(Cluster::spawn(options).with_context(|| format!("starting {name} ×{size}"))?),
            dir,
            flavor,
        };
        if let Err(error) = bench.cluster_mut().wait_for_leader(Duration::from_secs(60)).await {
            let tail = bench.cluster().log_tail(0, 15);
            anyhow::bail!("{name} ×{size} elected no leader: {error}; member 1's log ends:\n{tail}");
        }
        tracing::info!(system = name, size, "cluster up");
        Ok(bench)
    }

    pub fn cluster(&self) -> &Cluster {
        match &self.cluster {
            Some(cluster) => cluster,
            None => unreachable!("the cluster is only taken out when dropped"),
        }
    }

    pub fn cluster_mut(&mut self) -> &mut Cluster {
        match &mut self.cluster {
            Some(cluster) => cluster,
            None => unreachable!("the cluster is only taken out when dropped"),
        }
    }

    pub fn name(&self) -> &'static str {
        system_name(self.flavor)
    }

    pub fn size(&self) -> usize {
        self.cluster().size()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.cluster().endpoints()
    }

    /// A load spec against this cluster with the CLI's defaults.
    pub fn spec(&self) -> LoadSpec {
        let mut spec = LoadSpec::new(self.endpoints());
        spec.label = Some(self.name().to_string());
        spec
    }

    /// VmHWM/VmRSS of every running member, in member order.
    pub fn memory(&self) -> anyhow::Result<Vec<Memory>> {
        (0..self.size())
            .map(|index| {
                let pid = self
                    .cluster()
                    .pid(index)
                    .with_context(|| format!("member {} is not running", index + 1))?;
                process_memory(pid)
            })
            .collect()
    }

    /// CPU seconds used so far by all running members together.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        (0..self.size())
            .filter_map(|index| self.cluster().pid(index))
            .map(|pid| cpu_seconds(&pid.to_string()))
            .sum()
    }

    /// Waits until every member answers Status and has caught up with the
    /// leader's raft index (or `timeout` passes).
    pub async fn wait_until_settled(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.cluster_mut().wait_for_leader(timeout).await?;
        let endpoints = self.endpoints();
        loop {
            let statuses =
                futures::future::join_all(endpoints.iter().map(|e| member_status(e, Duration::from_secs(1))))
                    .await;
            let indexes: Vec<u64> = statuses
                .iter()
                .filter_map(|s| s.as_ref().ok().map(|s| s.raft_index))
                .collect();
            let caught_up = indexes.len() == endpoints.len()
                && indexes
                    .iter()
                    .max()
                    .zip(indexes.iter().min())
                    .is_some_and(|(max, min)| max - min <= 2);
            if caught_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not settle within {timeout:?}: raft indexes {indexes:?}",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Names a member that exited on its own (crashed, or was signalled by
    /// something else on the machine) with its log's last lines.
    pub fn exited_report(&mut self) -> Option<String> {
        let name = self.cluster_mut().exited_member()?;
        let index = (0..self.size()).find(|&i| self.cluster().member_name(i) == name)?;
        Some(format!(
            "member {name} of {} exited; its log ends: {}",
            self.name(),
            self.cluster().log_tail(index, 6).replace('\n', " | ")
        ))
    }

    /// The last `lines` log lines of every member, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.size())
            .map(|index| {
                format!(
                    "--- member {} ---\n{}",
                    index + 1,
                    self.cluster().log_tail(index, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        // Kill and reap the members first, then remove their data.
        drop(self.cluster.take());
        if std::env::var_os("KEEL_TEST_KEEP_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
