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
    /// A token (given, or answered by Authenticate) that gRPC metadata cannot carry.
    #[error("invalid auth token: not printable ASCII")]
    InvalidToken,
    #[error("{text} (no answer within {0:?})", text = keel_api::DEADLINE_EXCEEDED_TEXT)]
    Timeout(Duration),
    /// The TLS settings cannot be used (a file missing or unreadable, ...).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
            ClientError::NoEndpoints | ClientError::InvalidEndpoint { .. } | ClientError::Tls(_) => {
                Code::InvalidArgument
            }
            ClientError::InvalidToken => Code::Unauthenticated,
        }
    }

    /// The etcd error this is, when the server answered with one.
    pub fn wire_error(&self) -> Option<WireError> {
        self.status().and_then(WireError::from_status)
    }

    /// True when a membership change (member add, remove or promote) was
    /// refused before anything was proposed, because members are not yet
    /// started (published their attributes) or not yet connected to the
    /// leader: asking again, as it was, cannot change the membership twice.
    pub fn membership_change_refused_before_proposing(&self) -> bool {
        matches!(
            self.wire_error(),
            Some(WireError::Unhealthy | WireError::MemberNotEnoughStarted)
        )
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(Box::new(status))
    }
}

/// True when `status` says the connection to the server was never made, so
/// the request was not sent: any request, a write included, may be retried
/// on another endpoint or route. Decided from the error's `source()` chain:
/// an I/O error that only `connect(2)` gives (refused, unreachable), never
/// from the message text. A connection that broke after it was made (reset,
/// closed, timed out) is not this: the request may have been delivered.
pub fn never_reached_server(status: &Status) -> bool {
    if status.code() != Code::Unavailable || WireError::from_status(status).is_some() {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            );
        }
        source = error.source();
    }
    false
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

    use keel_api::etcdserverpb::kv_client::KvClient;
    use keel_api::etcdserverpb::RangeRequest;

    async fn range_on(port: u16) -> Status {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_lazy();
        KvClient::new(channel)
            .range(RangeRequest::default())
            .await
            .expect_err("nothing serves this port")
    }

    #[tokio::test]
    async fn a_call_to_a_closed_port_never_reached_the_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let refused = range_on(port).await;
        assert!(never_reached_server(&refused), "{refused:?}");
        assert!(transport_failure(&refused));
    }

    #[tokio::test]
    async fn a_connection_closed_after_it_was_made_may_have_reached_the_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let closer = tokio::spawn(async move {
            // Accept, read what the client sends, then hang up without answering.
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
        });
        let closed = range_on(port).await;
        let _ = closer.await;
        assert!(!never_reached_server(&closed), "{closed:?}");
        assert!(transport_failure(&closed));
    }

    #[test]
    fn errors_a_server_answered_or_whose_text_looks_like_a_refusal_are_not_unsent() {
        let no_leader = WireError::NoLeader.to_status();
        assert!(!never_reached_server(&no_leader));
        assert!(!transport_failure(&no_leader));
        // The text alone proves nothing: only the error chain counts.
        let text_only = Status::unavailable("error trying to connect: tcp connect error: Connection refused");
        assert!(!never_reached_server(&text_only));
    }

    #[test]
    fn a_call_past_its_timeout_reads_as_grpc_gos_deadline_text() {
        let timeout = ClientError::Timeout(std::time::Duration::from_millis(1500));
        assert_eq!(
            timeout.to_string(),
            "context deadline exceeded (no answer within 1.5s)"
        );
    }
}
