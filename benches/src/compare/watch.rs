//! Scenarios 8 and 9 of Watch (3 members, keel against etcd): replay, one
//! watcher from revision 1 over a long history, timed to its last event;
//! and idle watchers, the put throughput with and without 1,000 watchers
//! of keys nobody writes. (Scenario 7, fan-out, is in `watch_fanout.rs`.)

use std::time::{Duration, Instant};

use anyhow::Context;
use keel_api::key_range::prefix_range_end;

use crate::compare::cluster::{order, system_name, BenchCluster};
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{cpu_per_request, measure, start_pair, Ctx, Scenario, Table};
use crate::load::watchers::{place_streams, WatchTarget, WatcherFleet};
use crate::load::{open_connections, put_all, KeyLayout, LoadSpec, Mode, PutAll};

const REPLAY_PREFIX: &str = "/watch/replay/";
/// A replay that has not received its last event by then has failed.
const REPLAY_LIMIT: Duration = Duration::from_secs(120);
/// A replay that receives nothing for this long has stalled.
const REPLAY_STALL: Duration = Duration::from_secs(10);
const IDLE_PREFIX: &str = "/watch/idle/";
const IDLE_PUT_CLIENTS: usize = 64;
const IDLE_PUT_CONNS: usize = 8;

pub async fn run_replay(ctx: &Ctx) -> anyhow::Result<()> {
    let revisions = ctx.scale.replay_revisions;
    let method = format!(
        "3 members; a fresh cluster per system. {revisions} puts of distinct keys under `{REPLAY_PREFIX}` \
         (8-digit keys, 256-byte values; 256 clients over 16 connections to the leader), so revisions 2 to \
         {} are exactly those puts. Then, {} time(s) per system (alternating), one watcher of the whole \
         prefix from revision 1 on a follower, opened with the bench's own Watch stub (keys decoded, values skipped); the time is from \
         sending its create request to receiving its {revisions}th event (at most {} s; a replay that receives nothing for {} s has \
         stalled and failed).",
        revisions + 1,
        ctx.scale.reps,
        REPLAY_LIMIT.as_secs(),
        REPLAY_STALL.as_secs()
    );
    let mut report = ctx.new_report(
        Scenario::WatchReplay,
        &format!("8. Watch replay: one watcher from revision 1 over {revisions} revisions"),
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::WatchReplay, &mut report);
    }
    let mut table = Table::default();
    let case = format!("{revisions} revisions, prefix watch from revision 1");
    let mut pair = start_pair(ctx, 3, &mut report.failures).await;
    for cluster in &mut pair {
        let (name, flavor) = (cluster.name(), cluster.flavor);
        match write_history(ctx, cluster).await {
            Ok(rate) => table.add(3, &case, None, "load puts/s", Better::Higher, flavor, Some(rate)),
            Err(error) => {
                report
                    .failures
                    .push(format!("{name} ×3 writing the history: {error:#}"));
            }
        }
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            let Some(cluster) = pair.iter_mut().find(|c| c.flavor == flavor) else {
                continue;
            };
            let name = cluster.name();
            tracing::info!(system = name, rep, revisions, "watch replay");
            match replay_once(cluster, revisions).await {
                Ok(Ok(elapsed)) => {
                    let seconds = elapsed.as_secs_f64();
                    times[usize::from(flavor == keel_tests::Flavor::Keel)].push(seconds);
                    table.add(
                        3,
                        &case,
                        None,
                        "time to last event s",
                        Better::Lower,
                        flavor,
                        Some(seconds),
                    );
                    table.add(
                        3,
                        &case,
                        None,
                        "events/s",
                        Better::Higher,
                        flavor,
                        Some(revisions as f64 / seconds),
                    );
                }
                Ok(Err(shortfall)) => {
                    report
                        .failures
                        .push(format!("{name} ×3 replay rep {rep}: {shortfall}"));
                    table.add(
                        3,
                        &case,
                        None,
                        "time to last event s",
                        Better::Lower,
                        flavor,
                        None,
                    );
                }
                Err(error) => {
                    report
                        .failures
                        .push(format!("{name} ×3 replay rep {rep}: {error:#}"));
                }
            }
        }
    }
    report.notes.push(format!(
        "every time (s): etcd {:?}; keel {:?}",
        times[0]
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        times[1]
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    ));
    report.rows = table.rows();
    ctx.publish(Scenario::WatchReplay, &mut report)
}

/// Puts the replay's history through the leader; returns puts per second.
async fn write_history(ctx: &Ctx, cluster: &mut BenchCluster) -> anyhow::Result<f64> {
    let leader = cluster
        .cluster_mut()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    let endpoints = cluster.endpoints();
    let stubs = open_connections(std::slice::from_ref(&endpoints[leader]), 16, &cluster.access()).await?;
    let layout = KeyLayout::new(REPLAY_PREFIX, 8, ctx.scale.replay_revisions)?;
    let plan = PutAll {
        clients: 256,
        count: ctx.scale.replay_revisions,
        val_size: 256,
        request_timeout: Duration::from_secs(10),
        time_limit: Some(ctx.scale.load_time_limit),
        max_failures: 100,
        progress: false,
    };
    tracing::info!(
        system = cluster.name(),
        revisions = plan.count,
        "writing the replay history"
    );
    let loaded = put_all(&stubs, plan, move |index| layout.key(index)).await;
    if let Some(shortfall) = loaded.shortfall("history") {
        anyhow::bail!(shortfall);
    }
    cluster.wait_until_settled(Duration::from_secs(60)).await?;
    Ok(loaded.written as f64 / loaded.elapsed.as_secs_f64().max(1e-9))
}

/// One replay on a follower: `Ok(Ok(time))` when every event arrived,
/// `Ok(Err(what))` when fewer did within the limit.
async fn replay_once(cluster: &mut BenchCluster, revisions: u64) -> anyhow::Result<Result<Duration, String>> {
    let leader = cluster
        .cluster_mut()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    let endpoints = cluster.endpoints();
    let prefix = REPLAY_PREFIX.as_bytes().to_vec();
    let target = WatchTarget {
        range_end: prefix_range_end(&prefix),
        key: prefix,
        start_revision: 1,
    };
    let started = Instant::now();
    let fleet = WatcherFleet::open(
        &endpoints,
        (leader + 1) % endpoints.len(),
        &[target],
        None,
        Some(revisions),
    )
    .await
    .context("opening the replay watcher")?;
    let mut last_progress = (0, Instant::now());
    let mut stalled = false;
    fleet
        .wait_for(REPLAY_LIMIT, || {
            let received = fleet.received();
            if received != last_progress.0 {
                last_progress = (received, Instant::now());
            }
            stalled = last_progress.1.elapsed() >= REPLAY_STALL;
            stalled
        })
        .await;
    let tallies = fleet.close().await;
    let received: u64 = tallies.iter().map(|t| t.events).sum();
    let last = tallies.iter().filter_map(|t| t.last_event_at).max();
    Ok(match last {
        Some(last) if received >= revisions => Ok(last.duration_since(started)),
        _ => Err(format!(
            "{received} of {revisions} events{} (last one {}){}",
            if stalled {
                format!(", then none for {} s", REPLAY_STALL.as_secs())
            } else {
                format!(" within {} s", REPLAY_LIMIT.as_secs())
            },
            last.map_or("never".to_string(), |at| format!(
                "{:.1} s after the create",
                at.duration_since(started).as_secs_f64()
            )),
            tallies
                .iter()
                .find_map(|t| t.failure.clone())
                .map(|failure| format!("; {failure}"))
                .unwrap_or_default()
        )),
    })
}

pub async fn run_idle(ctx: &Ctx) -> anyhow::Result<()> {
    let watchers = ctx.scale.idle_watchers;
    let streams = place_streams(watchers, 3, 0).len();
    let method = format!(
        "3 members, one cluster per system (both running). `keel-bench put` through the leader, {IDLE_PUT_CLIENTS} \
         clients over {IDLE_PUT_CONNS} connections, 8-byte keys from 100,000, 256-byte values, {:.1} s \
         measured after {:.1} s of warm-up; without watchers, and with {watchers} watchers of single keys \
         under `{IDLE_PREFIX}` that nobody writes ({streams} streams of 100 watchers, round-robin over the \
         members starting at a follower, opened with the bench's own Watch stub (keys decoded, values skipped)). Per repetition and system \
         both are measured back to back (the order alternates) and *with / without* is their ratio; \
         memory per idle watcher is the members' summed VmRSS after minus before opening them.",
        ctx.scale.duration.as_secs_f64(),
        ctx.scale.warmup.as_secs_f64(),
    );
    let mut report = ctx.new_report(
        Scenario::WatchIdle,
        &format!("9. Watch: put throughput with {watchers} idle watchers"),
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::WatchIdle, &mut report);
    }
    let mut table = Table::default();
    let pair = start_pair(ctx, 3, &mut report.failures).await;
    let targets: Vec<WatchTarget> = (0..watchers)
        .map(|index| {
            let mut key = IDLE_PREFIX.as_bytes().to_vec();
            crate::load::spec::push_padded_decimal(&mut key, index as u64, 6);
            WatchTarget {
                key,
                range_end: Vec::new(),
                start_revision: 0,
            }
        })
        .collect();
    let case = format!("put clients={IDLE_PUT_CLIENTS} conns={IDLE_PUT_CONNS}, {watchers} idle watchers");
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                continue;
            };
            tracing::info!(
                system = cluster.name(),
                rep,
                watchers,
                "put with and without idle watchers"
            );
            if let Err(error) = idle_once(ctx, &mut report, &mut table, cluster, &targets, &case, rep).await {
                report.failures.push(format!(
                    "{} ×3 idle watchers rep {rep}: {error:#}",
                    system_name(flavor)
                ));
            }
        }
    }
    report.rows = table.rows();
    ctx.publish(Scenario::WatchIdle, &mut report)
}

/// One repetition on one system: put throughput without and with the idle
/// watchers, in the order the repetition says.
async fn idle_once(
    ctx: &Ctx,
    report: &mut ScenarioReport,
    table: &mut Table,
    cluster: &BenchCluster,
    targets: &[WatchTarget],
    case: &str,
    rep: usize,
) -> anyhow::Result<()> {
    let flavor = cluster.flavor;
    let mut spec = cluster.spec();
    spec.clients = IDLE_PUT_CLIENTS;
    spec.conns = IDLE_PUT_CONNS;
    spec.key_space = 100_000;
    spec.duration = Some(ctx.scale.duration);
    spec.warmup = ctx.scale.warmup;
    let leader = crate::load::find_leader(&cluster.endpoints(), &cluster.access()).await?;
    let first_member = cluster
        .endpoints()
        .iter()
        .position(|endpoint| *endpoint == leader)
        .map_or(0, |index| index + 1);
    let mut throughputs: [Option<f64>; 2] = [None, None];
    let with_first = rep % 2 == 1;
    for with_watchers in [with_first, !with_first] {
        let label = if with_watchers { "with" } else { "without" };
        if !with_watchers {
            let run = put_run(report, cluster, &spec, &format!("{case}: {label}"), rep).await;
            record_put(table, case, label, flavor, run.as_ref());
            throughputs[0] = run.map(|r| r.throughput);
            continue;
        }
        let before = cluster.memory()?;
        let fleet = WatcherFleet::open(&cluster.endpoints(), first_member, targets, None, None)
            .await
            .context("opening the idle watchers")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let opened = cluster.memory()?;
        let delta_mib: f64 = opened
            .iter()
            .zip(&before)
            .map(|(o, b)| o.vm_rss_mib - b.vm_rss_mib)
            .sum();
        table.add(
            3,
            case,
            None,
            "RSS KiB/idle watcher",
            Better::Lower,
            flavor,
            Some(delta_mib * 1024.0 / targets.len() as f64),
        );
        let run = put_run(report, cluster, &spec, &format!("{case}: {label}"), rep).await;
        record_put(table, case, label, flavor, run.as_ref());
        throughputs[1] = run.map(|r| r.throughput);
        let tallies = fleet.close().await;
        let events: u64 = tallies.iter().map(|t| t.events).sum();
        if events > 0 {
            anyhow::bail!("the idle watchers received {events} events (their keys are never written)");
        }
        if let Some(failure) = tallies.iter().find_map(|t| t.failure.clone()) {
            anyhow::bail!("an idle watch stream failed: {failure}");
        }
    }
    let ratio = match throughputs {
        [Some(without), Some(with)] if without > 0.0 => Some(with / without),
        _ => None,
    };
    table.add(
        3,
        case,
        None,
        "writes/s with / without",
        Better::Higher,
        flavor,
        ratio,
    );
    Ok(())
}

async fn put_run(
    report: &mut ScenarioReport,
    cluster: &BenchCluster,
    spec: &LoadSpec,
    case: &str,
    rep: usize,
) -> Option<crate::load::RunReport> {
    measure(report, cluster, Mode::Put, spec, case, rep).await
}

fn record_put(
    table: &mut Table,
    case: &str,
    label: &str,
    flavor: keel_tests::Flavor,
    run: Option<&crate::load::RunReport>,
) {
    let clients = Some(IDLE_PUT_CLIENTS);
    let mut add = |metric: String, better: Better, value: Option<f64>| {
        table.add(3, case, clients, &metric, better, flavor, value);
    };
    add(
        format!("writes/s {label}"),
        Better::Higher,
        run.map(|r| r.throughput),
    );
    add(
        format!("p50 ms {label}"),
        Better::Lower,
        run.map(|r| r.latency_ms.p50),
    );
    add(
        format!("server CPU µs/req {label}"),
        Better::Lower,
        run.and_then(|r| cpu_per_request(r).0),
    );
}
