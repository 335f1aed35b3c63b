//! `auth enable|disable|status`, the global `--user`/`--password` flags
//! (resolved into credentials as etcdctl 3.4 resolves them, asking for a
//! password when `--user` has none), and the password prompts and stdin
//! reads that `user add` and `user passwd` share.

use std::io::{BufRead, Write};
use std::sync::OnceLock;

use clap::{Args, Subcommand};
use keel_api::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthStatusRequest, AuthUserGrantRoleRequest,
};
use keel_api::WireError;

use super::Ctx;
use crate::error::CtlError;
use crate::output::Output;

/// The name of etcd's superuser and of the role that makes it one.
const ROOT: &str = "root";

/// `--user` and `--password` as given; the credentials are worked out (and
/// a password asked for) once, when a client is first made.
#[derive(Debug, Default)]
pub struct AuthFlags {
    user: Option<String>,
    password: Option<String>,
    resolved: OnceLock<Option<(String, String)>>,
}

impl AuthFlags {
    pub fn new(user: Option<String>, password: Option<String>) -> AuthFlags {
        AuthFlags {
            user,
            password,
            resolved: OnceLock::new(),
        }
    }

    /// The user and password to authenticate with, as etcdctl 3.4 reads
    /// them: with `--password`, `--user` is the whole name; without it,
    /// `--user` splits at its first ':', and a name alone makes it ask
    /// "Password: ". No user, or an empty name or password, means no
    /// authentication at all (etcd's client authenticates only with both).
    pub fn credentials(&self) -> Option<(String, String)> {
        self.resolved
            .get_or_init(|| {
                let user = self.user.as_deref().filter(|user| !user.is_empty())?;
                let (name, password) = match self.password.as_deref().filter(|p| !p.is_empty()) {
                    Some(password) => (user.to_string(), password.to_string()),
                    None => match user.split_once(':') {
                        Some((name, password)) => (name.to_string(), password.to_string()),
                        None => (user.to_string(), ask_password("Password: ").unwrap_or_default()),
                    },
                };
                (!name.is_empty() && !password.is_empty()).then_some((name, password))
            })
            .clone()
    }
}

/// Asks for a password as etcdctl does on a terminal: the prompt on
/// stdout, echo off (`stty -echo`, whose complaints about a stdin that is
/// no terminal go to stderr as etcdctl's do) while one line is read from
/// stdin, then echo on and a newline.
pub fn ask_password(prompt: &str) -> std::io::Result<String> {
    let mut stdout = std::io::stdout();
    stdout.write_all(prompt.as_bytes())?;
    stdout.flush()?;
    stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    read?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_string())
}

fn stty(setting: &str) {
    let ran = std::process::Command::new("stty")
        .arg(setting)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status();
    if let Err(error) = ran {
        tracing::debug!(%error, "stty {setting}");
    }
}

/// A new password asked for twice (`user add`, `user passwd` with
/// `--interactive`): empty or different answers are etcdctl's bad arguments.
pub fn ask_new_password(user: &str) -> Result<String, CtlError> {
    let unreadable = |e: std::io::Error| CtlError::bad_args(e.to_string());
    let first = ask_password(&format!("Password of {user}: ")).map_err(unreadable)?;
    if first.is_empty() {
        return Err(CtlError::bad_args("empty password"));
    }
    let again =
        ask_password(&format!("Type password of {user} again for confirmation: ")).map_err(unreadable)?;
    if first != again {
        return Err(CtlError::bad_args("given passwords are different"));
    }
    Ok(first)
}

/// A password read from stdin with `--interactive=false`: the first word
/// of the first line (Go's `fmt.Scanf("%s")`), empty when there is none.
pub fn read_password_word() -> String {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return String::new();
    }
    let line = line.trim_start_matches([' ', '\t']);
    line.split(char::is_whitespace).next().unwrap_or("").to_string()
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Enables authentication.
    ///
    /// Gives the root user the root role first when it lacks it.
    Enable(NoArgs),
    /// Disables authentication.
    Disable(NoArgs),
    /// Returns authentication status (etcdctl 3.5's command; 3.4 has none).
    Status(NoArgs),
}

#[derive(Args, Debug)]
pub struct NoArgs {
    #[arg(value_name = "ARG", hide = true)]
    pub args: Vec<String>,
}

pub async fn auth(ctx: &Ctx, command: &AuthCommand) -> Result<Output, CtlError> {
    match command {
        AuthCommand::Enable(args) => enable(ctx, args).await,
        AuthCommand::Disable(args) => disable(ctx, args).await,
        AuthCommand::Status(args) => status(ctx, args).await,
    }
}

/// etcdctl's `auth enable`: when the server refuses because root lacks the
/// root role, adds the role (if missing), grants it to root, and asks again.
async fn enable(ctx: &Ctx, args: &NoArgs) -> Result<Output, CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args(
            "auth enable command does not accept any arguments",
        ));
    }
    let client = ctx.connect().await?;
    let mut root_role_given = false;
    loop {
        let error = match client.auth_enable(AuthEnableRequest {}).await {
            Ok(_) => break,
            Err(error) => error,
        };
        if root_role_given || error.wire_error() != Some(WireError::RootRoleNotExist) {
            return Err(error.into());
        }
        let added = client
            .role_add(AuthRoleAddRequest {
                name: ROOT.to_string(),
            })
            .await;
        if let Err(error) = added {
            if error.wire_error() != Some(WireError::RoleAlreadyExist) {
                return Err(error.into());
            }
        }
        client
            .user_grant_role(AuthUserGrantRoleRequest {
                user: ROOT.to_string(),
                role: ROOT.to_string(),
            })
            .await?;
        root_role_given = true;
    }
    let mut out = Output::default();
    out.stdout.extend(b"Authentication Enabled\n");
    Ok(out)
}

async fn disable(ctx: &Ctx, args: &NoArgs) -> Result<Output, CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args(
            "auth disable command does not accept any arguments",
        ));
    }
    let client = ctx.connect().await?;
    client.auth_disable(AuthDisableRequest {}).await?;
    let mut out = Output::default();
    out.stdout.extend(b"Authentication Disabled\n");
    Ok(out)
}

async fn status(ctx: &Ctx, args: &NoArgs) -> Result<Output, CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args(
            "auth status command does not accept any arguments",
        ));
    }
    let client = ctx.connect().await?;
    let response = client.auth_status(AuthStatusRequest {}).await?;
    let mut out = Output::default();
    ctx.printer.auth_status(&mut out, &response)?;
    Ok(out)
}
