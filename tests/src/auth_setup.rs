//! Auth set-ups the auth tests share: users with passwords, roles with
//! key-range permissions, their grants, made through keel's client before
//! auth is enabled; and a raw gRPC request carrying a token.

use keel_api::authpb::{permission::Type as PermissionType, Permission};
use keel_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest,
};
use keel_api::key_range::prefix_range_end;
use keel_client::{Client, ClientError};

/// Users, roles and what each role may do on which prefix.
pub struct AuthSetUp<'a> {
    /// (name, password); include `("root", ...)` to enable auth.
    pub users: &'a [(&'a str, &'a str)],
    /// (role, access, key prefix) for each permission; the roles named
    /// here and in `user_roles` are created.
    pub permissions: &'a [(&'a str, PermissionType, &'a [u8])],
    /// (user, role).
    pub user_roles: &'a [(&'a str, &'a str)],
}

impl AuthSetUp<'_> {
    /// Makes the users, roles, permissions and grants through `admin`.
    pub async fn apply(&self, admin: &Client) -> Result<(), ClientError> {
        for (name, password) in self.users {
            admin
                .user_add(AuthUserAddRequest {
                    name: name.to_string(),
                    password: password.to_string(),
                    ..Default::default()
                })
                .await?;
        }
        let mut roles: Vec<&str> = self.permissions.iter().map(|(role, _, _)| *role).collect();
        roles.extend(self.user_roles.iter().map(|(_, role)| *role));
        roles.sort_unstable();
        roles.dedup();
        for role in roles {
            admin
                .role_add(AuthRoleAddRequest {
                    name: role.to_string(),
                })
                .await?;
        }
        for (role, access, prefix) in self.permissions {
            admin
                .role_grant_permission(AuthRoleGrantPermissionRequest {
                    name: role.to_string(),
                    perm: Some(Permission {
                        perm_type: *access as i32,
                        key: prefix.to_vec(),
                        range_end: prefix_range_end(prefix),
                    }),
                })
                .await?;
        }
        for (user, role) in self.user_roles {
            admin
                .user_grant_role(AuthUserGrantRoleRequest {
                    user: user.to_string(),
                    role: role.to_string(),
                })
                .await?;
        }
        Ok(())
    }

    /// [`AuthSetUp::apply`], then enables auth.
    pub async fn apply_and_enable(&self, admin: &Client) -> Result<(), ClientError> {
        self.apply(admin).await?;
        admin.auth_enable(AuthEnableRequest {}).await?;
        Ok(())
    }
}

/// `message` as a request carrying `token` (gRPC metadata `token`).
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(token) = token.parse() {
        request.metadata_mut().insert(keel_api::TOKEN_METADATA_KEY, token);
    }
    request
}
