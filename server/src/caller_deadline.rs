//! The caller's deadline (`grpc-timeout`) on the client port, answered as a
//! well-formed gRPC status.
//!
//! Invariant: a call still unanswered at its caller's deadline is answered
//! `DeadlineExceeded` with gRPC's content type, by this layer and never by
//! tonic's own timeout. tonic 0.12 answers an expired call with bare
//! `grpc-status` headers and no `content-type`, which grpc-go (etcdctl,
//! every Go client) reads as "OK: HTTP status code 200; transport: missing
//! content-type field". This layer wins the race deterministically: tonic
//! calls the service it wraps before starting its own timer, and this
//! layer starts its timer inside that call, so its deadline is never the
//! later one; and tonic polls the wrapped service before its timer, so on
//! the same tick this layer's answer is the one sent.
//!
//! Only the response's head is bounded, as in tonic: a stream that has
//! begun answering is not cut off.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::BoxBody;

/// grpc-go's message for a call whose context passed its deadline.
const DEADLINE_EXCEEDED_MESSAGE: &str = "context deadline exceeded";

/// Bounds each call by the `grpc-timeout` its caller sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerDeadlineLayer;

impl<S> tower::Layer<S> for CallerDeadlineLayer {
    type Service = CallerDeadline<S>;

    fn layer(&self, inner: S) -> CallerDeadline<S> {
        CallerDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallerDeadline<S> {
    inner: S,
}

impl<S, RequestBody> tower::Service<http::Request<RequestBody>> for CallerDeadline<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let caller_timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let answer = self.inner.call(request);
        let Some(caller_timeout) = caller_timeout else {
            return Box::pin(answer);
        };
        // Started here, inside tonic's call and before tonic's own timer.
        let deadline = tokio::time::sleep(caller_timeout);
        Box::pin(async move {
            tokio::select! {
                biased;
                answered = answer => answered,
                () = deadline => {
                    Ok(tonic::Status::deadline_exceeded(DEADLINE_EXCEEDED_MESSAGE).into_http())
                }
            }
        })
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), as gRPC over HTTP/2 defines it; `None` when malformed (the
/// call then runs unbounded, as tonic treats it).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount * 3600)),
        "M" => Some(Duration::from_secs(amount * 60)),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_as_grpc_over_http2_defines_them() {
        assert_eq!(parse_grpc_timeout("1999m"), Some(Duration::from_millis(1999)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for malformed in ["", "m", "123456789m", "12x", "-1S", "1.5S", "S1", "1é"] {
            assert_eq!(parse_grpc_timeout(malformed), None, "{malformed:?}");
        }
    }
}
