//! The etcd `Watch` service: each client stream gets its own task
//! (`watch_stream.rs`) serving its watchers from this member's applied
//! state; responses reach the client through a bounded channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::task::{Context, Poll};

use tonic::codegen::{http, Body, Service, StdError};

use futures::Stream;
use keel_api::encoded_watch::EncodedWatchResponse;
use keel_api::etcdserverpb::{ResponseHeader, WatchRequest};
use keel_api::reserving_codec::ReservingProstCodec;
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
const RESPONSES_QUEUED_PER_STREAM: usize = 4;

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

type WatchResponses = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

impl WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchResponses>, Status> {
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
        // The caller is who the stream's token names; each create is
        // checked for read on its range (etcd answers a refusal in the
        // create's cancel reason).
        let caller = crate::auth_check::Caller::of(&self.member, &request)?;
        let member = self.member.clone();
        let may_watch: watch_stream::MayWatch = Box::new(move |key, range_end| {
            caller
                .check(&member, keel_auth::Access::Read, key, range_end)
                .is_ok()
        });
        let (responses, delivered) = tokio::sync::mpsc::channel(RESPONSES_QUEUED_PER_STREAM);
        tokio::spawn(watch_stream::serve(
            self.stream_context.clone(),
            request.into_inner(),
            responses,
            may_watch,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(delivered))))
    }
}

/// etcd's `Watch` service on the wire (`/etcdserverpb.Watch/Watch`),
/// routed by hand rather than through tonic's generated server, whose
/// response type would be the generated `WatchResponse`: this one sends
/// [`EncodedWatchResponse`]s, the same bytes with each event encoded once
/// per member instead of once per watcher.
#[derive(Clone)]
pub struct WatchGrpcService {
    service: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchGrpcService {
    pub fn new(service: WatchService, max_decoding_message_size: usize) -> Self {
        WatchGrpcService {
            service: Arc::new(service),
            max_decoding_message_size,
        }
    }
}

impl tonic::server::NamedService for WatchGrpcService {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// The one method of the service, in tonic's streaming-handler shape.
struct WatchMethod(Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = EncodedWatchResponse;
    type ResponseStream = WatchResponses;
    type Future = Pin<Box<dyn Future<Output = Result<Response<WatchResponses>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(request).await })
    }
}

impl<B> Service<http::Request<B>> for WatchGrpcService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        let max_decoding_message_size = self.max_decoding_message_size;
        Box::pin(async move {
            if request.uri().path() != "/etcdserverpb.Watch/Watch" {
                return Ok(Status::unimplemented("").into_http());
            }
            let codec = ReservingProstCodec::<EncodedWatchResponse, WatchRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(max_decoding_message_size), Some(usize::MAX));
            Ok(grpc.streaming(WatchMethod(service), request).await)
        })
    }
}
