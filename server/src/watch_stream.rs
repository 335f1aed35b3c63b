//! One client's `Watch` stream: the watchers it created, and the loop that
//! takes its requests and delivers their events from this member's own
//! applied state (the change feed of `keel-mvcc`).
//!
//! Invariants owned here:
//! - Each watcher remembers `delivered_through`, the last revision whose
//!   changes it has been given (or decided it need not be given). Events are
//!   pulled from the feed strictly after it, whole revisions at a time, and
//!   it moves to the pull's `through_revision` only once the response is
//!   handed to the stream. So a watcher sees every matching change once, in
//!   revision order, with no gap between history and live changes: both
//!   come from the same feed.
//! - A watcher whose start is below the compact revision (etcd cancels only
//!   a start strictly below it) is canceled with `compact_revision` set,
//!   after its `created` response; it is never silently dropped.
//! - A client that does not read blocks only its own stream: the response
//!   channel is bounded, nothing is queued per watcher beyond it, and
//!   whatever the client has not taken stays in the feed (memory, then
//!   disk) until it does. Apply never waits for a watcher.
//! - The stream's watchers live in this loop; when the client's stream
//!   ends or breaks, the loop ends and they are freed.

use std::sync::Arc;
use std::time::Duration;

use keel_api::encoded_watch::{EncodedEvent, EncodedWatchResponse};
use keel_api::etcdserverpb::watch_create_request::FilterType;
use keel_api::etcdserverpb::{
    watch_request, RangeRequest, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use keel_api::key_range::KeySelection;
use keel_api::WatchRefusal;
use keel_mvcc::{ChangeEvent, Changes, MvccError, MvccStore, PullBudget};

use crate::stream_watchers::{StreamWatchers, Watcher};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// How many changes one pull may look at before it stops at a revision
/// boundary (bounds the time the keyspace lock is held for a replay).
const PULL_SCANNED_EVENTS: usize = 1024;

/// How many bytes of encoded events one pull takes at most before it
/// stops at a revision boundary (unless `--max-request-bytes` is lower).
const PULL_MATCHED_BYTES: usize = 128 * 1024;

/// What etcd adds to `--max-request-bytes` for a stream message's limit.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's watch id for a response that concerns no single watcher (the
/// answer to a progress request).
const NO_WATCH_ID: i64 = -1;

/// What a stream needs of its member.
pub struct WatchStreamContext {
    pub store: MvccStore,
    /// Stamps a header with the member's identity at a revision.
    pub header: Box<dyn Fn(i64) -> Option<ResponseHeader> + Send + Sync>,
    /// etcd's `--max-request-bytes` (see [`Self::message_limit`]).
    pub max_request_bytes: usize,
    /// How often watchers that asked for `progress_notify` hear the
    /// revision when nothing happened to them.
    pub progress_notify_interval: Duration,
    /// The last pull of the feed, shared by the member's streams.
    pub last_pull: std::sync::Mutex<Option<SharedPull>>,
}

/// The member's last pull of the change feed, shared by its streams: after
/// a commit every synced watcher of every stream wants the same changes.
pub struct SharedPull {
    after: i64,
    changes: Arc<Changes>,
}

impl WatchStreamContext {
    /// Every change after `after` (within one pull's budget), from the
    /// pull another stream made for the same place if it reaches the
    /// store's `current` revision, else from the feed (then shared). A
    /// shared pull stays true (history below the current revision never
    /// changes), but is not used for a start below the compact revision.
    fn pull_after(&self, after: i64, current: i64) -> Result<Arc<Changes>, MvccError> {
        // A start below the compact revision must be refused (etcd
        // cancels the watcher) even if a pull made before the compaction
        // still holds those changes: a compaction leaves the revision as it
        // was, so only this check tells.
        let start_is_compacted = after.saturating_add(1) < self.store.compact_revision();
        if !start_is_compacted {
            let shared = self.last_pull.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pull) = shared.as_ref() {
                if pull.after == after && pull.changes.through_revision >= current {
                    return Ok(pull.changes.clone());
                }
            }
        }
        let everything = KeySelection::Range {
            start: b"",
            end: None,
        };
        let budget = PullBudget {
            scanned_events: PULL_SCANNED_EVENTS,
            // A response stays within the message limit (one large txn
            // aside), so clients' default receive limits hold, and small
            // enough that the responses a slow client has not taken yet
            // stay a small part of a member's memory.
            matched_bytes: self.message_limit().min(PULL_MATCHED_BYTES),
        };
        let changes = Arc::new(self.store.changes_after(after, &everything, budget)?);
        *self.last_pull.lock().unwrap_or_else(|p| p.into_inner()) = Some(SharedPull {
            after,
            changes: changes.clone(),
        });
        Ok(changes)
    }

    /// etcd's limit for one watch stream message either way:
    /// `--max-request-bytes` plus gRPC's overhead allowance. A request over
    /// it ends the stream; a response over it is split for watchers that
    /// asked for `fragment`; a pull stops near it.
    fn message_limit(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }
}

/// The stream's state: its watchers by id and the next id to hand out.
/// Whether the stream's caller may read the range [key, range_end) (the
/// auth check of a watch create).
pub type MayWatch = Box<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

struct WatchStream {
    context: Arc<WatchStreamContext>,
    may_watch: MayWatch,
    watchers: StreamWatchers,
    next_watch_id: i64,
    responses: mpsc::Sender<Result<EncodedWatchResponse, Status>>,
}

/// The client went away (its response stream is closed).
struct ClientGone;

/// Serves one client stream until it ends; responses go to `responses`.
pub async fn serve(
    context: Arc<WatchStreamContext>,
    mut requests: Streaming<WatchRequest>,
    responses: mpsc::Sender<Result<EncodedWatchResponse, Status>>,
    may_watch: MayWatch,
) {
    let mut revisions = context.store.subscribe_revisions();
    let mut progress = tokio::time::interval(context.progress_notify_interval);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    progress.reset();
    let mut stream = WatchStream {
        context,
        may_watch,
        watchers: StreamWatchers::default(),
        next_watch_id: 0,
        responses,
    };
    // Whether a watcher is still behind after the last delivery (its pull
    // stopped at its budget): then delivery goes on without waiting for a
    // new commit, between the stream's requests.
    let mut catching_up = false;
    // A client that closed its side of the stream (as etcd's JSON gateway
    // does after the request body) still gets its watches' events, as from
    // etcd, until it goes away.
    let mut requests_ended = false;
    loop {
        let outcome = tokio::select! {
            () = std::future::ready(()), if catching_up => Ok(()),
            () = stream.responses.closed() => return,
            request = requests.message(), if !requests_ended => match request {
                Ok(Some(request)) => match stream.check_size(&request) {
                    Ok(()) => stream.handle(request).await,
                    Err(too_large) => {
                        let _ = stream.responses.send(Err(too_large)).await;
                        return;
                    }
                },
                Ok(None) => {
                    requests_ended = true;
                    Ok(())
                }
                Err(status) => {
                    tracing::debug!(%status, "a watch stream broke");
                    // tonic refuses a message over its decoding limit with
                    // OutOfRange; etcd (grpc-go) with ResourceExhausted.
                    if status.code() == tonic::Code::OutOfRange {
                        let refused = Status::resource_exhausted("grpc: received message larger than max");
                        let _ = stream.responses.send(Err(refused)).await;
                    }
                    return;
                }
            },
            changed = revisions.changed() => match changed {
                Ok(()) => Ok(()),
                Err(_) => return,
            },
            _ = progress.tick() => stream.notify_progress().await,
        };
        let delivered = match outcome {
            Ok(()) => stream.deliver().await,
            Err(gone) => Err(gone),
        };
        match delivered {
            Ok(still_behind) => catching_up = still_behind,
            Err(ClientGone) => return,
        }
    }
}

impl WatchStream {
    async fn send_encoded(&self, response: EncodedWatchResponse) -> Result<(), ClientGone> {
        self.responses.send(Ok(response)).await.map_err(|_| ClientGone)
    }

    /// Sends a response that carries no events.
    async fn send(&self, response: WatchResponse) -> Result<(), ClientGone> {
        self.send_encoded(EncodedWatchResponse::from(response)).await
    }

    /// etcd takes stream messages up to its message limit and ends the
    /// stream with ResourceExhausted (grpc-go's receive limit) beyond it.
    fn check_size(&self, request: &WatchRequest) -> Result<(), Status> {
        let size = request.encoded_len();
        let limit = self.context.message_limit();
        if size > limit {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({size} vs. {limit})"
            )));
        }
        Ok(())
    }

    fn header_now(&self) -> Option<ResponseHeader> {
        (self.context.header)(self.context.store.current_revision())
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), ClientGone> {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(cancel.watch_id).is_some() {
                    let response = WatchResponse {
                        header: self.header_now(),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let response = WatchResponse {
                    header: self.header_now(),
                    watch_id: NO_WATCH_ID,
                    ..Default::default()
                };
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    /// etcd's create: an empty key means `"\0"`, the smallest key; a
    /// `range_end` of `"\0"` means every key from `key` on; id 0 asks for
    /// the next free id.
    async fn create(&mut self, mut create: WatchCreateRequest) -> Result<(), ClientGone> {
        if create.key.is_empty() {
            create.key = vec![0];
        }
        let current = self.context.store.current_revision();
        let registered = self.register(&create, current);
        let response = WatchResponse {
            header: (self.context.header)(current),
            watch_id: match registered {
                Ok(id) => id,
                Err(_) => NO_WATCH_ID,
            },
            created: true,
            canceled: registered.is_err(),
            cancel_reason: registered
                .err()
                .map(|refusal| refusal.to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        self.send(response).await
    }

    fn register(&mut self, create: &WatchCreateRequest, current: i64) -> Result<i64, WatchRefusal> {
        let is_range = !create.range_end.is_empty() && create.range_end != [0];
        if is_range && create.key >= create.range_end {
            return Err(WatchRefusal::EmptyRange);
        }
        if !(self.may_watch)(&create.key, &create.range_end) {
            return Err(WatchRefusal::PermissionDenied);
        }
        let id = if create.watch_id == 0 {
            while self.watchers.contains(self.next_watch_id) {
                self.next_watch_id += 1;
            }
            let id = self.next_watch_id;
            self.next_watch_id += 1;
            id
        } else if self.watchers.contains(create.watch_id) {
            return Err(WatchRefusal::DuplicateWatchId);
        } else {
            create.watch_id
        };
        // Only 0 means "from now"; a negative start is below even a never
        // compacted store's compact revision (-1), and etcd cancels it so.
        let start = if create.start_revision == 0 {
            current.saturating_add(1)
        } else {
            create.start_revision
        };
        let filters = |filter: FilterType| create.filters.contains(&(filter as i32));
        self.watchers.insert(
            id,
            Watcher {
                key: create.key.clone(),
                range_end: create.range_end.clone(),
                delivered_through: start.saturating_sub(1),
                prev_kv: create.prev_kv,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
                progress_notify: create.progress_notify,
                fragment: create.fragment,
            },
        );
        Ok(id)
    }

    /// Gives every watcher the changes it has not had yet: one pull for
    /// each group of watchers at the same place, the watchers of each
    /// event found through the stream's key index. Returns whether a
    /// watcher is still behind the store revision.
    async fn deliver(&mut self) -> Result<bool, ClientGone> {
        let current = self.context.store.current_revision();
        for (after, group) in self.watchers.behind(current) {
            match self.context.pull_after(after, current) {
                Ok(changes) => {
                    let mut single_key_matches = self.watchers.single_key_matches(after, &changes);
                    for id in group {
                        let events = self.events_for(id, &changes, single_key_matches.remove(&id));
                        self.send_events(id, changes.through_revision, events).await?;
                    }
                }
                Err(MvccError::Compacted { compacted, .. }) => {
                    for id in group {
                        self.watchers.remove(id);
                        // etcd's header here carries revision 0.
                        let response = WatchResponse {
                            header: (self.context.header)(0),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compacted,
                            ..Default::default()
                        };
                        self.send(response).await?;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, watchers = group.len(), "reading the change feed failed; canceling the watches");
                    for id in group {
                        self.watchers.remove(id);
                        let response = WatchResponse {
                            header: (self.context.header)(current),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: format!("etcdserver: {error}"),
                            ..Default::default()
                        };
                        self.send(response).await?;
                    }
                }
            }
        }
        Ok(self
            .watchers
            .iter()
            .any(|(_, watcher)| watcher.delivered_through < current))
    }

    /// The events of a pull that watcher `id` wants, as it gets them
    /// (with `prev_kv` if it asked): for a single-key watcher those its
    /// stream's index found (`single_key_matches`), for a range or prefix
    /// the events it tests true.
    fn events_for(
        &self,
        id: i64,
        changes: &Changes,
        single_key_matches: Option<Vec<usize>>,
    ) -> Vec<EncodedEvent> {
        let Some(watcher) = self.watchers.get(id) else {
            return Vec::new();
        };
        let as_sent = |event: &ChangeEvent| {
            if watcher.prev_kv {
                self.with_previous_version(event)
            } else {
                event.encoded.clone()
            }
        };
        if watcher.watches_one_key() {
            single_key_matches
                .unwrap_or_default()
                .iter()
                .filter_map(|index| changes.events.get(*index))
                .map(as_sent)
                .collect()
        } else {
            changes
                .events
                .iter()
                .filter(|event| watcher.wants(event))
                .map(as_sent)
                .collect()
        }
    }

    /// Sends watcher `id` its `events` of a pull (nothing if none), then
    /// records that it has every change through the pull's `through`.
    async fn send_events(
        &mut self,
        id: i64,
        through: i64,
        events: Vec<EncodedEvent>,
    ) -> Result<(), ClientGone> {
        let Some(watcher) = self.watchers.get(id) else {
            return Ok(());
        };
        if !events.is_empty() {
            let fragment = watcher.fragment;
            let response = EncodedWatchResponse {
                head: WatchResponse {
                    header: (self.context.header)(through),
                    watch_id: id,
                    ..Default::default()
                },
                events,
            };
            let limit = self.context.message_limit();
            if fragment && response.encoded_len() > limit {
                for piece in fragments(response, limit) {
                    self.send_encoded(piece).await?;
                }
            } else {
                self.send_encoded(response).await?;
            }
        }
        self.watchers.delivered(id, through);
        Ok(())
    }

    /// The event with etcd's `prev_kv`: the key's version just before the
    /// event's revision, if it existed and history still has it.
    fn with_previous_version(&self, change: &ChangeEvent) -> EncodedEvent {
        match change.decode() {
            Ok(mut event) => {
                event.prev_kv = self.previous_version(change);
                EncodedEvent::encode(&event)
            }
            Err(error) => {
                // Bytes this member encoded itself: cannot fail to decode.
                tracing::error!(%error, "a change event this member encoded does not decode");
                change.encoded.clone()
            }
        }
    }

    fn previous_version(&self, change: &ChangeEvent) -> Option<keel_api::mvccpb::KeyValue> {
        let before = change.revision.checked_sub(1).filter(|revision| *revision > 0)?;
        let request = RangeRequest {
            key: change.key.to_vec(),
            revision: before,
            ..Default::default()
        };
        match self.context.store.range(&request) {
            Ok(found) => found.kvs.into_iter().next(),
            Err(MvccError::Compacted { .. }) => None,
            Err(error) => {
                tracing::warn!(%error, "reading a watch event's previous version failed");
                None
            }
        }
    }

    /// etcd's progress notification: a watcher that asked for it and has
    /// nothing pending hears the current revision.
    async fn notify_progress(&mut self) -> Result<(), ClientGone> {
        let current = self.context.store.current_revision();
        let idle: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.progress_notify && watcher.delivered_through >= current)
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            let response = WatchResponse {
                header: (self.context.header)(current),
                watch_id: id,
                ..Default::default()
            };
            self.send(response).await?;
        }
        Ok(())
    }
}

/// Splits a response's events over responses of at most about
/// `max_bytes` each (at least one event each); every piece but the last
/// has `fragment` set, as etcd's fragmented watch responses do.
fn fragments(response: EncodedWatchResponse, max_bytes: usize) -> Vec<EncodedWatchResponse> {
    let EncodedWatchResponse { head, events } = response;
    let piece_of = |events: Vec<EncodedEvent>, fragment: bool| EncodedWatchResponse {
        head: WatchResponse {
            header: head.header,
            watch_id: head.watch_id,
            fragment,
            ..Default::default()
        },
        events,
    };
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut piece_bytes = 0usize;
    for event in events {
        let bytes = event.field_len();
        if !piece.is_empty() && piece_bytes + bytes > max_bytes {
            pieces.push(piece_of(std::mem::take(&mut piece), true));
            piece_bytes = 0;
        }
        piece_bytes += bytes;
        piece.push(event);
    }
    pieces.push(piece_of(piece, false));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::mvccpb::{Event, KeyValue};

    fn event_of_bytes(value_bytes: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: vec![b'v'; value_bytes],
                mod_revision: 7,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_keep_every_event_in_order_and_mark_all_but_the_last() {
        let events: Vec<Event> = (0..10).map(|i| event_of_bytes(100 + i)).collect();
        let response = WatchResponse {
            watch_id: 3,
            events: events.clone(),
            ..Default::default()
        };
        let pieces = fragments(EncodedWatchResponse::from(response), 350);
        assert!(pieces.len() > 1);
        let flags: Vec<bool> = pieces.iter().map(|piece| piece.head.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|flag| *flag));
        assert!(!flags[flags.len() - 1]);
        for piece in &pieces {
            assert_eq!(piece.head.watch_id, 3);
            assert!(piece.encoded_len() <= 350 + 200, "{}", piece.encoded_len());
        }
        let rejoined: Vec<Event> = pieces
            .into_iter()
            .flat_map(|piece| piece.decode_events().expect("decodes").events)
            .collect();
        assert_eq!(rejoined, events);
    }

    #[test]
    fn an_event_larger_than_the_limit_still_travels_alone() {
        let pieces = fragments(
            EncodedWatchResponse::from(WatchResponse {
                events: vec![event_of_bytes(1000), event_of_bytes(10)],
                ..Default::default()
            }),
            100,
        );
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].events.len(), 1);
    }
}
