//! `member list`, `endpoint status`, `endpoint health` and `endpoint
//! hashkv` (with `--cluster`: the endpoints are every member's client URLs
//! from the member list, as etcdctl does), and `move-leader`.

use std::time::Instant;

use clap::{Args, Subcommand};
use keel_api::etcdserverpb::RangeRequest;
use keel_client::Client;

use super::Ctx;
use crate::error::{client_error_text, CtlError, EXIT_ERROR};
use crate::go_bool::GoBoolFlag;
use crate::go_value_format::format_duration;
use crate::go_value_format::quote;
use crate::output::{EndpointHashKv, EndpointHealth, EndpointStatus, Output};

#[derive(Subcommand, Debug, Clone)]
pub enum MemberCommand {
    /// Lists all members in the cluster.
    ///
    /// With -w simple, one comma-separated line per member:
    /// ID, Status, Name, Peer Addrs, Client Addrs, Is Learner.
    ///
    /// Example: keelctl member list -w table
    List,
    /// Adds a member into the cluster, and prints the settings that start it.
    ///
    /// Example: keelctl member add infra4 --peer-urls=http://127.0.0.1:12380
    Add(super::member::MemberAddArgs),
    /// Removes a member from the cluster.
    ///
    /// Example: keelctl member remove 8e9e05c52164694d
    Remove(super::member::MemberIdArgs),
    /// Updates a member's peer URLs.
    ///
    /// Example: keelctl member update 8e9e05c52164694d --peer-urls=http://127.0.0.1:12380
    Update(super::member::MemberUpdateArgs),
    /// Promotes a learner that is in sync with the leader to a voter.
    ///
    /// Example: keelctl member promote 8e9e05c52164694d
    Promote(super::member::MemberIdArgs),
}

#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// Use all endpoints from the cluster member list.
    #[arg(long, global = true, go_bool_default = false)]
    pub cluster: bool,
    #[command(subcommand)]
    pub command: EndpointCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum EndpointCommand {
    /// Checks the health of the endpoints given with --endpoints (a linearizable read on each).
    ///
    /// Example: keelctl endpoint health --cluster
    Health,
    /// Prints the status of the endpoints given with --endpoints.
    ///
    /// With -w simple, one comma-separated line per endpoint: endpoint, ID,
    /// version, db size, is leader, is learner, raft term, raft index, raft
    /// applied index, errors.
    ///
    /// Example: keelctl endpoint status --cluster -w table
    Status,
    /// Prints the KV history hash for each endpoint in --endpoints.
    ///
    /// With -w simple, one line per endpoint: endpoint, hash.
    ///
    /// Example: keelctl endpoint hashkv --cluster -w table
    Hashkv {
        /// maximum revision to hash (default: all revisions)
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        rev: i64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct MoveLeaderArgs {
    /// The transferee's member ID in hex (as `member list` prints it).
    #[arg(value_name = "TRANSFEREE_MEMBER_ID")]
    pub target: Vec<String>,
}

pub async fn member(ctx: &Ctx, command: &MemberCommand) -> Result<Output, CtlError> {
    match command {
        MemberCommand::List => {
            let response = ctx.connect().await?.member_list().await?;
            let mut out = Output::default();
            ctx.printer.member_list(&mut out, &response)?;
            Ok(out)
        }
        MemberCommand::Add(args) => super::member::add(ctx, args).await,
        MemberCommand::Remove(args) => super::member::remove(ctx, args).await,
        MemberCommand::Update(args) => super::member::update(ctx, args).await,
        MemberCommand::Promote(args) => super::member::promote(ctx, args).await,
    }
}

/// The endpoints a command addresses: `--endpoints`, or with `--cluster`
/// every member's client URLs.
pub(super) async fn endpoints(ctx: &Ctx, cluster: bool) -> Result<Vec<String>, CtlError> {
    if !cluster {
        return Ok(ctx.endpoints.clone());
    }
    let members = ctx.connect().await?.member_list().await.map_err(|e| {
        CtlError::failed(format!(
            "failed to fetch endpoints from etcd cluster member list: {}",
            client_error_text(&e)
        ))
    })?;
    Ok(members
        .members
        .into_iter()
        .flat_map(|member| member.client_ur_ls)
        .collect())
}

pub async fn endpoint(ctx: &Ctx, args: &EndpointArgs) -> Result<Output, CtlError> {
    match args.command {
        EndpointCommand::Status => status(ctx, args.cluster).await,
        EndpointCommand::Health => health(ctx, args.cluster).await,
        EndpointCommand::Hashkv { rev } => hashkv(ctx, args.cluster, rev).await,
    }
}

/// etcdctl's `endpoint hashkv`: each endpoint's HashKV at `revision`; a
/// failed endpoint is reported on stderr and the others still print, then
/// the command fails with the last error.
async fn hashkv(ctx: &Ctx, cluster: bool, revision: i64) -> Result<Output, CtlError> {
    let targets = endpoints(ctx, cluster).await?;
    let client = ctx.connect().await?;
    let mut out = Output::default();
    let mut hashes = Vec::new();
    let mut last_error = None;
    for endpoint in targets {
        match client.hash_kv(&endpoint, revision).await {
            Ok(response) => hashes.push(EndpointHashKv { endpoint, response }),
            Err(error) => {
                let reason = client_error_text(&error);
                let text = format!("Failed to get the hash of endpoint {endpoint} ({reason})\n");
                out.stderr.extend(text.as_bytes());
                last_error = Some(reason);
            }
        }
    }
    ctx.printer.endpoint_hashkv(&mut out, &hashes)?;
    match last_error {
        Some(reason) => Err(partial_failure(out, CtlError::failed(reason))),
        None => Ok(out),
    }
}

/// etcdctl's `move-leader`: finds the leader among the endpoints given (by
/// each one's status), asks it to hand leadership to the transferee, and
/// prints the move.
pub async fn move_leader(ctx: &Ctx, args: &MoveLeaderArgs) -> Result<Output, CtlError> {
    let [target] = args.target.as_slice() else {
        return Err(CtlError::bad_args("move-leader command needs 1 argument"));
    };
    let target = parse_go_hex_u64(target)?;
    let client = ctx.connect().await?;
    let mut leader = None;
    for endpoint in &ctx.endpoints {
        let status = client.status(endpoint).await?;
        let member_id = status.header.map_or(0, |header| header.member_id);
        if member_id == status.leader {
            leader = Some((endpoint, status.leader));
            break;
        }
    }
    let Some((endpoint, leader_id)) = leader else {
        return Err(CtlError::bad_args(format!(
            "no leader endpoint given at [{}]",
            ctx.endpoints.join(" ")
        )));
    };
    let response = client.move_leader(endpoint, target).await?;
    let mut out = Output::default();
    ctx.printer.move_leader(&mut out, leader_id, target, &response)?;
    Ok(out)
}

/// Go's `strconv.ParseUint(text, 16, 64)`, with its error text: hex digits
/// only (no sign, no `0x`), at most 64 bits.
fn parse_go_hex_u64(text: &str) -> Result<u64, CtlError> {
    let failure = |reason: &str| {
        CtlError::bad_args(format!(
            "strconv.ParseUint: parsing {}: {reason}",
            quote(text.as_bytes())
        ))
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(failure("invalid syntax"));
    }
    u64::from_str_radix(text, 16).map_err(|_| failure("value out of range"))
}

async fn status(ctx: &Ctx, cluster: bool) -> Result<Output, CtlError> {
    let targets = endpoints(ctx, cluster).await?;
    let mut out = Output::default();
    let client = match ctx.connect().await {
        Ok(client) => client,
        // No endpoint answers: etcdctl reports each one, then exits 1.
        Err(error) => {
            for endpoint in &targets {
                report_status_failure(&mut out, endpoint, &error.message);
            }
            return Err(partial_failure(out, CtlError::exit_quietly(EXIT_ERROR)));
        }
    };
    let mut statuses = Vec::new();
    let mut failed = false;
    for endpoint in targets {
        match client.status(&endpoint).await {
            Ok(status) => statuses.push(EndpointStatus { endpoint, status }),
            Err(error) => {
                failed = true;
                report_status_failure(&mut out, &endpoint, &client_error_text(&error));
            }
        }
    }
    ctx.printer.endpoint_status(&mut out, &statuses)?;
    if failed {
        return Err(partial_failure(out, CtlError::exit_quietly(EXIT_ERROR)));
    }
    Ok(out)
}

fn report_status_failure(out: &mut Output, endpoint: &str, reason: &str) {
    let text = format!("Failed to get the status of endpoint {endpoint} ({reason})\n");
    out.stderr.extend(text.as_bytes());
}

async fn health(ctx: &Ctx, cluster: bool) -> Result<Output, CtlError> {
    let targets = endpoints(ctx, cluster).await?;
    let probes = targets.into_iter().map(|endpoint| probe(ctx, endpoint));
    let results = futures::future::join_all(probes).await;
    let mut out = Output::default();
    ctx.printer.endpoint_health(&mut out, &results)?;
    if results.iter().any(|r| !r.error.is_empty()) {
        return Err(partial_failure(out, CtlError::failed("unhealthy cluster")));
    }
    Ok(out)
}

/// etcdctl's health check: a linearizable read of the key "health" through
/// a client of that endpoint alone; any answer but an error is healthy.
async fn probe(ctx: &Ctx, endpoint: String) -> EndpointHealth {
    let config = ctx.client_config(vec![endpoint.clone()]);
    let started = Instant::now();
    let client = match Client::connect(config).await {
        Ok(client) => client,
        Err(error) => {
            return EndpointHealth {
                endpoint,
                health: false,
                took: format_duration(started.elapsed()),
                error: client_error_text(&error),
            }
        }
    };
    let answer = client
        .range(RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        })
        .await;
    let took = format_duration(started.elapsed());
    match answer {
        Ok(_) => EndpointHealth {
            endpoint,
            health: true,
            took,
            error: String::new(),
        },
        Err(error) => EndpointHealth {
            endpoint,
            health: false,
            took,
            error: client_error_text(&error),
        },
    }
}

/// An error that still prints what the command gathered.
pub(super) fn partial_failure(out: Output, mut error: CtlError) -> CtlError {
    error.partial = Some(out);
    error
}
