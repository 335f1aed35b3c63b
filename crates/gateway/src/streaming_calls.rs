//! Streaming RPCs (Watch, LeaseKeepAlive, Observe, Snapshot): the answer is
//! newline-delimited JSON, `{"result": ...}` per message, as etcd's gateway
//! streams it. A bidirectional call's request body is read as it arrives,
//! one JSON message after another; when it ends (or holds a malformed
//! message after the first) the request stream is closed, as etcd's
//! gateway does.

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::StatusCode;
use http_body_util::{Full, StreamBody};
use tonic::service::Routes;
use tonic::Status;

use crate::grpc_in_process::{grpc_frame, start_call, GrpcAnswer};
use crate::http_answers::{
    call_error, call_error_with, json_response, stream_error_line, stream_result_line,
};
use crate::rpc_table::{GatewayRpc, RpcShape};
use crate::unary_calls::whole_body;
use crate::GatewaySettings;

type DataStream = axum::body::BodyDataStream;

pub(crate) async fn answer(
    rpc: &'static GatewayRpc,
    grpc_services: Routes,
    settings: GatewaySettings,
    request: axum::extract::Request,
) -> Response {
    let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
    let request_frames = if rpc.shape == RpcShape::BidiStreaming {
        match streamed_request(rpc, request.into_body().into_data_stream()).await {
            Ok(frames) => frames,
            // etcd's gateway fails a bidirectional call whose first
            // message does not decode with Unknown (HTTP 500).
            Err(status) => return call_error_with(StatusCode::INTERNAL_SERVER_ERROR, &status),
        }
    } else {
        let json = match whole_body(request.into_body(), settings).await {
            Ok(json) => json,
            Err(status) => return call_error(&status),
        };
        match (rpc.request_to_protobuf)(&json) {
            Ok(protobuf) => tonic::body::boxed(Full::new(grpc_frame(&protobuf))),
            Err(error) => return call_error(&Status::invalid_argument(error.to_string())),
        }
    };
    let answer = start_call(grpc_services, rpc.grpc_path, authorization, request_frames).await;
    json_response(StatusCode::OK, Body::from_stream(answer_lines(rpc, answer)))
}

/// Waits for the first complete request message (or the end of the body),
/// then streams it and every later one as gRPC frames.
async fn streamed_request(
    rpc: &'static GatewayRpc,
    mut body: DataStream,
) -> Result<tonic::body::BoxBody, Status> {
    let mut pending = BytesMut::new();
    let first = loop {
        let parsed = (rpc.stream_to_protobuf)(&pending);
        if let Some(error) = parsed.malformed {
            return Err(Status::unknown(error.to_string()));
        }
        if !parsed.messages.is_empty() {
            let _ = pending.split_to(parsed.consumed);
            break parsed.messages;
        }
        match body.next().await {
            Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
            Some(Err(error)) => {
                return Err(Status::cancelled(format!(
                    "gateway: reading the request: {error}"
                )))
            }
            None if pending.iter().all(u8::is_ascii_whitespace) => break Vec::new(),
            None => return Err(Status::unknown("unexpected EOF")),
        }
    };
    let first = futures::stream::iter(first.into_iter().map(|message| grpc_frame(&message)));
    let frames = first.chain(later_requests(rpc, body, pending));
    let frames = frames.map(|frame| Ok::<_, Status>(http_body::Frame::data(frame)));
    Ok(tonic::body::boxed(StreamBody::new(frames)))
}

/// The request messages after the first, as frames, until the body ends or
/// a message does not decode.
fn later_requests(
    rpc: &'static GatewayRpc,
    body: DataStream,
    pending: BytesMut,
) -> impl Stream<Item = Bytes> {
    let state = Some((body, pending));
    futures::stream::unfold(state, move |state| async move {
        let (mut body, mut pending) = state?;
        loop {
            let parsed = (rpc.stream_to_protobuf)(&pending);
            let _ = pending.split_to(parsed.consumed);
            let frames: Vec<Bytes> = parsed.messages.iter().map(|message| grpc_frame(message)).collect();
            if let Some(error) = parsed.malformed {
                tracing::debug!(%error, "gateway: a streamed request message does not decode; closing the request stream");
                return Some((frames, None));
            }
            if !frames.is_empty() {
                return Some((frames, Some((body, pending))));
            }
            match body.next().await {
                Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// The answer's messages as `{"result": ...}` lines; an error status ends
/// the stream with grpc-gateway's error line.
fn answer_lines(
    rpc: &'static GatewayRpc,
    answer: Result<GrpcAnswer, Status>,
) -> impl Stream<Item = Result<Vec<u8>, std::convert::Infallible>> {
    futures::stream::unfold(Some(answer), move |answer| async move {
        let mut answer = match answer? {
            Ok(answer) => answer,
            Err(status) => return Some((stream_error_line(&status), None)),
        };
        match answer.next_message().await {
            Ok(Some(message)) => match (rpc.response_to_json)(&message) {
                Ok(json) => Some((stream_result_line(&json), Some(Ok(answer)))),
                Err(error) => Some((stream_error_line(&Status::internal(error.to_string())), None)),
            },
            Ok(None) => None,
            Err(status) => Some((stream_error_line(&status), None)),
        }
    })
    .map(Ok)
}
