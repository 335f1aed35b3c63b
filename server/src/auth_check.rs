//! Who makes a client request and what it may do, as etcd decides it: while
//! auth is enabled, a request names its user by a token in the gRPC
//! metadata `token` (a simple token, or a JWT with `--auth-token jwt,...`); a request with no token is made by the empty user
//! (etcd's "user name is empty"), an unknown or expired token is refused
//! ("invalid auth token"). Checks read the replicated auth store; a write
//! carries the auth revision its check read (`Caller::checked_revision`),
//! and applying refuses it if the store changed since (`keel-raft`'s
//! apply.rs), so no write passes on a revoked permission.

use keel_api::etcdserverpb::{request_op, DeleteRangeRequest, PutRequest, TxnRequest};
use keel_api::{WireError, GATEWAY_TOKEN_METADATA_KEY, TOKEN_METADATA_KEY};
use keel_auth::{Access, AuthError};
use keel_node::tls_accept::AcceptedConnectInfo;
use tonic::Status;

use crate::context::MemberContext;

/// The caller of one request, with the auth revision its checks read.
#[derive(Debug, Clone)]
pub struct Caller {
    enabled: bool,
    user: String,
    auth_revision: u64,
}

/// The token `request` carries, if any: its `token` metadata, else what the
/// HTTP/JSON gateway passed on from an `Authorization` header (as etcd reads
/// them); a token that is not text is invalid.
pub fn caller_token<T>(request: &tonic::Request<T>) -> Option<Result<&str, WireError>> {
    let metadata = request.metadata();
    let token = metadata
        .get(TOKEN_METADATA_KEY)
        .or_else(|| metadata.get(GATEWAY_TOKEN_METADATA_KEY))?;
    Some(token.to_str().map_err(|_| WireError::InvalidAuthToken))
}

impl Caller {
    /// The caller of `request`: the user its token names or, with no
    /// token, the common name of the client certificate its connection's
    /// TLS handshake verified (a client port asks for one only with
    /// `--client-cert-auth`), as etcd decides it.
    pub fn of<T>(context: &MemberContext, request: &tonic::Request<T>) -> Result<Caller, Status> {
        let (enabled, auth_revision) = context
            .node
            .state()
            .with_auth(|auth| (auth.is_enabled(), auth.revision()));
        if !enabled {
            return Ok(Caller {
                enabled,
                user: String::new(),
                auth_revision,
            });
        }
        let user = match caller_token(request) {
            None => request
                .extensions()
                .get::<AcceptedConnectInfo>()
                .and_then(|connection| connection.client_common_name.clone())
                .unwrap_or_default(),
            Some(token) => {
                let token = token?;
                match &context.jwt_tokens {
                    None => context
                        .node
                        .state()
                        .tokens()
                        .user_of(token)
                        .ok_or(WireError::InvalidAuthToken)?,
                    Some(jwt) => {
                        let claims = jwt.verify(token).ok_or(WireError::InvalidAuthToken)?;
                        // See keel_auth::jwt: no token outlives an auth change.
                        if claims.revision < auth_revision {
                            return Err(WireError::AuthOldRevision.into());
                        }
                        claims.user
                    }
                }
            }
        };
        Ok(Caller {
            enabled,
            user,
            auth_revision,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The auth revision this caller's checks read.
    pub fn auth_revision(&self) -> u64 {
        self.auth_revision
    }

    pub fn auth_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision a write proposed under this caller's checks
    /// carries (see the file comment); 0, checked by nobody, while auth is
    /// disabled (etcd sends no auth info then), so that auth changes made
    /// before enabling it never refuse writes.
    pub fn checked_revision(&self) -> u64 {
        if self.enabled {
            self.auth_revision
        } else {
            0
        }
    }

    /// May the caller do `access` on [key, range_end)?
    pub fn check(
        &self,
        context: &MemberContext,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Status> {
        if !self.enabled {
            return Ok(());
        }
        if self.user.is_empty() {
            return Err(WireError::UserEmpty.into());
        }
        context
            .node
            .state()
            .with_auth(|auth| auth.check(&self.user, access, key, range_end))
            .map_err(auth_status)
    }

    /// Requests only root may make while auth is enabled.
    pub fn check_admin(&self, context: &MemberContext) -> Result<(), Status> {
        if !self.enabled {
            return Ok(());
        }
        if self.user.is_empty() {
            return Err(WireError::UserEmpty.into());
        }
        context
            .node
            .state()
            .with_auth(|auth| {
                if auth.user(&self.user).is_none() {
                    Err(AuthError::UserNotFound)
                } else {
                    auth.check_admin(&self.user)
                }
            })
            .map_err(auth_status)
    }
}

impl Caller {
    /// etcd 3.4's gate on Defragment, Snapshot, Hash and HashKV: root only
    /// while auth is enabled, refused with the auth store's plain errors.
    pub fn check_maintenance(&self, context: &MemberContext) -> Result<(), Status> {
        if !self.enabled {
            return Ok(());
        }
        if self.user.is_empty() {
            return Err(WireError::MaintenanceUserEmpty.into());
        }
        context.node.state().with_auth(|auth| {
            if auth.user(&self.user).is_none() {
                Err(WireError::MaintenanceUserNotFound.into())
            } else if auth.is_root(&self.user) {
                Ok(())
            } else {
                Err(WireError::MaintenancePermissionDenied.into())
            }
        })
    }
}

/// etcd's status for an auth refusal.
pub fn auth_status(error: AuthError) -> Status {
    error.wire().into()
}

/// etcd's checks of a Put: write on the key, and read when it asks for the
/// previous value.
pub fn check_put(caller: &Caller, context: &MemberContext, put: &PutRequest) -> Result<(), Status> {
    caller.check(context, Access::Write, &put.key, b"")?;
    if put.prev_kv {
        caller.check(context, Access::Read, &put.key, b"")?;
    }
    Ok(())
}

/// etcd's checks of a DeleteRange: write on the range, and read when it
/// asks for the previous values.
pub fn check_delete(
    caller: &Caller,
    context: &MemberContext,
    delete: &DeleteRangeRequest,
) -> Result<(), Status> {
    caller.check(context, Access::Write, &delete.key, &delete.range_end)?;
    if delete.prev_kv {
        caller.check(context, Access::Read, &delete.key, &delete.range_end)?;
    }
    Ok(())
}

/// etcd's checks of a Txn: read on every compared range, and each
/// operation of both branches checked as its own request would be.
pub fn check_txn(caller: &Caller, context: &MemberContext, txn: &TxnRequest) -> Result<(), Status> {
    if !caller.auth_enabled() {
        return Ok(());
    }
    for compare in &txn.compare {
        caller.check(context, Access::Read, &compare.key, &compare.range_end)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                caller.check(context, Access::Read, &range.key, &range.range_end)?
            }
            Some(request_op::Request::RequestPut(put)) => check_put(caller, context, put)?,
            Some(request_op::Request::RequestDeleteRange(delete)) => check_delete(caller, context, delete)?,
            Some(request_op::Request::RequestTxn(inner)) => check_txn(caller, context, inner)?,
            None => {}
        }
    }
    Ok(())
}
