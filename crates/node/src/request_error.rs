//! How a member's client requests (writes, linearizable reads) fail, and how
//! those failures cross the peer protocol.
//!
//! Invariant: a member that does not lead refuses a peer's request before
//! acting on it with a typed refusal (status metadata `keel-refused:
//! not-leader`, never recognised by its text), and only that refusal or a
//! connection that was never made lets a follower retry a forwarded write
//! (see `write_path.rs`).

use keel_api::WireError;
use tonic::Status;

use crate::network::PeerUnavailable;

/// Why a write or a linearizable read was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// One of etcd's errors, with etcd's exact text and code.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// This member does not lead and refused a peer's request before acting
    /// on it (only requests forwarded by followers get this answer).
    #[error("keel: this member is not the leader")]
    RefusedNotLeader,
    /// The leader answered a forwarded request with a status keel has no
    /// name for; it is passed on unchanged.
    #[error("the leader answered: {}", .0.message())]
    FromLeader(Box<Status>),
    /// The applied state could not be read (the disk failed).
    #[error("etcdserver: {0}")]
    Keyspace(std::sync::Arc<keel_mvcc::MvccError>),
    /// The write path answered with a response of another kind than the
    /// request's (a bug, or a member of another version).
    #[error("etcdserver: unexpected response kind for the request")]
    UnexpectedResponse,
    /// A member's peer URL cannot be dialed.
    #[error(transparent)]
    InvalidPeerUrl(#[from] PeerUnavailable),
    /// A membership change request that names no change.
    #[error("keel: the membership change request names no change")]
    EmptyMembershipChange,
    /// Another membership change is not committed yet (one at a time).
    #[error("keel: another membership change is in progress; try again once it is done")]
    MembershipChangeInProgress,
    /// openraft refused the membership change before proposing it.
    #[error("keel: membership change refused: {0}")]
    MembershipChangeRefused(String),
}

impl RequestError {
    /// A peer's status for a forwarded request, named where keel can name it.
    pub(crate) fn from_peer_status(status: Status) -> RequestError {
        match WireError::from_status(&status) {
            Some(wire) => RequestError::Wire(wire),
            None if is_not_leader_refusal(&status) => RequestError::RefusedNotLeader,
            None => RequestError::FromLeader(Box::new(status)),
        }
    }
}

/// The one translation of the node's request errors into gRPC statuses.
impl From<RequestError> for Status {
    fn from(error: RequestError) -> Status {
        match error {
            RequestError::Wire(wire) => wire.into(),
            RequestError::RefusedNotLeader => {
                let mut refusal = Status::failed_precondition(RequestError::RefusedNotLeader.to_string());
                refusal.metadata_mut().insert(
                    REFUSED_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static(REFUSED_NOT_LEADER),
                );
                refusal
            }
            RequestError::FromLeader(status) => *status,
            RequestError::InvalidPeerUrl(invalid) => Status::internal(invalid.to_string()),
            error @ (RequestError::Keyspace(_) | RequestError::UnexpectedResponse) => {
                Status::internal(error.to_string())
            }
            error @ RequestError::EmptyMembershipChange => Status::invalid_argument(error.to_string()),
            error @ (RequestError::MembershipChangeInProgress | RequestError::MembershipChangeRefused(_)) => {
                Status::failed_precondition(error.to_string())
            }
        }
    }
}

/// The metadata key (and value) that marks a not-leader refusal, so the
/// follower recognises it by a field, not by its text.
const REFUSED_METADATA_KEY: &str = "keel-refused";
const REFUSED_NOT_LEADER: &str = "not-leader";

const REFUSED_MEMBER_REMOVED: &str = "member-removed";

/// A peer's refusal of a message from `sender`, whom the cluster removed.
pub(crate) fn member_removed_refusal(sender: u64) -> Status {
    let mut refusal =
        Status::failed_precondition(format!("keel: member {sender:x} was removed from the cluster"));
    refusal.metadata_mut().insert(
        REFUSED_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(REFUSED_MEMBER_REMOVED),
    );
    refusal
}

/// True when `status` says the cluster removed the member that sent the message.
pub(crate) fn is_member_removed_refusal(status: &Status) -> bool {
    status
        .metadata()
        .get(REFUSED_METADATA_KEY)
        .is_some_and(|value| value == REFUSED_MEMBER_REMOVED)
}

/// True when `status` is a peer's refusal before acting: it does not lead.
pub(crate) fn is_not_leader_refusal(status: &Status) -> bool {
    status
        .metadata()
        .get(REFUSED_METADATA_KEY)
        .is_some_and(|value| value == REFUSED_NOT_LEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_leader_refusal_survives_the_trip_through_a_status() {
        let status = Status::from(RequestError::RefusedNotLeader);
        assert!(is_not_leader_refusal(&status));
        assert!(matches!(
            RequestError::from_peer_status(status),
            RequestError::RefusedNotLeader
        ));
    }

    #[test]
    fn the_same_text_without_the_marker_is_no_refusal() {
        let status = Status::failed_precondition(RequestError::RefusedNotLeader.to_string());
        assert!(!is_not_leader_refusal(&status));
        assert!(matches!(
            RequestError::from_peer_status(status),
            RequestError::FromLeader(_)
        ));
    }

    #[test]
    fn a_removal_refusal_is_recognised_by_its_marker_alone() {
        let status = member_removed_refusal(0xabc);
        assert!(is_member_removed_refusal(&status));
        assert!(!is_not_leader_refusal(&status));
        let same_text = Status::failed_precondition(status.message().to_string());
        assert!(!is_member_removed_refusal(&same_text));
    }

    #[test]
    fn etcd_errors_from_the_leader_keep_their_name() {
        let status = Status::from(WireError::LeaseNotFound);
        assert!(matches!(
            RequestError::from_peer_status(status),
            RequestError::Wire(WireError::LeaseNotFound)
        ));
    }
}
