//! Many watchers on etcd's Watch API, for the watch scenarios of the
//! comparison: where they go ([`place_streams`]: many watchers per stream,
//! several streams per connection, spread over the members), opening them
//! with the bench's own Watch stub (`counted_watch`: keys decoded, values
//! skipped), and one reader task per stream that
//! counts what arrives and, against a [`PutLedger`], how long each event
//! took from its put's acknowledgement; and the writer those puts come
//! from ([`write_at_rate`]).
//!
//! A stream is opened with its create requests already queued: grpc-go
//! servers (etcd) send response headers only with their first response, so
//! awaiting `.watch(...)` before sending anything would wait forever.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use keel_api::etcdserverpb::{watch_request, PutRequest, WatchCreateRequest, WatchRequest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::load::counted_watch::{self, CountedWatchResponse};
use crate::load::report::new_histogram;
use crate::load::targets::KvStub;

/// At most this many watchers share one stream.
pub const WATCHERS_PER_STREAM: usize = 100;
/// At most this many connections go to one member.
pub const CONNECTIONS_PER_MEMBER: usize = 4;

/// One watch stream's place: the member it goes to, which of that member's
/// connections carries it, and which watchers (by index) it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlacement {
    pub member: usize,
    pub connection: usize,
    pub watchers: Range<usize>,
}

/// Spreads `watchers` over streams of at most [`WATCHERS_PER_STREAM`]
/// (and at least one stream per member while there are watchers for it),
/// the streams round-robin over `members` starting at `first_member`, and
/// each member's streams round-robin over at most
/// [`CONNECTIONS_PER_MEMBER`] connections.
pub fn place_streams(watchers: usize, members: usize, first_member: usize) -> Vec<StreamPlacement> {
    if watchers == 0 || members == 0 {
        return Vec::new();
    }
    let streams = watchers.div_ceil(WATCHERS_PER_STREAM).max(watchers.min(members));
    let mut streams_on_member = vec![0usize; members];
    let mut placements = Vec::with_capacity(streams);
    let mut next_watcher = 0;
    for stream in 0..streams {
        let member = (first_member + stream) % members;
        // Watchers split as evenly as the streams allow.
        let count = watchers / streams + usize::from(stream < watchers % streams);
        let member_streams = streams / members + usize::from((stream % members) < streams % members);
        let connections = member_streams.clamp(1, CONNECTIONS_PER_MEMBER);
        placements.push(StreamPlacement {
            member,
            connection: streams_on_member[member] % connections,
            watchers: next_watcher..next_watcher + count,
        });
        streams_on_member[member] += 1;
        next_watcher += count;
    }
    placements
}

/// HTTP/2 flow-control windows of the watch connections.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
const STREAM_WINDOW_BYTES: u32 = 2 << 20;

/// A plain HTTP/2 connection to `endpoint` (one per call), set up as
/// `keel_client`'s are, checked to connect. Its connection window is large
/// on purpose: the `h2` crate allows unread small DATA frames only up to
/// half the connection window, and grpc-go (etcd) sends every small watch
/// response (each `created`) as a frame of its own, so a 64 KiB window
/// makes the client refuse etcd's answers to a few thousand creates with
/// `ENHANCE_YOUR_CALM` ("too_many_data_frames").
pub async fn connect_channel(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(keel_client::endpoint_url(endpoint))
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// What one watcher watches, etcd's way: `range_end` empty for one key,
/// `start_revision` 0 for "from now on".
#[derive(Debug, Clone)]
pub struct WatchTarget {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
}

impl WatchTarget {
    fn create_request(&self) -> WatchRequest {
        WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.key.clone(),
                range_end: self.range_end.clone(),
                start_revision: self.start_revision,
                ..Default::default()
            })),
        }
    }
}

/// The puts of a fixed-rate writer, numbered from 0 (the number is in the
/// key, after the writer's prefix): when each was sent and acknowledged, in
/// ns since `base` (0 = not yet), and which of them are measured.
pub struct PutLedger {
    pub base: Instant,
    pub prefix: Vec<u8>,
    sent_ns: Vec<AtomicU64>,
    acked_ns: Vec<AtomicU64>,
    /// Puts numbered in `measured_from..measured_to` are measured.
    measured_from: AtomicU64,
    measured_to: AtomicU64,
    /// Events arriving in this time window (ns since `base`) count towards
    /// events per second.
    window_from_ns: AtomicU64,
    window_to_ns: AtomicU64,
    /// Events of measured puts delivered so far, over every watcher.
    pub measured_events: AtomicU64,
}

impl PutLedger {
    pub fn new(prefix: &[u8], capacity: usize) -> Self {
        let zeros = || (0..capacity).map(|_| AtomicU64::new(0)).collect();
        PutLedger {
            base: Instant::now(),
            prefix: prefix.to_vec(),
            sent_ns: zeros(),
            acked_ns: zeros(),
            measured_from: AtomicU64::new(u64::MAX),
            measured_to: AtomicU64::new(u64::MAX),
            window_from_ns: AtomicU64::new(u64::MAX),
            window_to_ns: AtomicU64::new(u64::MAX),
            measured_events: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.sent_ns.len() as u64
    }

    /// Nanoseconds since `base`, never 0 (0 means "not yet").
    pub fn now_ns(&self) -> u64 {
        (self.base.elapsed().as_nanos() as u64).max(1)
    }

    /// The key of put number `seq`.
    pub fn key(&self, seq: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        crate::load::spec::push_padded_decimal(&mut key, seq, 10);
        key
    }

    /// The put number in a key this ledger made.
    pub fn seq_of(&self, key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(self.prefix.as_slice())?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    pub fn mark_sent(&self, seq: u64) {
        if let Some(slot) = self.sent_ns.get(seq as usize) {
            slot.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    pub fn mark_acked(&self, seq: u64) {
        if let Some(slot) = self.acked_ns.get(seq as usize) {
            slot.store(self.now_ns(), Ordering::Relaxed);
        }
    }

    pub fn sent_ns(&self, seq: u64) -> Option<u64> {
        let at = self.sent_ns.get(seq as usize)?.load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    pub fn acked_ns(&self, seq: u64) -> Option<u64> {
        let at = self.acked_ns.get(seq as usize)?.load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    /// Puts from number `seq` on are measured; events from now on count.
    pub fn start_window(&self, seq: u64) {
        self.measured_from.store(seq, Ordering::Relaxed);
        self.window_from_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Puts from number `seq` on are not measured; events from now on do
    /// not count.
    pub fn end_window(&self, seq: u64) {
        self.measured_to.store(seq, Ordering::Relaxed);
        self.window_to_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    pub fn is_measured(&self, seq: u64) -> bool {
        seq >= self.measured_from.load(Ordering::Relaxed) && seq < self.measured_to.load(Ordering::Relaxed)
    }

    fn in_window(&self, at_ns: u64) -> bool {
        at_ns >= self.window_from_ns.load(Ordering::Relaxed)
            && at_ns < self.window_to_ns.load(Ordering::Relaxed)
    }

    /// The measured window's length (zero until it has ended).
    pub fn window(&self) -> Duration {
        let from = self.window_from_ns.load(Ordering::Relaxed);
        let to = self.window_to_ns.load(Ordering::Relaxed);
        if from == u64::MAX || to == u64::MAX {
            return Duration::ZERO;
        }
        Duration::from_nanos(to.saturating_sub(from))
    }

    /// Measured puts that were acknowledged.
    pub fn measured_acked(&self) -> u64 {
        let from = self.measured_from.load(Ordering::Relaxed);
        let to = self.measured_to.load(Ordering::Relaxed).min(self.capacity());
        (from..to).filter(|&seq| self.acked_ns(seq).is_some()).count() as u64
    }
}

/// How a stream's reader counts.
#[derive(Clone)]
pub struct ReadPlan {
    /// Latency and windowed counts against this ledger (fan-out).
    pub ledger: Option<Arc<PutLedger>>,
    /// Stop once this stream has seen this many events (replay).
    pub until_events: Option<u64>,
    /// `true` asks every reader to stop.
    pub stop: watch::Receiver<bool>,
    /// Events received so far, over every stream.
    pub received: Arc<AtomicU64>,
}

/// What one stream's reader saw.
pub struct StreamTally {
    pub watchers: usize,
    pub events: u64,
    /// Events that arrived in the ledger's window.
    pub events_in_window: u64,
    /// Events of measured puts.
    pub measured_events: u64,
    /// Delivery latency from the put's acknowledgement, µs, of events that
    /// arrived after it.
    pub latency_us: Histogram<u64>,
    /// Delivery latency from the put's sending, µs (commit and apply
    /// included), of every measured event.
    pub from_send_us: Histogram<u64>,
    /// Events of measured puts that arrived before the writer had their
    /// acknowledgement: (put number, arrival ns), settled by [`settle`].
    pub before_ack: Vec<(u64, u64)>,
    pub last_event_at: Option<Instant>,
    /// Why the stream ended early (a cancel, an error), if it did.
    pub failure: Option<String>,
}

impl StreamTally {
    fn new(watchers: usize) -> Self {
        StreamTally {
            watchers,
            events: 0,
            events_in_window: 0,
            measured_events: 0,
            latency_us: new_histogram(),
            from_send_us: new_histogram(),
            before_ack: Vec::new(),
            last_event_at: None,
            failure: None,
        }
    }

    fn count(&mut self, response: &CountedWatchResponse, ledger: Option<&PutLedger>) {
        let arrived = Instant::now();
        let events = response.events.len() as u64;
        self.events += events;
        self.last_event_at = Some(arrived);
        let Some(ledger) = ledger else {
            return;
        };
        let at_ns = ledger.now_ns();
        if ledger.in_window(at_ns) {
            self.events_in_window += events;
        }
        let mut measured = 0;
        for event in &response.events {
            let Some(seq) = event.key.as_ref().and_then(|key| ledger.seq_of(key)) else {
                continue;
            };
            if !ledger.is_measured(seq) {
                continue;
            }
            measured += 1;
            if let Some(sent) = ledger.sent_ns(seq) {
                self.from_send_us
                    .saturating_record((at_ns.saturating_sub(sent) / 1000).max(1));
            }
            match ledger.acked_ns(seq) {
                Some(acked) if acked <= at_ns => {
                    self.latency_us.saturating_record(((at_ns - acked) / 1000).max(1));
                }
                _ => self.before_ack.push((seq, at_ns)),
            }
        }
        self.measured_events += measured;
        ledger.measured_events.fetch_add(measured, Ordering::Relaxed);
    }
}

/// Delivery latency over every stream, once the writer is done.
pub struct Settled {
    /// From the put's acknowledgement; events that beat it count as 1 µs.
    pub from_ack_us: Histogram<u64>,
    /// How many events beat their put's acknowledgement.
    pub before_ack: u64,
    /// From the put's sending.
    pub from_send_us: Histogram<u64>,
}

/// Merges every stream's latencies, settling the events that arrived
/// before their put's acknowledgement was known.
pub fn settle(tallies: &[StreamTally], ledger: &PutLedger) -> Settled {
    let mut merged = new_histogram();
    let mut from_send = new_histogram();
    let mut early = 0;
    for tally in tallies {
        // Same bounds on both sides: adding cannot fail.
        let _ = merged.add(&tally.latency_us);
        let _ = from_send.add(&tally.from_send_us);
        for &(seq, arrived) in &tally.before_ack {
            let after_ack = ledger
                .acked_ns(seq)
                .map_or(0, |acked| arrived.saturating_sub(acked));
            if after_ack == 0 {
                early += 1;
            }
            merged.saturating_record((after_ack / 1000).max(1));
        }
    }
    Settled {
        from_ack_us: merged,
        before_ack: early,
        from_send_us: from_send,
    }
}

/// An open stream: its request half (kept open while it runs) and its reader.
pub struct OpenStream {
    _requests: mpsc::Sender<WatchRequest>,
    reader: JoinHandle<StreamTally>,
}

/// Opens one stream on `channel` creating a watcher per target, waits
/// (up to `timeout`) for every `created` answer, then leaves a reader task
/// counting what arrives as `plan` says.
pub async fn open_stream(
    channel: Channel,
    targets: &[WatchTarget],
    plan: ReadPlan,
    timeout: Duration,
) -> anyhow::Result<OpenStream> {
    let (requests, outgoing) = mpsc::channel(targets.len() + 1);
    for target in targets {
        // Queued before the call: see the module comment.
        requests
            .send(target.create_request())
            .await
            .context("queueing a watch create")?;
    }
    let opened = async {
        let mut responses = counted_watch::watch(channel, ReceiverStream::new(outgoing))
            .await
            .context("opening the watch stream")?;
        let mut created = 0;
        while created < targets.len() {
            let response = responses
                .message()
                .await
                .context("reading watch creates")?
                .context("the watch stream ended before every watcher was created")?;
            if response.canceled {
                anyhow::bail!(
                    "a watcher was refused: {} (watch id {})",
                    response.cancel_reason,
                    response.watch_id
                );
            }
            created += usize::from(response.created);
        }
        Ok(responses)
    };
    let responses = tokio::time::timeout(timeout, opened)
        .await
        .with_context(|| format!("creating {} watchers took over {timeout:?}", targets.len()))??;
    let reader = tokio::spawn(read_stream(responses, targets.len(), plan));
    Ok(OpenStream {
        _requests: requests,
        reader,
    })
}

async fn read_stream(
    mut responses: Streaming<CountedWatchResponse>,
    watchers: usize,
    mut plan: ReadPlan,
) -> StreamTally {
    let mut tally = StreamTally::new(watchers);
    if *plan.stop.borrow() {
        return tally;
    }
    loop {
        let next = tokio::select! {
            next = responses.message() => next,
            _ = plan.stop.changed() => break,
        };
        match next {
            Ok(Some(response)) => {
                if response.canceled {
                    tally.failure = Some(format!(
                        "watch {} canceled: {:?} (compact revision {})",
                        response.watch_id, response.cancel_reason, response.compact_revision
                    ));
                    break;
                }
                tally.count(&response, plan.ledger.as_deref());
                plan.received
                    .fetch_add(response.events.len() as u64, Ordering::Relaxed);
                if plan.until_events.is_some_and(|until| tally.events >= until) {
                    break;
                }
            }
            Ok(None) => {
                tally.failure = Some("the server ended the watch stream".into());
                break;
            }
            Err(status) => {
                tally.failure = Some(format!("the watch stream broke: {status}"));
                break;
            }
        }
    }
    tally
}

/// What the fixed-rate writer did.
#[derive(Debug, Clone, Default)]
pub struct WriterTally {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    /// Ticks skipped because too many puts were still unanswered.
    pub skipped: u64,
    pub first_error: Option<String>,
}

fn settle_put(outcome: Result<Result<(), String>, tokio::task::JoinError>, tally: &mut WriterTally) {
    let error = match outcome {
        Ok(Ok(())) => {
            tally.acked += 1;
            return;
        }
        Ok(Err(error)) => error,
        Err(error) => error.to_string(),
    };
    tally.failed += 1;
    tally.first_error.get_or_insert(error);
}

/// Puts the ledger's numbered keys at `rate` per second through `stub`
/// until `stop` says so or the ledger is full: each put is sent on its
/// tick without waiting for earlier ones (late ticks are caught up, so the
/// rate holds while the machine is busy), at most `max_in_flight` at once.
/// `next_seq` is the number the next put gets.
pub async fn write_at_rate(
    stub: KvStub,
    ledger: Arc<PutLedger>,
    rate: u32,
    value: Vec<u8>,
    mut stop: watch::Receiver<bool>,
    next_seq: Arc<AtomicU64>,
    max_in_flight: usize,
) -> WriterTally {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut tally = WriterTally::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
            Some(done) = in_flight.join_next() => {
                settle_put(done, &mut tally);
                continue;
            }
        }
        if *stop.borrow() {
            break;
        }
        if in_flight.len() >= max_in_flight {
            tally.skipped += 1;
            continue;
        }
        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
        if seq >= ledger.capacity() {
            break;
        }
        let request = PutRequest {
            key: ledger.key(seq),
            value: value.clone(),
            ..Default::default()
        };
        let (mut stub, ledger) = (stub.clone(), ledger.clone());
        ledger.mark_sent(seq);
        tally.sent += 1;
        in_flight.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), stub.put(request)).await {
                Ok(Ok(_)) => {
                    ledger.mark_acked(seq);
                    Ok(())
                }
                Ok(Err(status)) => Err(status.to_string()),
                Err(_) => Err("no answer within 10 s".to_string()),
            }
        });
    }
    while let Some(done) = in_flight.join_next().await {
        settle_put(done, &mut tally);
    }
    tally
}

/// Watchers spread over streams and connections as [`place_streams`] says.
pub struct WatcherFleet {
    streams: Vec<OpenStream>,
    stop: watch::Sender<bool>,
    received: Arc<AtomicU64>,
    /// How long opening every stream and creating every watcher took.
    pub opened_in: Duration,
}

impl WatcherFleet {
    /// Opens `targets.len()` watchers on `endpoints` (one per member),
    /// streams starting on member `first_member`; every stream is opened at
    /// once, and every watcher is created before this returns.
    pub async fn open(
        endpoints: &[String],
        first_member: usize,
        targets: &[WatchTarget],
        ledger: Option<Arc<PutLedger>>,
        until_events: Option<u64>,
    ) -> anyhow::Result<WatcherFleet> {
        let started = Instant::now();
        let placements = place_streams(targets.len(), endpoints.len(), first_member);
        let mut channels: Vec<Vec<Channel>> = vec![Vec::new(); endpoints.len()];
        for placement in &placements {
            let member_channels = &mut channels[placement.member];
            while member_channels.len() <= placement.connection {
                member_channels.push(connect_channel(&endpoints[placement.member]).await?);
            }
        }
        let (stop, stop_receiver) = watch::channel(false);
        let received = Arc::new(AtomicU64::new(0));
        let plan = ReadPlan {
            ledger,
            until_events,
            stop: stop_receiver,
            received: received.clone(),
        };
        let timeout = Duration::from_secs(60);
        let opens = placements.iter().map(|placement| {
            open_stream(
                channels[placement.member][placement.connection].clone(),
                &targets[placement.watchers.clone()],
                plan.clone(),
                timeout,
            )
        });
        let streams = futures::future::try_join_all(opens).await?;
        Ok(WatcherFleet {
            streams,
            stop,
            received,
            opened_in: started.elapsed(),
        })
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Events received so far, over every stream.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until `done` says the readers have what they
    /// need or every reader has ended; returns whether `done` said so.
    pub async fn wait_for(&self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline || self.streams.iter().all(|s| s.reader.is_finished()) {
                return done();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops every reader and closes the streams; returns what each saw.
    pub async fn close(self) -> Vec<StreamTally> {
        let _ = self.stop.send(true);
        let mut tallies = Vec::with_capacity(self.streams.len());
        for stream in self.streams {
            match stream.reader.await {
                Ok(tally) => tallies.push(tally),
                Err(error) => {
                    let mut tally = StreamTally::new(0);
                    tally.failure = Some(format!("a watch reader panicked: {error}"));
                    tallies.push(tally);
                }
            }
        }
        tallies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_watcher_is_placed_once_within_the_limits() {
        for (watchers, members) in [(1, 3), (2, 3), (100, 3), (1000, 3), (10_000, 3), (250, 1)] {
            let placements = place_streams(watchers, members, 1);
            let mut next = 0;
            for placement in &placements {
                assert_eq!(placement.watchers.start, next, "{watchers}: contiguous");
                assert!(!placement.watchers.is_empty(), "{watchers}: no empty stream");
                assert!(placement.watchers.len() <= WATCHERS_PER_STREAM);
                assert!(placement.member < members);
                assert!(placement.connection < CONNECTIONS_PER_MEMBER);
                next = placement.watchers.end;
            }
            assert_eq!(next, watchers, "every watcher placed");
            let on_member = |m: usize| placements.iter().filter(|p| p.member == m).count();
            let counts: Vec<usize> = (0..members).map(on_member).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            if watchers >= members {
                assert!(
                    *min >= 1 && max - min <= 1,
                    "{watchers}: streams spread {counts:?}"
                );
            }
            // A member's streams use all its connections before sharing one.
            for (member, count) in counts.iter().enumerate() {
                let used: std::collections::BTreeSet<usize> = placements
                    .iter()
                    .filter(|p| p.member == member)
                    .map(|p| p.connection)
                    .collect();
                assert_eq!(used.len(), (*count).min(CONNECTIONS_PER_MEMBER));
            }
        }
        assert_eq!(
            place_streams(1, 3, 2)[0].member,
            2,
            "the first stream goes to first_member"
        );
        assert_eq!(place_streams(10_000, 3, 0).len(), 100);
        assert_eq!(place_streams(100, 3, 0).len(), 3);
    }

    #[test]
    fn the_ledger_numbers_keys_and_settles_early_events() {
        let ledger = PutLedger::new(b"/w/", 10);
        let key = ledger.key(7);
        assert_eq!(key, b"/w/0000000007");
        assert_eq!(ledger.seq_of(&key), Some(7));
        assert_eq!(ledger.seq_of(b"/x/0000000007"), None);
        assert!(!ledger.is_measured(3), "nothing is measured before the window");
        ledger.start_window(2);
        ledger.end_window(5);
        assert!(ledger.is_measured(2) && ledger.is_measured(4) && !ledger.is_measured(5));

        ledger.mark_acked(2);
        let acked = ledger.acked_ns(2).unwrap();
        let mut tally = StreamTally::new(1);
        // One event arrived 3 ms after its ack, one before its ack was seen.
        tally.latency_us.saturating_record(3000);
        tally.before_ack.push((3, acked + 5_000_000));
        tally.before_ack.push((4, 1));
        ledger.mark_acked(3);
        let settled = settle(&[tally], &ledger);
        assert_eq!(settled.from_ack_us.len(), 3);
        assert_eq!(settled.before_ack, 1, "only the event with no ack beat it");
        assert_eq!(ledger.measured_acked(), 2);
    }
}
