//! Scenario 5, failover: under a 16-client put load spread over all three
//! members, kill -9 the leader and time until puts succeed again, i.e. until
//! the first put *sent after the kill* is acknowledged. A client whose
//! request fails or takes over 1 s moves on to the next member, as etcd's
//! clients do; a prober also starts a put on a surviving member every 10 ms
//! after the kill, so the time is not quantized by requests that hang until
//! their timeout. Repeated (default 20 times per system, alternating), then
//! the killed member is restarted and the cluster allowed to settle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::kv_client::KvClient;
use keel_api::etcdserverpb::PutRequest;
use keel_client::{Client, ClientConfig};
use keel_tests::Flavor;
use tonic::transport::Channel;

use crate::compare::cluster::{order, BenchCluster};
use crate::compare::results::Better;
use crate::compare::{start_pair, Ctx, Scenario, Table};
use crate::load::spec::filler_value;

const CLIENTS: usize = 16;
const CONNECTION_GROUPS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A failover slower than this keeps the members' logs for diagnosis.
const OUTLIER: Duration = Duration::from_secs(3);

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let method = format!(
        "3 members per system; {CLIENTS} clients put 8-byte keys / 256-byte values over {CONNECTION_GROUPS} \
         connections to every member, then the leader is killed with SIGKILL; the time is from the kill \
         to the first acknowledged put sent after it: by a load client (a request that fails or takes over {} s \
         moves to the next member) or by a prober that starts a put on a surviving member every 10 ms \
         without waiting for earlier ones (so hanging requests do not coarsen the time). {} kill(s) per system, alternating; the killed member is restarted and the cluster \
         settles in between. Both systems at election timeout 1000 ms, heartbeat 100 ms.",
        REQUEST_TIMEOUT.as_secs(),
        ctx.scale.failover_reps
    );
    let mut report = ctx.new_report(
        Scenario::Failover,
        "5. Failover: kill -9 the leader under put load",
        &method,
    );
    report.repetitions = ctx.scale.failover_reps;
    if !ctx.sizes.contains(&3) {
        report.notes.push("not run: --sizes does not include 3".into());
        return ctx.publish(Scenario::Failover, &mut report);
    }
    let mut table = Table::default();
    let mut pair = start_pair(ctx, 3, &mut report.failures).await;
    let case = "kill -9 leader, 16-client put load";
    let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let outlier_log = ctx.results.raw_dir().join("failover-outliers.log");
    let _ = std::fs::remove_file(&outlier_log);
    let mut outliers = 0;
    for rep in 0..ctx.scale.failover_reps {
        for flavor in order(rep) {
            let Some(cluster) = pair.iter_mut().find(|c| c.flavor == flavor) else {
                continue;
            };
            let name = cluster.name();
            match one_failover(cluster).await {
                Ok(unavailable) => {
                    let ms = unavailable.as_secs_f64() * 1000.0;
                    tracing::info!(system = name, rep, ms, "failover");
                    samples[slot(flavor)].push(ms);
                    table.add(3, case, None, "median ms", Better::Lower, flavor, Some(ms));
                    if unavailable > OUTLIER {
                        outliers += 1;
                        keep_outlier_logs(&outlier_log, cluster, rep, ms);
                    }
                }
                Err(error) => {
                    report
                        .failures
                        .push(format!("{name} ×3 failover rep {rep}: {error:#}"));
                }
            }
            if let Err(error) = cluster.wait_until_settled(Duration::from_secs(60)).await {
                report.failures.push(format!(
                    "{name} ×3 did not settle after failover rep {rep}: {error:#}"
                ));
            }
        }
    }
    for flavor in [Flavor::Etcd, Flavor::Keel] {
        let max = samples[slot(flavor)].iter().copied().reduce(f64::max);
        table.add(3, case, None, "max ms", Better::Lower, flavor, max);
    }
    report.rows = table.rows();
    if outliers > 0 {
        report.notes.push(format!(
            "{outliers} failover(s) took over {} s; the members' log tails of each are in `{}/{}`",
            OUTLIER.as_secs(),
            outlier_log
                .parent()
                .and_then(|dir| dir.file_name())
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "failover-outliers.log"
        ));
    }
    report.notes.push(format!(
        "every sample (ms): etcd {:?}; keel {:?}",
        samples[slot(Flavor::Etcd)]
            .iter()
            .map(|v| v.round())
            .collect::<Vec<_>>(),
        samples[slot(Flavor::Keel)]
            .iter()
            .map(|v| v.round())
            .collect::<Vec<_>>()
    ));
    ctx.publish(Scenario::Failover, &mut report)
}

/// Appends every member's log tail to `path` (best effort: a failure to
/// write only loses the diagnosis, not the measurement).
fn keep_outlier_logs(path: &std::path::Path, cluster: &BenchCluster, rep: usize, ms: f64) {
    use std::io::Write;
    let text = format!(
        "==== {} failover rep {rep}: {ms:.0} ms ====\n{}\n\n",
        cluster.name(),
        cluster.log_tails(80)
    );
    let written = std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new(".")))
        .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(path))
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(error) = written {
        tracing::warn!("could not keep the outlier's logs in {}: {error}", path.display());
    }
}

fn slot(flavor: Flavor) -> usize {
    match flavor {
        Flavor::Etcd => 0,
        Flavor::Keel => 1,
    }
}

struct Watch {
    kill_at: Mutex<Option<Instant>>,
    recovered_at: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

/// One leader kill; returns the unavailability window. The killed member is
/// restarted before returning.
async fn one_failover(cluster: &mut BenchCluster) -> anyhow::Result<Duration> {
    let leader = cluster
        .cluster_mut()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    let endpoints = cluster.endpoints();
    let mut groups: Vec<Vec<KvClient<Channel>>> = Vec::new();
    for _ in 0..CONNECTION_GROUPS {
        let stubs = endpoints
            .iter()
            .map(|endpoint| Ok(Client::connect_lazy(ClientConfig::new([endpoint.as_str()]))?.kv_stub()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        groups.push(stubs);
    }
    let watch = Arc::new(Watch {
        kill_at: Mutex::new(None),
        recovered_at: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let stubs = groups[index % CONNECTION_GROUPS].clone();
            let watch = watch.clone();
            tokio::spawn(put_until_stopped(stubs, index, watch))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kill_at = Instant::now();
    if let Ok(mut mark) = watch.kill_at.lock() {
        *mark = Some(kill_at);
    }
    let killed = cluster.cluster_mut().kill(leader);
    let survivors: Vec<KvClient<Channel>> = groups[0]
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, stub)| stub.clone())
        .collect();
    let prober = tokio::spawn(probe(survivors, watch.clone()));
    let outcome = match killed {
        Err(error) => Err(anyhow::Error::from(error).context("killing the leader")),
        Ok(()) => loop {
            let recovered = watch.recovered_at.lock().ok().and_then(|mark| *mark);
            if let Some(at) = recovered {
                break Ok(at.duration_since(kill_at));
            }
            if kill_at.elapsed() > GIVE_UP_AFTER {
                break Err(anyhow::anyhow!(
                    "no put succeeded within {GIVE_UP_AFTER:?} of killing the leader:\n{}",
                    cluster.log_tails(10)
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
    };
    // Keep the load on briefly after recovery, as a real client would be.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watch.stop.store(true, Ordering::Relaxed);
    let _ = prober.await;
    for worker in workers {
        let _ = worker.await;
    }
    cluster.cluster_mut().restart(leader)?;
    outcome
}

/// Records `done` as the recovery time if it is the earliest success yet.
fn record_recovery(watch: &Watch, sent_at: Instant) {
    let kill_at = watch.kill_at.lock().ok().and_then(|mark| *mark);
    if kill_at.is_some_and(|kill_at| sent_at >= kill_at) {
        let done = Instant::now();
        if let Ok(mut recovered) = watch.recovered_at.lock() {
            match *recovered {
                Some(at) if at <= done => {}
                _ => *recovered = Some(done),
            }
        }
    }
}

/// After the kill, starts a put every `PROBE_EVERY` on the surviving
/// members in turn without waiting for earlier ones, so the recovery time
/// is resolved to a few ms even while the load's requests hang on a member
/// that waits for a leader (they only move on after their 1 s timeout).
async fn probe(survivors: Vec<KvClient<Channel>>, watch: Arc<Watch>) {
    let value = filler_value(256, 999);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut turn = 0usize;
    while !watch.stop.load(Ordering::Relaxed) && !survivors.is_empty() {
        let recovered = watch.recovered_at.lock().ok().and_then(|mark| *mark).is_some();
        if !recovered {
            turn += 1;
            let mut stub = survivors[turn % survivors.len()].clone();
            let request = PutRequest {
                key: format!("probe{:05}", turn % 100_000).into_bytes(),
                value: value.clone(),
                ..Default::default()
            };
            let watch = watch.clone();
            in_flight.spawn(async move {
                let sent_at = Instant::now();
                if let Ok(Ok(_)) = tokio::time::timeout(GIVE_UP_AFTER, stub.put(request)).await {
                    record_recovery(&watch, sent_at);
                }
            });
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    in_flight.abort_all();
}

async fn put_until_stopped(mut stubs: Vec<KvClient<Channel>>, index: usize, watch: Arc<Watch>) {
    let value = filler_value(256, index as u64);
    let mut member = index % stubs.len();
    let mut sequence = 0u64;
    while !watch.stop.load(Ordering::Relaxed) {
        sequence += 1;
        let request = PutRequest {
            key: format!("f{index:02}{:05}", sequence % 100_000).into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        let sent_at = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, stubs[member].put(request)).await;
        if matches!(answer, Ok(Ok(_))) {
            record_recovery(&watch, sent_at);
        } else {
            member = (member + 1) % stubs.len();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
