//! Running a load: `--clients` tasks on a multi-threaded runtime, spread
//! over `--conns` connections; each task owns its RNG, its value buffer and
//! its HDR histogram (merged at the end), so the hot loop takes no lock; the
//! only shared writes are two relaxed atomic counters. The lease modes run
//! on connections that carry a Lease stub too (`leases.rs`); put-with-lease
//! grants its leases before the measured run and revokes them after. Also
//! `put_all`, which
//! writes a numbered set of keys exactly once (preloads and the big loads of
//! the comparison).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_api::key_range::prefix_range_end;
use keel_client::ClientChannel;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::Status;

use crate::load::leases::{grant_leases, open_lease_connections, revoke_leases, LeaseConnection};
use crate::load::progress::Progress;
use crate::load::report::{new_histogram, LatencySummary, RunReport};
use crate::load::spec::{filler_value, KeyLayout, LoadSpec, Mode};
use crate::load::targets::{open_connections, resolve_targets, KvStub};
use crate::machine::cpu_seconds;

/// Everything the workers share, read-only but for the two counters.
struct Shared {
    mode: Mode,
    layout: KeyLayout,
    val_size: usize,
    read_ratio: f64,
    keys_only: bool,
    list_range_end: Vec<u8>,
    request_timeout: Duration,
    measure_from: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    /// Measured requests claimed so far (bounded by `total`).
    claimed: AtomicU64,
    /// Requests finished, measured or not (for the progress bar).
    finished: AtomicU64,
    /// txn-cas: the last mod_revision any client saw per key (0 = absent),
    /// shared so that a conflict means a real concurrent write.
    cas_seen: Vec<AtomicI64>,
    /// put-with-lease: the leases granted for the run (key `i` is put on
    /// `lease_ids[i % len]`).
    lease_ids: Vec<i64>,
    /// lease-grant-revoke: the TTL of each grant.
    lease_ttl: i64,
}

/// Most keys txn-cas keeps a revision slot for (8 bytes each).
const MAX_CAS_KEYS: u64 = 50_000_000;

/// What one worker counted.
struct Tally {
    histogram: Histogram<u64>,
    ops: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    first_error: Option<String>,
    cas_conflicts: u64,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            histogram: new_histogram(),
            ops: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            first_error: None,
            cas_conflicts: 0,
            last_done: None,
        }
    }

    fn error(&mut self, kind: String, message: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.ops += other.ops;
        self.errors += other.errors;
        for (kind, count) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.cas_conflicts += other.cas_conflicts;
        self.last_done = self.last_done.max(other.last_done);
    }
}

enum Outcome {
    Done,
    CasConflict,
}

/// Runs `mode` as `spec` says and reports it.
pub async fn run(mode: Mode, spec: &LoadSpec) -> anyhow::Result<RunReport> {
    run_sampling_servers(mode, spec, &|| None).await
}

/// [`run`], with the servers' CPU seconds so far read by `servers_cpu_seconds`
/// right before the clients start and right after the last one ends (the
/// window the client's own CPU is measured over), so the report's
/// `server_cpu_s` leaves out what comes before and after the requests:
/// connecting, preloading, granting and revoking put-with-lease's leases.
pub async fn run_sampling_servers(
    mode: Mode,
    spec: &LoadSpec,
    servers_cpu_seconds: &(dyn Fn() -> Option<f64> + Sync),
) -> anyhow::Result<RunReport> {
    spec.validate()?;
    let layout = spec.layout()?;
    if mode == Mode::TxnCas && layout.space() > MAX_CAS_KEYS {
        anyhow::bail!("txn-cas keeps a revision per key: --key-space at most {MAX_CAS_KEYS}");
    }
    let access = spec.access()?;
    let targets = resolve_targets(&spec.endpoints, spec.target, &access).await?;
    let (stubs, lease_connections) = if matches!(mode, Mode::LeaseGrantRevoke | Mode::PutWithLease) {
        let connections = open_lease_connections(&targets, spec.conns, &access).await?;
        let stubs = connections.iter().map(|c| c.kv.clone()).collect();
        (stubs, connections)
    } else {
        (
            open_connections(&targets, spec.conns, &access).await?,
            Vec::<LeaseConnection>::new(),
        )
    };

    let preloaded = if spec.preload {
        let key_layout = layout.clone();
        let report = put_all(
            &stubs,
            PutAll {
                clients: spec.clients,
                count: layout.space(),
                val_size: spec.val_size,
                request_timeout: spec.request_timeout,
                time_limit: None,
                max_failures: 100,
                progress: !spec.no_progress,
            },
            move |index| key_layout.key(index),
        )
        .await;
        if report.failed > 0 {
            anyhow::bail!(
                "preload failed for {} of {} keys; first error: {}",
                report.failed,
                layout.space(),
                report.first_error.unwrap_or_default()
            );
        }
        report.written
    } else {
        0
    };

    let layout_space = layout.space();
    let cas_seen: Vec<AtomicI64> = if mode == Mode::TxnCas {
        let seen: Vec<AtomicI64> = (0..layout_space).map(|_| AtomicI64::new(0)).collect();
        learn_mod_revisions(&stubs[0], &layout, &seen).await?;
        seen
    } else {
        Vec::new()
    };
    let lease_ids = if mode == Mode::PutWithLease {
        grant_leases(
            &lease_connections,
            spec.lease_count(),
            spec.lease_ttl,
            spec.clients,
            spec.request_timeout,
        )
        .await
        .context("granting the leases to put with")?
    } else {
        Vec::new()
    };
    let measure_from = Instant::now() + spec.warmup;
    let shared = Arc::new(Shared {
        mode,
        list_range_end: prefix_range_end(layout.prefix()),
        layout,
        val_size: spec.val_size,
        read_ratio: spec.read_ratio,
        keys_only: spec.keys_only,
        request_timeout: spec.request_timeout,
        measure_from,
        deadline: spec.measured_duration().map(|d| measure_from + d),
        total: spec.total,
        claimed: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        cas_seen,
        lease_ids,
        lease_ttl: spec.lease_ttl,
    });

    let progress = if spec.no_progress {
        Progress::hidden()
    } else {
        match (spec.total, spec.measured_duration()) {
            (Some(total), _) => Progress::counting(mode.name(), total),
            (None, duration) => Progress::timed(mode.name(), spec.warmup + duration.unwrap_or_default()),
        }
    };
    let ticker = progress.tick_from({
        let shared = shared.clone();
        Arc::new(move || shared.finished.load(Ordering::Relaxed))
    });

    let servers_cpu_before = servers_cpu_seconds();
    let cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let workers: Vec<_> = (0..spec.clients)
        .map(|index| {
            let stub = stubs[index % stubs.len()].clone();
            let lease = (!lease_connections.is_empty())
                .then(|| lease_connections[index % lease_connections.len()].lease.clone());
            let shared = shared.clone();
            tokio::spawn(worker(shared, stub, lease, index as u64))
        })
        .collect();
    let mut tally = Tally::new();
    for joined in futures::future::join_all(workers).await {
        tally.merge(joined.context("a load worker panicked")?);
    }
    let client_cpu_s = (cpu_seconds("self").unwrap_or(0.0) - cpu_before).max(0.0);
    let server_cpu_s = servers_cpu_before
        .zip(servers_cpu_seconds())
        .map(|(before, after)| (after - before).max(0.0));
    ticker.abort();
    progress.finish();
    if !shared.lease_ids.is_empty() {
        revoke_leases(
            &lease_connections,
            &shared.lease_ids,
            spec.clients,
            spec.request_timeout,
        )
        .await
        .context("revoking the leases put with")?;
    }

    let elapsed = tally
        .last_done
        .map(|done| done.saturating_duration_since(measure_from))
        .unwrap_or_default()
        .as_secs_f64();
    let throughput = if elapsed > 0.0 {
        tally.ops as f64 / elapsed
    } else {
        0.0
    };
    Ok(RunReport {
        label: spec.label.clone(),
        mode: mode.name().to_string(),
        target: spec.target.name().to_string(),
        targets,
        conns: spec.conns,
        clients: spec.clients,
        key_size: spec.key_size,
        val_size: spec.val_size,
        key_space: spec.key_space,
        ops: tally.ops,
        errors: tally.errors,
        error_kinds: tally.error_kinds,
        first_error: tally.first_error,
        cas_conflicts: tally.cas_conflicts,
        requests_sent: shared.finished.load(Ordering::Relaxed),
        client_cpu_s,
        server_cpu_s,
        preloaded,
        elapsed_s: elapsed,
        throughput,
        latency_ms: LatencySummary::from_histogram(&tally.histogram),
        command: spec.command_line(mode),
    })
}

impl Shared {
    /// Whether the next request is measured (`Some(true)`), warm-up
    /// (`Some(false)`), or the run is over (`None`).
    fn claim(&self, now: Instant) -> Option<bool> {
        if now < self.measure_from {
            return Some(false);
        }
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                return None;
            }
        }
        if let Some(total) = self.total {
            if self.claimed.fetch_add(1, Ordering::Relaxed) >= total {
                return None;
            }
        }
        Some(true)
    }
}

async fn worker(
    shared: Arc<Shared>,
    mut stub: KvStub,
    mut lease: Option<LeaseClient<ClientChannel>>,
    seed: u64,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(17));
    let value = filler_value(shared.val_size, seed);
    loop {
        let started = Instant::now();
        let Some(measured) = shared.claim(started) else {
            break;
        };
        let sent = send(&shared, &mut stub, lease.as_mut(), &mut rng, &value);
        let result = tokio::time::timeout(shared.request_timeout, sent).await;
        let done = Instant::now();
        shared.finished.fetch_add(1, Ordering::Relaxed);
        let failed = !matches!(result, Ok(Ok(_)));
        if measured {
            match result {
                Ok(Ok(outcome)) => {
                    let micros = done.duration_since(started).as_micros() as u64;
                    tally.histogram.saturating_record(micros.max(1));
                    tally.ops += 1;
                    if let Outcome::CasConflict = outcome {
                        tally.cas_conflicts += 1;
                    }
                }
                Ok(Err(status)) => tally.error(format!("{:?}", status.code()), status.to_string()),
                Err(_) => tally.error(
                    "timeout".into(),
                    format!("no answer within {:?}", shared.request_timeout),
                ),
            }
            tally.last_done = Some(done);
        }
        if failed {
            // Keep a failing server from turning the loop into a busy spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tally
}

async fn send(
    shared: &Shared,
    stub: &mut KvStub,
    lease: Option<&mut LeaseClient<ClientChannel>>,
    rng: &mut SmallRng,
    value: &[u8],
) -> Result<Outcome, Status> {
    let space = shared.layout.space();
    match shared.mode {
        Mode::Put => put(stub, shared.layout.key(rng.gen_range(0..space)), value, 0).await,
        Mode::PutWithLease => {
            let index = rng.gen_range(0..space);
            let lease_id = shared.lease_ids[index as usize % shared.lease_ids.len()];
            put(stub, shared.layout.key(index), value, lease_id).await
        }
        Mode::LeaseGrantRevoke => match lease {
            Some(lease) => grant_then_revoke(lease, shared.lease_ttl).await,
            None => Err(Status::failed_precondition(
                "lease-grant-revoke runs without a Lease stub",
            )),
        },
        Mode::Range => get(stub, shared.layout.key(rng.gen_range(0..space)), false).await,
        Mode::RangeSerializable => get(stub, shared.layout.key(rng.gen_range(0..space)), true).await,
        Mode::Mixed => {
            let key = shared.layout.key(rng.gen_range(0..space));
            if rng.gen_bool(shared.read_ratio) {
                get(stub, key, false).await
            } else {
                put(stub, key, value, 0).await
            }
        }
        Mode::TxnCas => {
            let index = rng.gen_range(0..space);
            txn_cas(
                stub,
                shared.layout.key(index),
                value,
                &shared.cas_seen[index as usize],
            )
            .await
        }
        Mode::PrefixList => {
            let request = RangeRequest {
                key: shared.layout.prefix().to_vec(),
                range_end: shared.list_range_end.clone(),
                keys_only: shared.keys_only,
                ..Default::default()
            };
            stub.range(request).await.map(|_| Outcome::Done)
        }
    }
}

/// A put of `key`, attached to lease `lease` (0: none).
async fn put(stub: &mut KvStub, key: Vec<u8>, value: &[u8], lease: i64) -> Result<Outcome, Status> {
    let request = PutRequest {
        key,
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    stub.put(request).await.map(|_| Outcome::Done)
}

/// Grants a lease the server names, then revokes it.
async fn grant_then_revoke(stub: &mut LeaseClient<ClientChannel>, ttl: i64) -> Result<Outcome, Status> {
    let granted = stub
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await?
        .into_inner();
    if granted.id == 0 {
        return Err(Status::internal(format!(
            "lease grant answered ID 0 ({})",
            granted.error
        )));
    }
    stub.lease_revoke(LeaseRevokeRequest { id: granted.id }).await?;
    Ok(Outcome::Done)
}

async fn get(stub: &mut KvStub, key: Vec<u8>, serializable: bool) -> Result<Outcome, Status> {
    let request = RangeRequest {
        key,
        serializable,
        ..Default::default()
    };
    stub.range(request).await.map(|_| Outcome::Done)
}

/// Compare-and-swap on the key's mod_revision: `seen` is the revision the
/// clients last saw (0 = absent); it is updated from the answer either way
/// (never backwards).
async fn txn_cas(stub: &mut KvStub, key: Vec<u8>, value: &[u8], seen: &AtomicI64) -> Result<Outcome, Status> {
    let expected = seen.load(Ordering::Relaxed);
    let request = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(expected)),
        }],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.clone(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    };
    let response = stub.txn(request).await?.into_inner();
    if response.succeeded {
        seen.fetch_max(
            response.header.map(|h| h.revision).unwrap_or(0),
            Ordering::Relaxed,
        );
        return Ok(Outcome::Done);
    }
    let current = response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(Response::ResponseRange(range)) => Some(range.kvs.first().map_or(0, |kv| kv.mod_revision)),
            _ => None,
        })
        .unwrap_or(0);
    seen.fetch_max(current, Ordering::Relaxed);
    Ok(Outcome::CasConflict)
}

/// Reads the current mod_revision of every key of the key space (one
/// keys-only range), so txn-cas starts from what the store holds rather than
/// from conflicts on keys earlier runs left.
async fn learn_mod_revisions(stub: &KvStub, layout: &KeyLayout, seen: &[AtomicI64]) -> anyhow::Result<()> {
    let first = layout.key(0);
    let mut end = layout.key(layout.space() - 1);
    end.push(0);
    let request = RangeRequest {
        key: first,
        range_end: end,
        keys_only: true,
        ..Default::default()
    };
    let response = stub
        .clone()
        .range(request)
        .await
        .context("reading the key space's mod revisions for txn-cas")?
        .into_inner();
    for kv in response.kvs {
        if let Some(index) = layout.index_of(&kv.key) {
            if let Some(slot) = seen.get(index as usize) {
                slot.store(kv.mod_revision, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// How `put_all` writes.
#[derive(Debug, Clone)]
pub struct PutAll {
    pub clients: usize,
    pub count: u64,
    pub val_size: usize,
    pub request_timeout: Duration,
    /// Give up (reporting `finished: false`) once this much time has passed.
    pub time_limit: Option<Duration>,
    /// Give up once this many keys could not be put (a dead cluster should
    /// not be retried until the time limit).
    pub max_failures: u64,
    pub progress: bool,
}

/// What `put_all` did.
#[derive(Debug, Clone)]
pub struct PutAllReport {
    pub written: u64,
    pub failed: u64,
    pub finished: bool,
    pub elapsed: Duration,
    pub first_error: Option<String>,
    pub latency_ms: LatencySummary,
}

impl PutAllReport {
    /// What went wrong with a load that did not put every key, for a
    /// report's failure list (`what`: the load's name); None when it did.
    pub fn shortfall(&self, what: &str) -> Option<String> {
        if self.failed == 0 && self.finished {
            return None;
        }
        Some(format!(
            "{what}: {} written, {} failed{} in {:.1} s; first error: {}",
            self.written,
            self.failed,
            if self.finished {
                ""
            } else {
                ", gave up (time limit or over 100 failed keys)"
            },
            self.elapsed.as_secs_f64(),
            self.first_error.clone().unwrap_or_default()
        ))
    }
}

/// Puts keys `0..count` (`key_of(index)`) exactly once each, `clients` at a
/// time over `stubs`, retrying a failed put up to 3 times.
pub async fn put_all<F>(stubs: &[KvStub], plan: PutAll, key_of: F) -> PutAllReport
where
    F: Fn(u64) -> Vec<u8> + Send + Sync + 'static,
{
    let started = Instant::now();
    let deadline = plan.time_limit.map(|limit| started + limit);
    let next = Arc::new(AtomicU64::new(0));
    let gave_up = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let key_of = Arc::new(key_of);
    let progress = if plan.progress {
        Progress::counting("load", plan.count)
    } else {
        Progress::hidden()
    };
    let ticker = progress.tick_from({
        let next = next.clone();
        let count = plan.count;
        Arc::new(move || next.load(Ordering::Relaxed).min(count))
    });
    let workers: Vec<_> = (0..plan.clients.max(1))
        .map(|index| {
            let mut stub = stubs[index % stubs.len()].clone();
            let (next, gave_up, key_of, plan) = (next.clone(), gave_up.clone(), key_of.clone(), plan.clone());
            let failures = failures.clone();
            tokio::spawn(async move {
                let value = filler_value(plan.val_size, index as u64);
                let mut tally = Tally::new();
                loop {
                    let too_many_failures = failures.load(Ordering::Relaxed) >= plan.max_failures;
                    if too_many_failures || deadline.is_some_and(|d| Instant::now() >= d) {
                        gave_up.store(true, Ordering::Relaxed);
                        break;
                    }
                    let key_index = next.fetch_add(1, Ordering::Relaxed);
                    if key_index >= plan.count {
                        break;
                    }
                    let key = key_of(key_index);
                    let mut last_error = None;
                    for attempt in 0..4u64 {
                        let begun = Instant::now();
                        let sent = put(&mut stub, key.clone(), &value, 0);
                        match tokio::time::timeout(plan.request_timeout, sent).await {
                            Ok(Ok(_)) => {
                                let micros = begun.elapsed().as_micros() as u64;
                                tally.histogram.saturating_record(micros.max(1));
                                tally.ops += 1;
                                last_error = None;
                                break;
                            }
                            Ok(Err(status)) => last_error = Some(status.to_string()),
                            Err(_) => {
                                last_error = Some(format!("no answer within {:?}", plan.request_timeout))
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                    }
                    if let Some(message) = last_error {
                        tally.error("put".into(), message);
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::new();
    for joined in futures::future::join_all(workers).await {
        match joined {
            Ok(worker) => tally.merge(worker),
            Err(error) => tally.error("panic".into(), error.to_string()),
        }
    }
    ticker.abort();
    progress.finish();
    let finished = !gave_up.load(Ordering::Relaxed);
    PutAllReport {
        written: tally.ops,
        failed: tally.errors,
        finished,
        elapsed: started.elapsed(),
        first_error: tally.first_error,
        latency_ms: LatencySummary::from_histogram(&tally.histogram),
    }
}
