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

use crate::context::MemberContext;
use crate::watch_stream::{self, WatchStreamContext};

/// How many responses a stream holds for a client that does not read
/// before its watchers wait (and fall back to the feed's history).
const RESPONSES_QUEUED_PER_STREAM: usize = 64;

pub struct WatchService {
    stream_context: Arc<WatchStreamContext>,
}

impl WatchService {
    pub fn new(member: Arc<MemberContext>, progress_notify_interval: Duration) -> Self {
        let store = member.node.state().store().clone();
        let max_request_bytes = member.limits.max_request_bytes;
        let header = move |revision: i64| -> Option<ResponseHeader> {
            member.stamp(Some(ResponseHeader {
                revision,
                ..Default::default()
            }))
        };
        WatchService {
            stream_context: Arc::new(WatchStreamContext {
                store,
                header: Box::new(header),
                max_request_bytes,
                progress_notify_interval,
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
        let (responses, delivered) = tokio::sync::mpsc::channel(RESPONSES_QUEUED_PER_STREAM);
        tokio::spawn(watch_stream::serve(
            self.stream_context.clone(),
            request.into_inner(),
            responses,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(delivered))))
    }
}
