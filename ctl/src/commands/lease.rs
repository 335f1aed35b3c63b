//! `lease grant|revoke|timetolive|list|keep-alive`: their arguments, read
//! as etcdctl 3.4 reads them (a decimal TTL, hex lease IDs, its messages and
//! exit codes for bad ones), the calls, and the keep-alive loop that prints
//! each renewal as it is answered.

use std::io::Write;

use clap::{Args, Subcommand};
use keel_client::{KeepAliveInterval, LeaseError};

use super::Ctx;
use crate::error::{client_error_text, CtlError, EXIT_BAD_CONNECTION, EXIT_ERROR};
use crate::go_bool::GoBoolFlag;
use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Creates leases.
    ///
    /// Example: keelctl lease grant 60
    Grant(LeaseArgs),
    /// Revokes leases.
    ///
    /// Example: keelctl lease revoke 694d77aa9e38260f
    Revoke(LeaseArgs),
    /// Get lease information.
    ///
    /// Example: keelctl lease timetolive 694d77aa9e38260f --keys
    Timetolive(TimeToLiveArgs),
    /// List all active leases.
    List(LeaseArgs),
    /// Keeps leases alive (renew).
    ///
    /// Renews the lease every third of its TTL and prints each renewal until
    /// the lease expires or is revoked.
    ///
    /// Example: keelctl lease keep-alive --once 694d77aa9e38260f
    KeepAlive(KeepAliveArgs),
}

#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// The TTL in seconds (grant) or the lease ID in hex (revoke).
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TimeToLiveArgs {
    /// The lease ID in hex.
    #[arg(value_name = "LEASE_ID")]
    pub args: Vec<String>,
    /// Get keys attached to this lease.
    #[arg(long, go_bool_default = false)]
    pub keys: bool,
}

#[derive(Args, Debug)]
pub struct KeepAliveArgs {
    /// The lease ID in hex.
    #[arg(value_name = "LEASE_ID")]
    pub args: Vec<String>,
    /// Resets the keep-alive time to its original value and exits immediately.
    #[arg(long, go_bool_default = false)]
    pub once: bool,
}

/// Go's `strconv.ParseInt(text, radix, 64)` and its error text.
pub fn parse_int(text: &str, radix: u32) -> Result<i64, String> {
    i64::from_str_radix(text, radix).map_err(|e| {
        let reason = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => "value out of range",
            _ => "invalid syntax",
        };
        format!(
            "strconv.ParseInt: parsing {}: {reason}",
            crate::go_value_format::quote(text.as_bytes())
        )
    })
}

fn lease_id_arg(text: &str) -> Result<i64, CtlError> {
    parse_int(text, 16)
        .map_err(|e| CtlError::bad_args(format!("bad lease ID arg ({e}), expecting ID in Hex")))
}

/// The one argument etcdctl wants, or its message.
fn one_arg<'a>(args: &'a [String], usage: &str) -> Result<&'a str, CtlError> {
    match args {
        [only] => Ok(only),
        _ => Err(CtlError::bad_args(usage)),
    }
}

/// The text etcdctl prints for a failed lease call.
fn lease_error_text(error: &LeaseError) -> String {
    match error {
        LeaseError::Client(client) => client_error_text(client),
        other => other.to_string(),
    }
}

pub async fn lease(ctx: &Ctx, command: &LeaseCommand) -> Result<Output, CtlError> {
    match command {
        LeaseCommand::Grant(args) => grant(ctx, args).await,
        LeaseCommand::Revoke(args) => revoke(ctx, args).await,
        LeaseCommand::Timetolive(args) => time_to_live(ctx, args).await,
        LeaseCommand::List(_) => list(ctx).await,
        LeaseCommand::KeepAlive(args) => keep_alive(ctx, args).await,
    }
}

async fn grant(ctx: &Ctx, args: &LeaseArgs) -> Result<Output, CtlError> {
    let ttl = one_arg(&args.args, "lease grant command needs TTL argument")?;
    let ttl = parse_int(ttl, 10).map_err(|e| CtlError::bad_args(format!("bad TTL ({e})")))?;
    let client = ctx.connect().await?;
    let response = client
        .lease_grant(ttl, 0)
        .await
        .map_err(|e| CtlError::failed(format!("failed to grant lease ({})", lease_error_text(&e))))?;
    let mut out = Output::default();
    ctx.printer.lease_grant(&mut out, &response)?;
    Ok(out)
}

async fn revoke(ctx: &Ctx, args: &LeaseArgs) -> Result<Output, CtlError> {
    let id = lease_id_arg(one_arg(&args.args, "lease revoke command needs 1 argument")?)?;
    let client = ctx.connect().await?;
    let response = client
        .lease_revoke(id)
        .await
        .map_err(|e| CtlError::failed(format!("failed to revoke lease ({})", lease_error_text(&e))))?;
    let mut out = Output::default();
    ctx.printer.lease_revoke(&mut out, id, &response)?;
    Ok(out)
}

async fn time_to_live(ctx: &Ctx, args: &TimeToLiveArgs) -> Result<Output, CtlError> {
    let usage = "lease timetolive command needs lease ID as argument";
    let id = lease_id_arg(one_arg(&args.args, usage)?)?;
    let client = ctx.connect().await?;
    let response = client
        .lease_time_to_live(id, args.keys)
        .await
        .map_err(|e| CtlError::new(EXIT_BAD_CONNECTION, lease_error_text(&e)))?;
    let mut out = Output::default();
    ctx.printer.lease_time_to_live(&mut out, &response, args.keys)?;
    Ok(out)
}

async fn list(ctx: &Ctx) -> Result<Output, CtlError> {
    let client = ctx.connect().await?;
    let response = client
        .lease_leases()
        .await
        .map_err(|e| CtlError::new(EXIT_BAD_CONNECTION, lease_error_text(&e)))?;
    let mut out = Output::default();
    ctx.printer.lease_leases(&mut out, &response)?;
    Ok(out)
}

/// `--once`: one renewal (a lease the server does not know is an error).
/// Otherwise renewals every third of the TTL, each printed when answered,
/// until the lease is lost; then (simple format only) a last line, exit 0.
async fn keep_alive(ctx: &Ctx, args: &KeepAliveArgs) -> Result<Output, CtlError> {
    let usage = "lease keep-alive command needs lease ID as argument";
    let id = lease_id_arg(one_arg(&args.args, usage)?)?;
    let client = ctx.connect().await?;
    let mut out = Output::default();
    if args.once {
        let response = client
            .lease_keep_alive_stream()
            .renew(id)
            .await
            .map_err(|e| CtlError::new(EXIT_BAD_CONNECTION, lease_error_text(&e)))?;
        ctx.printer.lease_keep_alive(&mut out, &response)?;
        return Ok(out);
    }
    let mut keeper = client.keep_lease_alive(id, KeepAliveInterval::ThirdOfTtl, None);
    while let Some(renewal) = keeper.next_renewal().await {
        let mut printed = Output::default();
        ctx.printer.lease_keep_alive(&mut printed, &renewal.response)?;
        write_now(&printed.stdout)?;
    }
    tracing::debug!(lease = id, reason = ?keeper.lost_reason(), "keep-alive ended");
    ctx.printer.lease_keep_alive_ended(&mut out, id);
    Ok(out)
}

/// Writes to stdout at once (a long-running command's output).
pub fn write_now(bytes: &[u8]) -> Result<(), CtlError> {
    let mut stdout = std::io::stdout();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        // Nobody reads any more (etcdctl dies of SIGPIPE here).
        .map_err(|_| CtlError::exit_quietly(EXIT_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_BAD_ARGS;

    #[test]
    fn numbers_are_parsed_as_go_parses_them() {
        assert_eq!(parse_int("10", 10), Ok(10));
        assert_eq!(parse_int("694d77aa9e38260f", 16), Ok(0x694d77aa9e38260f));
        assert_eq!(
            parse_int("x", 10),
            Err("strconv.ParseInt: parsing \"x\": invalid syntax".to_string())
        );
        assert_eq!(
            parse_int("8000000000000000", 16),
            Err("strconv.ParseInt: parsing \"8000000000000000\": value out of range".to_string())
        );
        assert!(parse_int("", 10).is_err());
        assert!(parse_int("0x10", 16).is_err());
        assert!(parse_int("1.5", 10).is_err());
    }

    #[test]
    fn bad_arguments_are_etcdctls_errors() {
        let error = lease_id_arg("zz").expect_err("not hex");
        assert_eq!(error.code, EXIT_BAD_ARGS);
        assert_eq!(
            error.message,
            "bad lease ID arg (strconv.ParseInt: parsing \"zz\": invalid syntax), expecting ID in Hex"
        );
        let missing = one_arg(&[], "lease revoke command needs 1 argument").expect_err("none");
        assert_eq!(missing.code, EXIT_BAD_ARGS);
        let two = ["1".to_string(), "2".to_string()];
        assert!(one_arg(&two, "usage").is_err());
    }
}
