//! etcd's `Auth` service: users, roles, permissions, AuthEnable and
//! AuthDisable, Authenticate with simple tokens, and etcd 3.5's AuthStatus.
//! Changes go through Raft (the state machine applies them to the auth
//! store, with etcd's checks: `keel-auth`'s store.rs); passwords are hashed
//! here, before proposing, never while applying. Reads (UserGet, UserList,
//! RoleGet, RoleList) are linearized first, as etcd serves them through
//! Raft. While auth is enabled every request but Authenticate and
//! AuthStatus needs root, except a user reading itself (UserGet) or a role
//! it holds (RoleGet), as in etcd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_api::etcdserverpb::auth_server::Auth;
use keel_api::etcdserverpb::*;
use keel_api::keelpb::{write_request, write_response, AuthTokenAssign, WriteRequest};
use keel_api::WireError;
use keel_auth::password;
use tonic::{Request, Response, Status};

use crate::auth_check::{auth_status, Caller};
use crate::context::MemberContext;

pub struct AuthService {
    context: Arc<MemberContext>,
    /// Makes each simple token this member hands out unique.
    tokens_issued: AtomicU64,
}

impl AuthService {
    pub fn new(context: Arc<MemberContext>) -> Self {
        AuthService {
            context,
            tokens_issued: AtomicU64::new(0),
        }
    }

    /// Proposes one auth change under `caller`'s checks; its response.
    async fn propose(
        &self,
        caller: &Caller,
        request: write_request::Request,
    ) -> Result<write_response::Response, Status> {
        self.context
            .node
            .write(WriteRequest {
                checked_auth_revision: caller.checked_revision(),
                request: Some(request),
            })
            .await?
            .response
            .ok_or_else(|| Status::internal("etcdserver: empty write response"))
    }

    /// The caller of `request`, who must be root while auth is enabled.
    fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of(&self.context, request)?;
        caller.check_admin(&self.context)?;
        Ok(caller)
    }

    /// bcrypt, off the async runtime (it is slow on purpose).
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.context.bcrypt_cost;
        tokio::task::spawn_blocking(move || password::hash(&password, cost))
            .await
            .map_err(|_| Status::internal("etcdserver: password hashing stopped"))?
            .map_err(auth_status)
    }

    /// The hash to store for a request's password fields: a client-made
    /// bcrypt hash (etcd 3.5's hashedPassword) is checked and kept,
    /// otherwise the password is hashed here.
    async fn stored_hash(&self, password: String, hashed_password: String) -> Result<String, Status> {
        if hashed_password.is_empty() {
            self.hash(password).await
        } else {
            password::check_hash(&hashed_password).map_err(auth_status)?;
            Ok(hashed_password)
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        self.context.header_now()
    }
}

fn unexpected() -> Status {
    Status::internal("etcdserver: unexpected response kind for the request")
}

/// Proposes `$request` as the `$variant` write and answers its response
/// with a fresh header.
macro_rules! answer {
    ($self:ident, $caller:expr, $variant:ident, $request:expr) => {{
        match $self
            .propose(&$caller, write_request::Request::$variant($request))
            .await?
        {
            write_response::Response::$variant(mut response) => {
                response.header = $self.header();
                Ok(Response::new(response))
            }
            _ => Err(unexpected()),
        }
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthEnable, request.into_inner())
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthDisable, request.into_inner())
    }

    async fn auth_status(
        &self,
        _request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.context.node.linearize().await?;
        let (enabled, auth_revision) = self
            .context
            .node
            .state()
            .with_auth(|auth| (auth.is_enabled(), auth.revision()));
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let AuthenticateRequest { name, password } = request.into_inner();
        let (enabled, revision, hash) = self.context.node.state().with_auth(|auth| {
            let hash = auth.user(&name).and_then(|user| user.password_hash.clone());
            (auth.is_enabled(), auth.revision(), hash)
        });
        if !enabled {
            return Err(WireError::AuthNotEnabled.into());
        }
        // An unknown user and a user without a password fail as a wrong
        // password does: nothing tells which names exist.
        let hash = hash.unwrap_or_default();
        let matches = tokio::task::spawn_blocking(move || password::verify(&password, &hash))
            .await
            .map_err(|_| Status::internal("etcdserver: password check stopped"))?;
        if !matches {
            tracing::info!(user = %name, "authentication failed");
            return Err(WireError::AuthFailed.into());
        }
        if let Some(jwt) = &self.context.jwt_tokens {
            // Signed, not stored: nothing to replicate. A token issued at a
            // revision this member had not caught up to is refused where
            // it is used (keel_auth::jwt), and the client authenticates again.
            let token = jwt.issue(&name, revision).map_err(|error| {
                tracing::warn!(%error, "cannot issue a JWT");
                Status::failed_precondition(format!("etcdserver: {error}"))
            })?;
            return Ok(Response::new(AuthenticateResponse {
                header: self.header(),
                token,
            }));
        }
        let token =
            keel_auth::tokens::new_simple_token(self.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1);
        // Checked at the revision the password was verified at: a password
        // change or deletion in between refuses the assignment.
        let written = self
            .context
            .node
            .write(WriteRequest {
                checked_auth_revision: revision,
                request: Some(write_request::Request::AuthTokenAssign(AuthTokenAssign {
                    token: token.clone(),
                    user: name,
                })),
            })
            .await?;
        match written.response {
            Some(write_response::Response::AuthTokenAssign(_)) => Ok(Response::new(AuthenticateResponse {
                header: self.header(),
                token,
            })),
            _ => Err(unexpected()),
        }
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.admin(&request)?;
        let mut add = request.into_inner();
        if add.name.is_empty() {
            return Err(WireError::UserEmpty.into());
        }
        let no_password = add.options.as_ref().is_some_and(|o| o.no_password);
        add.hashed_password = if no_password {
            String::new()
        } else {
            self.stored_hash(std::mem::take(&mut add.password), add.hashed_password)
                .await?
        };
        add.password.clear();
        answer!(self, caller, AuthUserAdd, add)
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let name = request.into_inner().name;
        if caller.user() != name {
            caller.check_admin(&self.context)?;
        }
        self.context.node.linearize().await?;
        let roles = self
            .context
            .node
            .state()
            .with_auth(|auth| auth.user(&name).map(|user| user.roles.iter().cloned().collect()))
            .ok_or(WireError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.admin(&request)?;
        self.context.node.linearize().await?;
        let users = self.context.node.state().with_auth(|auth| auth.user_names());
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthUserDelete, request.into_inner())
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.admin(&request)?;
        let mut change = request.into_inner();
        change.hashed_password = self
            .stored_hash(std::mem::take(&mut change.password), change.hashed_password)
            .await?;
        answer!(self, caller, AuthUserChangePassword, change)
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthUserGrantRole, request.into_inner())
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthUserRevokeRole, request.into_inner())
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthRoleAdd, request.into_inner())
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = Caller::of(&self.context, &request)?;
        let role = request.into_inner().role;
        let holds_role = self.context.node.state().with_auth(|auth| {
            auth.user(caller.user())
                .is_some_and(|user| user.roles.contains(&role))
        });
        if !holds_role {
            caller.check_admin(&self.context)?;
        }
        self.context.node.linearize().await?;
        let perm = self
            .context
            .node
            .state()
            .with_auth(|auth| auth.role_permissions(&role))
            .map_err(auth_status)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.admin(&request)?;
        self.context.node.linearize().await?;
        let roles = self.context.node.state().with_auth(|auth| auth.role_names());
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthRoleDelete, request.into_inner())
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.admin(&request)?;
        let grant = request.into_inner();
        if grant.perm.is_none() {
            return Err(WireError::PermissionNotGranted.into());
        }
        answer!(self, caller, AuthRoleGrantPermission, grant)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.admin(&request)?;
        answer!(self, caller, AuthRoleRevokePermission, request.into_inner())
    }
}
