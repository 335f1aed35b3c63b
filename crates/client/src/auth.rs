//! etcd's `Auth` service as client calls: users, roles, their permissions,
//! turning auth on and off, and its status. Every change is a write (sent
//! once, never retried where it may have been applied); the getters and
//! lists are reads. `Authenticate` itself lives in [`crate::auth_token`].

use keel_api::etcdserverpb::auth_client::AuthClient;
use keel_api::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest,
    AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleListRequest, AuthRoleListResponse, AuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest,
    AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse,
    AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};

use crate::{Client, ClientError, Retry};

/// One `Client` method per Auth RPC: name, request, response, retry rule.
macro_rules! auth_calls {
    ($($(#[$doc:meta])* $method:ident: $request:ident -> $response:ident, $retry:expr;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $method(&self, request: $request) -> Result<$response, ClientError> {
                    self.call($retry, move |channel| {
                        let request = request.clone();
                        Box::pin(async move { AuthClient::new(channel).$method(request).await })
                    })
                    .await
                }
            )*
        }
    };
}

auth_calls! {
    auth_enable: AuthEnableRequest -> AuthEnableResponse, Retry::Write;
    auth_disable: AuthDisableRequest -> AuthDisableResponse, Retry::Write;
    auth_status: AuthStatusRequest -> AuthStatusResponse, Retry::Read;
    /// Checks a user's password and answers a token (the client's own
    /// token is renewed by the client itself; this is for callers that
    /// want the answer).
    authenticate: AuthenticateRequest -> AuthenticateResponse, Retry::Write;
    user_add: AuthUserAddRequest -> AuthUserAddResponse, Retry::Write;
    user_get: AuthUserGetRequest -> AuthUserGetResponse, Retry::Read;
    user_list: AuthUserListRequest -> AuthUserListResponse, Retry::Read;
    user_delete: AuthUserDeleteRequest -> AuthUserDeleteResponse, Retry::Write;
    user_change_password: AuthUserChangePasswordRequest -> AuthUserChangePasswordResponse, Retry::Write;
    user_grant_role: AuthUserGrantRoleRequest -> AuthUserGrantRoleResponse, Retry::Write;
    user_revoke_role: AuthUserRevokeRoleRequest -> AuthUserRevokeRoleResponse, Retry::Write;
    role_add: AuthRoleAddRequest -> AuthRoleAddResponse, Retry::Write;
    role_get: AuthRoleGetRequest -> AuthRoleGetResponse, Retry::Read;
    role_list: AuthRoleListRequest -> AuthRoleListResponse, Retry::Read;
    role_delete: AuthRoleDeleteRequest -> AuthRoleDeleteResponse, Retry::Write;
    role_grant_permission: AuthRoleGrantPermissionRequest -> AuthRoleGrantPermissionResponse, Retry::Write;
    role_revoke_permission: AuthRoleRevokePermissionRequest -> AuthRoleRevokePermissionResponse, Retry::Write;
}
