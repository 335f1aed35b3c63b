//! The `keel` binary: a member started with etcd's flags, or
//! `keel local-cluster` to run a whole local cluster.

use clap::{Parser, Subcommand};
use keel_server::{config, local_cluster, member, signals};

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

fn init_logging(level: &str) {
    let default = format!("{level},openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colors only on a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            init_logging(&cli.member.log_level);
            let mut signals = signals::ShutdownSignals::install()?;
            member::run_member(cli.member, async move { signals.recv().await }).await
        }
        Some(Command::LocalCluster(flags)) => local_cluster::run_local_cluster(flags).await,
    }
}
