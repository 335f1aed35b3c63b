//! `lock` and `elect`: etcdctl 3.4's commands on etcd's concurrency recipes
//! (keel-client's `lock`, `election` and `leader_elector`), with its
//! arguments, messages and exit codes. `lock` prints the lock's key (a get
//! of it) and holds the lock until interrupted, or runs a command holding
//! it (with ETCD_LOCK_KEY and ETCD_LOCK_REV set). `elect` campaigns with
//! Kubernetes' timings (`--lease-duration`, `--renew-deadline`,
//! `--retry-period`, keel's additions), prints the leader's key-value once
//! it leads and leads until interrupted; a leader that cannot renew within
//! the renew deadline steps down and exits. keel's addition: `elect <name>
//! <proposal> -- <command> [args...]` runs the command while it leads, with
//! KEEL_ELECT_KEY (the leader's key) and KEEL_FENCING_TOKEN (that key's
//! create revision, to compare in the command's guarded writes) set, and
//! kills it when leadership is lost. `elect -l` prints every leader.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use clap::Args;
use keel_api::etcdserverpb::RangeRequest;
use keel_client::election::Election;
use keel_client::leader_elector::{ElectionTimings, LeaderElector, Leadership, StepDown};
use keel_client::lock::lock as take_lock;
use keel_client::session::{ConcurrencyError, Session, DEFAULT_SESSION_TTL};
use keel_client::{Client, LeaseLost};
use tokio::signal::unix::{signal, SignalKind};

use super::lease::write_now;
use super::watch_session::{exit_text, go_errno_text, resolve_program};
use super::Ctx;
use crate::error::{client_error_text, CtlError};
use crate::go_bool::GoBoolFlag;
use crate::output::Output;

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock name, then an optional command (after `--`) to run holding it.
    #[arg(value_name = "LOCKNAME")]
    pub args: Vec<OsString>,
    /// Timeout for session.
    #[arg(long, default_value = "10", allow_hyphen_values = true)]
    pub ttl: String,
}

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The election name, then the proposal (absent with --listen).
    #[arg(value_name = "ELECTION")]
    pub args: Vec<OsString>,
    /// Observation mode.
    #[arg(short = 'l', long, go_bool_default = false)]
    pub listen: bool,
    /// How long leadership lasts without renewal (the session lease's TTL).
    #[arg(long = "lease-duration", default_value = "15s")]
    pub lease_duration: String,
    /// How long a leader acts without a successful renewal before it steps down.
    #[arg(long = "renew-deadline", default_value = "10s")]
    pub renew_deadline: String,
    /// How often the leader renews, and a candidate retries.
    #[arg(long = "retry-period", default_value = "2s")]
    pub retry_period: String,
    /// A command (after `--`) to run while leading; killed when leadership is lost.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn concurrency_error(error: &ConcurrencyError) -> CtlError {
    let text = match error {
        ConcurrencyError::Client(client) => client_error_text(client),
        ConcurrencyError::Lease(keel_client::LeaseError::Client(client)) => client_error_text(client),
        other => other.to_string(),
    };
    CtlError::failed(text)
}

/// Resolves at the first SIGINT or SIGTERM (etcdctl's `signal.Notify`).
async fn interrupted() {
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

/// Prints a get of `key` at once; false when the key is gone.
async fn print_key(ctx: &Ctx, client: &Client, key: &[u8]) -> Result<bool, CtlError> {
    let response = client
        .range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await?;
    if response.kvs.is_empty() {
        return Ok(false);
    }
    let mut out = Output::default();
    ctx.printer.get(&mut out, &response)?;
    write_now(&out.stdout)?;
    Ok(true)
}

pub async fn lock(ctx: &Ctx, args: &LockArgs) -> Result<Output, CtlError> {
    let Some((name, command)) = args.args.split_first() else {
        return Err(CtlError::bad_args(
            "lock takes a lock name argument and an optional command to execute",
        ));
    };
    let ttl = keel_api::go_format::parse_int64(&args.ttl).map_err(|e| {
        CtlError::failed(format!(
            "invalid argument \"{}\" for \"--ttl\" flag: {e}",
            args.ttl
        ))
    })?;
    let ttl = if ttl > 0 { ttl } else { DEFAULT_SESSION_TTL };
    let client = ctx.connect().await?;
    let session = Session::new(&client, ttl)
        .await
        .map_err(|e| concurrency_error(&e))?;
    let name = name.as_encoded_bytes();
    let guard = tokio::select! {
        taken = take_lock(&session, name) => taken.map_err(|e| concurrency_error(&e))?,
        () = interrupted() => {
            let _ = session.close().await;
            return Err(concurrency_error(&ConcurrencyError::Canceled));
        }
    };
    if !command.is_empty() {
        let ran = run_holding(command, guard.key(), guard.header().revision).await;
        let unlocked = guard.unlock(&session).await;
        let _ = session.close().await;
        ran?;
        unlocked.map_err(|e| concurrency_error(&e))?;
        return Ok(Output::default());
    }
    if !print_key(ctx, &client, guard.key()).await? {
        return Err(CtlError::failed("lock lost on init"));
    }
    tokio::select! {
        () = interrupted() => {
            guard.unlock(&session).await.map_err(|e| concurrency_error(&e))?;
            let _ = session.close().await;
            Ok(Output::default())
        }
        lost = session.done() => {
            tracing::debug!(%lost, "lock session lost");
            Err(CtlError::failed("session expired"))
        }
    }
}

/// Runs `command` with the lock's variables, its output going to ours; a
/// failure is Go's `exec` error text.
async fn run_holding(command: &[OsString], key: &[u8], revision: i64) -> Result<(), CtlError> {
    let program = resolve_program(&command[0]).map_err(CtlError::failed)?;
    let status = tokio::process::Command::new(&program)
        .args(&command[1..])
        .env("ETCD_LOCK_KEY", std::ffi::OsStr::from_bytes(key))
        .env("ETCD_LOCK_REV", revision.to_string())
        .status()
        .await
        .map_err(|e| {
            CtlError::failed(format!(
                "fork/exec {}: {}",
                program.to_string_lossy(),
                go_errno_text(&e)
            ))
        })?;
    match exit_text(status) {
        None => Ok(()),
        Some(text) => Err(CtlError::failed(text)),
    }
}

fn duration_flag(name: &str, text: &str) -> Result<Duration, CtlError> {
    keel_api::go_format::parse_duration(text)
        .map_err(|e| CtlError::failed(format!("invalid argument \"{text}\" for \"--{name}\" flag: {e}")))
}

pub async fn elect(ctx: &Ctx, args: &ElectArgs) -> Result<Output, CtlError> {
    let (name, proposal) = match args.args.as_slice() {
        [name] => (name, None),
        [name, proposal] => (name, Some(proposal)),
        _ => {
            return Err(CtlError::bad_args(
                "elect takes one election name argument and an optional proposal argument",
            ))
        }
    };
    match proposal {
        _ if args.listen && !args.command.is_empty() => Err(CtlError::bad_args(
            "a command to run needs a proposal, and -l is set",
        )),
        None if !args.listen => Err(CtlError::bad_args("no proposal argument but -l not set")),
        None => observe(ctx, name.as_encoded_bytes()).await,
        Some(_) if args.listen => Err(CtlError::bad_args("proposal given but -l is set")),
        Some(proposal) => {
            let timings = ElectionTimings {
                lease_duration: duration_flag("lease-duration", &args.lease_duration)?,
                renew_deadline: duration_flag("renew-deadline", &args.renew_deadline)?,
                retry_period: duration_flag("retry-period", &args.retry_period)?,
            };
            let candidate = Candidate {
                name: name.as_encoded_bytes(),
                proposal: proposal.as_encoded_bytes(),
                command: &args.command,
            };
            campaign(ctx, candidate, timings).await
        }
    }
}

/// What `elect` campaigns with, and what it runs while leading.
struct Candidate<'a> {
    name: &'a [u8],
    proposal: &'a [u8],
    command: &'a [OsString],
}

async fn campaign(ctx: &Ctx, candidate: Candidate<'_>, timings: ElectionTimings) -> Result<Output, CtlError> {
    let elector = LeaderElector::new(&ctx.connect().await?, candidate.name, candidate.proposal, timings)
        .map_err(|e| CtlError::bad_args(e.to_string()))?;
    let leadership = elector
        .campaign_until(interrupted())
        .await
        .map_err(|e| concurrency_error(&e))?;
    tracing::debug!(fencing_token = leadership.fencing_token(), "elected");
    if !print_key(ctx, leadership.session().client(), leadership.key()).await? {
        return Err(CtlError::failed("elect: leadership lost"));
    }
    let mut command = match candidate.command.split_first() {
        Some((program, args)) => Some(spawn_leading(program, args, &leadership)?),
        None => None,
    };
    tokio::select! {
        () = interrupted() => {
            stop_command(command.as_mut()).await;
            leadership.resign().await.map_err(|e| concurrency_error(&e))?;
            Ok(Output::default())
        }
        exit = command_exit(command.as_mut()) => {
            let resigned = leadership.resign().await;
            let status = exit.map_err(|e| CtlError::failed(format!("wait: {}", go_errno_text(&e))))?;
            resigned.map_err(|e| concurrency_error(&e))?;
            match exit_text(status) {
                None => Ok(Output::default()),
                Some(text) => Err(CtlError::failed(text)),
            }
        }
        step_down = leadership.lost() => {
            stop_command(command.as_mut()).await;
            let text = match step_down {
                StepDown::LeaseLost(LeaseLost::Expired) => "elect: session expired".to_string(),
                other => format!("elect: {other}"),
            };
            Err(CtlError::failed(text))
        }
    }
}

/// Starts the leader's command with the leader's key and fencing token.
fn spawn_leading(
    program: &OsString,
    args: &[OsString],
    leadership: &Leadership,
) -> Result<tokio::process::Child, CtlError> {
    let program = resolve_program(program).map_err(CtlError::failed)?;
    tokio::process::Command::new(&program)
        .args(args)
        .env("KEEL_ELECT_KEY", std::ffi::OsStr::from_bytes(leadership.key()))
        .env("KEEL_FENCING_TOKEN", leadership.fencing_token().to_string())
        .spawn()
        .map_err(|e| {
            CtlError::failed(format!(
                "fork/exec {}: {}",
                program.to_string_lossy(),
                go_errno_text(&e)
            ))
        })
}

/// Resolves when the leader's command exits (never without one).
async fn command_exit(
    command: Option<&mut tokio::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    match command {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

/// Kills the leader's command (it must not act once leadership is lost)
/// and reaps it.
async fn stop_command(command: Option<&mut tokio::process::Child>) {
    if let Some(child) = command {
        if let Err(error) = child.kill().await {
            tracing::warn!(%error, "could not kill the leader's command");
        }
    }
}

async fn observe(ctx: &Ctx, name: &[u8]) -> Result<Output, CtlError> {
    let client = ctx.connect().await?;
    let mut leaders = Election::new(name).observe(&client);
    loop {
        tokio::select! {
            leader = leaders.recv() => match leader {
                Some(response) => {
                    let mut out = Output::default();
                    ctx.printer.get(&mut out, &response)?;
                    write_now(&out.stdout)?;
                }
                None => return Err(CtlError::failed("elect: observer lost")),
            },
            () = interrupted() => return Ok(Output::default()),
        }
    }
}
