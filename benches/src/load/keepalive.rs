//! Many leases kept alive over a few `LeaseKeepAlive` streams, multiplexed
//! as etcd's clients do it (one stream carries the renewals of many
//! leases, requests sent without waiting for earlier answers), on the raw
//! tonic stub so etcd and keel are driven by the same code. Each stream
//! owns a share of the leases and either renews each of them once per
//! period, spread evenly ([`Pace::Every`]), or keeps a number of renewals
//! outstanding ([`Pace::Saturate`]).
//!
//! Invariant (matching answers): both servers answer one stream's
//! renewals in the order they were sent, so each answer is matched with
//! the oldest unanswered request of its stream; an answer whose lease ID
//! differs is counted as mismatched (and gets no latency). An answer with
//! TTL <= 0 marks its lease lost (the server no longer has it).
//!
//! Also `keel-bench keep-alive` ([`KeepAliveSpec`], [`run_keep_alive`]):
//! grant leases through the leader, renew them over streams spread over
//! the members, revoke them; one JSON line.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use keel_api::etcdserverpb::lease_client::LeaseClient;
use keel_api::etcdserverpb::LeaseKeepAliveRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::load::leases::{grant_leases, open_lease_connections, revoke_leases};
use crate::load::report::{new_histogram, LatencySummary};
use crate::load::spec::parse_duration;
use crate::load::targets::{find_leader, Access};
use crate::load::watchers::connect_channel;
use crate::machine::cpu_seconds;

/// Renewals a stream's sender may queue ahead of the connection.
const REQUESTS_QUEUED: usize = 1024;
/// How often a paced sender sends the renewals that have come due.
const PACE_TICK: Duration = Duration::from_millis(5);
/// How long a stopped stream waits for the answers still in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How fast the streams renew their leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Each lease once per period, the stream's renewals spread evenly
    /// over it (the first one at once).
    Every(Duration),
    /// As fast as the server answers, with this many renewals outstanding
    /// per stream.
    Saturate { in_flight: usize },
}

/// The measured interval: answers received within it count.
struct MeasureWindow {
    base: Instant,
    from_ns: AtomicU64,
    to_ns: AtomicU64,
}

impl MeasureWindow {
    fn new() -> Self {
        MeasureWindow {
            base: Instant::now(),
            from_ns: AtomicU64::new(u64::MAX),
            to_ns: AtomicU64::new(u64::MAX),
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn contains(&self, at: Instant) -> bool {
        let at_ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        at_ns >= self.from_ns.load(Ordering::Relaxed) && at_ns < self.to_ns.load(Ordering::Relaxed)
    }

    fn length(&self) -> Duration {
        let from = self.from_ns.load(Ordering::Relaxed);
        let to = self.to_ns.load(Ordering::Relaxed);
        if from == u64::MAX || to == u64::MAX {
            return Duration::ZERO;
        }
        Duration::from_nanos(to.saturating_sub(from))
    }
}

/// What one stream saw.
#[derive(Debug)]
pub struct StreamTally {
    /// Renewals sent.
    pub sent: u64,
    /// Answers received (any time).
    pub answered: u64,
    /// Answers received within the measured window.
    pub answered_in_window: u64,
    /// Latency (µs) from sending a renewal to its answer, for the answers
    /// within the window.
    pub latency_us: Histogram<u64>,
    /// Leases some answer said the server no longer has (TTL <= 0).
    pub lost: BTreeSet<i64>,
    /// Answers whose lease was not the oldest unanswered request's.
    pub mismatched: u64,
    /// Why the stream failed, if it did before it was stopped.
    pub failure: Option<String>,
}

impl StreamTally {
    fn new() -> Self {
        StreamTally {
            sent: 0,
            answered: 0,
            answered_in_window: 0,
            latency_us: new_histogram(),
            lost: BTreeSet::new(),
            mismatched: 0,
            failure: None,
        }
    }
}

/// Every stream's tally folded into one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepAliveSummary {
    pub sent: u64,
    pub answered: u64,
    pub answered_in_window: u64,
    /// Answers per second within the window.
    pub renewals_per_s: f64,
    pub latency: LatencySummary,
    pub lost_leases: usize,
    pub mismatched: u64,
    pub failures: Vec<String>,
}

/// Keep-alive streams renewing a set of leases until stopped.
pub struct KeepAliveFleet {
    streams: Vec<JoinHandle<StreamTally>>,
    stop: watch::Sender<bool>,
    window: Arc<MeasureWindow>,
}

impl KeepAliveFleet {
    /// One stream per channel, lease `i` on stream `i mod streams`; the
    /// streams start renewing at once.
    pub fn start(channels: &[Channel], leases: &[i64], pace: Pace) -> KeepAliveFleet {
        let (stop, stopped) = watch::channel(false);
        let window = Arc::new(MeasureWindow::new());
        let count = channels.len().max(1);
        let streams = channels
            .iter()
            .enumerate()
            .map(|(index, channel)| {
                let share: Vec<i64> = leases.iter().skip(index).step_by(count).copied().collect();
                tokio::spawn(run_stream(
                    channel.clone(),
                    share,
                    pace,
                    window.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        KeepAliveFleet {
            streams,
            stop,
            window,
        }
    }

    /// Answers from now on count (until [`end_window`](Self::end_window)).
    pub fn start_window(&self) {
        self.window.from_ns.store(self.window.now_ns(), Ordering::Relaxed);
    }

    pub fn end_window(&self) {
        self.window.to_ns.store(self.window.now_ns(), Ordering::Relaxed);
    }

    /// Stops sending, waits for the answers in flight (a few seconds at
    /// most), and sums up every stream.
    pub async fn stop(self) -> KeepAliveSummary {
        let _ = self.stop.send(true);
        let mut tallies = Vec::new();
        for stream in self.streams {
            match stream.await {
                Ok(tally) => tallies.push(tally),
                Err(error) => {
                    let mut tally = StreamTally::new();
                    tally.failure = Some(format!("the stream task failed: {error}"));
                    tallies.push(tally);
                }
            }
        }
        summarize(&tallies, self.window.length())
    }
}

fn summarize(tallies: &[StreamTally], window: Duration) -> KeepAliveSummary {
    let mut latency = new_histogram();
    let mut lost = BTreeSet::new();
    for tally in tallies {
        // Same bounds everywhere, so adding cannot fail.
        let _ = latency.add(&tally.latency_us);
        lost.extend(tally.lost.iter().copied());
    }
    let answered_in_window = tallies.iter().map(|t| t.answered_in_window).sum();
    let seconds = window.as_secs_f64();
    KeepAliveSummary {
        sent: tallies.iter().map(|t| t.sent).sum(),
        answered: tallies.iter().map(|t| t.answered).sum(),
        answered_in_window,
        renewals_per_s: if seconds > 0.0 {
            answered_in_window as f64 / seconds
        } else {
            0.0
        },
        latency: LatencySummary::from_histogram(&latency),
        lost_leases: lost.len(),
        mismatched: tallies.iter().map(|t| t.mismatched).sum(),
        failures: tallies.iter().filter_map(|t| t.failure.clone()).collect(),
    }
}

/// Requests sent and not yet answered, oldest first: (lease, sent at).
type Pending = Arc<Mutex<VecDeque<(i64, Instant)>>>;

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, VecDeque<(i64, Instant)>> {
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn run_stream(
    channel: Channel,
    leases: Vec<i64>,
    pace: Pace,
    window: Arc<MeasureWindow>,
    mut stop: watch::Receiver<bool>,
) -> StreamTally {
    let mut tally = StreamTally::new();
    if leases.is_empty() {
        return tally;
    }
    let (requests, outgoing) = mpsc::channel(REQUESTS_QUEUED);
    let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
    let credits = Arc::new(Semaphore::new(match pace {
        Pace::Saturate { in_flight } => in_flight.max(1),
        Pace::Every(_) => 0,
    }));
    // The sender runs before the call is awaited: grpc-go servers (etcd)
    // send the response headers only with their first answer.
    let sender = tokio::spawn(send_renewals(
        leases,
        pace,
        requests,
        pending.clone(),
        credits.clone(),
        stop.clone(),
    ));
    let mut answers = match LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(outgoing))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            sender.abort();
            tally.failure = Some(format!("opening the stream: {status}"));
            return tally;
        }
    };
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let stopping = drain_until.is_some();
        let drain_deadline = drain_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            answer = answers.message() => match answer {
                Ok(Some(answer)) => {
                    let now = Instant::now();
                    let oldest = lock(&pending).pop_front();
                    credits.add_permits(1);
                    tally.answered += 1;
                    if answer.ttl <= 0 {
                        tally.lost.insert(answer.id);
                    }
                    match oldest {
                        Some((id, sent_at)) if id == answer.id => {
                            if window.contains(now) {
                                tally.answered_in_window += 1;
                                let micros = now.duration_since(sent_at).as_micros() as u64;
                                tally.latency_us.saturating_record(micros.max(1));
                            }
                        }
                        _ => tally.mismatched += 1,
                    }
                }
                // The sender ends its side as soon as it sees the stop, and
                // the server then ends the stream: that may arrive before
                // this loop saw the stop itself.
                Ok(None) => {
                    if !stopping && !*stop.borrow() {
                        tally.failure = Some("the server ended the stream".to_string());
                    }
                    break;
                }
                Err(status) => {
                    if !stopping && !*stop.borrow() {
                        tally.failure = Some(format!("the stream failed: {status}"));
                    }
                    break;
                }
            },
            _ = stop.changed(), if !stopping => {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
            _ = tokio::time::sleep_until(drain_deadline), if stopping => break,
        }
    }
    sender.abort();
    tally.sent = match sender.await {
        Ok(sent) => sent,
        // Aborted while still sending (the stream failed): count what it queued.
        Err(_) => tally.answered + lock(&pending).len() as u64,
    };
    tally
}

/// Sends renewals as `pace` says until stopped; returns how many it sent.
/// Dropping `requests` on return ends the request stream, which ends the
/// server's side once it has answered the rest.
async fn send_renewals(
    leases: Vec<i64>,
    pace: Pace,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    pending: Pending,
    credits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    let lease_count = leases.len() as u64;
    loop {
        let due = match pace {
            Pace::Every(period) => {
                let periods = started.elapsed().as_secs_f64() / period.as_secs_f64().max(1e-6);
                (periods * lease_count as f64) as u64 + 1
            }
            Pace::Saturate { .. } => {
                tokio::select! {
                    permit = credits.acquire() => match permit {
                        Ok(permit) => permit.forget(),
                        Err(_) => return sent,
                    },
                    _ = stop.changed() => return sent,
                }
                sent + 1
            }
        };
        while sent < due {
            let id = leases[(sent % lease_count) as usize];
            lock(&pending).push_back((id, Instant::now()));
            if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
                return sent;
            }
            sent += 1;
        }
        if *stop.borrow() {
            return sent;
        }
        if let Pace::Every(_) = pace {
            tokio::select! {
                _ = tokio::time::sleep(PACE_TICK) => {}
                _ = stop.changed() => return sent,
            }
        }
    }
}

/// One keep-alive phase: the fleet renews for `warmup`, then for
/// `measured`, with `cpu_seconds` (of the servers) read around it.
pub async fn measure_phase(
    channels: &[Channel],
    leases: &[i64],
    pace: Pace,
    warmup: Duration,
    measured: Duration,
    cpu_seconds: impl Fn() -> Option<f64>,
) -> PhaseReport {
    let fleet = KeepAliveFleet::start(channels, leases, pace);
    tokio::time::sleep(warmup).await;
    let cpu_before = cpu_seconds();
    let window_started = Instant::now();
    fleet.start_window();
    tokio::time::sleep(measured).await;
    fleet.end_window();
    let window = window_started.elapsed();
    let cpu_after = cpu_seconds();
    let summary = fleet.stop().await;
    PhaseReport {
        summary,
        server_cpu_s: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after - before).max(0.0)),
        window_s: window.as_secs_f64(),
    }
}

/// What a phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    pub summary: KeepAliveSummary,
    /// CPU seconds the servers used in the window (when known).
    pub server_cpu_s: Option<f64>,
    pub window_s: f64,
}

impl PhaseReport {
    /// Server CPU µs per renewal answered in the window.
    pub fn cpu_us_per_renewal(&self) -> Option<f64> {
        let renewals = self.summary.answered_in_window;
        self.server_cpu_s
            .filter(|_| renewals > 0)
            .map(|cpu| cpu * 1e6 / renewals as f64)
    }

    /// Server CPU in the window as % of one core.
    pub fn cpu_percent_of_core(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.window_s > 0.0)
            .map(|cpu| cpu * 100.0 / self.window_s)
    }

    /// Whether every renewal was answered in order, none said "lost", and
    /// no stream failed.
    pub fn healthy(&self) -> bool {
        let s = &self.summary;
        s.failures.is_empty() && s.lost_leases == 0 && s.mismatched == 0
    }
}

/// `keel-bench keep-alive`: leases renewed over a few streams.
#[derive(Debug, Clone, clap::Args)]
pub struct KeepAliveSpec {
    /// Comma-separated client endpoints (host:port); grants go to the leader.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Leases granted and kept alive.
    #[arg(long, default_value_t = 10_000)]
    pub leases: u64,
    /// Their TTL in seconds.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: i64,
    /// Keep-alive streams, one connection each, round-robin over the
    /// endpoints starting after the leader.
    #[arg(long, default_value_t = 6)]
    pub streams: usize,
    /// Renewals outstanding per stream, as fast as answered; 0 renews each
    /// lease once per TTL/3 instead.
    #[arg(long, default_value_t = 0)]
    pub in_flight: usize,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Comma-separated server pids whose CPU time to report.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

impl KeepAliveSpec {
    pub fn pace(&self) -> Pace {
        if self.in_flight == 0 {
            Pace::Every(Duration::from_secs(u64::try_from(self.lease_ttl).unwrap_or(1).max(1)) / 3)
        } else {
            Pace::Saturate {
                in_flight: self.in_flight,
            }
        }
    }
}

/// Grants the leases, renews them as `spec` says, revokes them.
pub async fn run_keep_alive(spec: &KeepAliveSpec) -> anyhow::Result<PhaseReport> {
    if spec.endpoints.is_empty() || spec.streams == 0 || spec.lease_ttl <= 0 {
        anyhow::bail!("--endpoints, --streams and --lease-ttl must not be empty or 0");
    }
    let leader = find_leader(&spec.endpoints, &Access::default()).await?;
    let granting = open_lease_connections(std::slice::from_ref(&leader), 8, &Access::default()).await?;
    let leases = grant_leases(
        &granting,
        spec.leases,
        spec.lease_ttl,
        256,
        Duration::from_secs(10),
    )
    .await
    .context("granting the leases")?;
    let first = spec
        .endpoints
        .iter()
        .position(|endpoint| *endpoint == leader)
        .map_or(0, |index| index + 1);
    let count = spec.endpoints.len();
    let channels = futures::future::try_join_all(
        (0..spec.streams).map(|stream| connect_channel(&spec.endpoints[(first + stream) % count])),
    )
    .await?;
    let server_cpu = || -> Option<f64> {
        if spec.server_pids.is_empty() {
            return None;
        }
        spec.server_pids
            .iter()
            .map(|pid| cpu_seconds(&pid.to_string()).ok())
            .sum()
    };
    let phase = measure_phase(
        &channels,
        &leases,
        spec.pace(),
        spec.warmup,
        spec.duration,
        server_cpu,
    )
    .await;
    revoke_leases(&granting, &leases, 256, Duration::from_secs(10))
        .await
        .context("revoking the leases")?;
    Ok(phase)
}
