//! A watcher of the watch workload: one etcd `Watch` stream on the key
//! prefix, pinned to one member, kept open for the whole run through every
//! fault, each thing it sees written to `watches.jsonl`.
//!
//! Invariants:
//! - the first stream asks for events from revision 1; every later one, on
//!   the same member, from the revision after the last event received (or
//!   from the compact revision when the member canceled the watch for
//!   compaction), so a correct member gives a gap-free, duplicate-free
//!   sequence across reconnections;
//! - the create request is queued before the stream is opened (a gRPC
//!   server may send its response headers only with the first response);
//! - a stream is given up (and reopened) only when it fails, ends, cannot
//!   be opened in time, or stays silent while the watcher is behind the
//!   final revision the run announced; silence during a fault is normal.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::key_range::prefix_range_end;
use keel_api::mvccpb::event::EventType as MvccEventType;
use keel_client::endpoint_url;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::history::{HistoryError, HistoryWriter};
use crate::watch_log::{ChangeKind, WatchLog, WatchRecord, WatchedEvent};

/// The revision a watcher's first stream starts from.
pub const FIRST_REVISION: i64 = 1;
/// Pause before reopening a broken stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Bound on opening a stream (connecting and the `created` answer).
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// A stream silent this long while its watcher is behind the run's final
/// revision is reopened.
const STALL_AFTER: Duration = Duration::from_secs(3);

/// Who a watcher is and which member it watches.
#[derive(Debug, Clone)]
pub struct WatcherSpec {
    /// `m<i>-w<j>`: the member's name and the watcher's number on it.
    pub name: String,
    pub member_name: String,
    pub endpoint: String,
    pub prefix: String,
}

/// What a watcher has seen so far, read by the run while it waits for every
/// watcher to reach the final revision.
#[derive(Debug, Default)]
pub struct WatcherProgress {
    pub last_revision: AtomicI64,
    pub events: AtomicU64,
    pub streams: AtomicU64,
}

impl WatcherProgress {
    pub fn last_revision(&self) -> i64 {
        self.last_revision.load(Ordering::Relaxed)
    }
}

/// How one stream ended.
enum StreamEnd {
    Stopped,
    Broken(String),
    Compacted(i64),
}

/// Events of one response, as the log keeps them; `Err` names an event the
/// log cannot represent.
fn watched_events(response: &WatchResponse) -> Result<Vec<WatchedEvent>, String> {
    response
        .events
        .iter()
        .map(|event| {
            let kv = event
                .kv
                .as_ref()
                .ok_or_else(|| format!("an event without kv in {response:?}"))?;
            let kind = if event.r#type == MvccEventType::Delete as i32 {
                ChangeKind::Delete
            } else {
                ChangeKind::Put
            };
            Ok(WatchedEvent {
                revision: kv.mod_revision,
                kind,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: String::from_utf8_lossy(&kv.value).into_owned(),
            })
        })
        .collect()
}

/// Runs until `stop` turns true (or its sender is dropped). `final_revision`
/// is 0 until the run knows the revision every watcher must reach.
pub async fn run_watcher(
    spec: WatcherSpec,
    log: Arc<WatchLog>,
    clock: Arc<HistoryWriter>,
    progress: Arc<WatcherProgress>,
    final_revision: watch::Receiver<i64>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), HistoryError> {
    let mut next_revision = FIRST_REVISION;
    let mut first = true;
    while !*stop.borrow() {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        first = false;
        progress.streams.fetch_add(1, Ordering::Relaxed);
        log.record(&WatchRecord::Connect {
            watcher: spec.name.clone(),
            node: spec.member_name.clone(),
            time: clock.now(),
            start_revision: next_revision,
        })?;
        let end = one_stream(
            &spec,
            &log,
            &clock,
            &progress,
            &mut next_revision,
            &final_revision,
            &mut stop,
        )
        .await?;
        match end {
            StreamEnd::Stopped => break,
            StreamEnd::Broken(error) => {
                tracing::debug!(watcher = %spec.name, %error, "watch stream broken; reopening");
                log.record(&WatchRecord::Broken {
                    watcher: spec.name.clone(),
                    time: clock.now(),
                    error,
                })?;
            }
            StreamEnd::Compacted(compact_revision) => {
                log.record(&WatchRecord::Compacted {
                    watcher: spec.name.clone(),
                    time: clock.now(),
                    compact_revision,
                })?;
                next_revision = next_revision.max(compact_revision);
            }
        }
    }
    log.record(&WatchRecord::End {
        watcher: spec.name.clone(),
        time: clock.now(),
        last_revision: progress.last_revision(),
    })
}

/// One stream from `next_revision` on, advancing it past every event
/// received.
async fn one_stream(
    spec: &WatcherSpec,
    log: &WatchLog,
    clock: &HistoryWriter,
    progress: &WatcherProgress,
    next_revision: &mut i64,
    final_revision: &watch::Receiver<i64>,
    stop: &mut watch::Receiver<bool>,
) -> Result<StreamEnd, HistoryError> {
    let endpoint = match Endpoint::from_shared(endpoint_url(&spec.endpoint)) {
        Ok(endpoint) => endpoint,
        Err(error) => return Ok(StreamEnd::Broken(format!("bad endpoint: {error}"))),
    };
    let channel = endpoint
        .connect_timeout(OPEN_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_lazy();
    let prefix = spec.prefix.as_bytes().to_vec();
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            range_end: prefix_range_end(&prefix),
            key: prefix,
            start_revision: *next_revision,
            ..WatchCreateRequest::default()
        })),
    };
    // The create request is ready before the call starts; the stream then
    // stays open (pending) so the member keeps the watch.
    let requests = futures::stream::iter([create]).chain(futures::stream::pending());
    let mut client = WatchClient::new(channel);
    let opened = tokio::select! {
        opened = tokio::time::timeout(OPEN_TIMEOUT, client.watch(requests)) => opened,
        _ = stop.changed() => return Ok(StreamEnd::Stopped),
    };
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Ok(StreamEnd::Broken(format!("opening: {status}"))),
        Err(_) => return Ok(StreamEnd::Broken(format!("not opened within {OPEN_TIMEOUT:?}"))),
    };
    let mut heard = Instant::now();
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = stop.changed() => return Ok(StreamEnd::Stopped),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let behind = progress.last_revision() < *final_revision.borrow();
                if behind && heard.elapsed() >= STALL_AFTER {
                    return Ok(StreamEnd::Broken(format!(
                        "silent for {STALL_AFTER:?} while behind the final revision"
                    )));
                }
                continue;
            }
        };
        heard = Instant::now();
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(StreamEnd::Broken("the member ended the stream".to_string())),
            Err(status) => return Ok(StreamEnd::Broken(status.to_string())),
        };
        if response.canceled {
            return Ok(if response.compact_revision > 0 {
                StreamEnd::Compacted(response.compact_revision)
            } else {
                StreamEnd::Broken(format!("canceled: {}", response.cancel_reason))
            });
        }
        let events = match watched_events(&response) {
            Ok(events) => events,
            Err(error) => return Ok(StreamEnd::Broken(error)),
        };
        let Some(last) = events.iter().map(|e| e.revision).max() else {
            continue;
        };
        let count = events.len() as u64;
        log.record(&WatchRecord::Events {
            watcher: spec.name.clone(),
            time: clock.now(),
            events,
        })?;
        progress.events.fetch_add(count, Ordering::Relaxed);
        progress.last_revision.fetch_max(last, Ordering::Relaxed);
        *next_revision = (*next_revision).max(last + 1);
    }
}

/// The watch workload's watchers: one per member, started before the
/// workers and stopped once each has reached the final revision.
pub struct Watchers {
    progress: Vec<(String, Arc<WatcherProgress>)>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), HistoryError>>>,
    log: Arc<WatchLog>,
    final_revision: watch::Sender<i64>,
    stop: watch::Sender<bool>,
}

impl Watchers {
    /// A watcher on each of `members` (`(name, endpoint)`), watching `prefix`.
    pub fn start(
        members: &[(String, String)],
        prefix: &str,
        log: Arc<WatchLog>,
        clock: Arc<HistoryWriter>,
    ) -> Watchers {
        let (final_revision, final_signal) = watch::channel(0);
        let (stop, stop_signal) = watch::channel(false);
        let mut progress = Vec::new();
        let mut tasks = Vec::new();
        for (member_name, endpoint) in members {
            let spec = WatcherSpec {
                name: format!("{member_name}-w0"),
                member_name: member_name.clone(),
                endpoint: endpoint.clone(),
                prefix: prefix.to_string(),
            };
            let seen = Arc::new(WatcherProgress::default());
            progress.push((spec.name.clone(), seen.clone()));
            tasks.push(tokio::spawn(run_watcher(
                spec,
                log.clone(),
                clock.clone(),
                seen,
                final_signal.clone(),
                stop_signal.clone(),
            )));
        }
        Watchers {
            progress,
            tasks,
            log,
            final_revision,
            stop,
        }
    }

    /// Announces the revision every watcher must reach and waits up to
    /// `timeout` for all of them; returns the watchers still behind it.
    pub async fn wait_for(&self, final_revision: i64, timeout: Duration) -> Vec<String> {
        let _ = self.final_revision.send(final_revision);
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<String> = self
                .progress
                .iter()
                .filter(|(_, seen)| seen.last_revision() < final_revision)
                .map(|(name, seen)| format!("{name} at revision {}", seen.last_revision()))
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every watcher and flushes the log; returns what went wrong.
    pub async fn stop(self) -> Vec<String> {
        let _ = self.stop.send(true);
        let mut problems = Vec::new();
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => problems.push(format!("a watcher failed: {error}")),
                Err(join) => problems.push(format!("a watcher panicked: {join}")),
            }
        }
        if let Err(error) = self.log.flush() {
            problems.push(format!("watch log: {error}"));
        }
        problems
    }
}
