//! The client's errors, and the one place that decides whether a failed call
//! provably never reached a server (so that retrying it elsewhere cannot apply
//! a write twice).

use std::time::Duration;

use keel_api::WireError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach any endpoint within {timeout:?} (tried {}): {last_error}", .endpoints.join(", "))]
    Unreachable {
        endpoints: Vec<String>,
        timeout: Duration,
        last_error: String,
    },
    #[error("context deadline exceeded (no answer within {0:?})")]
    Timeout(Duration),
    /// The server answered with an error status (etcd's text, as clients print it).
    #[error("{}", .0.message())]
    Status(Box<Status>),
}

impl ClientError {
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(status) => Some(status.as_ref()),
            _ => None,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(status) => status.code(),
            ClientError::Timeout(_) => Code::DeadlineExceeded,
            ClientError::Unreachable { .. } => Code::Unavailable,
            ClientError::NoEndpoints | ClientError::InvalidEndpoint { .. } => Code::InvalidArgument,
        }
    }

    /// The etcd error this is, when the server answered with one.
    pub fn wire_error(&self) -> Option<WireError> {
        self.status().and_then(WireError::from_status)
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(Box::new(status))
    }
}

/// True when `status` says the connection to the server was never made, so
/// the request was not sent: any request, a write included, may be retried
/// on another endpoint or route.
pub fn never_reached_server(status: &Status) -> bool {
    if status.code() != Code::Unavailable || WireError::from_status(status).is_some() {
        return false;
    }
    let message = status.message();
    message.contains("error trying to connect")
        || message.contains("tcp connect error")
        || message.contains("Connection refused")
}

/// True when the failure came from the transport (connection lost, reset,
/// refused, timed out) rather than from a server's answer: an idempotent read
/// may be retried on another endpoint.
pub fn transport_failure(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
        && WireError::from_status(status).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_never_reached_the_server_but_etcd_errors_did() {
        let refused = Status::unavailable("error trying to connect: tcp connect error: Connection refused");
        assert!(never_reached_server(&refused));
        assert!(transport_failure(&refused));
        let no_leader = WireError::NoLeader.to_status();
        assert!(!never_reached_server(&no_leader));
        assert!(!transport_failure(&no_leader));
        let reset = Status::unavailable("transport error: connection reset");
        assert!(!never_reached_server(&reset));
        assert!(transport_failure(&reset));
    }
}
