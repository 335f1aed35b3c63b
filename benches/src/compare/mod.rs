//! `keel-bench compare`: the side-by-side comparison behind
//! `benches/compare.sh`. For each cluster size it starts a real etcd and a
//! keel cluster with the same durability and etcd's default timeouts on
//! 127.0.0.1, runs the selected scenarios against both, alternating the two
//! systems per measurement, and writes each scenario's medians and
//! keel/etcd ratios into RESULTS.md (see [`results`]).
//!
//! Scenarios (the numbering): 1 `put`, 2 `range`, 3 `txn`
//! ([`throughput`]); 4 `kube` ([`kube`]); 5 `failover` ([`failover`]);
//! 6 `memory` ([`memory`]); Watch (issue 10): 7 `watch-fanout`,
//! 8 `watch-replay`, 9 `watch-idle` ([`watch`], [`watch_fanout`]); Leases
//! (issue 11): 10 `lease` ([`lease`]); Membership (issue 13): 11
//! `membership` ([`membership`], not in the default set); 12 `secure`, put
//! and range with TLS and with auth ([`secure`], not in the default set).

pub mod cluster;
pub mod core_pinning;
pub mod failover;
pub mod kube;
pub mod lease;
pub mod membership;
pub mod memory;
pub mod plot;
pub mod results;
pub mod secure;
pub mod throughput;
pub mod watch;
pub mod watch_fanout;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use keel_tests::Flavor;

use crate::load::{parse_duration, LoadSpec, Mode, RunReport};
use crate::machine::{fdatasync_latency, load_average, FsyncLatency, MachineFacts};
use cluster::{system_name, BenchCluster};
use results::{median, Better, RawRun, ResultsFile, Row, ScenarioReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    Put,
    SnapshotStall,
    Range,
    Txn,
    Kube,
    Failover,
    Memory,
    WatchFanout,
    WatchReplay,
    WatchIdle,
    Lease,
    Membership,
    Secure,
}

impl Scenario {
    pub const ALL: [Scenario; 13] = [
        Scenario::Put,
        Scenario::SnapshotStall,
        Scenario::Range,
        Scenario::Txn,
        Scenario::Kube,
        Scenario::Failover,
        Scenario::Memory,
        Scenario::WatchFanout,
        Scenario::WatchReplay,
        Scenario::WatchIdle,
        Scenario::Lease,
        Scenario::Membership,
        Scenario::Secure,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Scenario::Put => "scenario:put",
            Scenario::SnapshotStall => "scenario:snapshot-stall",
            Scenario::Range => "scenario:range",
            Scenario::Txn => "scenario:txn",
            Scenario::Kube => "scenario:kube",
            Scenario::Failover => "scenario:failover",
            Scenario::Memory => "scenario:memory",
            Scenario::WatchFanout => "scenario:watch-fanout",
            Scenario::WatchReplay => "scenario:watch-replay",
            Scenario::WatchIdle => "scenario:watch-idle",
            Scenario::Lease => "scenario:lease",
            Scenario::Membership => "scenario:membership",
            Scenario::Secure => "scenario:secure",
        }
    }
}

/// Every section of RESULTS.md, in order.
pub const SECTION_IDS: [&str; 15] = [
    "machine",
    "scenario:put",
    "scenario:snapshot-stall",
    "scenario:range",
    "scenario:txn",
    "scenario:kube",
    "scenario:failover",
    "scenario:memory",
    "scenario:watch-fanout",
    "scenario:watch-replay",
    "scenario:watch-idle",
    "scenario:lease",
    "scenario:membership",
    "scenario:secure",
    "plot",
];

#[derive(Debug, Clone, clap::Args)]
pub struct CompareOptions {
    /// Scenarios to run (comma-separated; `membership`, `secure` and `snapshot-stall` only when named).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "put,range,txn,kube,failover,memory,watch-fanout,watch-replay,watch-idle,lease"
    )]
    pub scenario: Vec<Scenario>,
    /// Cluster sizes (failover, the watch scenarios, lease, membership and secure always use 3 members, and run only if 3 is listed).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub sizes: Vec<usize>,
    /// Smoke run: scaled-down data, one short repetition (results go to RESULTS.quick.md).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per measurement (default 3; quick 1).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Measured time per throughput measurement (default 5s; quick 1s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Unmeasured warm-up before each throughput measurement (default 1s; quick 300ms).
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Leader kills per system in the failover scenario (default 20; quick 3).
    #[arg(long)]
    pub failover_reps: Option<usize>,
    /// RESULTS.md to update (default benches/RESULTS.md, or RESULTS.quick.md with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Watchers per watch fan-out case (comma-separated; default 1,100,1000,10000; quick 1,100).
    #[arg(long, value_delimiter = ',')]
    pub fanout_watchers: Option<Vec<usize>>,
    /// Keys preloaded by the membership scenario (default 1000000; quick 10000).
    #[arg(long)]
    pub keys: Option<u64>,
    /// Where the members' data dirs go (default $TMPDIR/keel-bench).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The sizes of things, full or `--quick`.
#[derive(Debug, Clone)]
pub struct Scale {
    pub quick: bool,
    pub reps: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub failover_reps: usize,
    pub range_keys: u64,
    pub kube_pods: u64,
    pub kube_namespaces: u64,
    pub kube_minions: u64,
    pub list_reps: u64,
    pub restart_reps: usize,
    pub memory_keys: u64,
    pub load_time_limit: Duration,
    pub fsync_samples: usize,
    /// Watchers per fan-out case.
    pub fanout_watchers: Vec<usize>,
    /// Puts written before a fan-out's watchers open (steady-state caches).
    pub fanout_history: u64,
    /// Revisions a replay watcher reads from revision 1.
    pub replay_revisions: u64,
    pub idle_watchers: usize,
    /// Leases the lease scenario keeps alive.
    pub keepalive_leases: u64,
    /// Keys preloaded before the membership scenario's add and snapshot.
    pub membership_keys: u64,
}

impl Scale {
    fn new(options: &CompareOptions) -> Scale {
        let quick = options.quick;
        Scale {
            quick,
            reps: options.reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
            duration: options.duration.unwrap_or(if quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            }),
            warmup: options.warmup.unwrap_or(if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(1)
            }),
            failover_reps: options.failover_reps.unwrap_or(if quick { 3 } else { 20 }).max(1),
            range_keys: if quick { 1_000 } else { 10_000 },
            kube_pods: if quick { 1_500 } else { 150_000 },
            kube_namespaces: if quick { 10 } else { 100 },
            kube_minions: if quick { 50 } else { 5_000 },
            list_reps: if quick { 3 } else { 10 },
            restart_reps: if quick { 1 } else { 3 },
            memory_keys: if quick { 50_000 } else { 1_000_000 },
            load_time_limit: if quick {
                Duration::from_secs(180)
            } else {
                Duration::from_secs(1200)
            },
            fsync_samples: if quick { 50 } else { 500 },
            fanout_watchers: options.fanout_watchers.clone().unwrap_or_else(|| {
                if quick {
                    vec![1, 100]
                } else {
                    vec![1, 100, 1_000, 10_000]
                }
            }),
            fanout_history: if quick { 1_000 } else { 20_000 },
            replay_revisions: if quick { 5_000 } else { 100_000 },
            idle_watchers: 1_000,
            keepalive_leases: if quick { 1_000 } else { 10_000 },
            membership_keys: options
                .keys
                .unwrap_or(if quick { 10_000 } else { 1_000_000 })
                .max(1),
        }
    }
}

/// What every scenario needs.
pub struct Ctx {
    pub scale: Scale,
    pub sizes: Vec<usize>,
    pub data_root: PathBuf,
    pub facts: MachineFacts,
    pub fsync: Option<FsyncLatency>,
    pub command: String,
    pub date: String,
    pub results: ResultsFile,
}

impl Ctx {
    pub fn new_report(&self, scenario: Scenario, title: &str, method: &str) -> ScenarioReport {
        ScenarioReport {
            id: scenario.id().trim_start_matches("scenario:").to_string(),
            title: title.to_string(),
            method: method.to_string(),
            command: self.command.clone(),
            date: self.date.clone(),
            quick: self.scale.quick,
            repetitions: self.scale.reps,
            facts: MachineFacts {
                load_average: load_average(),
                ..self.facts.clone()
            },
            load_average_end: 0.0,
            fsync: self.fsync,
            rows: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Writes the scenario's section and raw numbers (called after each
    /// cluster size, so an interrupted run keeps what it measured).
    pub fn publish(&self, scenario: Scenario, report: &mut ScenarioReport) -> anyhow::Result<()> {
        report.load_average_end = load_average();
        self.results
            .update_section(&SECTION_IDS, scenario.id(), &report.markdown())?;
        let raw = self.results.save_raw(report)?;
        tracing::info!(scenario = %report.id, raw = %raw.display(), "results written");
        Ok(())
    }
}

/// Values of one metric gathered per system, turned into median rows.
#[derive(Default)]
pub struct Table {
    entries: Vec<(Row, Vec<f64>, Vec<f64>)>,
    /// The mode the next values are measured in (see [`Row::mode`]).
    mode: Option<String>,
}

impl Table {
    /// Values added from now on belong to rows of `mode`.
    pub fn set_mode(&mut self, mode: Option<&str>) {
        self.mode = mode.map(str::to_string);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        size: usize,
        case: &str,
        clients: Option<usize>,
        metric: &str,
        better: Better,
        flavor: Flavor,
        value: Option<f64>,
    ) {
        let position = self.entries.iter().position(|(row, _, _)| {
            row.size == size && row.mode == self.mode && row.case == case && row.metric == metric
        });
        let index = position.unwrap_or_else(|| {
            self.entries.push((
                Row {
                    size,
                    mode: self.mode.clone(),
                    case: case.to_string(),
                    clients,
                    metric: metric.to_string(),
                    better,
                    etcd: None,
                    keel: None,
                    samples: (0, 0),
                },
                Vec::new(),
                Vec::new(),
            ));
            self.entries.len() - 1
        });
        let (_, etcd, keel) = &mut self.entries[index];
        if let Some(value) = value {
            match flavor {
                Flavor::Etcd => etcd.push(value),
                Flavor::Keel => keel.push(value),
            }
        }
    }

    pub fn rows(&self) -> Vec<Row> {
        self.entries
            .iter()
            .map(|(row, etcd, keel)| Row {
                etcd: median(etcd),
                keel: median(keel),
                samples: (etcd.len(), keel.len()),
                ..row.clone()
            })
            .collect()
    }
}

/// CPU µs per request sent, of the servers (summed) and of the load generator.
pub fn cpu_per_request(run: &RunReport) -> (Option<f64>, f64) {
    let requests = run.requests_sent.max(1) as f64;
    (
        run.server_cpu_s.map(|s| s * 1e6 / requests),
        run.client_cpu_s * 1e6 / requests,
    )
}

/// Runs one load measurement against `cluster`, bounded in time; a failure
/// (or any request error) is written to `report.failures` with the exact
/// command, and `None` is returned when nothing was measured.
pub async fn measure(
    report: &mut ScenarioReport,
    cluster: &BenchCluster,
    mode: Mode,
    spec: &LoadSpec,
    case: &str,
    rep: usize,
) -> Option<RunReport> {
    let bound =
        spec.warmup + spec.measured_duration().unwrap_or(Duration::from_secs(600)) + Duration::from_secs(120);
    let name = cluster.name();
    let size = cluster.size();
    tracing::info!(system = name, size, case, rep, "measuring");
    let servers_cpu_seconds = || cluster.cpu_seconds().ok();
    let outcome = match tokio::time::timeout(
        bound,
        crate::load::run_sampling_servers(mode, spec, &servers_cpu_seconds),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("the run did not end within {bound:?}")),
    };
    match outcome {
        Ok(run) => {
            if run.errors > 0 {
                report.failures.push(format!(
                    "{name} ×{size} {case} (rep {rep}): {} of {} requests failed {:?}; first: {} — `{}`",
                    run.errors,
                    run.errors + run.ops,
                    run.error_kinds,
                    run.first_error.clone().unwrap_or_default(),
                    run.command
                ));
            }
            report.raw.push(RawRun {
                system: name.to_string(),
                size,
                case: case.to_string(),
                rep,
                report: run.clone(),
            });
            (run.ops > 0).then_some(run)
        }
        Err(error) => {
            report.failures.push(format!(
                "{name} ×{size} {case} (rep {rep}): {error:#} — `{}`",
                spec.command_line(mode)
            ));
            None
        }
    }
}

/// The date and time of a run, to the minute, in UTC (`2026-12-01 14:05 UTC`).
fn now_utc() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}

fn machine_section(ctx: &Ctx, fsync_end: Option<FsyncLatency>) -> String {
    let f = &ctx.facts;
    let fsync = |l: Option<FsyncLatency>| {
        l.map_or_else(
            || "not measured".into(),
            |l| {
                format!(
                    "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                )
            },
        )
    };
    format!(
        "## Machine and disk (latest run)\n\n\
         | fact | value |\n|---|---|\n\
         | date | {} |\n| command | `{}` |\n| cores | {} ({}) |\n| memory | {:.1} GiB |\n\
         | kernel | {} |\n| data dirs | {} |\n\
         | fdatasync of 4 KiB, start of run | {} |\n| fdatasync of 4 KiB, end of run | {} |\n\
         | load average at start / end | {:.2} / {:.2} |\n| etcd | {} |\n| keel commit | {} |\n\n\
         Both systems: election timeout {} ms, heartbeat {} ms, fsync on, on 127.0.0.1; \
         the load generator runs on the same machine.\n",
        ctx.date,
        ctx.command,
        f.cores,
        f.cpu,
        f.memory_gib,
        f.kernel,
        f.filesystem,
        fsync(ctx.fsync),
        fsync(fsync_end),
        f.load_average,
        load_average(),
        f.etcd_version,
        f.keel_commit,
        cluster::ELECTION_TIMEOUT_MS,
        cluster::HEARTBEAT_INTERVAL_MS,
    )
}

/// The whole comparison.
pub async fn run_compare(options: CompareOptions) -> anyhow::Result<()> {
    let scale = Scale::new(&options);
    let data_root = options
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("keel-bench"));
    std::fs::create_dir_all(&data_root).with_context(|| format!("creating {}", data_root.display()))?;
    keel_tests::which("etcd").context("etcd is not on $PATH (compare.sh installs Debian's etcd-server)")?;
    keel_tests::built_binary("keel").context("the keel binary is not built next to keel-bench")?;

    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_results_path(scale.quick));
    let fsync = match fdatasync_latency(&data_root, scale.fsync_samples) {
        Ok(latency) => Some(latency),
        Err(error) => {
            tracing::warn!("could not measure fdatasync latency: {error:#}");
            None
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = Ctx {
        sizes: options.sizes.clone(),
        facts: MachineFacts::read(&data_root),
        fsync,
        command: format!("keel-bench {}", args.join(" ")),
        date: now_utc(),
        results: ResultsFile::new(out),
        data_root,
        scale,
    };
    if let Some(l) = ctx.fsync {
        eprintln!(
            "disk fdatasync (4 KiB): p50 {:.3} ms, p99 {:.3} ms",
            l.p50_ms, l.p99_ms
        );
    }
    ctx.results
        .update_section(&SECTION_IDS, "machine", &machine_section(&ctx, None))?;

    let mut selected = options.scenario.clone();
    selected.sort();
    selected.dedup();
    let throughput_set: Vec<Scenario> = selected
        .iter()
        .copied()
        .filter(|s| {
            matches!(
                s,
                Scenario::Put | Scenario::SnapshotStall | Scenario::Range | Scenario::Txn
            )
        })
        .collect();
    if !throughput_set.is_empty() {
        throughput::run(&ctx, &throughput_set).await?;
    }
    if selected.contains(&Scenario::Kube) {
        kube::run(&ctx).await?;
    }
    if selected.contains(&Scenario::Failover) {
        failover::run(&ctx).await?;
    }
    if selected.contains(&Scenario::Memory) {
        memory::run(&ctx).await?;
    }
    if selected.contains(&Scenario::WatchFanout) {
        watch_fanout::run(&ctx).await?;
    }
    if selected.contains(&Scenario::WatchReplay) {
        watch::run_replay(&ctx).await?;
    }
    if selected.contains(&Scenario::WatchIdle) {
        watch::run_idle(&ctx).await?;
    }
    if selected.contains(&Scenario::Lease) {
        lease::run(&ctx).await?;
    }
    if selected.contains(&Scenario::Membership) {
        membership::run(&ctx).await?;
    }
    if selected.contains(&Scenario::Secure) {
        secure::run(&ctx).await?;
    }
    redraw_plot(&ctx.results);
    let fsync_end = fdatasync_latency(&ctx.data_root, ctx.scale.fsync_samples).ok();
    ctx.results
        .update_section(&SECTION_IDS, "machine", &machine_section(&ctx, fsync_end))?;
    eprintln!("results: {}", ctx.results.markdown.display());
    Ok(())
}

/// Redraws the throughput plot from the saved put and range results (if
/// any) and updates its section.
pub fn redraw_plot(results: &ResultsFile) {
    if results.load_raw("put").is_none() && results.load_raw("range").is_none() {
        return;
    }
    let drawn =
        plot::draw(results).and_then(|section| results.update_section(&SECTION_IDS, "plot", &section));
    if let Err(error) = drawn {
        tracing::warn!("no plot: {error:#}");
    }
}

/// The default RESULTS.md (`benches/RESULTS.md`, or RESULTS.quick.md).
pub fn default_results_path(quick: bool) -> PathBuf {
    let file = if quick { "RESULTS.quick.md" } else { "RESULTS.md" };
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// Starts both systems at `size`; a system that fails to start is reported
/// in `failures` and left out.
pub async fn start_pair(ctx: &Ctx, size: usize, failures: &mut Vec<String>) -> Vec<BenchCluster> {
    let mut started = Vec::new();
    for flavor in [Flavor::Etcd, Flavor::Keel] {
        match BenchCluster::start(flavor, size, &ctx.data_root).await {
            Ok(cluster) => started.push(cluster),
            Err(error) => failures.push(format!(
                "{} ×{size} did not start (keel-tests Cluster::start, election {} ms, heartbeat {} ms): {error:#}",
                system_name(flavor),
                cluster::ELECTION_TIMEOUT_MS,
                cluster::HEARTBEAT_INTERVAL_MS
            )),
        }
    }
    started
}

/// Runs `measure_one` on a fresh cluster of each system at each size (which
/// system goes first alternates with the size), publishing the report after
/// each; a system that fails to start is listed among the failures.
pub async fn on_fresh_clusters(
    ctx: &Ctx,
    scenario: Scenario,
    report: &mut ScenarioReport,
    mut measure_one: impl AsyncFnMut(&mut ScenarioReport, &mut Table, &mut BenchCluster),
) -> anyhow::Result<()> {
    let mut table = Table::default();
    for (position, &size) in ctx.sizes.iter().enumerate() {
        for flavor in cluster::order(position) {
            match BenchCluster::start(flavor, size, &ctx.data_root).await {
                Ok(mut cluster) => measure_one(report, &mut table, &mut cluster).await,
                Err(error) => report.failures.push(format!(
                    "{} ×{size} did not start: {error:#}",
                    system_name(flavor)
                )),
            }
            report.rows = table.rows();
            ctx.publish(scenario, report)?;
        }
    }
    Ok(())
}
