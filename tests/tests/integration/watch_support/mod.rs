//! Opening raw Watch streams for the watch tests (the gRPC stub, so the
//! tests see every response exactly as the server sends it).

#![allow(dead_code)]

use keel_api::etcdserverpb::watch_client::WatchClient;
use keel_api::etcdserverpb::watch_request::RequestUnion;
use keel_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use keel_api::mvccpb::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// One open Watch stream: where to send requests, what comes back.
pub struct RawWatch {
    pub requests: mpsc::Sender<WatchRequest>,
    pub responses: Streaming<WatchResponse>,
}

pub fn create_request(key: &str, range_end: &str, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        start_revision,
        ..Default::default()
    }
}

/// Opens a stream on `endpoint` with `first` already queued: etcd
/// (grpc-go) sends the response headers only with its first response.
pub async fn open_watch(endpoint: &str, first: RequestUnion) -> RawWatch {
    open_watch_asking(endpoint, first, false)
        .await
        .expect("watch stream")
}

/// Opens a stream as [`open_watch`] does; with `require_leader`, sends
/// etcd's `hasleader` metadata, and returns the status a member refuses
/// the stream with.
pub async fn open_watch_asking(
    endpoint: &str,
    first: RequestUnion,
    require_leader: bool,
) -> Result<RawWatch, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let (requests, outgoing) = mpsc::channel(16);
    requests
        .send(WatchRequest {
            request_union: Some(first),
        })
        .await
        .expect("queue the first request");
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    if require_leader {
        request
            .metadata_mut()
            .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
    }
    let responses = WatchClient::new(channel).watch(request).await?.into_inner();
    Ok(RawWatch { requests, responses })
}

/// What a test compares of an event: type, key, value, revisions, version.
pub fn event_shape(event: &Event) -> (i32, Vec<u8>, Vec<u8>, i64, i64, i64) {
    let kv = event.kv.clone().unwrap_or_default();
    (
        event.r#type,
        kv.key,
        kv.value,
        kv.mod_revision,
        kv.create_revision,
        kv.version,
    )
}

impl RawWatch {
    /// Receives events until one with `mod_revision >= through` arrived;
    /// panics on a cancel, a stream end or after `timeout`. Returns every
    /// event received, in order.
    pub async fn events_through(&mut self, through: i64, timeout: std::time::Duration) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while events
            .last()
            .and_then(|event| event.kv.as_ref())
            .is_none_or(|kv| kv.mod_revision < through)
        {
            let Ok(received) = tokio::time::timeout_at(deadline, self.responses.message()).await else {
                panic!(
                    "no event at revision {through} in time; got {} events",
                    events.len()
                );
            };
            let response = received.expect("watch stream").expect("stream open");
            assert!(!response.canceled, "watch canceled: {response:?}");
            events.extend(response.events);
        }
        events
    }
}
