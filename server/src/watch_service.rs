//! The etcd `Watch` service: each client stream gets its own task
//! (`watch_stream.rs`) serving its watchers from this member's applied
//! state; responses reach the client through a bounded channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_api::etcdserverpb::watch_server::Watch;
use keel_api::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use keel_api::WireError;

use crate::context::MemberContext;
use crate::watch_stream::{self, WatchStreamContext};

/// etcd's metadata key asking for a stream that needs a leader.
const REQUIRE_LEADER_METADATA: &str = "hasleader";

/// How many responses a stream holds for a client that does not read
/// before its watchers wait (and fall back to the feed's history); each
/// may hold a pull's worth of events, so few.
const RESPONSES_QUEUED_PER_STREAM: usize = 16;

pub struct WatchService {
    member: Arc<MemberContext>,
    stream_context: Arc<WatchStreamContext>,
}

impl WatchService {
    pub fn new(member: Arc<MemberContext>, progress_notify_interval: Duration) -> Self {
        let store = member.node.state().store().clone();
        let max_request_bytes = member.limits.max_request_bytes;
        let stamping_member = member.clone();
        let header = move |revision: i64| -> Option<ResponseHeader> {
            stamping_member.stamp(Some(ResponseHeader {
                revision,
                ..Default::default()
            }))
        };
        WatchService {
            member,
            stream_context: Arc::new(WatchStreamContext {
                store,
                header: Box::new(header),
                max_request_bytes,
                progress_notify_interval,
                last_pull: std::sync::Mutex::new(None),
            }),
        }
    }
}

type WatchResponses = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // etcd's clients (etcdctl among them) ask with `hasleader` that a
        // member cut off from its leader refuse the stream rather than
        // serve events that may have stopped.
        let requires_leader = request
            .metadata()
            .get(REQUIRE_LEADER_METADATA)
            .is_some_and(|value| value.as_bytes() == b"true");
        if requires_leader && self.member.node.leadership().known_leader().is_none() {
            return Err(WireError::NoLeader.into());
        }
        let (responses, delivered) = tokio::sync::mpsc::channel(RESPONSES_QUEUED_PER_STREAM);
        tokio::spawn(watch_stream::serve(
            self.stream_context.clone(),
            request.into_inner(),
            responses,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(delivered))))
    }
}
