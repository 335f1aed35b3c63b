//! What the gateway writes back: JSON bodies with etcd's headers, and
//! errors in etcd 3.4's gateway shapes with grpc-gateway's HTTP status for
//! each gRPC code.

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use tonic::{Code, Status};

/// A unary call's error, or a streaming call's error before it started:
/// `{"error": ..., "message": ..., "code": N}`.
#[derive(Serialize)]
struct CallError<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// An error inside a started stream (grpc-gateway v1's stream error).
#[derive(Serialize)]
struct StreamError<'a> {
    error: StreamErrorBody<'a>,
}

#[derive(Serialize)]
struct StreamErrorBody<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// grpc-gateway v1's HTTP status for a gRPC code (etcd 3.4 answers a
/// FailedPrecondition with 412).
pub(crate) fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON response with etcd's headers (etcd 3.4 allows any origin).
pub(crate) fn json_response(status: StatusCode, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_cors_headers(headers);
    response
}

/// A path that is neither a gRPC method nor a gateway route.
pub(crate) fn unknown_path(request: &axum::extract::Request) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|content_type| content_type.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return Status::unimplemented("").into_http().map(Body::new);
    }
    let mut response = Response::new(Body::from("Not Found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// The answer to a CORS preflight (`OPTIONS`).
pub(crate) fn preflight() -> Response {
    let mut response = Response::new(Body::empty());
    add_cors_headers(response.headers_mut());
    response
}

fn add_cors_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// A failed call as etcd's gateway answers it, with the HTTP status of
/// `http_status` (grpc-gateway's for the code, except where etcd differs).
pub(crate) fn call_error_with(http_status: StatusCode, status: &Status) -> Response {
    let body = CallError {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    json_response(http_status, Body::from(serialized(&body)))
}

pub(crate) fn call_error(status: &Status) -> Response {
    call_error_with(http_status_of(status.code()), status)
}

/// One line of a stream for an error after the stream began.
pub(crate) fn stream_error_line(status: &Status) -> Vec<u8> {
    let http_status = http_status_of(status.code());
    let mut line = serialized(&StreamError {
        error: StreamErrorBody {
            grpc_code: status.code() as i32,
            http_code: http_status.as_u16(),
            message: status.message(),
            http_status: http_status.canonical_reason().unwrap_or(""),
        },
    });
    line.push(b'\n');
    line
}

/// One message of a stream: `{"result": <message>}` and a newline.
pub(crate) fn stream_result_line(message_json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(message_json.len() + 12);
    line.extend_from_slice(b"{\"result\":");
    line.extend_from_slice(message_json);
    line.extend_from_slice(b"}\n");
    line
}

fn serialized<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
