//! The replicated auth store: the enabled flag, the auth revision, users
//! and roles. Every member applies the same changes in the same order, so
//! every member holds the same store; it is kept as one storage record
//! ([`AuthStore::to_record`]) in the state machine's metadata and so travels
//! in snapshots.
//!
//! Invariants: every successful change bumps the auth revision by one (a
//! refused change leaves the store untouched); while auth is enabled the
//! user `root` exists and holds the role `root`; a user's roles and a
//! role's permissions are kept sorted and without duplicates, so two
//! members' records are byte-equal.

use std::collections::{BTreeMap, BTreeSet};

use keel_api::authpb::{Permission, Role, User, UserAddOptions};
use keel_api::keelstoragepb::AuthStoreRecord;

use crate::permission::{covers, Access};
use crate::{AuthError, ROOT};

/// One user: its bcrypt password hash (none for a user added with
/// `no_password`, who can only authenticate by client certificate) and
/// its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, UserRecord>,
    roles: BTreeMap<String, Vec<Permission>>,
}

fn perm_order(a: &Permission, b: &Permission) -> std::cmp::Ordering {
    (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end))
}

impl AuthStore {
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: how many changes the store has had.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&UserRecord> {
        self.users.get(name)
    }

    /// The user names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// The role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// A role's permissions, sorted by key then range end.
    pub fn role_permissions(&self, role: &str) -> Result<Vec<Permission>, AuthError> {
        self.roles.get(role).cloned().ok_or(AuthError::RoleNotFound)
    }

    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|record| record.roles.contains(ROOT))
    }

    /// May `user` do `access` on [key, range_end)? Auth disabled allows all;
    /// the root role allows all; otherwise the union of the user's roles'
    /// permissions must cover the range.
    pub fn check(&self, user: &str, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let record = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if record.roles.contains(ROOT) {
            return Ok(());
        }
        let permissions: Vec<Permission> = record
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect();
        if covers(&permissions, access, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Requests that only root may make (etcd's admin permission): allowed
    /// for anybody while auth is disabled.
    pub fn check_admin(&self, user: &str) -> Result<(), AuthError> {
        if !self.enabled || self.is_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        self.bump();
        Ok(())
    }

    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.bump();
        }
    }

    /// Adds a user; `password_hash` is already hashed (None: no password).
    pub fn user_add(&mut self, name: &str, password_hash: Option<String>) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        self.users.insert(
            name.to_string(),
            UserRecord {
                password_hash,
                roles: BTreeSet::new(),
            },
        );
        self.bump();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.bump();
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, password_hash: String) -> Result<(), AuthError> {
        let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
        user.password_hash = Some(password_hash);
        self.bump();
        Ok(())
    }

    /// Grants `role` to `user`; granting a role the user has changes
    /// nothing (etcd ignores it too).
    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        if !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let record = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
        if record.roles.insert(role.to_string()) {
            self.bump();
        }
        Ok(())
    }

    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && user == ROOT && role == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let record = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
        if !record.roles.remove(role) {
            return Err(AuthError::RoleNotGranted);
        }
        self.bump();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_string(), Vec::new());
        self.bump();
        Ok(())
    }

    /// Deletes a role and takes it from every user that has it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        self.bump();
        Ok(())
    }

    /// Grants a permission; one on the same [key, range_end) is replaced.
    pub fn role_grant_permission(&mut self, role: &str, permission: Permission) -> Result<(), AuthError> {
        let permissions = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        match permissions.binary_search_by(|p| perm_order(p, &permission)) {
            Ok(at) => permissions[at] = permission,
            Err(at) => permissions.insert(at, permission),
        }
        self.bump();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let permissions = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
        let before = permissions.len();
        permissions.retain(|p| !(p.key == key && p.range_end == range_end));
        if permissions.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.bump();
        Ok(())
    }

    /// The store as its storage record.
    pub fn to_record(&self) -> AuthStoreRecord {
        AuthStoreRecord {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .iter()
                .map(|(name, user)| User {
                    name: name.as_bytes().to_vec(),
                    password: user.password_hash.clone().unwrap_or_default().into_bytes(),
                    roles: user.roles.iter().cloned().collect(),
                    options: Some(UserAddOptions {
                        no_password: user.password_hash.is_none(),
                    }),
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, permissions)| Role {
                    name: name.as_bytes().to_vec(),
                    key_permission: permissions.clone(),
                })
                .collect(),
        }
    }

    /// The store a storage record describes (names that are not UTF-8 are
    /// kept lossily: keel only ever writes UTF-8 names).
    pub fn from_record(record: AuthStoreRecord) -> AuthStore {
        let users = record
            .users
            .into_iter()
            .map(|user| {
                let no_password = user.options.is_some_and(|o| o.no_password);
                let password_hash =
                    (!no_password).then(|| String::from_utf8_lossy(&user.password).into_owned());
                (
                    String::from_utf8_lossy(&user.name).into_owned(),
                    UserRecord {
                        password_hash,
                        roles: user.roles.into_iter().collect(),
                    },
                )
            })
            .collect();
        let roles = record
            .roles
            .into_iter()
            .map(|role| {
                let mut permissions = role.key_permission;
                permissions.sort_by(perm_order);
                (String::from_utf8_lossy(&role.name).into_owned(), permissions)
            })
            .collect();
        AuthStore {
            enabled: record.enabled,
            revision: record.revision,
            users,
            roles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::authpb::permission::Type as PermType;

    fn store_with_root() -> AuthStore {
        let mut store = AuthStore::default();
        store.user_add(ROOT, Some("h".into())).unwrap();
        store.role_add(ROOT).unwrap();
        store.user_grant_role(ROOT, ROOT).unwrap();
        store
    }

    fn perm(perm_type: PermType, key: &str, range_end: &str) -> Permission {
        Permission {
            perm_type: perm_type as i32,
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    #[test]
    fn enable_needs_root_with_the_root_role() {
        let mut store = AuthStore::default();
        assert_eq!(store.enable(), Err(AuthError::RootUserNotExist));
        store.user_add(ROOT, None).unwrap();
        assert_eq!(store.enable(), Err(AuthError::RootRoleNotExist));
        store.role_add(ROOT).unwrap();
        store.user_grant_role(ROOT, ROOT).unwrap();
        let before = store.revision();
        store.enable().unwrap();
        assert!(store.is_enabled());
        assert_eq!(store.revision(), before + 1);
        assert_eq!(store.user_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            store.user_revoke_role(ROOT, ROOT),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(store.role_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
    }

    #[test]
    fn every_change_bumps_the_revision_and_a_refusal_changes_nothing() {
        let mut store = store_with_root();
        assert_eq!(store.revision(), 3);
        assert_eq!(store.user_add(ROOT, None), Err(AuthError::UserAlreadyExist));
        assert_eq!(store.user_add("", None), Err(AuthError::UserEmpty));
        assert_eq!(store.role_add(""), Err(AuthError::RoleEmpty));
        assert_eq!(
            store.user_grant_role("nobody", ROOT),
            Err(AuthError::UserNotFound)
        );
        assert_eq!(store.user_grant_role(ROOT, "nope"), Err(AuthError::RoleNotFound));
        assert_eq!(
            store.user_revoke_role(ROOT, "nope"),
            Err(AuthError::RoleNotGranted)
        );
        assert_eq!(
            store.role_revoke_permission(ROOT, b"a", b""),
            Err(AuthError::PermissionNotGranted)
        );
        assert_eq!(store.revision(), 3, "refusals change nothing");
        store.user_grant_role(ROOT, ROOT).unwrap();
        assert_eq!(store.revision(), 3, "granting a held role changes nothing");
        store.role_add("r").unwrap();
        store
            .role_grant_permission("r", perm(PermType::Read, "a", ""))
            .unwrap();
        assert_eq!(store.revision(), 5);
    }

    #[test]
    fn permissions_follow_roles_and_root_allows_everything() {
        let mut store = store_with_root();
        store.user_add("alice", Some("h".into())).unwrap();
        store.role_add("reader").unwrap();
        store
            .role_grant_permission("reader", perm(PermType::Read, "app/", "app0"))
            .unwrap();
        store.user_grant_role("alice", "reader").unwrap();
        // Disabled: everything is allowed.
        assert!(store.check("alice", Access::Write, b"x", b"").is_ok());
        store.enable().unwrap();
        assert!(store.check("alice", Access::Read, b"app/k", b"").is_ok());
        assert_eq!(
            store.check("alice", Access::Write, b"app/k", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            store.check("alice", Access::Read, b"other", b""),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            store.check("ghost", Access::Read, b"app/k", b""),
            Err(AuthError::PermissionDenied)
        );
        assert!(store.check(ROOT, Access::Write, b"", b"\0").is_ok());
        assert_eq!(store.check_admin("alice"), Err(AuthError::PermissionDenied));
        assert!(store.check_admin(ROOT).is_ok());
        // Granting the same range again replaces its type.
        store
            .role_grant_permission("reader", perm(PermType::Readwrite, "app/", "app0"))
            .unwrap();
        assert_eq!(store.role_permissions("reader").unwrap().len(), 1);
        assert!(store.check("alice", Access::Write, b"app/k", b"").is_ok());
        // Deleting the role takes it from alice.
        store.role_delete("reader").unwrap();
        assert!(store.user("alice").unwrap().roles.is_empty());
        assert_eq!(
            store.check("alice", Access::Read, b"app/k", b""),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn the_record_round_trips() {
        let mut store = store_with_root();
        store.user_add("nopass", None).unwrap();
        store.role_add("r").unwrap();
        store
            .role_grant_permission("r", perm(PermType::Write, "b", "c"))
            .unwrap();
        store
            .role_grant_permission("r", perm(PermType::Read, "a", ""))
            .unwrap();
        store.user_grant_role("nopass", "r").unwrap();
        store.enable().unwrap();
        let back = AuthStore::from_record(store.to_record());
        assert_eq!(back, store);
        assert_eq!(back.user("nopass").unwrap().password_hash, None);
    }
}
