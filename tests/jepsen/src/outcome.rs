//! How a client error becomes a history outcome. The checker's soundness
//! rests on this one decision:
//!
//! Invariant: an update (write, cas, add) is recorded `fail` only when it
//! provably did not take effect; every other error is `info` (indeterminate:
//! it may have taken effect, now or later). Provably-not-applied means: the
//! connection to the member was never made (told by the error's type), or
//! the member answered with an error it only gives before proposing (etcd's
//! "no leader", a rejected request). A timeout, a broken connection,
//! "leader changed", "request timed out" and anything unrecognised are
//! indeterminate: keel answers "leader changed" whenever a write it proposed
//! was lost from its proposer's log, since another member may still commit it.
//!
//! Reads change nothing, so their failures only matter to the statistics;
//! they are classified the same way.

use keel_api::WireError;
use keel_client::{never_reached_server, ClientError};
use tonic::Code;

use crate::history::EventType;

/// A classified failure: `Fail` (definite) or `Info` (indeterminate), with
/// the error text for the history line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: EventType,
    pub error: String,
}

/// gRPC codes with which a server rejects a request without any effect
/// (validation errors, or an apply that failed as a whole).
fn rejected_before_acting(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::Unimplemented
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
    )
}

/// Classifies a failed client call.
pub fn classify(error: &ClientError) -> Failure {
    let definite = match error {
        ClientError::NoEndpoints
        | ClientError::InvalidEndpoint { .. }
        | ClientError::Tls(_)
        | ClientError::InvalidToken => true,
        ClientError::Timeout(_) | ClientError::Unreachable { .. } => false,
        ClientError::Status(status) => {
            never_reached_server(status)
                || error.wire_error() == Some(WireError::NoLeader)
                || rejected_before_acting(status.code())
        }
    };
    Failure {
        kind: if definite {
            EventType::Fail
        } else {
            EventType::Info
        },
        error: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Status;

    fn kind(error: ClientError) -> EventType {
        classify(&error).kind
    }

    #[test]
    fn only_provably_unapplied_failures_are_definite() {
        // A refusal's text alone proves nothing (a refused connection is
        // recognised from its error chain: keel_client's tests).
        let refusal_text =
            Status::unavailable("error trying to connect: tcp connect error: Connection refused");
        assert_eq!(kind(refusal_text.into()), EventType::Info);
        assert_eq!(kind(WireError::NoLeader.to_status().into()), EventType::Fail);
        assert_eq!(
            kind(Status::invalid_argument("etcdserver: key is not provided").into()),
            EventType::Fail
        );
        assert_eq!(
            kind(ClientError::Timeout(Duration::from_secs(1))),
            EventType::Info
        );
        assert_eq!(
            kind(Status::unavailable("transport error: connection reset").into()),
            EventType::Info
        );
        assert_eq!(kind(WireError::Timeout.to_status().into()), EventType::Info);
        assert_eq!(kind(WireError::LeaderChanged.to_status().into()), EventType::Info);
        assert_eq!(kind(Status::unknown("h2 protocol error").into()), EventType::Info);
        assert_eq!(kind(Status::internal("panicked").into()), EventType::Info);
    }
}
