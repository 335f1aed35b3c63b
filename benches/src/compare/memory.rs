//! Scenario 6, memory per million keys: a fresh cluster of each system,
//! resident memory of every member before and after putting N keys (8-byte
//! keys, 256-byte values; N = 1,000,000, or fewer with --quick) at 256
//! clients; reported as RSS after loading and as RSS growth scaled to one
//! million keys.

use std::time::Duration;

use crate::compare::cluster::BenchCluster;
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{on_fresh_clusters, Ctx, Scenario, Table};
use crate::load::{open_connections, put_all, KeyLayout, PutAll};
use crate::machine::Memory;

const CLIENTS: usize = 256;
const CONNS: usize = 16;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let keys = ctx.scale.memory_keys;
    let method = format!(
        "A fresh cluster per system and size; {keys} distinct keys (8-byte keys, 256-byte values) put once \
         each by {CLIENTS} clients over {CONNS} connections to all members. VmRSS / VmHWM from \
         `/proc/<pid>/status` 2 s after loading; growth = RSS after minus RSS before, per member, \
         averaged over members and scaled to 1,000,000 keys."
    );
    let mut report = ctx.new_report(Scenario::Memory, "6. Memory per million keys", &method);
    report.repetitions = 1;
    on_fresh_clusters(
        ctx,
        Scenario::Memory,
        &mut report,
        async |report, table, cluster| one_system(ctx, report, table, cluster).await,
    )
    .await
}

async fn one_system(ctx: &Ctx, report: &mut ScenarioReport, table: &mut Table, cluster: &mut BenchCluster) {
    let (name, size, flavor) = (cluster.name(), cluster.size(), cluster.flavor);
    let keys = ctx.scale.memory_keys;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = match cluster.memory() {
        Ok(memory) => memory,
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×{size}: reading memory: {error:#}"));
            return;
        }
    };
    let outcome = async {
        let layout = KeyLayout::new("", 8, keys)?;
        let stubs = open_connections(&cluster.endpoints(), CONNS, &cluster.access()).await?;
        let plan = PutAll {
            clients: CLIENTS,
            count: keys,
            val_size: 256,
            request_timeout: Duration::from_secs(10),
            time_limit: Some(ctx.scale.load_time_limit),
            max_failures: 100,
            progress: false,
        };
        tracing::info!(system = name, size, keys, "loading keys for the memory scenario");
        Ok::<_, anyhow::Error>(put_all(&stubs, plan, move |index| layout.key(index)).await)
    }
    .await;
    let loaded = match outcome {
        Ok(loaded) => loaded,
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×{size}: loading: {error:#}"));
            return;
        }
    };
    let case = format!("{keys} keys loaded");
    if let Some(shortfall) = loaded.shortfall(&format!("{name} ×{size} {case}")) {
        report.failures.push(shortfall);
        if let Some(exited) = cluster.exited_report() {
            report.failures.push(exited);
        }
    }
    let load_rate =
        (loaded.elapsed.as_secs_f64() > 0.0).then(|| loaded.written as f64 / loaded.elapsed.as_secs_f64());
    table.add(
        size,
        &case,
        None,
        "load puts/s",
        Better::Higher,
        flavor,
        load_rate,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = match cluster.memory() {
        Ok(memory) => memory,
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×{size}: reading memory after loading: {error:#}"));
            return;
        }
    };
    let max = |members: &[Memory], f: fn(&Memory) -> f64| members.iter().map(f).fold(0.0, f64::max);
    table.add(
        size,
        &case,
        None,
        "VmRSS MiB (max member)",
        Better::Lower,
        flavor,
        Some(max(&after, |m| m.vm_rss_mib)),
    );
    table.add(
        size,
        &case,
        None,
        "VmHWM MiB (max member)",
        Better::Lower,
        flavor,
        Some(max(&after, |m| m.vm_hwm_mib)),
    );
    let written = loaded.written.max(1) as f64;
    let growth: f64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.vm_rss_mib - b.vm_rss_mib) / written * 1_000_000.0)
        .sum::<f64>()
        / after.len().max(1) as f64;
    table.add(
        size,
        &case,
        None,
        "RSS growth MiB per 1M keys",
        Better::Lower,
        flavor,
        Some(growth),
    );
    report.notes.push(format!(
        "{name} ×{size} members' VmRSS MiB before → after: {}",
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| format!("{:.0} → {:.0}", b.vm_rss_mib, a.vm_rss_mib))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
