//! One run of the suite, start to verdict: a fresh keel cluster on
//! 127.0.0.1 whose peer links all go through the harness's proxies, the
//! status monitor, the watchers (watch workload), the workers, the nemesis
//! schedule, then healing, the final reads and convergence, the watchers'
//! catch-up, and the checks — everything kept in the
//! run directory (see `check.rs` for its files).
//!
//! Invariant: whatever fails during the run, the members are healed and
//! then killed when `run` returns, the history is flushed, and the run
//! directory keeps the member logs; the data dirs are removed only when the
//! run passed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_tests::{free_port, Cluster, ClusterOptions, FixtureError};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::check::{
    check_run, limits_for, RunRecords, RunReport, CONFIG_FILE, FINAL_FILE, HISTORY_FILE, NEMESIS_FILE,
    STATUS_FILE, VERDICT_FILE, WATCH_FILE,
};
use crate::config::{ConfigError, RunConfig, Workload};
use crate::finale::{await_convergence, read_on_every_member, FinalReport, FINAL_PROCESS_BASE};
use crate::history::{HistoryError, HistoryWriter};
use crate::lock_workload::run_lock_worker;
use crate::monitor::{MemberAddress, Monitor};
use crate::nemesis::Nemesis;
use crate::proxy::{Network, ProxyError};
use crate::roster::Roster;
use crate::watch_log::{read_watch_log, WatchLog};
use crate::watcher::Watchers;
use crate::worker::{run_worker, WorkerSpec};
use crate::workload::{Generator, Invocation, WATCH_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("run directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("run directory {0} already holds files; choose a fresh --out")]
    DirNotEmpty(PathBuf),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("picking ports: {0}")]
    Ports(std::io::Error),
}

/// Monitor sampling period.
const STATUS_PERIOD: Duration = Duration::from_millis(200);
/// How long healing may take to give every member the same log.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a cluster whose members did not come up is started anew.
const START_ATTEMPTS: u32 = 3;
/// How long the final reads may be retried.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watchers may take, once everything is healed and the
/// members agree, to reach the final revision.
const WATCH_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Dir {
        path: path.to_path_buf(),
        source,
    }
}

fn prepare_dir(dir: &Path) -> Result<(), RunError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(dir_error(dir))?;
        if entries.next().is_some() {
            return Err(RunError::DirNotEmpty(dir.to_path_buf()));
        }
    }
    std::fs::create_dir_all(dir).map_err(dir_error(dir))
}

/// `(client, peer)` ports for every member, all distinct.
fn pick_ports(n: usize) -> Result<Vec<(u16, u16)>, RunError> {
    let mut taken = BTreeSet::new();
    let mut next = || -> Result<u16, RunError> {
        loop {
            let port = free_port().map_err(RunError::Ports)?;
            if taken.insert(port) {
                return Ok(port);
            }
        }
    };
    (0..n).map(|_| Ok((next()?, next()?))).collect()
}

/// Runs the suite as `config` says, keeping everything in `dir`.
pub async fn run(config: &RunConfig, dir: &Path) -> Result<RunReport, RunError> {
    config.validate()?;
    prepare_dir(dir)?;
    let config_text = serde_json::to_string_pretty(config).map_err(|e| RunError::Dir {
        path: dir.join(CONFIG_FILE),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(dir.join(CONFIG_FILE), config_text).map_err(dir_error(dir))?;

    let n = config.nodes;
    let names: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
    let mut attempt = 1;
    let (cluster, network) = loop {
        match start_cluster(config, dir, &names).await? {
            Ok(started) => break started,
            // Ports are picked free but only bound by the members later, so
            // another process may take one first: start afresh on new ports.
            Err(error) if attempt < START_ATTEMPTS => {
                tracing::warn!(%error, attempt, "the cluster did not start; trying again on fresh ports");
                remove_data_dirs(dir, &names);
                attempt += 1;
            }
            Err(error) => return Ok(broken_before_start(config, dir, error)),
        }
    };
    let network = Arc::new(network);
    // The history's clock starts with the workload.
    let history = Arc::new(HistoryWriter::create(&dir.join(HISTORY_FILE))?);
    let members: Vec<MemberAddress> = (0..n)
        .map(|i| MemberAddress {
            name: cluster.member_name(i).to_string(),
            endpoint: cluster.endpoint(i),
        })
        .collect();
    let cluster = Arc::new(Mutex::new(cluster));
    let roster = Arc::new(Roster::new(members.clone()));
    let mut broken: Vec<String> = Vec::new();

    let monitor = Monitor::start(
        roster.clone(),
        history.clone(),
        &dir.join(STATUS_FILE),
        STATUS_PERIOD,
    )
    .map_err(dir_error(dir))?;
    let watchers = match config.workload {
        Workload::Watch => {
            let log = Arc::new(WatchLog::create(&dir.join(WATCH_FILE))?);
            let addresses: Vec<(String, String)> = members
                .iter()
                .map(|m| (m.name.clone(), m.endpoint.clone()))
                .collect();
            Some(Watchers::start(&addresses, WATCH_PREFIX, log, history.clone()))
        }
        Workload::Register
        | Workload::RegisterSerializable
        | Workload::Set
        | Workload::Lease
        | Workload::Lock => None,
    };
    let generator = Arc::new(Generator::new(config.workload, config.keys, config.ops_per_key));
    let (stop_workers, stop_signal) = watch::channel(false);
    let workers: Vec<_> = (0..config.workers())
        .map(|index| {
            let spec = WorkerSpec {
                index: index as u64,
                workers: config.workers() as u64,
                slot: index % n,
                roster: roster.clone(),
                op_timeout: config.op_timeout(),
                pace: config.worker_pace(),
                seed: config.seed.wrapping_add(1 + index as u64),
            };
            match config.workload {
                Workload::Lock => tokio::spawn(run_lock_worker(spec, history.clone(), stop_signal.clone())),
                _ => tokio::spawn(run_worker(
                    spec,
                    generator.clone(),
                    history.clone(),
                    stop_signal.clone(),
                )),
            }
        })
        .collect();

    let mut nemesis = Nemesis::new(
        cluster.clone(),
        network.clone(),
        history.clone(),
        &dir.join(NEMESIS_FILE),
        roster.clone(),
        config.nemeses.clone(),
        config.seed,
    )
    .map_err(|e| RunError::Dir {
        path: dir.join(NEMESIS_FILE),
        source: std::io::Error::other(e.to_string()),
    })?
    .with_member_settings(
        Duration::from_millis(config.election_timeout_ms),
        config.snapshot_count,
    );
    tracing::info!("workload {} for {:?}", config.workload, config.time_limit());
    let until = Instant::now() + config.time_limit();
    if let Err(error) = nemesis.run_schedule(until, config.interval()).await {
        broken.push(format!("nemesis: {error}"));
    }
    if let Err(error) = nemesis.heal_everything().await {
        broken.push(format!("healing: {error}"));
    }
    let _ = stop_workers.send(true);
    let mut ops = 0;
    for worker in workers {
        match worker.await {
            Ok(Ok(report)) => ops += report.ops,
            Ok(Err(error)) => broken.push(format!("a worker failed: {error}")),
            Err(join) => broken.push(format!("a worker panicked: {join}")),
        }
    }
    tracing::info!("workers stopped after {ops} ops; healing and final reads");

    if let Err(error) = cluster
        .lock()
        .await
        .wait_for_leader(Duration::from_secs(60))
        .await
    {
        broken.push(format!("no leader after healing: {error}"));
    }
    // The members of now: the `member` nemesis may have replaced some.
    let members = roster.members();
    let converging = Instant::now();
    let (states, unreachable) = await_convergence(&members, &history, CONVERGENCE_TIMEOUT).await;
    tracing::info!("convergence measured after {:?}", converging.elapsed());
    let final_reads: Vec<Invocation> = match config.workload {
        Workload::Set => vec![Invocation::ReadAll],
        Workload::Watch => vec![Invocation::ReadPrefix],
        // The lease checks judge the workers' reads; nothing is read after.
        Workload::Lease => Vec::new(),
        Workload::Lock => vec![Invocation::ReadLockData],
        Workload::Register | Workload::RegisterSerializable => generator
            .current_keys()
            .into_iter()
            .map(|key| Invocation::Read {
                key,
                serializable: false,
            })
            .collect(),
    };
    let unread = read_on_every_member(
        &members,
        &history,
        &final_reads,
        config.op_timeout(),
        FINAL_READS_TIMEOUT,
        FINAL_PROCESS_BASE,
    )
    .await?;
    tracing::info!("final reads done");
    if !unread.is_empty() && config.workload != Workload::Set {
        // The set check reports its own unread members.
        broken.push(format!("final reads never succeeded on {}", unread.join(", ")));
    }
    if let Some(watchers) = watchers {
        // No write comes after the workers stopped: the converged revision
        // is the last one every watcher must see (the check says who did not).
        let final_revision = states.iter().map(|s| s.revision).max().unwrap_or(0);
        let behind = watchers.wait_for(final_revision, WATCH_CATCH_UP_TIMEOUT).await;
        if !behind.is_empty() {
            tracing::warn!("watchers behind revision {final_revision}: {}", behind.join(", "));
        }
        broken.extend(watchers.stop().await);
        tracing::info!("watchers stopped");
    }
    if let Err(error) = nemesis.note_crashes().await {
        broken.push(format!("restarting a crashed member: {error}"));
    }
    let samples = match monitor.stop().await {
        Ok(samples) => samples,
        Err(error) => {
            broken.push(format!("status monitor: {error}"));
            Vec::new()
        }
    };
    history.flush()?;
    let final_report = FinalReport {
        states,
        unreachable,
        crashed: nemesis.crashed.clone(),
        broken: (!broken.is_empty()).then(|| broken.join("; ")),
        proxy_connections: network.totals(),
    };
    final_report.save(&dir.join(FINAL_FILE)).map_err(dir_error(dir))?;
    drop(nemesis);

    let events = crate::history::read_history(&dir.join(HISTORY_FILE))?;
    let watches = read_watch_log(&dir.join(WATCH_FILE))?;
    let report = check_run(
        config,
        &RunRecords {
            events: &events,
            watches: &watches,
            samples: &samples,
        },
        Some(&final_report),
        &limits_for(config),
    );
    std::fs::write(dir.join(VERDICT_FILE), &report.text).map_err(dir_error(dir))?;

    // Stop the members before touching their data dirs.
    match Arc::try_unwrap(cluster) {
        Ok(cluster) => drop(cluster.into_inner()),
        Err(_) => tracing::warn!("cluster still shared at the end of the run"),
    }
    if report.verdict.exit_code() == 0 {
        remove_data_dirs(dir, &roster.every_name());
    }
    Ok(report)
}

/// A cluster of fresh members on fresh ports, each link through a proxy;
/// the inner error when the members did not come up.
async fn start_cluster(
    config: &RunConfig,
    dir: &Path,
    names: &[String],
) -> Result<Result<(Cluster, Network), FixtureError>, RunError> {
    let n = names.len();
    let ports = pick_ports(n)?;
    let promised: BTreeSet<u16> = ports.iter().flat_map(|&(client, peer)| [client, peer]).collect();
    let peer_addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|&(_, peer)| SocketAddr::from((Ipv4Addr::LOCALHOST, peer)))
        .collect();
    let network = Network::start(&peer_addrs, &promised).await?;
    let mut options = ClusterOptions::keel(n);
    options.ports = Some(ports);
    options.base_dir = Some(dir.to_path_buf());
    options.election_timeout_ms = config.election_timeout_ms;
    options.heartbeat_interval_ms = config.heartbeat_ms;
    options.snapshot_count = config.snapshot_count;
    options.member_args = (0..n)
        .map(|i| {
            vec![
                "--peer-dial-overrides".to_string(),
                network.dial_overrides(i, names),
            ]
        })
        .collect();
    tracing::info!(dir = %dir.display(), "starting {n} members");
    Ok(Cluster::start(options).await.map(|cluster| (cluster, network)))
}

fn remove_data_dirs(dir: &Path, names: &[String]) {
    for name in names {
        let data = dir.join(format!("{name}.data"));
        match std::fs::remove_dir_all(&data) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%error, path = %data.display(), "removing a data dir"),
        }
    }
}

/// The report of a run whose cluster never came up.
fn broken_before_start(config: &RunConfig, dir: &Path, error: FixtureError) -> RunReport {
    let _ = std::fs::write(dir.join(HISTORY_FILE), "");
    let final_report = FinalReport {
        broken: Some(format!("the cluster did not start: {error}")),
        ..FinalReport::default()
    };
    let _ = final_report.save(&dir.join(FINAL_FILE));
    let report = check_run(
        config,
        &RunRecords::default(),
        Some(&final_report),
        &limits_for(config),
    );
    let _ = std::fs::write(dir.join(VERDICT_FILE), &report.text);
    report
}
