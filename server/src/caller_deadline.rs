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
//!
//! A malformed `grpc-timeout` refuses the call at once with `Internal`
//! "malformed grpc-timeout: ...", as grpc-go's server does (etcd 3.4's
//! older grpc-go resets the stream instead); the call is never run
//! unbounded.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::BoxBody;

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
    S::Error: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let caller_timeout = match request.headers().get("grpc-timeout").map(parse_grpc_timeout) {
            None => None,
            Some(Ok(timeout)) => Some(timeout),
            Some(Err(malformed)) => {
                let refusal = tonic::Status::internal(format!("malformed grpc-timeout: {malformed}"));
                return Box::pin(std::future::ready(Ok(refusal.into_http())));
            }
        };
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
                    Ok(tonic::Status::deadline_exceeded(keel_api::DEADLINE_EXCEEDED_TEXT).into_http())
                }
            }
        })
    }
}

/// Why a `grpc-timeout` header is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum MalformedTimeout {
    #[error("the value is not ASCII text")]
    NotText,
    #[error("the value needs 1 to 8 digits and a unit")]
    NotDigitsAndUnit,
    #[error("the unit is not one of H, M, S, m, u, n")]
    UnknownUnit,
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), as gRPC over HTTP/2 defines it.
fn parse_grpc_timeout(value: &http::HeaderValue) -> Result<Duration, MalformedTimeout> {
    let text = value.to_str().map_err(|_| MalformedTimeout::NotText)?;
    let (digits, unit) = text
        .len()
        .checked_sub(1)
        .and_then(|unit_at| text.split_at_checked(unit_at))
        .ok_or(MalformedTimeout::NotDigitsAndUnit)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(MalformedTimeout::NotDigitsAndUnit);
    }
    let amount: u64 = digits.parse().map_err(|_| MalformedTimeout::NotDigitsAndUnit)?;
    match unit {
        "H" => Ok(Duration::from_secs(amount * 3600)),
        "M" => Ok(Duration::from_secs(amount * 60)),
        "S" => Ok(Duration::from_secs(amount)),
        "m" => Ok(Duration::from_millis(amount)),
        "u" => Ok(Duration::from_micros(amount)),
        "n" => Ok(Duration::from_nanos(amount)),
        _ => Err(MalformedTimeout::UnknownUnit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Result<Duration, MalformedTimeout> {
        parse_grpc_timeout(&http::HeaderValue::from_str(value).expect("a header value"))
    }

    #[test]
    fn grpc_timeout_values_parse_as_grpc_over_http2_defines_them() {
        assert_eq!(parsed("1999m"), Ok(Duration::from_millis(1999)));
        assert_eq!(parsed("2S"), Ok(Duration::from_secs(2)));
        assert_eq!(parsed("3M"), Ok(Duration::from_secs(180)));
        assert_eq!(parsed("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parsed("99999999u"), Ok(Duration::from_micros(99_999_999)));
        assert_eq!(parsed("5n"), Ok(Duration::from_nanos(5)));
        for malformed in ["", "m", "123456789m", "-1S", "1.5S", "S1"] {
            assert_eq!(
                parsed(malformed),
                Err(MalformedTimeout::NotDigitsAndUnit),
                "{malformed:?}"
            );
        }
        assert_eq!(parsed("12x"), Err(MalformedTimeout::UnknownUnit));
        let not_text = http::HeaderValue::from_bytes(b"1\xe9").expect("an opaque header value");
        assert_eq!(parse_grpc_timeout(&not_text), Err(MalformedTimeout::NotText));
    }
}
