//! etcd's client-visible errors, defined once with etcd's exact strings and
//! gRPC codes. Clients match on these texts (clientv3's `rpctypes`), so they
//! must never be reworded. Every other layer maps its domain errors onto
//! [`WireError`]; only this file knows the strings.

use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A write that needs space while the NOSPACE alarm is raised, or that
    /// would take the keyspace over `--quota-backend-bytes`.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// A membership change that would leave fewer started voters than a
    /// quorum of the new configuration.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// A membership change while a voter is not connected to the leader.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// A MoveLeader sent to a member that does not lead.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// A MoveLeader naming a member that is not a voter of the cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// A MoveLeader whose transferee did not take over in time. etcd 3.4's
    /// gRPC layer has no status for it and sends its text as Unknown.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimedOut,
    /// A Proclaim by a candidate that does not lead (etcd's Go client's
    /// `ErrElectionNotLeader`, answered by etcd's v3election service).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// A Leader call on an election nobody leads (`ErrElectionNoLeader`).
    #[error("election: no leader")]
    ElectionNoLeader,
    /// A Proclaim or Resign without its `leader` field (etcd's
    /// v3election `ErrMissingLeaderKey`).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// AuthEnable while no user named root exists.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while the root user lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An auth request without a user name, or a request without
    /// credentials while auth is enabled.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// A wrong user name or password at Authenticate.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that no member assigned, or one that expired or whose user
    /// was deleted or changed its password.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would take the root role away from root while auth
    /// is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A write checked against an auth revision that changed before it
    /// was applied.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd 3.4's maintenance gate (Defragment, Snapshot, Hash, HashKV)
    /// returns its auth store's plain errors, which gRPC sends as Unknown.
    #[error("auth: permission denied")]
    MaintenancePermissionDenied,
    #[error("auth: user name is empty")]
    MaintenanceUserEmpty,
    #[error("auth: user not found")]
    MaintenanceUserNotFound,
}

impl WireError {
    pub fn code(self) -> Code {
        match self {
            WireError::EmptyKey
            | WireError::KeyNotFound
            | WireError::ValueProvided
            | WireError::LeaseProvided
            | WireError::TooManyOps
            | WireError::DuplicateKey
            | WireError::RequestTooLarge
            | WireError::MemberBadUrls
            | WireError::UserEmpty
            | WireError::RoleEmpty
            | WireError::AuthFailed
            | WireError::InvalidAuthMgmt
            | WireError::AuthOldRevision => Code::InvalidArgument,
            WireError::RootUserNotExist
            | WireError::RootRoleNotExist
            | WireError::UserAlreadyExist
            | WireError::UserNotFound
            | WireError::RoleAlreadyExist
            | WireError::RoleNotFound
            | WireError::RoleNotGranted
            | WireError::PermissionNotGranted
            | WireError::AuthNotEnabled => Code::FailedPrecondition,
            WireError::PermissionDenied => Code::PermissionDenied,
            WireError::InvalidAuthToken => Code::Unauthenticated,
            WireError::Compacted | WireError::FutureRevision | WireError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            WireError::NoSpace => Code::ResourceExhausted,
            WireError::LeaseExists
            | WireError::NotLeader
            | WireError::BadLeaderTransferee
            | WireError::MemberExists
            | WireError::PeerUrlExists
            | WireError::MemberNotEnoughStarted
            | WireError::MemberNotLearner
            | WireError::LearnerNotReady
            | WireError::TooManyLearners => Code::FailedPrecondition,
            WireError::LeaseNotFound | WireError::MemberNotFound => Code::NotFound,
            WireError::NoLeader
            | WireError::LeaderChanged
            | WireError::Timeout
            | WireError::Stopped
            | WireError::Unhealthy => Code::Unavailable,
            // etcd's v3election service returns these as plain Go errors,
            // which gRPC sends as Unknown, and so does etcd's MoveLeader
            // for its timeout (no entry in v3rpc's error table).
            WireError::ElectionNotLeader
            | WireError::ElectionNoLeader
            | WireError::MissingLeaderKey
            | WireError::LeaderTransferTimedOut
            | WireError::MaintenancePermissionDenied
            | WireError::MaintenanceUserEmpty
            | WireError::MaintenanceUserNotFound => Code::Unknown,
        }
    }

    pub fn to_status(self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    /// Recognises a status produced by [`WireError::to_status`] (for example
    /// one relayed by the leader to a follower, or received by a client).
    pub fn from_status(status: &Status) -> Option<WireError> {
        ALL.iter()
            .copied()
            .find(|error| error.code() == status.code() && status.message() == error.to_string())
    }
}

const ALL: [WireError; 51] = [
    WireError::EmptyKey,
    WireError::KeyNotFound,
    WireError::ValueProvided,
    WireError::LeaseProvided,
    WireError::TooManyOps,
    WireError::DuplicateKey,
    WireError::RequestTooLarge,
    WireError::Compacted,
    WireError::FutureRevision,
    WireError::NoSpace,
    WireError::LeaseNotFound,
    WireError::LeaseExists,
    WireError::LeaseTtlTooLarge,
    WireError::NoLeader,
    WireError::LeaderChanged,
    WireError::Timeout,
    WireError::Stopped,
    WireError::MemberNotFound,
    WireError::MemberExists,
    WireError::PeerUrlExists,
    WireError::MemberNotEnoughStarted,
    WireError::MemberBadUrls,
    WireError::MemberNotLearner,
    WireError::LearnerNotReady,
    WireError::TooManyLearners,
    WireError::Unhealthy,
    WireError::NotLeader,
    WireError::BadLeaderTransferee,
    WireError::LeaderTransferTimedOut,
    WireError::ElectionNotLeader,
    WireError::ElectionNoLeader,
    WireError::MissingLeaderKey,
    WireError::RootUserNotExist,
    WireError::RootRoleNotExist,
    WireError::UserAlreadyExist,
    WireError::UserEmpty,
    WireError::UserNotFound,
    WireError::RoleAlreadyExist,
    WireError::RoleNotFound,
    WireError::RoleEmpty,
    WireError::AuthFailed,
    WireError::PermissionDenied,
    WireError::RoleNotGranted,
    WireError::PermissionNotGranted,
    WireError::AuthNotEnabled,
    WireError::InvalidAuthToken,
    WireError::InvalidAuthMgmt,
    WireError::AuthOldRevision,
    WireError::MaintenancePermissionDenied,
    WireError::MaintenanceUserEmpty,
    WireError::MaintenanceUserNotFound,
];

/// Why a watch create request is refused: etcd answers it in the
/// response's `cancel_reason` (the response has `created` and `canceled`
/// both set), not with a gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefusal {
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId,
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// The caller may not read the watched range: etcd puts its gRPC
    /// status's Go error text in the cancel reason.
    #[error("rpc error: code = PermissionDenied desc = etcdserver: permission denied")]
    PermissionDenied,
}

impl From<WireError> for Status {
    fn from(error: WireError) -> Status {
        error.to_status()
    }
}

impl From<crate::keelpb::ApplyErrorKind> for WireError {
    fn from(kind: crate::keelpb::ApplyErrorKind) -> WireError {
        use crate::keelpb::ApplyErrorKind;
        match kind {
            ApplyErrorKind::Compacted => WireError::Compacted,
            ApplyErrorKind::FutureRevision => WireError::FutureRevision,
            ApplyErrorKind::KeyNotFound => WireError::KeyNotFound,
            ApplyErrorKind::LeaseNotFound => WireError::LeaseNotFound,
            ApplyErrorKind::LeaseExists => WireError::LeaseExists,
            ApplyErrorKind::NoSpace => WireError::NoSpace,
            ApplyErrorKind::AuthOldRevision => WireError::AuthOldRevision,
            ApplyErrorKind::RootUserNotExist => WireError::RootUserNotExist,
            ApplyErrorKind::RootRoleNotExist => WireError::RootRoleNotExist,
            ApplyErrorKind::UserAlreadyExist => WireError::UserAlreadyExist,
            ApplyErrorKind::UserEmpty => WireError::UserEmpty,
            ApplyErrorKind::UserNotFound => WireError::UserNotFound,
            ApplyErrorKind::RoleAlreadyExist => WireError::RoleAlreadyExist,
            ApplyErrorKind::RoleNotFound => WireError::RoleNotFound,
            ApplyErrorKind::RoleEmpty => WireError::RoleEmpty,
            ApplyErrorKind::AuthFailed => WireError::AuthFailed,
            ApplyErrorKind::PermissionDenied => WireError::PermissionDenied,
            ApplyErrorKind::RoleNotGranted => WireError::RoleNotGranted,
            ApplyErrorKind::PermissionNotGranted => WireError::PermissionNotGranted,
            ApplyErrorKind::AuthNotEnabled => WireError::AuthNotEnabled,
            ApplyErrorKind::InvalidAuthMgmt => WireError::InvalidAuthMgmt,
            ApplyErrorKind::InvalidAuthToken => WireError::InvalidAuthToken,
            // An unknown kind can only come from a newer member; the closest
            // honest answer is that the request did not complete here.
            ApplyErrorKind::ApplyErrorUnspecified => WireError::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_error_round_trips_through_its_status() {
        for error in ALL {
            assert_eq!(WireError::from_status(&error.to_status()), Some(error));
        }
    }

    #[test]
    fn compacted_uses_etcds_exact_text_and_code() {
        let status = WireError::Compacted.to_status();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }
}
