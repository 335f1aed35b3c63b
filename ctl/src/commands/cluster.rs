//! `member list`, `endpoint status` and `endpoint health` (with
//! `--cluster`: the endpoints are every member's client URLs from the
//! member list, as etcdctl does).

use std::time::Instant;

use clap::{Args, Subcommand};
use keel_api::etcdserverpb::RangeRequest;
use keel_client::Client;

use super::Ctx;
use crate::error::{client_error_text, CtlError, EXIT_ERROR};
use crate::go_bool::GoBoolFlag;
use crate::go_value_format::format_duration;
use crate::output::{EndpointHealth, EndpointStatus, Output};

#[derive(Subcommand, Debug, Clone)]
pub enum MemberCommand {
    /// Lists all members in the cluster.
    ///
    /// With -w simple, one comma-separated line per member:
    /// ID, Status, Name, Peer Addrs, Client Addrs, Is Learner.
    ///
    /// Example: keelctl member list -w table
    List,
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
}

pub async fn member(ctx: &Ctx, command: &MemberCommand) -> Result<Output, CtlError> {
    match command {
        MemberCommand::List => {
            let response = ctx.connect().await?.member_list().await?;
            let mut out = Output::default();
            ctx.printer.member_list(&mut out, &response)?;
            Ok(out)
        }
    }
}

/// The endpoints a command addresses: `--endpoints`, or with `--cluster`
/// every member's client URLs.
async fn endpoints(ctx: &Ctx, cluster: bool) -> Result<Vec<String>, CtlError> {
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
    }
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
fn partial_failure(out: Output, mut error: CtlError) -> CtlError {
    error.partial = Some(out);
    error
}
