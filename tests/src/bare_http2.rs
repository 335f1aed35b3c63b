//! A gRPC call sent over a bare HTTP/2 connection, for tests of what a
//! member answers to headers a gRPC client library would never send (or
//! would act on itself first, as tonic's client does with its own
//! `grpc-timeout`).

use std::time::Duration;

use tonic::codegen::{http, Bytes};

/// The head of a member's answer to one unary gRPC call: the HTTP status
/// and headers (a trailers-only gRPC answer carries its status there).
pub type AnswerHead = http::response::Parts;

/// Sends `message` (already protobuf-encoded) to `path` (e.g.
/// `/etcdserverpb.KV/Range`) on `address` with the given `grpc-timeout`
/// header, on a new HTTP/2 connection, and returns the answer's head, or an
/// error if none comes within `wait`.
pub async fn unary_call_head(
    address: &str,
    path: &str,
    message: &[u8],
    grpc_timeout: &str,
    wait: Duration,
) -> anyhow::Result<AnswerHead> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    frame.extend_from_slice(message);
    let connection = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, driver) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(connection),
    )
    .await?;
    tokio::spawn(driver);
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(http_body_util::Full::new(Bytes::from(frame)))?;
    let response = tokio::time::timeout(wait, sender.send_request(request)).await??;
    Ok(response.into_parts().0)
}
