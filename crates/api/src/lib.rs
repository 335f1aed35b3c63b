//! keel's wire contract: the generated etcd v3 client API (`etcdserverpb`,
//! `mvccpb`, and etcd's lock and election services `v3lockpb`,
//! `v3electionpb`), keel's peer API (`keelpb`), keel's Raft storage records
//! (`keelstoragepb`), etcd's error strings ([`wire_error`]), the
//! key-range conventions every layer shares
//! ([`key_range`]) and etcd's space cost of a write ([`space_cost`]). Everything else in keel depends on this crate.

#![allow(clippy::all)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth records (`proto/etcd/authpb/auth.proto`): users, roles and
/// key-range permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's v3lock service (`proto/etcd/v3lockpb/v3lock.proto`).
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's v3election service (`proto/etcd/v3electionpb/v3election.proto`).
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod keelpb {
    tonic::include_proto!("keelpb");

    /// How openraft logs a log entry's payload: its size, not its contents.
    impl std::fmt::Display for WriteBatch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "WriteBatch({} requests)", self.requests.len())
        }
    }

    impl write_request::Request {
        /// Whether this write changes the auth store (users, roles, their
        /// permissions, auth on or off), so bumps its revision; a token
        /// assignment does not. Exhaustive: a new kind of write must say.
        pub fn changes_auth(&self) -> bool {
            use write_request::Request::*;
            match self {
                AuthEnable(_)
                | AuthDisable(_)
                | AuthUserAdd(_)
                | AuthUserDelete(_)
                | AuthUserChangePassword(_)
                | AuthUserGrantRole(_)
                | AuthUserRevokeRole(_)
                | AuthRoleAdd(_)
                | AuthRoleDelete(_)
                | AuthRoleGrantPermission(_)
                | AuthRoleRevokePermission(_) => true,
                Put(_) | DeleteRange(_) | Txn(_) | Compaction(_) | MemberAttributes(_) | LeaseGrant(_)
                | LeaseRevoke(_) | LeaseCheckpoint(_) | Alarm(_) | AuthTokenAssign(_) => false,
            }
        }
    }
}

/// keel's Raft storage records (`proto/keel/raft_storage.proto`): what the
/// log store and the state machine keep on disk.
pub mod keelstoragepb {
    tonic::include_proto!("keelstoragepb");
}

pub mod encoded_watch;
pub mod go_format;
pub mod key_range;
pub mod member_urls;
pub mod reserving_codec;
pub mod space_cost;
pub mod wire_error;

pub use wire_error::{WatchRefusal, WireError};

/// grpc-go's text for a call whose deadline passed (its `context`
/// package's error), which etcd and etcdctl print for `DeadlineExceeded`.
pub const DEADLINE_EXCEEDED_TEXT: &str = "context deadline exceeded";

/// The etcd API version keel reports in `Maintenance.Status` (clients such as
/// etcdctl and Kubernetes compare it against their minimum).
pub const REPORTED_ETCD_VERSION: &str = "3.5.0";

/// The gRPC metadata key etcd's clients send their auth token under.
pub const TOKEN_METADATA_KEY: &str = "token";

/// The metadata key a token arrives under through the HTTP/JSON gateway
/// (its `Authorization` header); etcd reads it when `token` is absent.
pub const GATEWAY_TOKEN_METADATA_KEY: &str = "authorization";
