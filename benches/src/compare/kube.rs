//! Scenario 4, a Kubernetes-sized keyspace: 150,000 objects of 4 KiB under
//! `/registry/pods/<namespace>/<name>` plus 5,000 under
//! `/registry/minions/<name>`, loaded at 64 clients into a fresh cluster of
//! each system; then every member's VmHWM and VmRSS, the latency of
//! `get /registry/pods/ --prefix --keys-only` and of one namespace's full
//! listing, and the time from a restart of all members (kill -9 all, start
//! all) to the first successful linearizable read.

use std::time::{Duration, Instant};

use keel_api::etcdserverpb::RangeRequest;
use keel_api::key_range::prefix_range_end;
use keel_client::{Client, ClientConfig};

use crate::compare::cluster::BenchCluster;
use crate::compare::results::{Better, ScenarioReport};
use crate::compare::{measure, on_fresh_clusters, Ctx, Scenario, Table};
use crate::load::{open_connections, put_all, Mode, PutAll, Target};

const VALUE_BYTES: usize = 4096;
const LOAD_CLIENTS: usize = 64;

/// The key of object `index`: pods first, spread evenly over the
/// namespaces, then the minions.
fn object_key(index: u64, pods: u64, namespaces: u64) -> Vec<u8> {
    if index < pods {
        let per_namespace = pods.div_ceil(namespaces);
        format!(
            "/registry/pods/ns-{:04}/pod-{:06}",
            index / per_namespace,
            index % per_namespace
        )
        .into_bytes()
    } else {
        format!("/registry/minions/node-{:05}", index - pods).into_bytes()
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let s = &ctx.scale;
    let method = format!(
        "A fresh cluster per system and size; {} pods of {VALUE_BYTES} B under \
         `/registry/pods/ns-NNNN/pod-NNNNNN` ({} namespaces) plus {} minions under `/registry/minions/`, \
         put once each by {LOAD_CLIENTS} clients over 8 connections to all members. Memory is read from \
         `/proc/<pid>/status` 2 s after loading (max over members; every member's values are in the raw JSON). \
         Listing latencies are single-client linearizable ranges through the leader ({} each). Restart: kill -9 \
         every member, start them all, then time until a linearizable get of one pod succeeds through any member \
         ({} time(s)).",
        s.kube_pods, s.kube_namespaces, s.kube_minions, s.list_reps, s.restart_reps
    );
    let mut report = ctx.new_report(Scenario::Kube, "4. Kubernetes-sized keyspace", &method);
    report.repetitions = 1;
    on_fresh_clusters(
        ctx,
        Scenario::Kube,
        &mut report,
        async |report, table, cluster| one_system(ctx, report, table, cluster).await,
    )
    .await
}

async fn one_system(ctx: &Ctx, report: &mut ScenarioReport, table: &mut Table, cluster: &mut BenchCluster) {
    let s = &ctx.scale;
    let (name, size, flavor) = (cluster.name(), cluster.size(), cluster.flavor);
    let total = s.kube_pods + s.kube_minions;
    let endpoints = cluster.endpoints();
    let stubs = match open_connections(&endpoints, 8, &cluster.access()).await {
        Ok(stubs) => stubs,
        Err(error) => {
            report
                .failures
                .push(format!("{name} ×{size}: connecting for the load: {error:#}"));
            return;
        }
    };
    let plan = PutAll {
        clients: LOAD_CLIENTS,
        count: total,
        val_size: VALUE_BYTES,
        request_timeout: Duration::from_secs(10),
        time_limit: Some(s.load_time_limit),
        max_failures: 100,
        progress: false,
    };
    let (pods, namespaces) = (s.kube_pods, s.kube_namespaces);
    tracing::info!(
        system = name,
        size,
        objects = total,
        "loading the Kubernetes-sized keyspace"
    );
    let loaded = put_all(&stubs, plan, move |index| object_key(index, pods, namespaces)).await;
    drop(stubs);
    let load_case = format!("load {total} objects at {LOAD_CLIENTS} clients");
    if let Some(shortfall) = loaded.shortfall(&format!("{name} ×{size} {load_case}")) {
        report.failures.push(shortfall);
        if let Some(exited) = cluster.exited_report() {
            report.failures.push(exited);
        }
    }
    let load_time = (loaded.failed == 0 && loaded.finished).then_some(loaded.elapsed.as_secs_f64());
    table.add(
        size,
        &load_case,
        None,
        "load time s",
        Better::Lower,
        flavor,
        load_time,
    );
    table.add(
        size,
        &load_case,
        None,
        "put p99 ms",
        Better::Lower,
        flavor,
        load_time.map(|_| loaded.latency_ms.p99),
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    match cluster.memory() {
        Ok(members) => {
            let max = |f: fn(&crate::machine::Memory) -> f64| members.iter().map(f).fold(0.0, f64::max);
            let case = "after loading (max member)";
            table.add(
                size,
                case,
                None,
                "VmHWM MiB",
                Better::Lower,
                flavor,
                Some(max(|m| m.vm_hwm_mib)),
            );
            table.add(
                size,
                case,
                None,
                "VmRSS MiB",
                Better::Lower,
                flavor,
                Some(max(|m| m.vm_rss_mib)),
            );
            report.notes.push(format!(
                "{name} ×{size} members' VmHWM/VmRSS MiB after loading: {}",
                members
                    .iter()
                    .map(|m| format!("{:.0}/{:.0}", m.vm_hwm_mib, m.vm_rss_mib))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Err(error) => report
            .failures
            .push(format!("{name} ×{size}: reading memory: {error:#}")),
    }

    let counted = count_keys(&endpoints, b"/registry/").await;
    match counted {
        Ok(count) if count == total as i64 => {}
        Ok(count) => report.failures.push(format!(
            "{name} ×{size}: `get /registry/ --prefix --count-only` says {count} keys, {total} were put"
        )),
        Err(error) => report
            .failures
            .push(format!("{name} ×{size}: counting keys: {error:#}")),
    }

    let namespace = format!("/registry/pods/ns-{:04}/", namespaces / 2);
    let listings = [
        (
            "get /registry/pods/ --prefix --keys-only",
            "/registry/pods/".to_string(),
            true,
        ),
        ("one namespace's full listing", namespace, false),
    ];
    for (case, prefix, keys_only) in listings {
        let mut spec = cluster.spec();
        spec.target = Target::Leader;
        spec.total = Some(s.list_reps);
        spec.prefix = prefix;
        spec.keys_only = keys_only;
        spec.key_size = 0;
        spec.key_space = 1;
        spec.request_timeout = Duration::from_secs(60);
        let run = measure(report, cluster, Mode::PrefixList, &spec, case, 0).await;
        table.add(
            size,
            case,
            Some(1),
            "p50 ms",
            Better::Lower,
            flavor,
            run.as_ref().map(|r| r.latency_ms.p50),
        );
        table.add(
            size,
            case,
            Some(1),
            "max ms",
            Better::Lower,
            flavor,
            run.as_ref().map(|r| r.latency_ms.max),
        );
    }

    let restart_case = "restart all members → first linearizable read";
    for rep in 0..s.restart_reps {
        match restart_to_first_read(cluster).await {
            Ok(elapsed) => table.add(
                size,
                restart_case,
                None,
                "seconds",
                Better::Lower,
                flavor,
                Some(elapsed.as_secs_f64()),
            ),
            Err(error) => {
                report
                    .failures
                    .push(format!("{name} ×{size} {restart_case} (rep {rep}): {error:#}"));
                table.add(size, restart_case, None, "seconds", Better::Lower, flavor, None);
                break;
            }
        }
        if let Err(error) = cluster.wait_until_settled(Duration::from_secs(60)).await {
            report
                .failures
                .push(format!("{name} ×{size} after restart: {error:#}"));
            break;
        }
    }
}

async fn count_keys(endpoints: &[String], prefix: &[u8]) -> anyhow::Result<i64> {
    let client = Client::connect(
        ClientConfig::new(endpoints.iter().cloned()).with_request_timeout(Duration::from_secs(60)),
    )
    .await?;
    let response = client
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_range_end(prefix),
            count_only: true,
            ..Default::default()
        })
        .await?;
    Ok(response.count)
}

/// kill -9 every member, start them all, and time until a linearizable read
/// succeeds through any of them.
async fn restart_to_first_read(cluster: &mut BenchCluster) -> anyhow::Result<Duration> {
    let size = cluster.size();
    for index in 0..size {
        cluster.cluster_mut().kill(index)?;
    }
    let started = Instant::now();
    for index in 0..size {
        cluster.cluster_mut().restart(index)?;
    }
    let endpoints = cluster.endpoints();
    let request = RangeRequest {
        key: b"/registry/minions/node-00000".to_vec(),
        ..Default::default()
    };
    let clients: Vec<Client> = endpoints
        .iter()
        .map(|endpoint| {
            Client::connect_lazy(
                ClientConfig::new([endpoint.as_str()])
                    .with_dial_timeout(Duration::from_millis(200))
                    .with_request_timeout(Duration::from_millis(500)),
            )
        })
        .collect::<Result<_, _>>()?;
    let limit = Duration::from_secs(120);
    loop {
        let attempts = clients.iter().map(|client| client.range(request.clone()));
        let answers = futures::future::join_all(attempts).await;
        if answers.iter().any(Result::is_ok) {
            return Ok(started.elapsed());
        }
        if let Some(exited) = cluster.cluster_mut().exited_member() {
            anyhow::bail!(
                "member {exited} exited after the restart:\n{}",
                cluster.log_tails(10)
            );
        }
        if started.elapsed() > limit {
            anyhow::bail!("no linearizable read succeeded within {limit:?} of the restart");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
