//! Scenarios 1-3, which share one etcd and one keel cluster per size:
//! (1) put of 8-byte keys and 256-byte values at 1/16/64/256 clients over
//! 1/4/8/16 connections through the leader, and (3 members) at 1 and 64
//! clients through the followers, which forward to the leader; (2) linearizable and serializable
//! single-key range at 1 and 256 clients through the leader and through a
//! follower, over a preloaded key space; (3) txn-cas at 16 clients on 1,000
//! keys; and (1b) 4 KiB puts through every member for long enough that each
//! member takes a snapshot of its keyspace in the measured time, with the
//! slowest write. Each measurement alternates etcd and keel, repeated,
//! medians kept.

use keel_tests::Flavor;

use crate::compare::cluster::{order, BenchCluster};
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{cpu_per_request, measure, start_pair, Ctx, Scenario, Table};
use crate::load::{open_connections, put_all, LoadSpec, Mode, PutAll, Target};

const PUT_LEVELS: [(usize, usize); 4] = [(1, 1), (16, 4), (64, 8), (256, 16)];
const FOLLOWER_PUT_LEVELS: [(usize, usize); 2] = [(1, 1), (64, 8)];
const RANGE_LEVELS: [(usize, usize); 2] = [(1, 1), (256, 16)];

struct Sheet {
    scenario: Scenario,
    report: ScenarioReport,
    table: Table,
}

pub async fn run(ctx: &Ctx, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let mut sheets: Vec<Sheet> = scenarios
        .iter()
        .map(|&scenario| {
            let (title, method) = describe(ctx, scenario);
            Sheet {
                scenario,
                report: ctx.new_report(scenario, title, &method),
                table: Table::default(),
            }
        })
        .collect();
    for &size in &ctx.sizes {
        let mut start_failures = Vec::new();
        // The snapshot-stall case starts clusters of its own.
        let shares_a_pair = sheets
            .iter()
            .any(|sheet| sheet.scenario != Scenario::SnapshotStall);
        let mut pair = if shares_a_pair {
            start_pair(ctx, size, &mut start_failures).await
        } else {
            Vec::new()
        };
        for sheet in &mut sheets {
            sheet.report.failures.extend(start_failures.iter().cloned());
            match sheet.scenario {
                Scenario::Put => put_scenario(ctx, sheet, &pair).await,
                Scenario::SnapshotStall => snapshot_stall_scenario(ctx, sheet, size).await,
                Scenario::Range => range_scenario(ctx, sheet, &mut pair).await?,
                Scenario::Txn => txn_scenario(ctx, sheet, &pair).await,
                _ => {}
            }
            sheet.report.rows = sheet.table.rows();
            ctx.publish(sheet.scenario, &mut sheet.report)?;
        }
    }
    Ok(())
}

fn describe(ctx: &Ctx, scenario: Scenario) -> (&'static str, String) {
    let per = format!(
        "{} measured after {} of warm-up, {} repetition(s) per system; CPU µs/req: the members' CPU time \
         (summed) and the bench's while the clients run (warm-up included) over the requests they sent",
        humantime(ctx.scale.duration),
        humantime(ctx.scale.warmup),
        ctx.scale.reps
    );
    match scenario {
        Scenario::Put => (
            "1. Writes: put, 8-byte keys, 256-byte values",
            format!(
                "`keel-bench put` through the leader, keys drawn uniformly from 100,000; clients 1/16/64/256 \
                 over 1/4/8/16 connections; with 3 members also through the followers (`--target followers`, \
                 which forward each write to the leader) at 1 and 64 clients; {per}."
            ),
        ),
        Scenario::SnapshotStall => (
            "1b. Writes across a snapshot: 4 KiB puts through every member",
            format!(
                "`keel-bench put --target all` (each client on one member; followers forward to the leader), \
                 {STALL_CLIENTS} clients over {STALL_CONNS} connections, 4 KiB values, keys drawn uniformly \
                 from 1,000,000; {} measured after {} of warm-up, {} repetition(s) per system. Both systems \
                 keep their default `--snapshot-count` of 100,000 applied entries; each repetition starts \
                 fresh clusters, so each member takes its first snapshot (about 400 MiB of keyspace) \
                 inside the measured time at the rates below: *max ms* is the slowest write, which a \
                 snapshot that stalls writes shows.",
                humantime(stall_duration(ctx)),
                humantime(ctx.scale.warmup),
                ctx.scale.reps
            ),
        ),
        Scenario::Range => (
            "2. Reads: linearizable and serializable single-key range",
            format!(
                "`keel-bench range` / `range-serializable` of random keys among {} preloaded ones \
                 (8-byte keys, 256-byte values), through the leader and through the followers; \
                 clients 1 and 256 over 1 and 16 connections; {per}.",
                ctx.scale.range_keys
            ),
        ),
        _ => (
            "3. Compare-and-swap: txn-cas",
            format!(
                "`keel-bench txn-cas` through the leader: compare the key's mod_revision with the last one the \
                 client saw, then put (on failure read it back: a conflict, counted apart); 16 clients over 4 \
                 connections on 1,000 keys; {per}."
            ),
        ),
    }
}

fn humantime(duration: std::time::Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

pub(crate) fn throughput_spec(ctx: &Ctx, cluster: &BenchCluster, clients: usize, conns: usize) -> LoadSpec {
    let mut spec = cluster.spec();
    spec.clients = clients;
    spec.conns = conns;
    spec.duration = Some(ctx.scale.duration);
    spec.warmup = ctx.scale.warmup;
    spec
}

pub(crate) fn record_latency(
    table: &mut Table,
    size: usize,
    case: &str,
    clients: usize,
    flavor: Flavor,
    run: Option<&crate::load::RunReport>,
) {
    table.add(
        size,
        case,
        Some(clients),
        "p50 ms",
        Better::Lower,
        flavor,
        run.map(|r| r.latency_ms.p50),
    );
    table.add(
        size,
        case,
        Some(clients),
        "p99 ms",
        Better::Lower,
        flavor,
        run.map(|r| r.latency_ms.p99),
    );
    let (server_cpu, client_cpu) = match run.map(cpu_per_request) {
        Some((server, client)) => (server, Some(client)),
        None => (None, None),
    };
    table.add(
        size,
        case,
        Some(clients),
        "server CPU µs/req",
        Better::Lower,
        flavor,
        server_cpu,
    );
    table.add(
        size,
        case,
        Some(clients),
        "client CPU µs/req",
        Better::Lower,
        flavor,
        client_cpu,
    );
}

async fn put_scenario(ctx: &Ctx, sheet: &mut Sheet, pair: &[BenchCluster]) {
    let Some(size) = pair.first().map(BenchCluster::size) else {
        return;
    };
    let leader_cases = PUT_LEVELS
        .iter()
        .map(|&(clients, conns)| (Target::Leader, clients, conns));
    let follower_cases = FOLLOWER_PUT_LEVELS
        .iter()
        .filter(|_| size > 1)
        .map(|&(clients, conns)| (Target::Followers, clients, conns));
    for (target, clients, conns) in leader_cases.chain(follower_cases) {
        // Leader cases keep their plain names: the plot draws them.
        let case = match target {
            Target::Leader => format!("clients={clients} conns={conns}"),
            _ => format!("via {} clients={clients} conns={conns}", target.name()),
        };
        for rep in 0..ctx.scale.reps {
            for flavor in order(rep) {
                let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                    continue;
                };
                let mut spec = throughput_spec(ctx, cluster, clients, conns);
                spec.key_space = 100_000;
                spec.target = target;
                let run = measure(&mut sheet.report, cluster, Mode::Put, &spec, &case, rep).await;
                let t = &mut sheet.table;
                t.add(
                    size,
                    &case,
                    Some(clients),
                    "writes/s",
                    Better::Higher,
                    flavor,
                    run.as_ref().map(|r| r.throughput),
                );
                record_latency(t, size, &case, clients, flavor, run.as_ref());
            }
        }
    }
}

/// The snapshot-stall case's load: enough 4 KiB puts at this concurrency
/// (about 5,000/s here) to pass 100,000 entries in the measured time.
const STALL_CLIENTS: usize = 64;
const STALL_CONNS: usize = 8;
const STALL_VALUE_BYTES: usize = 4096;
const STALL_KEY_SPACE: u64 = 1_000_000;

/// 45 s measured (the scale's duration when it is longer, or in a quick
/// run): from a fresh cluster, 100,000 entries come well inside it.
fn stall_duration(ctx: &Ctx) -> std::time::Duration {
    if ctx.scale.quick {
        ctx.scale.duration
    } else {
        ctx.scale.duration.max(std::time::Duration::from_secs(45))
    }
}

/// Each repetition on fresh clusters, so that neither system's quota
/// (2 GiB by default) fills over the repetitions.
async fn snapshot_stall_scenario(ctx: &Ctx, sheet: &mut Sheet, size: usize) {
    let case = format!("4 KiB via all clients={STALL_CLIENTS} conns={STALL_CONNS}");
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            let cluster = match BenchCluster::start(flavor, size, &ctx.data_root).await {
                Ok(cluster) => cluster,
                Err(error) => {
                    sheet.report.failures.push(format!(
                        "{} ×{size} did not start for {case} (rep {rep}): {error:#}",
                        crate::compare::cluster::system_name(flavor)
                    ));
                    continue;
                }
            };
            let mut spec = throughput_spec(ctx, &cluster, STALL_CLIENTS, STALL_CONNS);
            spec.duration = Some(stall_duration(ctx));
            spec.val_size = STALL_VALUE_BYTES;
            spec.key_space = STALL_KEY_SPACE;
            spec.target = Target::All;
            let run = measure(&mut sheet.report, &cluster, Mode::Put, &spec, &case, rep).await;
            let t = &mut sheet.table;
            t.add(
                size,
                &case,
                Some(STALL_CLIENTS),
                "writes/s",
                Better::Higher,
                flavor,
                run.as_ref().map(|r| r.throughput),
            );
            record_latency(t, size, &case, STALL_CLIENTS, flavor, run.as_ref());
            t.add(
                size,
                &case,
                Some(STALL_CLIENTS),
                "max ms",
                Better::Lower,
                flavor,
                run.as_ref().map(|r| r.latency_ms.max),
            );
        }
    }
}

async fn range_scenario(ctx: &Ctx, sheet: &mut Sheet, pair: &mut [BenchCluster]) -> anyhow::Result<()> {
    let Some(size) = pair.first().map(BenchCluster::size) else {
        return Ok(());
    };
    for cluster in pair.iter() {
        preload(ctx, &mut sheet.report, cluster).await;
    }
    let targets: &[Target] = if size > 1 {
        &[Target::Leader, Target::Followers]
    } else {
        &[Target::Leader]
    };
    for mode in [Mode::Range, Mode::RangeSerializable] {
        for &target in targets {
            for (clients, conns) in RANGE_LEVELS {
                let kind = if mode == Mode::Range {
                    "linearizable"
                } else {
                    "serializable"
                };
                let case = format!("{kind} via {} clients={clients} conns={conns}", target.name());
                for rep in 0..ctx.scale.reps {
                    for flavor in order(rep) {
                        let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                            continue;
                        };
                        let mut spec = throughput_spec(ctx, cluster, clients, conns);
                        spec.key_space = ctx.scale.range_keys;
                        spec.target = target;
                        let run = measure(&mut sheet.report, cluster, mode, &spec, &case, rep).await;
                        let t = &mut sheet.table;
                        let value = run.as_ref().map(|r| r.throughput);
                        t.add(
                            size,
                            &case,
                            Some(clients),
                            "reads/s",
                            Better::Higher,
                            flavor,
                            value,
                        );
                        record_latency(t, size, &case, clients, flavor, run.as_ref());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts every key of the range scenario's key space once (a failure goes
/// to `report`'s failures).
pub(crate) async fn preload(ctx: &Ctx, report: &mut ScenarioReport, cluster: &BenchCluster) {
    let spec = LoadSpec {
        key_space: ctx.scale.range_keys,
        ..cluster.spec()
    };
    let outcome = async {
        let layout = spec.layout()?;
        let stubs = open_connections(&cluster.endpoints(), 8, &cluster.access()).await?;
        let plan = PutAll {
            clients: 64,
            count: layout.space(),
            val_size: spec.val_size,
            request_timeout: spec.request_timeout,
            time_limit: Some(ctx.scale.load_time_limit),
            max_failures: 100,
            progress: false,
        };
        let report = put_all(&stubs, plan, move |index| layout.key(index)).await;
        if report.failed > 0 || !report.finished {
            anyhow::bail!(
                "preloaded {} of {} keys ({} failed{}); first error: {}",
                report.written,
                ctx.scale.range_keys,
                report.failed,
                if report.finished { "" } else { ", gave up" },
                report.first_error.unwrap_or_default()
            );
        }
        Ok(())
    }
    .await;
    if let Err(error) = outcome {
        let command = LoadSpec {
            target: Target::All,
            preload: true,
            total: Some(1),
            ..spec
        }
        .command_line(Mode::Put);
        report.failures.push(format!(
            "{} ×{} range preload: {error:#} — `{command}`",
            cluster.name(),
            cluster.size(),
        ));
    }
}

async fn txn_scenario(ctx: &Ctx, sheet: &mut Sheet, pair: &[BenchCluster]) {
    let Some(size) = pair.first().map(BenchCluster::size) else {
        return;
    };
    let (clients, conns) = (16, 4);
    let case = "clients=16 conns=4 keys=1000".to_string();
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                continue;
            };
            let mut spec = throughput_spec(ctx, cluster, clients, conns);
            spec.key_space = 1_000;
            let run = measure(&mut sheet.report, cluster, Mode::TxnCas, &spec, &case, rep).await;
            let t = &mut sheet.table;
            t.add(
                size,
                &case,
                Some(clients),
                "txns/s",
                Better::Higher,
                flavor,
                run.as_ref().map(|r| r.throughput),
            );
            let conflicts = run
                .as_ref()
                .map(|r| 100.0 * r.cas_conflicts as f64 / r.ops.max(1) as f64);
            t.add(
                size,
                &case,
                Some(clients),
                "conflicts %",
                Better::Lower,
                flavor,
                conflicts,
            );
            record_latency(t, size, &case, clients, flavor, run.as_ref());
        }
    }
}
