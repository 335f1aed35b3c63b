//! etcd's `Watch` service as a small typed API: one bidirectional stream on
//! the client's preferred endpoint, split into a [`WatchSender`] (create,
//! cancel and progress requests; cheap to clone) and a [`WatchReceiver`]
//! (the server's responses, one message at a time or reassembled).
//!
//! Invariant (whole responses): [`WatchReceiver::response`] returns a
//! response only once every fragment of it has arrived; the fragments of
//! one watch's response are joined in arrival order into one response
//! whose `fragment` flag is false. A created or canceled response is never
//! joined to fragments before it (the server sends those whole), which is
//! how etcd's Go client reads the stream too.
//!
//! The stream is not reopened when it fails: a failure ends it with a
//! typed [`WatchError`], and resuming (from the next revision) is the
//! caller's decision. A lost connection ([`WatchError::connection_lost`])
//! makes the next endpoint the client's preferred one, so the next stream
//! opens there.

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::StreamExt;
use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use keel_api::WireError;
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::{Client, MAX_RESPONSE_BYTES};

/// The watch id of a response that belongs to no one watch: etcd answers a
/// progress request with it, for every watch on the stream (etcd's Go
/// client calls it `InvalidWatchID`; a failed create also carries it).
pub const STREAM_WATCH_ID: i64 = -1;

/// How a watch stream fails.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The stream could not be opened or broke: the server's status, or the
    /// transport's (see [`crate::transport_failure`] to tell them apart).
    #[error("{}", .0.message())]
    Stream(Box<Status>),
    /// The stream has ended; no more requests can be sent on it.
    #[error("the watch stream is closed")]
    Closed,
    /// A fragment named a different watch than the fragments before it.
    #[error("watch {got} sent a fragment while watch {expected}'s response was incomplete")]
    InterleavedFragments { expected: i64, got: i64 },
}

impl WatchError {
    pub fn status(&self) -> Option<&Status> {
        match self {
            WatchError::Stream(status) => Some(status),
            _ => None,
        }
    }

    /// The etcd error this is, when the server answered with one.
    pub fn wire_error(&self) -> Option<WireError> {
        self.status().and_then(WireError::from_status)
    }

    /// True when the connection could not be made or broke under the
    /// stream (the status carries the transport's error as its source, or
    /// says Unavailable without being an etcd error), as opposed to a server
    /// ending the stream with a status of its own: a new stream may work.
    pub fn connection_lost(&self) -> bool {
        let Some(status) = self.status() else {
            return false;
        };
        if WireError::from_status(status).is_some() {
            return false;
        }
        std::error::Error::source(status).is_some() || status.code() == tonic::Code::Unavailable
    }
}

impl From<Status> for WatchError {
    fn from(status: Status) -> Self {
        WatchError::Stream(Box::new(status))
    }
}

/// What opening a stream asks of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchStreamOptions {
    /// Send etcd's `hasleader` metadata: a member without a leader refuses
    /// the stream ("etcdserver: no leader") instead of serving it stale
    /// (what etcdctl always asks).
    pub require_leader: bool,
}

impl Client {
    /// Opens a watch stream on the preferred endpoint. The call itself is
    /// made by the first receive, so requests may be sent before it (a
    /// server may send nothing, headers included, until it has a request).
    pub fn watch_stream(&self, options: WatchStreamOptions) -> (WatchSender, WatchReceiver) {
        let (index, channel) = self.preferred_channel();
        let (requests, outgoing) = mpsc::unbounded::<WatchRequest>();
        let mut request = tonic::Request::new(outgoing);
        if options.require_leader {
            request
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
        }
        let client = self.clone();
        let call: BoxFuture<'static, Result<tonic::Response<Streaming<WatchResponse>>, Status>> =
            Box::pin(async move {
                client.stream_token_ready().await?;
                WatchClient::new(channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .max_encoding_message_size(usize::MAX)
                    .watch(request)
                    .await
            });
        (
            WatchSender { requests },
            WatchReceiver {
                state: ReceiverState::Calling(call),
                assembler: FragmentAssembler::default(),
                client: self.clone(),
                endpoint: index,
            },
        )
    }
}

/// The request half of a watch stream.
#[derive(Clone, Debug)]
pub struct WatchSender {
    requests: mpsc::UnboundedSender<WatchRequest>,
}

impl WatchSender {
    fn send(&self, request: RequestUnion) -> Result<(), WatchError> {
        self.requests
            .unbounded_send(WatchRequest {
                request_union: Some(request),
            })
            .map_err(|_| WatchError::Closed)
    }

    /// Asks for a watch: `request` as etcd defines it (key and range_end,
    /// start_revision, prev_kv, filters, progress_notify, fragment, and a
    /// watch_id of the caller's choosing or 0 for the server's).
    pub fn create(&self, request: WatchCreateRequest) -> Result<(), WatchError> {
        self.send(RequestUnion::CreateRequest(request))
    }

    pub fn cancel(&self, watch_id: i64) -> Result<(), WatchError> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
    }

    /// Asks for a progress notification (answered for the whole stream,
    /// with [`STREAM_WATCH_ID`], by etcd).
    pub fn request_progress(&self) -> Result<(), WatchError> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
    }

    /// Ends the request side: the server sees the end of its request stream.
    pub fn close(&self) {
        self.requests.close_channel();
    }
}

enum ReceiverState {
    Calling(BoxFuture<'static, Result<tonic::Response<Streaming<WatchResponse>>, Status>>),
    Open(Box<Streaming<WatchResponse>>),
    Ended,
}

/// The response half of a watch stream.
pub struct WatchReceiver {
    state: ReceiverState,
    assembler: FragmentAssembler,
    client: Client,
    /// The index of the endpoint the stream is on.
    endpoint: usize,
}

impl WatchReceiver {
    /// The next message as the server sent it (a fragment included);
    /// `None` once the server has ended the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, WatchError> {
        loop {
            match &mut self.state {
                ReceiverState::Calling(call) => match call.await {
                    Ok(response) => self.state = ReceiverState::Open(Box::new(response.into_inner())),
                    Err(status) => return Err(self.failed(status)),
                },
                ReceiverState::Open(stream) => {
                    return match stream.next().await {
                        Some(Ok(message)) => Ok(Some(message)),
                        Some(Err(status)) => Err(self.failed(status)),
                        None => {
                            self.state = ReceiverState::Ended;
                            Ok(None)
                        }
                    };
                }
                ReceiverState::Ended => return Ok(None),
            }
        }
    }

    fn failed(&mut self, status: Status) -> WatchError {
        self.state = ReceiverState::Ended;
        let error = WatchError::from(status);
        if error.connection_lost() {
            self.client.stream_connection_lost(self.endpoint);
        }
        error
    }

    /// The next whole response: fragments are joined (see the invariant at
    /// the top of this file). `None` once the server has ended the stream.
    pub async fn response(&mut self) -> Result<Option<WatchResponse>, WatchError> {
        loop {
            let Some(message) = self.message().await? else {
                return Ok(None);
            };
            if let Some(whole) = self.assembler.push(message)? {
                return Ok(Some(whole));
            }
        }
    }
}

/// True for a progress notification: no events, not created, canceled or
/// compacted, at a known revision (clientv3's `IsProgressNotify`).
pub fn is_progress_notify(response: &WatchResponse) -> bool {
    response.events.is_empty()
        && !response.canceled
        && !response.created
        && response.compact_revision == 0
        && response.header.as_ref().is_some_and(|h| h.revision != 0)
}

/// Why the server ended a watch, as its response says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchCanceled {
    /// The start revision was compacted; the watch may resume from
    /// `compact_revision` at the earliest.
    #[error("{}", WireError::Compacted)]
    Compacted { compact_revision: i64 },
    /// The server's stated reason (`cancel_reason`), as it sent it.
    #[error("{0}")]
    Reason(String),
    /// Canceled without a reason (a cancel the client asked for, or a
    /// server that states none).
    #[error("watch canceled")]
    Unstated,
}

/// The reason a response ends its watch: it was canceled, or it is a
/// failed create (created with watch id [`STREAM_WATCH_ID`]).
pub fn cancellation(response: &WatchResponse) -> Option<WatchCanceled> {
    let failed_create = response.created && response.watch_id == STREAM_WATCH_ID;
    if !response.canceled && !failed_create {
        return None;
    }
    Some(if response.compact_revision != 0 {
        WatchCanceled::Compacted {
            compact_revision: response.compact_revision,
        }
    } else if !response.cancel_reason.is_empty() {
        WatchCanceled::Reason(response.cancel_reason.clone())
    } else {
        WatchCanceled::Unstated
    })
}

/// Joins fragmented responses (see the invariant at the top of this file).
#[derive(Default)]
struct FragmentAssembler {
    incomplete: Option<WatchResponse>,
}

impl FragmentAssembler {
    /// Takes one message; returns a whole response when one is complete.
    fn push(&mut self, message: WatchResponse) -> Result<Option<WatchResponse>, WatchError> {
        if message.created || message.canceled {
            return Ok(Some(message));
        }
        let mut joined = match self.incomplete.take() {
            None => message,
            Some(mut partial) => {
                if partial.watch_id != message.watch_id {
                    return Err(WatchError::InterleavedFragments {
                        expected: partial.watch_id,
                        got: message.watch_id,
                    });
                }
                partial.events.extend(message.events);
                partial.fragment = message.fragment;
                partial.header = message.header.or(partial.header);
                partial
            }
        };
        if joined.fragment {
            self.incomplete = Some(joined);
            return Ok(None);
        }
        joined.fragment = false;
        Ok(Some(joined))
    }
}

#[cfg(test)]
mod tests {
    use keel_api::etcdserverpb::ResponseHeader;
    use keel_api::mvccpb::{Event, KeyValue};

    use super::*;

    fn event(key: &str, revision: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: revision,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn message(watch_id: i64, events: Vec<Event>, fragment: bool) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id,
            events,
            fragment,
            ..Default::default()
        }
    }

    #[test]
    fn fragments_are_joined_into_one_response() {
        let mut assembler = FragmentAssembler::default();
        assert!(assembler
            .push(message(3, vec![event("a", 5)], true))
            .unwrap()
            .is_none());
        assert!(assembler
            .push(message(3, vec![event("b", 6)], true))
            .unwrap()
            .is_none());
        let whole = assembler
            .push(message(3, vec![event("c", 7)], false))
            .unwrap()
            .expect("the last fragment completes it");
        let keys: Vec<_> = whole
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(!whole.fragment);
        assert_eq!(whole.watch_id, 3);
        // The next message starts afresh.
        let next = assembler.push(message(3, vec![event("d", 8)], false)).unwrap();
        assert_eq!(next.map(|r| r.events.len()), Some(1));
    }

    #[test]
    fn created_and_canceled_responses_pass_whole_and_interleaving_is_refused() {
        let mut assembler = FragmentAssembler::default();
        let created = WatchResponse {
            created: true,
            watch_id: 1,
            ..Default::default()
        };
        assert!(assembler.push(created).unwrap().is_some());
        assert!(assembler
            .push(message(1, vec![event("a", 2)], true))
            .unwrap()
            .is_none());
        let error = assembler
            .push(message(2, vec![event("b", 3)], false))
            .unwrap_err();
        assert!(matches!(
            error,
            WatchError::InterleavedFragments { expected: 1, got: 2 }
        ));
    }

    #[test]
    fn progress_and_cancellations_are_classified_as_clientv3_does() {
        let progress = message(STREAM_WATCH_ID, vec![], false);
        assert!(is_progress_notify(&progress));
        assert!(!is_progress_notify(&message(1, vec![event("a", 2)], false)));
        assert!(!is_progress_notify(&WatchResponse::default()));
        assert_eq!(cancellation(&progress), None);

        let compacted = WatchResponse {
            canceled: true,
            compact_revision: 4,
            ..Default::default()
        };
        assert!(!is_progress_notify(&compacted));
        assert_eq!(
            cancellation(&compacted),
            Some(WatchCanceled::Compacted { compact_revision: 4 })
        );
        assert_eq!(
            WatchCanceled::Compacted { compact_revision: 4 }.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let failed_create = WatchResponse {
            created: true,
            canceled: true,
            watch_id: STREAM_WATCH_ID,
            cancel_reason: "mvcc: watcher range is empty".into(),
            ..Default::default()
        };
        assert_eq!(
            cancellation(&failed_create),
            Some(WatchCanceled::Reason("mvcc: watcher range is empty".into()))
        );
        let created = WatchResponse {
            created: true,
            watch_id: 0,
            ..Default::default()
        };
        assert_eq!(cancellation(&created), None);
        let plain_cancel = WatchResponse {
            canceled: true,
            watch_id: 2,
            ..Default::default()
        };
        assert_eq!(cancellation(&plain_cancel), Some(WatchCanceled::Unstated));
    }

    #[test]
    fn only_a_broken_connection_is_a_lost_one() {
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(WatchError::from(broken).connection_lost());
        assert!(WatchError::from(Status::unavailable("connection refused")).connection_lost());
        assert!(!WatchError::from(WireError::NoLeader.to_status()).connection_lost());
        assert!(!WatchError::from(Status::unknown("a server's own error")).connection_lost());
        assert!(!WatchError::from(Status::unimplemented("no Watch here")).connection_lost());
        assert!(!WatchError::Closed.connection_lost());
    }

    #[tokio::test]
    async fn a_stream_that_cannot_connect_makes_the_next_endpoint_preferred() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_endpoint = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let client = Client::connect_lazy(crate::ClientConfig::new([
            closed_endpoint,
            "127.0.0.1:9".to_string(),
        ]))
        .expect("client");
        let (sender, mut receiver) = client.watch_stream(WatchStreamOptions::default());
        // Requests may be sent before the call is made.
        sender.request_progress().expect("queued");
        let error = receiver.message().await.expect_err("nothing listens there");
        assert!(error.connection_lost(), "{error:?}");
        assert_eq!(
            client.shared.preferred.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The stream has ended: no more messages, and the sender sees it.
        assert!(receiver.message().await.expect("ended").is_none());
        drop(receiver);
        assert!(matches!(sender.request_progress(), Err(WatchError::Closed)));
    }

    #[test]
    fn a_sender_whose_stream_is_gone_reports_closed() {
        let (requests, outgoing) = mpsc::unbounded::<WatchRequest>();
        drop(outgoing);
        let sender = WatchSender { requests };
        assert!(matches!(sender.request_progress(), Err(WatchError::Closed)));
    }
}
