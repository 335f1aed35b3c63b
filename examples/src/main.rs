//! `stacked-cluster`: starts three keel members in this process, writes
//! through one and reads through another, stops the leader and shows the
//! others carry on.
//!
//!     cargo run -p keel-examples --bin stacked-cluster

use std::time::Duration;

use keel_examples::{get, put, StackedCluster};
use keel_node::RaftTiming;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
        )
        .init();
    let data_root = std::env::temp_dir().join(format!("keel-stacked-{}", std::process::id()));
    let outcome = run(&data_root).await;
    let _ = std::fs::remove_dir_all(&data_root);
    outcome
}

async fn run(data_root: &std::path::Path) -> anyhow::Result<()> {
    let mut cluster = StackedCluster::start(data_root, RaftTiming::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    println!("member {leader} leads");
    let follower = if leader == 1 { 2 } else { 1 };
    let revision = put(cluster.member(follower)?, "greeting", "hello").await?;
    println!("put greeting=hello through member {follower} at revision {revision}");
    for id in 1..=3 {
        println!(
            "member {id} reads greeting = {:?}",
            get(cluster.member(id)?, "greeting").await?
        );
    }
    cluster.stop(leader).await?;
    let next = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    println!("stopped member {leader}; member {next} leads now");
    put(cluster.member(next)?, "greeting", "still here").await?;
    println!(
        "member {next} reads greeting = {:?}",
        get(cluster.member(next)?, "greeting").await?
    );
    cluster.shutdown().await?;
    Ok(())
}
