//! keel's etcd v3 auth state as a library (`keel-auth`), with no gRPC and no
//! storage of its own: the replicated [`AuthStore`] (enabled flag, auth
//! revision, users with bcrypt password hashes and roles, roles with
//! key-range permissions), the permission decision ([`permission`]),
//! password hashing ([`password`]), the in-memory simple tokens
//! ([`tokens`]) and the signed JWT tokens ([`jwt`]). The state machine owns one `AuthStore` and applies the
//! replicated changes to it; the server asks it for decisions.

pub mod jwt;
pub mod password;
pub mod permission;
pub mod store;
pub mod tokens;

pub use permission::Access;
pub use store::{AuthStore, UserRecord};
pub use tokens::TokenTable;

use keel_api::WireError;

/// The user and the role with every permission (etcd's `root`).
pub const ROOT: &str = "root";

/// Why an auth operation or a permission check is refused. Each maps onto
/// etcd's error ([`AuthError::wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user not found")]
    UserNotFound,
    #[error("role already exists")]
    RoleAlreadyExist,
    #[error("role not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("wrong user name or password")]
    AuthFailed,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role not granted to the user")]
    RoleNotGranted,
    #[error("permission not granted to the role")]
    PermissionNotGranted,
    #[error("auth is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("the change would leave root without the root role")]
    InvalidAuthMgmt,
    #[error("the auth revision changed since the permission check")]
    OldRevision,
    #[error("the password hash is not a bcrypt hash")]
    BadPasswordHash,
}

impl AuthError {
    /// etcd's error for this refusal.
    pub fn wire(self) -> WireError {
        match self {
            AuthError::RootUserNotExist => WireError::RootUserNotExist,
            AuthError::RootRoleNotExist => WireError::RootRoleNotExist,
            AuthError::UserAlreadyExist => WireError::UserAlreadyExist,
            AuthError::UserEmpty => WireError::UserEmpty,
            AuthError::UserNotFound => WireError::UserNotFound,
            AuthError::RoleAlreadyExist => WireError::RoleAlreadyExist,
            AuthError::RoleNotFound => WireError::RoleNotFound,
            AuthError::RoleEmpty => WireError::RoleEmpty,
            AuthError::AuthFailed | AuthError::BadPasswordHash => WireError::AuthFailed,
            AuthError::PermissionDenied => WireError::PermissionDenied,
            AuthError::RoleNotGranted => WireError::RoleNotGranted,
            AuthError::PermissionNotGranted => WireError::PermissionNotGranted,
            AuthError::AuthNotEnabled => WireError::AuthNotEnabled,
            AuthError::InvalidAuthToken => WireError::InvalidAuthToken,
            AuthError::InvalidAuthMgmt => WireError::InvalidAuthMgmt,
            AuthError::OldRevision => WireError::AuthOldRevision,
        }
    }
}

impl From<AuthError> for WireError {
    fn from(error: AuthError) -> WireError {
        error.wire()
    }
}
