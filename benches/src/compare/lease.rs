//! Scenario 10, leases (issue 11), 3 members, keel against etcd, both
//! driven by the same raw tonic Lease/KV stubs: (a) grant+revoke pairs at
//! 16 and 64 clients and (c) puts attached to leases (none, a few, one per
//! key) on one pair of clusters, each measurement alternating the systems;
//! (b) 10,000 leases kept alive over a few multiplexed keep-alive streams,
//! at the rate that keeps them alive (every TTL/3) and as fast as the
//! servers answer, with the servers' CPU and resident memory per lease, on
//! a fresh cluster per system and repetition.

use std::time::{Duration, Instant};

use anyhow::Context;
use keel_tests::Flavor;

use crate::compare::cluster::{order, system_name, BenchCluster};
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::throughput::{record_latency, throughput_spec};
use crate::compare::{measure, start_pair, Ctx, Scenario, Table};
use crate::load::keepalive::{measure_phase, Pace, PhaseReport};
use crate::load::leases::{grant_leases, open_lease_connections};
use crate::load::watchers::connect_channel;
use crate::load::{Mode, RunReport};
use crate::machine::Memory;

/// (clients, connections) of the grant+revoke cases.
const GRANT_REVOKE_LEVELS: [(usize, usize); 2] = [(16, 4), (64, 8)];
/// TTL of the grant+revoke pairs' leases (never reached).
const GRANT_REVOKE_TTL: i64 = 60;
const PUT_CLIENTS: usize = 64;
const PUT_CONNS: usize = 8;
const PUT_PREFIX: &str = "/lease/put/";
/// Keys the puts pick from (so one lease per key is this many leases).
const PUT_KEYS: u64 = 1_000;
/// Leases the keys share in the "few leases" case.
const FEW_LEASES: u64 = 4;
/// TTL of the leases puts attach to: longer than any measurement.
const PUT_LEASE_TTL: i64 = 300;
/// TTL of the kept-alive leases, and how often each is renewed (TTL/3, as
/// etcd's Go client does).
const KEEPALIVE_TTL: i64 = 10;
const RENEW_PERIOD: Duration = Duration::from_millis(10_000 / 3);
/// Keep-alive streams (each on its own connection), round-robin over the
/// members starting at a follower.
const KEEPALIVE_STREAMS: usize = 6;
/// Renewals outstanding per stream in the saturation case.
const SATURATION_IN_FLIGHT: usize = 128;
/// Grants in flight (over [`GRANT_CONNS`] connections to the leader) when
/// creating the kept-alive leases.
const GRANT_CLIENTS: usize = 256;
const GRANT_CONNS: usize = 8;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let leases = ctx.scale.keepalive_leases;
    let paced_window = paced_window(ctx);
    let method = format!(
        "3 members. Every request goes through the bench's raw tonic Lease/KV stubs (the same code for both \
         systems; no client-side keeper). (a) *grant+revoke*: `keel-bench lease-grant-revoke` through the \
         leader: each client loops LeaseGrant(TTL {GRANT_REVOKE_TTL} s, ID chosen by the server) then \
         LeaseRevoke of that lease; one request is the pair; clients 16/64 over 4/8 connections. \
         (c) *put with lease*: `keel-bench put-with-lease` through the leader, {PUT_CLIENTS} clients over \
         {PUT_CONNS} connections, keys `{PUT_PREFIX}` + 8 digits drawn from {PUT_KEYS}, 256-byte values, \
         attached to {FEW_LEASES} leases (key i on lease i mod {FEW_LEASES}) or to one lease per key \
         ({PUT_KEYS} leases), granted (TTL {PUT_LEASE_TTL} s) before and revoked after each measurement (the \
         CPU per request leaves those grants and revokes out); \
         beside them the same puts without a lease (`keel-bench put`). (a) and (c) run on one cluster per \
         system (both up), {warmup} of warm-up then {duration} measured, alternating the systems. \
         (b) *keep-alive*: a fresh cluster per system and repetition; {leases} leases of TTL {KEEPALIVE_TTL} s \
         granted through the leader ({GRANT_CLIENTS} in flight over {GRANT_CONNS} connections), then kept \
         alive over {KEEPALIVE_STREAMS} keep-alive streams (one connection each, round-robin over the \
         members starting at a follower, lease i on stream i mod {KEEPALIVE_STREAMS}; renewals are sent \
         without waiting for earlier answers, as etcd's clients multiplex them): first *saturation*, each \
         stream keeping {SATURATION_IN_FLIGHT} renewals outstanding ({warmup} warm-up, {duration} measured), \
         then *paced*, every lease renewed once per TTL/3 = {period:.2} s, spread evenly ({warmup} warm-up, \
         {paced:.1} s measured). Renewals/s: answers received in the measured time; latency from sending a \
         renewal to its answer; server CPU: the three members' CPU time in the measured time (per renewal, \
         and as % of one core). Memory per lease: VmRSS (`/proc/<pid>/status`) after the keep-alive phases \
         minus before the grants, over {leases}, for the leader, the followers' mean, and all members summed \
         (*granted*: right after the grants). A lease answered TTL <= 0 (lost) is listed as a failure.",
        warmup = seconds(ctx.scale.warmup),
        duration = seconds(ctx.scale.duration),
        period = RENEW_PERIOD.as_secs_f64(),
        paced = paced_window.as_secs_f64(),
    );
    let mut report = ctx.new_report(
        Scenario::Lease,
        &format!("10. Leases: grant+revoke, {leases} leases kept alive, put with lease"),
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::Lease, &mut report);
    }
    let mut table = Table::default();
    {
        let pair = start_pair(ctx, 3, &mut report.failures).await;
        grant_revoke_cases(ctx, &mut report, &mut table, &pair).await;
        put_cases(ctx, &mut report, &mut table, &pair).await;
    }
    report.rows = table.rows();
    ctx.publish(Scenario::Lease, &mut report)?;
    for rep in 0..ctx.scale.reps {
        for flavor in order(rep) {
            match BenchCluster::start(flavor, 3, &ctx.data_root).await {
                Ok(mut cluster) => keep_alive_case(ctx, &mut report, &mut table, &mut cluster, rep).await,
                Err(error) => report
                    .failures
                    .push(format!("{} ×3 did not start: {error:#}", system_name(flavor))),
            }
        }
        report.rows = table.rows();
        ctx.publish(Scenario::Lease, &mut report)?;
    }
    Ok(())
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// The paced keep-alive's measured time: at least two renewal periods.
fn paced_window(ctx: &Ctx) -> Duration {
    ctx.scale.duration.max(RENEW_PERIOD * 2)
}

async fn grant_revoke_cases(
    ctx: &Ctx,
    report: &mut ScenarioReport,
    table: &mut Table,
    pair: &[BenchCluster],
) {
    for (clients, conns) in GRANT_REVOKE_LEVELS {
        let case = format!("grant+revoke clients={clients} conns={conns}");
        for rep in 0..ctx.scale.reps {
            for flavor in order(rep) {
                let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                    continue;
                };
                let mut spec = throughput_spec(ctx, cluster, clients, conns);
                spec.lease_ttl = GRANT_REVOKE_TTL;
                let run = measure(report, cluster, Mode::LeaseGrantRevoke, &spec, &case, rep).await;
                record_run(table, &case, clients, "pairs/s", flavor, run.as_ref());
            }
        }
    }
}

async fn put_cases(ctx: &Ctx, report: &mut ScenarioReport, table: &mut Table, pair: &[BenchCluster]) {
    let cases = [
        (Mode::Put, 0, "put, no lease".to_string()),
        (
            Mode::PutWithLease,
            FEW_LEASES,
            format!("put, {FEW_LEASES} leases"),
        ),
        (
            Mode::PutWithLease,
            0,
            format!("put, one lease per key ({PUT_KEYS} leases)"),
        ),
    ];
    for (mode, leases, label) in cases {
        let case = format!("{label}, clients={PUT_CLIENTS} conns={PUT_CONNS}");
        for rep in 0..ctx.scale.reps {
            for flavor in order(rep) {
                let Some(cluster) = pair.iter().find(|c| c.flavor == flavor) else {
                    continue;
                };
                let mut spec = throughput_spec(ctx, cluster, PUT_CLIENTS, PUT_CONNS);
                spec.prefix = PUT_PREFIX.to_string();
                spec.key_space = PUT_KEYS;
                spec.leases = leases;
                spec.lease_ttl = PUT_LEASE_TTL;
                let run = measure(report, cluster, mode, &spec, &case, rep).await;
                record_run(table, &case, PUT_CLIENTS, "writes/s", flavor, run.as_ref());
            }
        }
    }
}

fn record_run(
    table: &mut Table,
    case: &str,
    clients: usize,
    rate: &str,
    flavor: Flavor,
    run: Option<&RunReport>,
) {
    table.add(
        3,
        case,
        Some(clients),
        rate,
        Better::Higher,
        flavor,
        run.map(|r| r.throughput),
    );
    record_latency(table, 3, case, clients, flavor, run);
}

/// What the keep-alive case measured on one system.
struct KeepAliveMeasurement {
    grants_per_s: f64,
    saturation: PhaseReport,
    paced: PhaseReport,
    leader: usize,
    /// VmRSS before the grants, right after them, after the keep-alives.
    memory: [Vec<Memory>; 3],
}

async fn keep_alive_case(
    ctx: &Ctx,
    report: &mut ScenarioReport,
    table: &mut Table,
    cluster: &mut BenchCluster,
    rep: usize,
) {
    let (name, flavor) = (cluster.name(), cluster.flavor);
    let leases = ctx.scale.keepalive_leases;
    tracing::info!(system = name, leases, rep, "leases kept alive");
    let measured = match measure_keep_alive(ctx, cluster).await {
        Ok(measured) => measured,
        Err(error) => {
            report.failures.push(format!(
                "{name} ×3 keep-alive of {leases} leases (rep {rep}): {error:#}"
            ));
            if let Some(exited) = cluster.exited_report() {
                report.failures.push(exited);
            }
            return;
        }
    };
    let phases = [
        (
            format!("keep-alive saturation, {KEEPALIVE_STREAMS} streams × {SATURATION_IN_FLIGHT} in flight"),
            &measured.saturation,
        ),
        (
            format!(
                "keep-alive paced (each lease every {:.2} s), {KEEPALIVE_STREAMS} streams",
                RENEW_PERIOD.as_secs_f64()
            ),
            &measured.paced,
        ),
    ];
    for (case, phase) in phases {
        let case = format!("{leases} leases, {case}");
        let summary = &phase.summary;
        let healthy = phase.healthy();
        if !healthy {
            report.failures.push(format!(
                "{name} ×3 {case} (rep {rep}): {} lease(s) answered TTL <= 0, {} answer(s) out of order, {} \
                 stream failure(s){}",
                summary.lost_leases,
                summary.mismatched,
                summary.failures.len(),
                summary
                    .failures
                    .first()
                    .map(|f| format!("; first: {f}"))
                    .unwrap_or_default()
            ));
        }
        let mut add = |metric: &str, better: Better, value: Option<f64>| {
            table.add(3, &case, None, metric, better, flavor, value);
        };
        add(
            "renewals/s",
            Better::Higher,
            healthy.then_some(summary.renewals_per_s),
        );
        add("renewal p50 ms", Better::Lower, Some(summary.latency.p50));
        add("renewal p99 ms", Better::Lower, Some(summary.latency.p99));
        add("server CPU µs/renewal", Better::Lower, phase.cpu_us_per_renewal());
        add(
            "server CPU % of a core",
            Better::Lower,
            phase.cpu_percent_of_core(),
        );
    }
    let case = format!("{leases} leases of TTL {KEEPALIVE_TTL} s");
    let [before, granted, after] = &measured.memory;
    let kib_per_lease = |members: &[usize], with: &[Memory]| {
        let delta_mib: f64 = members
            .iter()
            .filter_map(|&m| Some(with.get(m)?.vm_rss_mib - before.get(m)?.vm_rss_mib))
            .sum();
        delta_mib * 1024.0 / leases.max(1) as f64
    };
    let all: Vec<usize> = (0..before.len()).collect();
    let followers: Vec<usize> = all.iter().copied().filter(|&m| m != measured.leader).collect();
    let mut add = |metric: &str, better: Better, value: f64| {
        table.add(3, &case, None, metric, better, flavor, Some(value));
    };
    add(
        &format!("grants/s ({GRANT_CLIENTS} in flight)"),
        Better::Higher,
        measured.grants_per_s,
    );
    add(
        "RSS KiB/lease, leader",
        Better::Lower,
        kib_per_lease(&[measured.leader], after),
    );
    add(
        "RSS KiB/lease, per follower (mean)",
        Better::Lower,
        kib_per_lease(&followers, after) / followers.len().max(1) as f64,
    );
    add(
        "RSS KiB/lease, all members",
        Better::Lower,
        kib_per_lease(&all, after),
    );
    add(
        "RSS KiB/lease, all members, granted",
        Better::Lower,
        kib_per_lease(&all, granted),
    );
    let mib = |members: &[Memory]| {
        members
            .iter()
            .map(|m| format!("{:.0}", m.vm_rss_mib))
            .collect::<Vec<_>>()
            .join("/")
    };
    report.notes.push(format!(
        "{name} keep-alive rep {rep}: leader is member {}; saturation answered {} of {} sent, paced {} of {}; \
         VmRSS MiB per member before {}, granted {}, after {}",
        measured.leader + 1,
        measured.saturation.summary.answered,
        measured.saturation.summary.sent,
        measured.paced.summary.answered,
        measured.paced.summary.sent,
        mib(before),
        mib(granted),
        mib(after),
    ));
}

async fn measure_keep_alive(ctx: &Ctx, cluster: &mut BenchCluster) -> anyhow::Result<KeepAliveMeasurement> {
    let leader = cluster
        .cluster_mut()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    cluster.wait_until_settled(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.memory()?;
    let endpoints = cluster.endpoints();

    let granting = open_lease_connections(
        std::slice::from_ref(&endpoints[leader]),
        GRANT_CONNS,
        &cluster.access(),
    )
    .await?;
    let started = Instant::now();
    let leases = grant_leases(
        &granting,
        ctx.scale.keepalive_leases,
        KEEPALIVE_TTL,
        GRANT_CLIENTS,
        Duration::from_secs(10),
    )
    .await
    .context("granting the leases")?;
    let grants_per_s = leases.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
    drop(granting);
    let granted = cluster.memory()?;

    let members = endpoints.len();
    let channels = futures::future::try_join_all(
        (0..KEEPALIVE_STREAMS).map(|stream| connect_channel(&endpoints[(leader + 1 + stream) % members])),
    )
    .await?;
    // Saturation first: it renews every lease within a moment of the grants.
    let server_cpu = || cluster.cpu_seconds().ok();
    let saturation_pace = Pace::Saturate {
        in_flight: SATURATION_IN_FLIGHT,
    };
    let saturation = measure_phase(
        &channels,
        &leases,
        saturation_pace,
        ctx.scale.warmup,
        ctx.scale.duration,
        server_cpu,
    )
    .await;
    let paced = measure_phase(
        &channels,
        &leases,
        Pace::Every(RENEW_PERIOD),
        ctx.scale.warmup,
        paced_window(ctx),
        server_cpu,
    )
    .await;
    let after = cluster.memory()?;
    Ok(KeepAliveMeasurement {
        grants_per_s,
        saturation,
        paced,
        leader,
        memory: [before, granted, after],
    })
}
