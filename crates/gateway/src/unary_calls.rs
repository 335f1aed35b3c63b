//! Unary RPCs: one JSON request body in, one JSON message or error out.

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tonic::service::Routes;
use tonic::Status;

use crate::grpc_in_process::{grpc_frame, start_call};
use crate::http_answers::{call_error, json_response};
use crate::rpc_table::GatewayRpc;
use crate::GatewaySettings;

pub(crate) async fn answer(
    rpc: &GatewayRpc,
    grpc_services: Routes,
    settings: GatewaySettings,
    request: axum::extract::Request,
) -> Response {
    let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
    let json = match whole_body(request.into_body(), settings).await {
        Ok(json) => json,
        Err(status) => return call_error(&status),
    };
    let protobuf = match (rpc.request_to_protobuf)(&json) {
        Ok(protobuf) => protobuf,
        Err(error) => return call_error(&Status::invalid_argument(error.to_string())),
    };
    let frames = tonic::body::boxed(Full::new(grpc_frame(&protobuf)));
    match call_unary(rpc, grpc_services, authorization, frames).await {
        Ok(json) => json_response(StatusCode::OK, Body::from(json)),
        Err(status) => call_error(&status),
    }
}

/// A request body read whole, refused past the gateway's limit.
pub(crate) async fn whole_body(body: Body, settings: GatewaySettings) -> Result<bytes::Bytes, Status> {
    match Limited::new(body, settings.json_body_limit()).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Status::resource_exhausted(format!(
                "gateway: the request body is over {} bytes",
                settings.json_body_limit()
            )))
        }
        Err(error) => Err(Status::cancelled(format!(
            "gateway: reading the request body: {error}"
        ))),
    }
}

async fn call_unary(
    rpc: &GatewayRpc,
    grpc_services: Routes,
    authorization: Option<http::HeaderValue>,
    frames: tonic::body::BoxBody,
) -> Result<Vec<u8>, Status> {
    let mut answer = start_call(grpc_services, rpc.grpc_path, authorization, frames).await?;
    let message = answer
        .next_message()
        .await?
        .ok_or_else(|| Status::internal("gateway: the member answered no message"))?;
    // The status comes after the message; it may still be an error.
    while answer.next_message().await?.is_some() {}
    (rpc.response_to_json)(&message).map_err(|error| Status::internal(error.to_string()))
}
