//! The `keel` binary: a member started with etcd's flags, or
//! `keel local-cluster` to run a whole local cluster.

use clap::{Parser, Subcommand};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            member_log::init_member_logging(&cli.member.log_level);
            let mut signals = signals::ShutdownSignals::install()?;
            member::run_member(cli.member, async move { signals.recv().await }).await
        }
        Some(Command::LocalCluster(flags)) => local_cluster::run_local_cluster(flags).await,
    }
}
