//! `keel-bench`: the load generator (one subcommand per mode), the
//! side-by-side comparison with etcd (`compare`), and the disk's fdatasync
//! probe (`fdatasync`). A load run prints a summary for people on stderr and
//! exactly one JSON line on stdout.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use keel_bench::compare::results::ResultsFile;
use keel_bench::compare::{default_results_path, redraw_plot, run_compare, CompareOptions};
use keel_bench::load::keepalive::{run_keep_alive, KeepAliveSpec};
use keel_bench::load::{run, LoadSpec, Mode};
use keel_bench::machine::fdatasync_latency;

#[derive(Parser)]
#[command(
    name = "keel-bench",
    about = "Load generator and etcd comparison for keel (etcd v3 API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put random keys of the key space.
    Put(LoadSpec),
    /// Linearizable get of random keys.
    Range(LoadSpec),
    /// Serializable get of random keys.
    RangeSerializable(LoadSpec),
    /// Compare mod_revision, then put (CAS).
    TxnCas(LoadSpec),
    /// Linearizable gets and puts (--read-ratio).
    Mixed(LoadSpec),
    /// Range over everything under --prefix (--keys-only), usually with --preload.
    PrefixList(LoadSpec),
    /// Grant a lease (--lease-ttl), then revoke it; one request is the pair.
    LeaseGrantRevoke(LoadSpec),
    /// Put random keys attached to --leases leases (0: one per key), granted first, revoked after.
    PutWithLease(LoadSpec),
    /// Grant leases, keep them alive over a few streams (paced or saturating), revoke them.
    KeepAlive(KeepAliveSpec),
    /// Start etcd and keel clusters and run the scenario matrix against both.
    Compare(CompareOptions),
    /// Redraw the throughput plot of a RESULTS.md from its saved results.
    Plot {
        /// The RESULTS.md (default benches/RESULTS.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure the disk's 4 KiB write + fdatasync latency in a directory.
    Fdatasync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
}

fn main() -> std::process::ExitCode {
    match main_with_result() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_with_result() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mode, spec) = match cli.command {
        Command::Put(spec) => (Mode::Put, spec),
        Command::Range(spec) => (Mode::Range, spec),
        Command::RangeSerializable(spec) => (Mode::RangeSerializable, spec),
        Command::TxnCas(spec) => (Mode::TxnCas, spec),
        Command::Mixed(spec) => (Mode::Mixed, spec),
        Command::PrefixList(spec) => (Mode::PrefixList, spec),
        Command::LeaseGrantRevoke(spec) => (Mode::LeaseGrantRevoke, spec),
        Command::PutWithLease(spec) => (Mode::PutWithLease, spec),
        Command::Compare(options) => return runtime.block_on(run_compare(options)),
        Command::KeepAlive(spec) => {
            let phase = runtime.block_on(run_keep_alive(&spec))?;
            let summary = &phase.summary;
            eprintln!(
                "keep-alive: {:.1} renewals/s, p50 {:.3} ms, p99 {:.3} ms, server CPU {:?} µs/renewal; \
                 {} lost, {} out of order, {} stream failure(s)",
                summary.renewals_per_s,
                summary.latency.p50,
                summary.latency.p99,
                phase.cpu_us_per_renewal(),
                summary.lost_leases,
                summary.mismatched,
                summary.failures.len()
            );
            println!("{}", serde_json::to_string(&phase)?);
            return Ok(());
        }
        Command::Plot { out } => {
            let results = ResultsFile::new(out.unwrap_or_else(|| default_results_path(false)));
            redraw_plot(&results);
            return Ok(());
        }
        Command::Fdatasync { dir, samples } => {
            let latency = fdatasync_latency(&dir, samples)?;
            println!("{}", serde_json::to_string(&latency)?);
            return Ok(());
        }
    };
    let report = runtime.block_on(run(mode, &spec))?;
    eprintln!("{}", report.human());
    println!("{}", report.json_line());
    Ok(())
}
