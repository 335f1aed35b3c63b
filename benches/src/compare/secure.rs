//! Scenario 12, `secure` (3 members; run only when named): put and
//! linearizable single-key range through the leader at 16 and 256 clients,
//! etcd beside keel, in three modes at once: *plain* (the baseline of the
//! same run), *tls* (server TLS on the client port, the clients verify the
//! CA) and *auth* (plaintext, auth enabled, the load clients authenticate
//! as a user whose role may read and write every key and send its token
//! with every request). All six clusters are up together and every
//! measurement alternates etcd and keel and cycles through the modes, so
//! that drift on a shared machine hits every mode alike. Beside the table,
//! one line per mode gives keel's ratio in that mode over its plain ratio
//! ("does keel keep its ratio?").

use keel_tests::Flavor;

use crate::compare::cluster::{order, system_name, BenchCluster, Security, BENCH_USER};
use crate::compare::results::{Better, Row};
use crate::compare::throughput::{preload, throughput_spec};
use crate::compare::{measure, Ctx, Scenario, Table};
use crate::load::Mode;

const MODES: [Security; 3] = [Security::Plain, Security::Tls, Security::Auth];
/// (clients, connections).
const LEVELS: [(usize, usize); 2] = [(16, 4), (256, 16)];
/// Keys the puts pick from (as the put scenario).
const PUT_KEYS: u64 = 100_000;
const THROUGHPUT: &str = "req/s";

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let method = format!(
        "3 members, through the leader; put of 8-byte keys (uniform over {PUT_KEYS}) with 256-byte values, \
         and linearizable single-key range of random keys among {} preloaded ones; clients 16 and 256 over 4 \
         and 16 connections; {:.1} s measured after {:.1} s of warm-up, {} repetition(s). Three modes, one \
         etcd and one keel cluster each, all up at once; each measurement alternates the systems and cycles \
         through the modes. *plain*: as the put and range scenarios. *tls*: `--cert-file`/`--key-file` and \
         `https://` client URLs (a CA and a 127.0.0.1 certificate made at run time), no client certificate; \
         the load clients verify the server against the CA (`--cacert`). *auth*: plaintext; users `root` \
         (role root) and `{BENCH_USER}` (a role with readwrite on every key), then AuthEnable; each load \
         connection authenticates as `{BENCH_USER}` once (simple token) and sends the token with every \
         request (`--user`). The data is preloaded by `{BENCH_USER}` too.",
        ctx.scale.range_keys,
        ctx.scale.duration.as_secs_f64(),
        ctx.scale.warmup.as_secs_f64(),
        ctx.scale.reps,
    );
    let mut report = ctx.new_report(
        Scenario::Secure,
        "12. Security: put and linearizable range with TLS and with auth",
        &method,
    );
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::Secure, &mut report);
    }
    let mut clusters: Vec<(Security, BenchCluster)> = Vec::new();
    for security in MODES {
        for flavor in [Flavor::Etcd, Flavor::Keel] {
            match BenchCluster::start_secured(flavor, 3, &ctx.data_root, security).await {
                Ok(cluster) => clusters.push((security, cluster)),
                Err(error) => report.failures.push(format!(
                    "{} ×3 ({}) did not start: {error:#}",
                    system_name(flavor),
                    security.name()
                )),
            }
        }
    }
    for (_, cluster) in &clusters {
        preload(ctx, &mut report, cluster).await;
    }
    let mut table = Table::default();
    for (mode, kind) in [(Mode::Put, "put"), (Mode::Range, "linearizable range")] {
        for (clients, conns) in LEVELS {
            let case = format!("{kind} clients={clients} conns={conns}");
            for rep in 0..ctx.scale.reps {
                for security in MODES {
                    for flavor in order(rep) {
                        let Some((_, cluster)) = clusters
                            .iter()
                            .find(|(s, c)| *s == security && c.flavor == flavor)
                        else {
                            continue;
                        };
                        let mut spec = throughput_spec(ctx, cluster, clients, conns);
                        spec.key_space = if mode == Mode::Put {
                            PUT_KEYS
                        } else {
                            ctx.scale.range_keys
                        };
                        let labelled = format!("{} {case}", security.name());
                        let run = measure(&mut report, cluster, mode, &spec, &labelled, rep).await;
                        table.set_mode(Some(security.name()));
                        let value = |pick: fn(&crate::load::RunReport) -> f64| run.as_ref().map(pick);
                        table.add(
                            3,
                            &case,
                            Some(clients),
                            THROUGHPUT,
                            Better::Higher,
                            flavor,
                            value(|r| r.throughput),
                        );
                        table.add(
                            3,
                            &case,
                            Some(clients),
                            "p50 ms",
                            Better::Lower,
                            flavor,
                            value(|r| r.latency_ms.p50),
                        );
                        table.add(
                            3,
                            &case,
                            Some(clients),
                            "p99 ms",
                            Better::Lower,
                            flavor,
                            value(|r| r.latency_ms.p99),
                        );
                    }
                }
            }
            report.rows = table.rows();
            report.notes = ratio_lines(&report.rows);
            ctx.publish(Scenario::Secure, &mut report)?;
        }
    }
    drop(clusters);
    ctx.publish(Scenario::Secure, &mut report)
}

/// One line per non-plain mode: for each case, keel/etcd in that mode
/// divided by keel/etcd plain, for throughput (1.00: keel keeps its ratio).
pub fn ratio_lines(rows: &[Row]) -> Vec<String> {
    let ratio_of = |mode: &str, case: &str| {
        rows.iter()
            .find(|row| row.mode.as_deref() == Some(mode) && row.case == case && row.metric == THROUGHPUT)
            .and_then(Row::ratio)
    };
    let label = |security: Security| match security {
        Security::Tls => "TLS",
        Security::Auth => "auth",
        Security::Plain => "plain",
    };
    let mut cases: Vec<&str> = Vec::new();
    for row in rows {
        if row.metric == THROUGHPUT && !cases.contains(&row.case.as_str()) {
            cases.push(&row.case);
        }
    }
    [Security::Tls, Security::Auth]
        .into_iter()
        .map(|security| {
            let parts: Vec<String> = cases
                .iter()
                .map(|case| {
                    match (ratio_of(security.name(), case), ratio_of(Security::Plain.name(), case)) {
                        (Some(secured), Some(plain)) if plain > 0.0 => format!(
                            "{case}: **{:.2}** ({secured:.2} vs {plain:.2})",
                            secured / plain
                        ),
                        _ => format!("{case}: –"),
                    }
                })
                .collect();
            format!(
                "keel's ratio with {} / plain (keel/etcd {} ÷ keel/etcd plain, {THROUGHPUT}; 1.00 = keel keeps \
                 its ratio): {}",
                label(security),
                label(security),
                parts.join("; ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, case: &str, etcd: f64, keel: f64) -> Row {
        Row {
            size: 3,
            mode: Some(mode.into()),
            case: case.into(),
            clients: Some(16),
            metric: THROUGHPUT.into(),
            better: Better::Higher,
            etcd: Some(etcd),
            keel: Some(keel),
            samples: (1, 1),
        }
    }

    #[test]
    fn ratio_lines_divide_each_modes_ratio_by_the_plain_one() {
        let rows = [
            row("plain", "put", 1000.0, 800.0),
            row("tls", "put", 500.0, 400.0),
            row("auth", "put", 1000.0, 400.0),
        ];
        let lines = ratio_lines(&rows);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("keel's ratio with TLS / plain"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("put: **1.00** (0.80 vs 0.80)"), "{}", lines[0]);
        assert!(lines[1].contains("put: **0.50** (0.40 vs 0.80)"), "{}", lines[1]);
    }
}
