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
use keel_server::{config, local_cluster, member, member_log, member_runtime, signals};

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
    member_runtime::member_runtime_builder().build()?.block_on(run())
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
            if !member_runtime::LIFO_SLOT_OFF {
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
