//! Scenario 7, watch fan-out: one writer puts at a fixed rate under one
//! prefix while 1 / 100 / 1,000 / 10,000 watchers of that prefix, spread
//! over the three members (see `load::watchers::place_streams`), receive
//! the events. Measured per case, on a fresh cluster of each system per
//! repetition: events delivered per second over all watchers, delivery
//! latency from the put's acknowledgement to the watcher's receipt, the
//! servers' CPU per event, and resident memory per watcher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_api::key_range::prefix_range_end;

use crate::compare::cluster::{order, system_name, BenchCluster};
use crate::compare::core_pinning::CorePinning;
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{Ctx, Scenario, Table};
use crate::load::spec::filler_value;
use crate::load::watchers::{
    place_streams, settle, write_at_rate, PutLedger, WatchTarget, WatcherFleet, WriterTally,
};
use crate::load::{open_connections, put_all, KeyLayout, LatencySummary, PutAll};
use crate::machine::Memory;

/// Puts per second of the one writer.
pub const WRITE_RATE: u32 = 200;
/// Puts per second of the writer in the saturation case: with the largest
/// number of watchers this offers more events than either system delivers,
/// so events/s delivered is what each can deliver at most.
pub const SATURATION_WRITE_RATE: u32 = 800;
const PREFIX: &str = "/watch/fanout/";
const HISTORY_PREFIX: &str = "/watch/history/";
const VALUE_BYTES: usize = 256;
/// In the case whose client has a core of its own: the three members
/// share this CPU, and the bench's process (watchers and writer) has
/// [`CLIENT_CPU`] (the higher of the two: the case needs a machine with
/// more CPUs than it).
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Puts the writer may have unanswered before it skips a tick.
const WRITER_IN_FLIGHT: usize = 256;
/// How long after the writer stops the watchers may take to receive the
/// rest of the measured puts' events (at [`WRITE_RATE`]; a faster writer's
/// case gets proportionally longer).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl FanoutCase {
    fn drain_limit(&self) -> Duration {
        DRAIN_LIMIT * self.puts_per_s.div_ceil(WRITE_RATE).max(1)
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let levels: Vec<String> = ctx.scale.fanout_watchers.iter().map(|w| w.to_string()).collect();
    let cases = fanout_cases(&ctx.scale.fanout_watchers);
    let saturation = cases
        .iter()
        .find(|case| case.puts_per_s == SATURATION_WRITE_RATE)
        .map(|case| {
            format!(
                " Saturation case: {} watchers with the writer at {SATURATION_WRITE_RATE} puts/s, more \
                 events than either system delivers, so events/s delivered is each system's delivery \
                 capacity on this machine (the watchers' client shares it). The same case *client on its \
                 own core* runs the three members on CPU {SERVER_CPU} and the bench's process (watchers \
                 and writer) on CPU {CLIENT_CPU}, every thread pinned from just before the watchers are \
                 opened, as if the client ran on another machine: the servers' delivery on one core, \
                 without the client taking part of it.",
                case.watchers
            )
        })
        .unwrap_or_default();
    let method = format!(
        "3 members; a fresh cluster per system, case and repetition. First {history} puts (256-byte values) \
         under another prefix, so both systems' caches of recent history are in their steady state. Then \
         {levels} watchers of the prefix `{PREFIX}` (start: now) are opened with the bench's own Watch stub (it decodes each event's key and skips its value, the same for both systems): at \
         most 100 watchers per stream, at least one stream per member, streams round-robin over the members \
         starting at a follower, each member's streams over at most 4 HTTP/2 connections (1 watcher: 1 stream \
         on a follower; 100: 3 streams of 33-34, one per member; 1,000: 10 streams; 10,000: 100 streams over \
         12 connections). One writer puts a new key under the prefix every 1/{WRITE_RATE} s through the \
         leader (256-byte values; each put sent on its tick without waiting for earlier ones), {warmup} of \
         warm-up, then {duration} measured. Events/s: events received by all watchers during the measured \
         time. Delivery latency *from ack*: from the writer receiving the put's acknowledgement to a watcher \
         receiving its event (an event that arrives before its put's acknowledgement counts as 0, and on \
         127.0.0.1 many do); *from send*: from the writer sending the put (so commit and apply included); both \
         over every event of the puts sent in the measured time (received up to {drain} s after the writer \
         stops, longer in proportion for a faster writer). Server CPU \
         per event: the three members' CPU time in the measured time over the events delivered in it. Memory \
         per watcher: the members' VmRSS (`/proc/<pid>/status`) summed, after minus before opening the \
         watchers, over the watchers; *created* is measured once every watcher is created (before any \
         write), *after run* once the measured events are delivered.{saturation}",
        history = ctx.scale.fanout_history,
        levels = levels.join(" / "),
        warmup = seconds(ctx.scale.warmup),
        duration = seconds(ctx.scale.duration),
        drain = DRAIN_LIMIT.as_secs(),
    );
    let mut report = ctx.new_report(
        Scenario::WatchFanout,
        &format!("7. Watch fan-out: 1 writer at {WRITE_RATE} puts/s, many watchers of its prefix"),
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::WatchFanout, &mut report);
    }
    let mut table = Table::default();
    for case in cases {
        for rep in 0..ctx.scale.reps {
            for flavor in order(rep) {
                match BenchCluster::start(flavor, 3, &ctx.data_root).await {
                    Ok(mut cluster) => {
                        one_case(ctx, &mut report, &mut table, &mut cluster, case, rep).await;
                    }
                    Err(error) => report
                        .failures
                        .push(format!("{} ×3 did not start: {error:#}", system_name(flavor))),
                }
            }
        }
        report.rows = table.rows();
        ctx.publish(Scenario::WatchFanout, &mut report)?;
    }
    Ok(())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// One fan-out case: how many watchers, how fast the writer puts.
#[derive(Debug, Clone, Copy)]
pub struct FanoutCase {
    pub watchers: usize,
    pub puts_per_s: u32,
    /// The members on one CPU, the bench's process on another.
    pub client_on_own_core: bool,
}

/// Every level at [`WRITE_RATE`], then the largest level of at least
/// 1,000 watchers again at [`SATURATION_WRITE_RATE`], the client first
/// sharing the cores with the servers, then on a core of its own (on a
/// machine of at least 2 CPUs).
pub fn fanout_cases(levels: &[usize]) -> Vec<FanoutCase> {
    let mut cases: Vec<FanoutCase> = levels
        .iter()
        .map(|&watchers| FanoutCase {
            watchers,
            puts_per_s: WRITE_RATE,
            client_on_own_core: false,
        })
        .collect();
    if let Some(&largest) = levels.iter().filter(|&&watchers| watchers >= 1_000).max() {
        cases.push(FanoutCase {
            watchers: largest,
            puts_per_s: SATURATION_WRITE_RATE,
            client_on_own_core: false,
        });
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus > CLIENT_CPU {
            cases.push(FanoutCase {
                watchers: largest,
                puts_per_s: SATURATION_WRITE_RATE,
                client_on_own_core: true,
            });
        }
    }
    cases
}

pub fn case_name(case: FanoutCase) -> String {
    let streams = place_streams(case.watchers, 3, 0).len();
    let cores = if case.client_on_own_core {
        " client on its own core"
    } else {
        ""
    };
    if case.puts_per_s == WRITE_RATE {
        format!("watchers={} streams={streams}{cores}", case.watchers)
    } else {
        format!(
            "watchers={} streams={streams} puts/s={}{cores}",
            case.watchers, case.puts_per_s
        )
    }
}

/// What one case measured on one system.
struct FanoutMeasurement {
    events_per_s: f64,
    from_ack: LatencySummary,
    from_send: LatencySummary,
    /// Measured events that arrived before their put's acknowledgement.
    early: u64,
    delivered: u64,
    expected: u64,
    server_cpu_us_per_event: Option<f64>,
    memory: [Vec<Memory>; 3],
    opened_in: Duration,
    writer: WriterTally,
    stream_failures: Vec<String>,
}

async fn one_case(
    ctx: &Ctx,
    report: &mut ScenarioReport,
    table: &mut Table,
    cluster: &mut BenchCluster,
    fanout: FanoutCase,
    rep: usize,
) {
    let (name, flavor) = (cluster.name(), cluster.flavor);
    let case = case_name(fanout);
    let watchers = fanout.watchers;
    tracing::info!(
        system = name,
        watchers,
        puts_per_s = fanout.puts_per_s,
        rep,
        "watch fan-out"
    );
    let measured = match measure_fanout(ctx, cluster, fanout).await {
        Ok(measured) => measured,
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×3 {case} (rep {rep}): {error:#}"));
            if let Some(exited) = cluster.exited_report() {
                report.failures.push(exited);
            }
            return;
        }
    };
    let complete = measured.delivered >= measured.expected && measured.stream_failures.is_empty();
    if !complete {
        report.failures.push(format!(
            "{name} ×3 {case} (rep {rep}): {} of {} events of the measured puts delivered within {} s after \
             the writer stopped{}",
            measured.delivered,
            measured.expected,
            fanout.drain_limit().as_secs(),
            measured
                .stream_failures
                .first()
                .map(|failure| format!(
                    "; {} stream(s) failed, first: {failure}",
                    measured.stream_failures.len()
                ))
                .unwrap_or_default()
        ));
    }
    let mut add = |metric: &str, better: Better, value: Option<f64>| {
        table.add(3, &case, Some(watchers), metric, better, flavor, value);
    };
    add("events/s delivered", Better::Higher, Some(measured.events_per_s));
    let from_ack = complete.then_some(measured.from_ack);
    add("delivery p50 ms from ack", Better::Lower, from_ack.map(|l| l.p50));
    add("delivery p99 ms from ack", Better::Lower, from_ack.map(|l| l.p99));
    let from_send = complete.then_some(measured.from_send);
    add(
        "delivery p50 ms from send",
        Better::Lower,
        from_send.map(|l| l.p50),
    );
    add(
        "delivery p99 ms from send",
        Better::Lower,
        from_send.map(|l| l.p99),
    );
    add(
        "server CPU µs/event",
        Better::Lower,
        measured.server_cpu_us_per_event,
    );
    let [before, created, after] = &measured.memory;
    let per_watcher_kib = |with: &[Memory]| {
        let delta_mib: f64 = with
            .iter()
            .zip(before)
            .map(|(w, b)| w.vm_rss_mib - b.vm_rss_mib)
            .sum();
        delta_mib * 1024.0 / watchers.max(1) as f64
    };
    add(
        "RSS KiB/watcher, created",
        Better::Lower,
        Some(per_watcher_kib(created)),
    );
    add(
        "RSS KiB/watcher, after run",
        Better::Lower,
        Some(per_watcher_kib(after)),
    );
    add(
        "create all watchers s",
        Better::Lower,
        Some(measured.opened_in.as_secs_f64()),
    );
    let mib = |members: &[Memory]| {
        members
            .iter()
            .map(|m| format!("{:.0}", m.vm_rss_mib))
            .collect::<Vec<_>>()
            .join("/")
    };
    report.notes.push(format!(
        "{name} {case} rep {rep}: {} of {} measured events delivered ({} before their put's ack); \
         writer: {} puts acked, {} failed, {} ticks skipped; the members' VmRSS MiB before {}, created {}, \
         after {}",
        measured.delivered,
        measured.expected,
        measured.early,
        measured.writer.acked,
        measured.writer.failed,
        measured.writer.skipped,
        mib(before),
        mib(created),
        mib(after),
    ));
}

async fn measure_fanout(
    ctx: &Ctx,
    cluster: &mut BenchCluster,
    fanout: FanoutCase,
) -> anyhow::Result<FanoutMeasurement> {
    let watchers = fanout.watchers;
    let leader = cluster
        .cluster_mut()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    let endpoints = cluster.endpoints();
    let leader_stubs =
        open_connections(std::slice::from_ref(&endpoints[leader]), 8, &cluster.access()).await?;
    let history = KeyLayout::new(HISTORY_PREFIX, 8, ctx.scale.fanout_history)?;
    let plan = PutAll {
        clients: 64,
        count: ctx.scale.fanout_history,
        val_size: VALUE_BYTES,
        request_timeout: Duration::from_secs(10),
        time_limit: Some(ctx.scale.load_time_limit),
        max_failures: 100,
        progress: false,
    };
    let loaded = put_all(&leader_stubs, plan, move |index| history.key(index)).await;
    if let Some(shortfall) = loaded.shortfall("history puts") {
        anyhow::bail!(shortfall);
    }
    cluster.wait_until_settled(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.memory()?;

    let capacity = fanout.puts_per_s as f64
        * (ctx.scale.warmup + ctx.scale.duration + fanout.drain_limit()).as_secs_f64();
    let ledger = Arc::new(PutLedger::new(PREFIX.as_bytes(), capacity as usize));
    let prefix = PREFIX.as_bytes().to_vec();
    let target = WatchTarget {
        range_end: prefix_range_end(&prefix),
        key: prefix,
        start_revision: 0,
    };
    let targets = vec![target; watchers];
    let _pinning = if fanout.client_on_own_core {
        let members: Vec<u32> = (0..3).filter_map(|index| cluster.cluster().pid(index)).collect();
        Some(CorePinning::pin(&members, SERVER_CPU, CLIENT_CPU)?)
    } else {
        None
    };
    let first_member = (leader + 1) % endpoints.len();
    let fleet = WatcherFleet::open(&endpoints, first_member, &targets, Some(ledger.clone()), None)
        .await
        .with_context(|| format!("opening {watchers} watchers"))?;
    let opened_in = fleet.opened_in;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let created = cluster.memory()?;

    let (stop_writer, stop_receiver) = tokio::sync::watch::channel(false);
    let next_seq = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_at_rate(
        leader_stubs[0].clone(),
        ledger.clone(),
        fanout.puts_per_s,
        filler_value(VALUE_BYTES, 7),
        stop_receiver,
        next_seq.clone(),
        WRITER_IN_FLIGHT,
    ));
    tokio::time::sleep(ctx.scale.warmup).await;
    let cpu_before = cluster.cpu_seconds().ok();
    ledger.start_window(next_seq.load(Ordering::Relaxed));
    tokio::time::sleep(ctx.scale.duration).await;
    ledger.end_window(next_seq.load(Ordering::Relaxed));
    let cpu_after = cluster.cpu_seconds().ok();
    let _ = stop_writer.send(true);
    let writer = writer.await.context("the writer panicked")?;

    let expected = ledger.measured_acked() * watchers as u64;
    fleet
        .wait_for(fanout.drain_limit(), || {
            ledger.measured_events.load(Ordering::Relaxed) >= expected
        })
        .await;
    let after = cluster.memory()?;
    let tallies = fleet.close().await;
    let settled = settle(&tallies, &ledger);
    let in_window: u64 = tallies.iter().map(|t| t.events_in_window).sum();
    let window = ledger.window().as_secs_f64();
    Ok(FanoutMeasurement {
        events_per_s: if window > 0.0 {
            in_window as f64 / window
        } else {
            0.0
        },
        from_ack: LatencySummary::from_histogram(&settled.from_ack_us),
        from_send: LatencySummary::from_histogram(&settled.from_send_us),
        early: settled.before_ack,
        delivered: tallies.iter().map(|t| t.measured_events).sum(),
        expected,
        server_cpu_us_per_event: cpu_before
            .zip(cpu_after)
            .filter(|_| in_window > 0)
            .map(|(b, a)| (a - b).max(0.0) * 1e6 / in_window as f64),
        memory: [before, created, after],
        opened_in,
        writer,
        stream_failures: tallies.iter().filter_map(|t| t.failure.clone()).collect(),
    })
}
