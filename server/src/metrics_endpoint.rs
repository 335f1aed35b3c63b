//! `/metrics` on the client port (Prometheus text format, `keel-metrics`)
//! and the gRPC server metrics etcd exports through go-grpc-prometheus:
//! `grpc_server_started_total` and `grpc_server_handled_total` with the
//! same labels, counted by a tower layer around the client port's services.
//! A call's code is its `grpc-status`, from the headers of an immediate
//! failure or from the trailers; a call whose answer is dropped before its
//! status (the client left) counts as `Canceled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::{Body, Frame, SizeHint};
use keel_metrics::{metrics, MemberGauges};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::context::MemberContext;

pub fn metrics_routes(context: Arc<MemberContext>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(context)
}

async fn scrape(State(context): State<Arc<MemberContext>>) -> Response {
    let raft_metrics = context.node.raft().metrics().borrow_watched().clone();
    metrics().set_member_gauges(&MemberGauges {
        has_leader: context.node.leadership().known_leader().is_some(),
        is_leader: raft_metrics.state == ServerState::Leader,
        committed_index: raft_metrics.local_committed.map_or(0, |id| id.index),
        applied_index: raft_metrics.last_applied.map_or(0, |id| id.index),
        last_log_index: raft_metrics.last_log_index.unwrap_or(0),
        purged_index: raft_metrics.purged.map_or(0, |id| id.index),
        db_total_size_bytes: context.node.state().store().size_on_disk()
            + context.node.raft_log_size_on_disk(),
    });
    let mut response = (StatusCode::OK, metrics().exposition()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Counts the gRPC calls of the services it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// A gRPC call's labels: type, service and method.
#[derive(Debug, Clone)]
struct GrpcCall {
    kind: &'static str,
    service: String,
    method: String,
}

impl GrpcCall {
    fn of<B>(request: &http::Request<B>) -> Option<GrpcCall> {
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let (service, method) = request.uri().path().strip_prefix('/')?.split_once('/')?;
        if !is_grpc || service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        let kind = match (service, method) {
            ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
            ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => {
                "server_stream"
            }
            _ => "unary",
        };
        Some(GrpcCall {
            kind,
            service: service.to_string(),
            method: method.to_string(),
        })
    }

    fn started(&self) {
        metrics()
            .grpc_started
            .with_label_values(&[self.kind, &self.service, &self.method])
            .inc();
    }

    fn handled(&self, code: tonic::Code) {
        metrics()
            .grpc_handled
            .with_label_values(&[self.kind, &self.service, &self.method, code_name(code)])
            .inc();
    }
}

/// grpc-go's name of a code, as go-grpc-prometheus labels it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let call = GrpcCall::of(&request);
        if let Some(call) = &call {
            call.started();
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let mut pending = call;
            if let Some(code) = status_code(response.headers()) {
                if let Some(call) = pending.take() {
                    call.handled(code);
                }
            }
            Ok(response.map(|inner| CountedBody { inner, pending }))
        })
    }
}

/// A response body that counts its call once the status passes by.
pub struct CountedBody<B> {
    inner: B,
    /// The call, until its status was counted.
    pending: Option<GrpcCall>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame.trailers_ref().and_then(status_code) {
                if let Some(call) = self.pending.take() {
                    call.handled(code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.pending.take() {
            call.handled(tonic::Code::Cancelled);
        }
    }
}
