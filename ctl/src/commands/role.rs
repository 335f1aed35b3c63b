//! `role add|delete|get|list|grant-permission|revoke-permission`: their
//! arguments as etcdctl 3.4 reads them (a permission type in any case, a
//! key with an optional end, `--prefix` or `--from-key`, its messages and
//! exit 128 for bad ones) and the Auth calls.

use clap::{Args, Subcommand};
use keel_api::authpb::permission::Type as PermissionType;
use keel_api::authpb::Permission;
use keel_api::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
    AuthRoleListRequest, AuthRoleRevokePermissionRequest,
};
use keel_api::key_range::{prefix_range_end, FROM_KEY_RANGE_END};

use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::output::{perm_range_text, Output};

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Adds a new role.
    Add(RoleArgs),
    /// Deletes a role.
    Delete(RoleArgs),
    /// Gets detailed information of a role.
    Get(RoleArgs),
    /// Lists all roles.
    List(RoleArgs),
    /// Grants a key to a role.
    ///
    /// Arguments: <role name> <permission type: read|write|readwrite> <key> [endkey]
    ///
    /// Example: keelctl role grant-permission reader read /app/ --prefix
    GrantPermission(PermissionArgs),
    /// Revokes a key from a role.
    ///
    /// Arguments: <role name> <key> [endkey]
    RevokePermission(PermissionArgs),
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PermissionArgs {
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
    /// A prefix permission (every key that begins with the key).
    #[arg(long, go_bool_default = false)]
    pub prefix: bool,
    /// A permission of every key greater than or equal to the key (byte compare).
    #[arg(long = "from-key", go_bool_default = false)]
    pub from_key: bool,
}

pub async fn role(ctx: &Ctx, command: &RoleCommand) -> Result<Output, CtlError> {
    match command {
        RoleCommand::Add(args) => add(ctx, args).await,
        RoleCommand::Delete(args) => delete(ctx, args).await,
        RoleCommand::Get(args) => get(ctx, args).await,
        RoleCommand::List(args) => list(ctx, args).await,
        RoleCommand::GrantPermission(args) => grant_permission(ctx, args).await,
        RoleCommand::RevokePermission(args) => revoke_permission(ctx, args).await,
    }
}

fn one_name<'a>(args: &'a [String], command: &str) -> Result<&'a str, CtlError> {
    match args {
        [name] => Ok(name),
        _ => Err(CtlError::bad_args(format!(
            "{command} command requires role name as its argument"
        ))),
    }
}

/// `READ`, `write`, `ReadWrite`...: etcdctl takes the type in any case.
fn permission_type(text: &str) -> Result<PermissionType, CtlError> {
    PermissionType::from_str_name(&text.to_uppercase())
        .ok_or_else(|| CtlError::bad_args(format!("invalid permission type: {text}")))
}

/// The key and range end that `key [endkey]` with --prefix or --from-key name.
fn key_range(args: &PermissionArgs, rest: &[String]) -> Result<(Vec<u8>, Vec<u8>), CtlError> {
    if args.prefix && args.from_key {
        return Err(CtlError::bad_args(
            "--from-key and --prefix flags are mutually exclusive",
        ));
    }
    let key = rest.first().map(|k| k.as_bytes().to_vec()).unwrap_or_default();
    let end = rest.get(1);
    if end.is_some() && args.prefix {
        return Err(CtlError::bad_args(
            "unexpected endkey argument with --prefix flag",
        ));
    }
    if end.is_some() && args.from_key {
        return Err(CtlError::bad_args(
            "unexpected endkey argument with --from-key flag",
        ));
    }
    // An empty key with --prefix or --from-key is every key.
    let key = if key.is_empty() && (args.prefix || args.from_key) {
        FROM_KEY_RANGE_END.to_vec()
    } else {
        key
    };
    let range_end = if args.from_key || (args.prefix && key == FROM_KEY_RANGE_END) {
        FROM_KEY_RANGE_END.to_vec()
    } else if args.prefix {
        prefix_range_end(&key)
    } else {
        end.map(|e| e.as_bytes().to_vec()).unwrap_or_default()
    };
    Ok((key, range_end))
}

async fn add(ctx: &Ctx, args: &RoleArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "role add")?;
    let client = ctx.connect().await?;
    let response = client
        .role_add(AuthRoleAddRequest {
            name: name.to_string(),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("Role {name} created");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

async fn delete(ctx: &Ctx, args: &RoleArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "role delete")?;
    let client = ctx.connect().await?;
    let response = client
        .role_delete(AuthRoleDeleteRequest {
            role: name.to_string(),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("Role {name} deleted");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

async fn get(ctx: &Ctx, args: &RoleArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "role get")?;
    let client = ctx.connect().await?;
    let response = client
        .role_get(AuthRoleGetRequest {
            role: name.to_string(),
        })
        .await?;
    let mut out = Output::default();
    ctx.printer.role_get(&mut out, name, &response)?;
    Ok(out)
}

async fn list(ctx: &Ctx, args: &RoleArgs) -> Result<Output, CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args("role list command requires no arguments"));
    }
    let client = ctx.connect().await?;
    let response = client.role_list(AuthRoleListRequest {}).await?;
    let mut out = Output::default();
    ctx.printer.role_list(&mut out, &response)?;
    Ok(out)
}

async fn grant_permission(ctx: &Ctx, args: &PermissionArgs) -> Result<Output, CtlError> {
    let [role, kind, rest @ ..] = args.args.as_slice() else {
        return Err(grant_usage());
    };
    if rest.is_empty() {
        return Err(grant_usage());
    }
    let kind = permission_type(kind)?;
    let (key, range_end) = key_range(args, rest)?;
    let client = ctx.connect().await?;
    let response = client
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: role.clone(),
            perm: Some(Permission {
                perm_type: kind as i32,
                key,
                range_end,
            }),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("Role {role} updated");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

fn grant_usage() -> CtlError {
    CtlError::bad_args(
        "role grant command requires role name, permission type, and key [endkey] as its argument",
    )
}

async fn revoke_permission(ctx: &Ctx, args: &PermissionArgs) -> Result<Output, CtlError> {
    let [role, rest @ ..] = args.args.as_slice() else {
        return Err(revoke_usage());
    };
    if rest.is_empty() {
        return Err(revoke_usage());
    }
    let (key, range_end) = key_range(args, rest)?;
    let client = ctx.connect().await?;
    let response = client
        .role_revoke_permission(AuthRoleRevokePermissionRequest {
            role: role.clone(),
            key: key.clone(),
            range_end: range_end.clone(),
        })
        .await?;
    let mut out = Output::default();
    let text = if range_end.is_empty() {
        format!(
            "Permission of key {} is revoked from role {role}",
            String::from_utf8_lossy(&key)
        )
    } else {
        format!(
            "Permission of range {} is revoked from role {role}",
            perm_range_text(&key, &range_end, false)
        )
    };
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

fn revoke_usage() -> CtlError {
    CtlError::bad_args("role revoke-permission command requires role name and key [endkey] as its argument")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_BAD_ARGS;

    fn flags(prefix: bool, from_key: bool) -> PermissionArgs {
        PermissionArgs {
            args: Vec::new(),
            prefix,
            from_key,
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_ranges_are_read_as_etcdctl_reads_them() {
        let range = |prefix, from_key, rest: &[&str]| key_range(&flags(prefix, from_key), &strings(rest));
        assert_eq!(
            range(false, false, &["a"]).ok(),
            Some((b"a".to_vec(), Vec::new()))
        );
        assert_eq!(
            range(false, false, &["a", "z"]).ok(),
            Some((b"a".to_vec(), b"z".to_vec()))
        );
        assert_eq!(
            range(true, false, &["p/"]).ok(),
            Some((b"p/".to_vec(), b"p0".to_vec()))
        );
        assert_eq!(range(false, true, &["k"]).ok(), Some((b"k".to_vec(), vec![0])));
        let both = range(true, true, &["a"]).expect_err("exclusive");
        assert_eq!(both.code, EXIT_BAD_ARGS);
        assert_eq!(
            both.message,
            "--from-key and --prefix flags are mutually exclusive"
        );
        let end = range(true, false, &["a", "b"]).expect_err("no end with --prefix");
        assert_eq!(end.message, "unexpected endkey argument with --prefix flag");
    }

    #[test]
    fn permission_types_take_any_case() {
        assert_eq!(permission_type("read").ok(), Some(PermissionType::Read));
        assert_eq!(permission_type("ReadWrite").ok(), Some(PermissionType::Readwrite));
        let bad = permission_type("bogus").expect_err("unknown");
        assert_eq!(bad.message, "invalid permission type: bogus");
        assert_eq!(bad.code, EXIT_BAD_ARGS);
    }
}
