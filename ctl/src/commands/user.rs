//! `user add|delete|get|list|passwd|grant-role|revoke-role`: their
//! arguments and password sources as etcdctl 3.4 reads them (its argument
//! messages, exit 128), the Auth calls, and `get --detail`'s roles.

use clap::{Args, Subcommand};
use keel_api::authpb::UserAddOptions;
use keel_api::etcdserverpb::{
    AuthRoleGetRequest, AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest,
    AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};

use super::auth::{ask_new_password, read_password_word};
use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Adds a new user.
    ///
    /// The password comes from --new-user-password, else from `name:password`,
    /// else is asked for twice (with --interactive=false: read from stdin).
    ///
    /// Example: keelctl user add alice --new-user-password=secret
    Add(UserAddArgs),
    /// Deletes a user.
    Delete(UserArgs),
    /// Gets detailed information of a user.
    ///
    /// Example: keelctl user get alice --detail
    Get(UserGetArgs),
    /// Lists all users.
    List(UserArgs),
    /// Changes password of user.
    Passwd(UserPasswdArgs),
    /// Grants a role to a user.
    ///
    /// Example: keelctl user grant-role alice reader
    GrantRole(UserArgs),
    /// Revokes a role from a user.
    RevokeRole(UserArgs),
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UserAddArgs {
    /// The user's name (`name:password` gives the password too).
    #[arg(value_name = "NAME[:PASSWORD]")]
    pub args: Vec<String>,
    /// Read password from stdin instead of interactive terminal.
    #[arg(long, go_bool_default = true)]
    pub interactive: bool,
    /// Supply password from the command line flag.
    #[arg(long = "new-user-password", default_value = "")]
    pub new_user_password: String,
    /// Create a user without password (CN based auth only).
    #[arg(long = "no-password", go_bool_default = false)]
    pub no_password: bool,
}

#[derive(Args, Debug)]
pub struct UserGetArgs {
    #[arg(value_name = "NAME")]
    pub args: Vec<String>,
    /// Show permissions of roles granted to the user.
    #[arg(long, go_bool_default = false)]
    pub detail: bool,
}

#[derive(Args, Debug)]
pub struct UserPasswdArgs {
    #[arg(value_name = "NAME")]
    pub args: Vec<String>,
    /// If true, read password from stdin instead of interactive terminal.
    #[arg(long, go_bool_default = true)]
    pub interactive: bool,
}

pub async fn user(ctx: &Ctx, command: &UserCommand) -> Result<Output, CtlError> {
    match command {
        UserCommand::Add(args) => add(ctx, args).await,
        UserCommand::Delete(args) => delete(ctx, args).await,
        UserCommand::Get(args) => get(ctx, args).await,
        UserCommand::List(args) => list(ctx, args).await,
        UserCommand::Passwd(args) => passwd(ctx, args).await,
        UserCommand::GrantRole(args) => grant_role(ctx, args).await,
        UserCommand::RevokeRole(args) => revoke_role(ctx, args).await,
    }
}

/// The one name etcdctl wants, or its message.
fn one_name<'a>(args: &'a [String], command: &str) -> Result<&'a str, CtlError> {
    match args {
        [name] => Ok(name),
        _ => Err(CtlError::bad_args(format!(
            "{command} command requires user name as its argument"
        ))),
    }
}

fn user_and_role<'a>(args: &'a [String], usage: &str) -> Result<(&'a str, &'a str), CtlError> {
    match args {
        [user, role] => Ok((user, role)),
        _ => Err(CtlError::bad_args(usage)),
    }
}

async fn add(ctx: &Ctx, args: &UserAddArgs) -> Result<Output, CtlError> {
    let given = one_name(&args.args, "user add")?;
    let (name, password) = if args.no_password {
        (given.to_string(), String::new())
    } else if !args.new_user_password.is_empty() {
        (given.to_string(), args.new_user_password.clone())
    } else if let Some((name, password)) = given.split_once(':') {
        (name.to_string(), password.to_string())
    } else if args.interactive {
        (given.to_string(), ask_new_password(given)?)
    } else {
        (given.to_string(), read_password_word())
    };
    let client = ctx.connect().await?;
    let response = client
        .user_add(AuthUserAddRequest {
            name: name.clone(),
            password,
            options: Some(UserAddOptions {
                no_password: args.no_password,
            }),
            ..Default::default()
        })
        .await?;
    let mut out = Output::default();
    let text = format!("User {name} created");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

async fn delete(ctx: &Ctx, args: &UserArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "user delete")?;
    let client = ctx.connect().await?;
    let response = client
        .user_delete(AuthUserDeleteRequest {
            name: name.to_string(),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("User {name} deleted");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

/// With --detail: "User: NAME", then each role as `role get` prints it,
/// each after an empty line (what was printed stays when a format fails).
async fn get(ctx: &Ctx, args: &UserGetArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "user get")?;
    let client = ctx.connect().await?;
    let response = client
        .user_get(AuthUserGetRequest {
            name: name.to_string(),
        })
        .await?;
    let mut out = Output::default();
    if !args.detail {
        ctx.printer.user_get(&mut out, name, &response)?;
        return Ok(out);
    }
    out.stdout.extend(format!("User: {name}\n").as_bytes());
    for role in &response.roles {
        let role_response = client.role_get(AuthRoleGetRequest { role: role.clone() }).await;
        let printed = role_response.map_err(CtlError::from).and_then(|role_response| {
            out.stdout.push(b'\n');
            ctx.printer.role_get(&mut out, role, &role_response)
        });
        if let Err(mut error) = printed {
            error.partial = Some(out);
            return Err(error);
        }
    }
    Ok(out)
}

async fn list(ctx: &Ctx, args: &UserArgs) -> Result<Output, CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args("user list command requires no arguments"));
    }
    let client = ctx.connect().await?;
    let response = client.user_list(AuthUserListRequest {}).await?;
    let mut out = Output::default();
    ctx.printer.user_list(&mut out, &response)?;
    Ok(out)
}

async fn passwd(ctx: &Ctx, args: &UserPasswdArgs) -> Result<Output, CtlError> {
    let name = one_name(&args.args, "user passwd")?;
    let password = if args.interactive {
        ask_new_password(name)?
    } else {
        read_password_word()
    };
    let client = ctx.connect().await?;
    let response = client
        .user_change_password(AuthUserChangePasswordRequest {
            name: name.to_string(),
            password,
            ..Default::default()
        })
        .await?;
    let mut out = Output::default();
    ctx.printer
        .auth_change(&mut out, "Password updated", &response.header, &response)?;
    Ok(out)
}

async fn grant_role(ctx: &Ctx, args: &UserArgs) -> Result<Output, CtlError> {
    let usage = "user grant command requires user name and role name as its argument";
    let (user, role) = user_and_role(&args.args, usage)?;
    let client = ctx.connect().await?;
    let response = client
        .user_grant_role(AuthUserGrantRoleRequest {
            user: user.to_string(),
            role: role.to_string(),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("Role {role} is granted to user {user}");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}

async fn revoke_role(ctx: &Ctx, args: &UserArgs) -> Result<Output, CtlError> {
    let usage = "user revoke-role requires user name and role name as its argument";
    let (user, role) = user_and_role(&args.args, usage)?;
    let client = ctx.connect().await?;
    let response = client
        .user_revoke_role(AuthUserRevokeRoleRequest {
            name: user.to_string(),
            role: role.to_string(),
        })
        .await?;
    let mut out = Output::default();
    let text = format!("Role {role} is revoked from user {user}");
    ctx.printer
        .auth_change(&mut out, &text, &response.header, &response)?;
    Ok(out)
}
