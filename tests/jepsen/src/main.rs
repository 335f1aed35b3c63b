//! The `keel-jepsen` command line: `run` starts a fresh cluster, injects
//! faults under a workload and checks the history; `check DIR` re-checks a
//! saved run. Exit status: 0 every check passed, 1 an anomaly was found,
//! 2 the run broke or a check could not reach a verdict.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keel_jepsen::check::{check_dir, limits_for, load_config, VERDICT_FILE};
use keel_jepsen::config::{parse_nemeses, snapshot_count_for, RunConfig, Workload};
use keel_jepsen::run::run;

#[derive(Parser)]
#[command(
    name = "keel-jepsen",
    about = "keel's partition suite: faults, a workload, and a linearizability check"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a fresh cluster, run a workload under a nemesis, check it.
    Run(RunArgs),
    /// Re-check the run saved in DIR.
    Check {
        dir: PathBuf,
        /// Seconds the linearizability search may take (default: the run's).
        #[arg(long)]
        check_time_limit: Option<f64>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Client workers per member.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    #[arg(long, value_enum, default_value_t = Workload::Register)]
    workload: Workload,
    /// Comma list of partition-halves, partition-leader, partition-ring,
    /// kill, pause, partition-leader-pair, kill-during-snapshot, kill-all,
    /// member; or all (every one but kill-all and member), or none.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seconds of quiet between faults, and how long each fault lasts.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Seconds the workload runs.
    #[arg(long, default_value_t = 60.0)]
    time_limit: f64,
    /// Run directory (must not exist or be empty); default
    /// jepsen-runs/<time>-<workload>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Register keys in use at once (watch: keys under its prefix).
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// Operations per register key before moving on to a fresh key.
    #[arg(long, default_value_t = 200)]
    ops_per_key: u64,
    /// Client timeout of one operation, ms.
    #[arg(long, default_value_t = 1500)]
    op_timeout_ms: u64,
    /// Target operations per second over all workers (0: as fast as they go).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Members' --election-timeout, ms.
    #[arg(long, default_value_t = 500)]
    election_timeout_ms: u64,
    /// Members' --heartbeat-interval, ms.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Seed for the nemesis and the workers (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds the linearizability search may take.
    #[arg(long, default_value_t = 120.0)]
    check_time_limit: f64,
    /// Members' --snapshot-count (default: keel's own, or 200 when
    /// kill-during-snapshot is among the nemeses); small values make
    /// restarted members catch up through snapshots.
    #[arg(long)]
    snapshot_count: Option<u64>,
}

fn millis(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

fn run_config(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let nemeses = parse_nemeses(&args.nemesis)?;
    let snapshot_count = snapshot_count_for(args.snapshot_count, &nemeses);
    let config = RunConfig {
        nodes: args.nodes,
        concurrency_per_member: args.concurrency,
        workload: args.workload,
        nemeses,
        interval_ms: millis(args.interval),
        time_limit_ms: millis(args.time_limit),
        keys: args.keys,
        ops_per_key: args.ops_per_key,
        op_timeout_ms: args.op_timeout_ms,
        rate: args.rate,
        election_timeout_ms: args.election_timeout_ms,
        heartbeat_ms: args.heartbeat_ms,
        seed: args.seed.unwrap_or(now.as_nanos() as u64),
        check_time_limit_ms: millis(args.check_time_limit),
        snapshot_count,
    };
    config.validate()?;
    Ok(config)
}

async fn main_run(args: RunArgs) -> anyhow::Result<i32> {
    let config = run_config(&args)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        PathBuf::from("jepsen-runs").join(format!("{}-{}", now.as_secs(), config.workload))
    });
    eprintln!(
        "keel-jepsen: run directory {} (seed {})",
        out.display(),
        config.seed
    );
    let report = run(&config, &out).await?;
    print!("{}", report.text);
    Ok(report.verdict.exit_code())
}

fn main_check(dir: PathBuf, check_time_limit: Option<f64>) -> anyhow::Result<i32> {
    let config = load_config(&dir)?;
    let mut limits = limits_for(&config);
    if let Some(seconds) = check_time_limit {
        limits.search = std::time::Duration::from_millis(millis(seconds));
    }
    let report = check_dir(&dir, &limits)?;
    std::fs::write(dir.join(VERDICT_FILE), &report.text)
        .with_context(|| format!("writing {}", dir.join(VERDICT_FILE).display()))?;
    print!("{}", report.text);
    Ok(report.verdict.exit_code())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_JEPSEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            dir,
            check_time_limit,
        } => main_check(dir, check_time_limit),
        Command::Run(args) => match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime.block_on(main_run(args)),
            Err(error) => Err(error.into()),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("keel-jepsen: {error:#}");
            ExitCode::from(2)
        }
    }
}
