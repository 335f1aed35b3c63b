//! The `keel` binary: a member started with etcd's flags, or
//! `keel local-cluster` to run a whole local cluster.

use clap::{CommandFactory, Parser, Subcommand};

/// The member's allocator: jemalloc. A write allocates and frees many small
/// buffers (requests, log records, sled nodes); under glibc's malloc a
/// 256-client put load spent about a quarter of the members' CPU in the
/// allocator. Measured with `benches/ab_put.sh` (3 members): jemalloc gave
/// more writes per second than mimalloc at 1, 16 and 256 clients, with less
/// memory after a 25 s load of 1.5 KB values (460 MB per member; mimalloc
/// 570, glibc 390).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use keel_server::{config, local_cluster, member, member_log, signals};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "keel: a Raft-replicated key-value store speaking etcd's v3 API"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    member: config::MemberFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster of 3 or 5 keel members on 127.0.0.1.
    ///
    /// Example: keel local-cluster --size 3
    LocalCluster(local_cluster::LocalClusterFlags),
}

fn main() -> anyhow::Result<()> {
    member_runtime()?.block_on(run())
}

/// The member's tokio runtime: multi-threaded, with tokio's LIFO slot off.
///
/// With the slot, a task woken by the running task runs next on the same
/// worker. When an applied batch answers its puts, each answer's HTTP/2
/// stream task wakes its connection's task, which then ran at once and
/// wrote that one answer: one `writev` per put (0.93 per put at 256
/// clients over 16 connections). Without the slot, the connection's task
/// queues behind the other answers and writes them together (0.23 per put).
/// `benches/ab_put.sh`, 3 rounds against the build before (2026-12-07,
/// benches/RESULTS.md): 16 clients +10-15% writes/s, 256 clients +7-10%,
/// member CPU per put 10-19% lower, 1 client's p50 no worse.
/// `disable_lifo_slot` is one of tokio's unstable settings: `.cargo/config.toml`
/// builds with `--cfg tokio_unstable`; a build without it (a `RUSTFLAGS`
/// of its own replaces the config's) keeps the slot and warns at start-up.
fn member_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn run() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let mut ignored_keys = Vec::new();
    if let (None, Some(path)) = (&cli.command, cli.member.config_file.clone()) {
        let known_flags: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|argument| argument.get_long().map(str::to_string))
            .filter(|flag| flag != "config-file")
            .collect();
        let from_file = keel_server::config_file::flags_from_config_file(&path, &known_flags)?;
        ignored_keys = from_file.ignored_keys;
        cli = Cli::try_parse_from(std::iter::once("keel".to_string()).chain(from_file.arguments))
            .map_err(|error| anyhow::anyhow!("--config-file {}: {error}", path.display()))?;
    }
    match cli.command {
        None => {
            member_log::init_member_logging(&cli.member)?;
            if cfg!(not(tokio_unstable)) {
                tracing::warn!(
                    "built without --cfg tokio_unstable (a RUSTFLAGS replaced .cargo/config.toml's): \
                     tokio's LIFO slot stays on and writes cost more CPU"
                );
            }
            for key in ignored_keys {
                tracing::warn!(key = %key, "--config-file: not a setting keel knows; ignored");
            }
            let mut signals = signals::ShutdownSignals::install()?;
            member::run_member(cli.member, async move { signals.recv().await }).await
        }
        Some(Command::LocalCluster(flags)) => local_cluster::run_local_cluster(flags).await,
    }
}
