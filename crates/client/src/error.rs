//! The client's errors, and the one place that decides whether a failed call
//! provably never reached a server (so that retrying it elsewhere cannot apply
//! a write twice), or whether a membership change was refused before it was
//! proposed (so that asking again cannot change the membership twice).

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

/// Runs the membership change `change` (member add, remove or promote), and
/// again every 200 ms while the cluster refuses it before proposing it
/// ([`ClientError::membership_change_refused_before_proposing`]: a member
/// not yet started or not yet heard from by the leader, as just after a
/// cluster starts), for at most `wait`; then returns its last answer. Any
/// other failure, one whose effect is unknown included, is returned at once.
pub async fn membership_change_when_ready<T, Change>(
    wait: Duration,
    mut change: impl FnMut() -> Change,
) -> Result<T, ClientError>
where
    Change: std::future::Future<Output = Result<T, ClientError>>,
{
    let give_up = tokio::time::Instant::now() + wait;
    loop {
        match change().await {
            Err(error)
                if error.membership_change_refused_before_proposing()
                    && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answered => return answered,
        }
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

    /// Asks `membership_change_when_ready` (20 s) a change answered with
    /// `answers[n]` on its n-th call (`None`: accepted); returns the
    /// outcome and the number of calls.
    async fn asked_until_ready(answers: &[Option<WireError>]) -> (Result<usize, ClientError>, usize) {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let outcome = membership_change_when_ready(Duration::from_secs(20), || async {
            let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match answers.get(call).or(answers.last()).copied().flatten() {
                Some(refusal) => Err(ClientError::from(refusal.to_status())),
                None => Ok(call),
            }
        })
        .await;
        (outcome, calls.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn a_membership_change_refused_because_members_are_not_yet_ready_is_asked_again() {
        let refused_twice = [
            Some(WireError::MemberNotEnoughStarted),
            Some(WireError::Unhealthy),
            None,
        ];
        let (outcome, calls) = asked_until_ready(&refused_twice).await;
        assert_eq!(outcome.ok(), Some(2));
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_membership_change_refused_for_another_reason_is_not_asked_again() {
        let (outcome, calls) = asked_until_ready(&[Some(WireError::MemberExists)]).await;
        assert_eq!(
            outcome.err().and_then(|e| e.wire_error()),
            Some(WireError::MemberExists)
        );
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_that_never_gets_ready_is_answered_with_its_refusal_after_the_wait() {
        let (outcome, calls) = asked_until_ready(&[Some(WireError::MemberNotEnoughStarted)]).await;
        assert_eq!(
            outcome.err().and_then(|e| e.wire_error()),
            Some(WireError::MemberNotEnoughStarted)
        );
        // 20 s at one call per 200 ms.
        assert!((95..=102).contains(&calls), "asked {calls} times");
    }
}
