//! The member's client to itself, as etcd's v3lock and v3election servers
//! hold a clientv3 to their own member: the lock and election services run
//! `keel_client`'s recipes through it (one `Client`, made at start, whose
//! channel connects on first use). Also what both services share: the
//! session over a caller's lease, running a recipe so that a caller who
//! leaves stops its wait, and the translation of the recipes' errors into
//! etcd's statuses.
//!
//! Invariant (a caller who leaves leaves no key behind): a recipe runs in
//! its own task, never dropped halfway; the handler holds the only sender of
//! the recipe's stop signal, so when tonic drops the handler (the caller
//! canceled or its connection broke) the recipe sees the stop, and a recipe
//! that was waiting deletes its key (see `lock_until`, `campaign_until`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use keel_api::WireError;
use keel_client::session::{ConcurrencyError, Session, DEFAULT_SESSION_TTL};
use keel_client::{Client, ClientConfig, ClientError, LeaseError, TlsOptions};

use crate::auth_check::{caller_token, Caller};
use crate::context::MemberContext;
use crate::member::BoundListener;
use tonic::Status;

/// The address the member reaches its own client listener at: the
/// listener's address, with a wildcard IP replaced by loopback.
pub fn loopback_address(listening: SocketAddr) -> SocketAddr {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port())
}

/// A client to one of this member's client listeners (connected on first
/// use): a plaintext one when there is one; else a TLS one, presenting the
/// member's own certificate and trusting the listener without verifying it
/// (it is this process; etcd's gateway dials its own port the same way).
pub fn loopback_client(listeners: &[BoundListener]) -> anyhow::Result<Client> {
    let chosen = listeners
        .iter()
        .find(|listener| listener.tls.is_none())
        .or_else(|| listeners.first())
        .context("no client listener")?;
    let address = loopback_address(
        chosen
            .listener
            .local_addr()
            .context("the client listener's address")?,
    );
    let config = match &chosen.tls {
        None => ClientConfig::new([address.to_string()]),
        Some(tls) => {
            let files = tls.files();
            ClientConfig::new([format!("https://{address}")]).with_tls(TlsOptions {
                trusted_ca_file: None,
                cert_file: Some(files.cert_file.clone()),
                key_file: Some(files.key_file.clone()),
                insecure_skip_verify: true,
                ..TlsOptions::default()
            })
        }
    };
    Ok(Client::connect_lazy(config)?)
}

/// This member's client to itself, acting as the caller of `request` (as
/// etcd's lock and election servers pass their caller's context on to
/// their client): it sends the caller's token. A caller known only by its
/// client certificate (no token; auth on) gets a token of this member's
/// own for that user: simple tokens live in each member's memory, the
/// loopback client talks to this member only, and the token expires idle
/// like any other (with JWTs, a token this member signs).
pub fn client_acting_for<T>(
    context: &MemberContext,
    loopback: &Client,
    request: &tonic::Request<T>,
) -> Result<Client, Status> {
    let caller = Caller::of(context, request)?;
    if !caller.auth_enabled() {
        return Ok(loopback.clone());
    }
    let token = match caller_token(request) {
        Some(token) => token?.to_string(),
        None if caller.user().is_empty() => return Ok(loopback.clone()),
        None => match &context.jwt_tokens {
            None => {
                let token = keel_auth::tokens::new_simple_token(u64::from(rand::random::<u32>()));
                context.node.state().tokens().assign(&token, caller.user());
                token
            }
            Some(jwt) => jwt
                .issue(caller.user(), caller.auth_revision())
                .map_err(|error| Status::failed_precondition(format!("etcdserver: {error}")))?,
        },
    };
    loopback
        .with_token(&token)
        .map_err(|_| WireError::InvalidAuthToken.into())
}

/// A session over the caller's `lease`, never renewed here: the caller
/// keeps it alive. Lease 0 (none given) gets a new lease of etcd's default
/// session TTL that nobody renews, as etcd's servers grant one.
pub async fn caller_session(client: &Client, lease: i64) -> Result<Session, Status> {
    if lease != 0 {
        return Ok(Session::from_lease(client, lease));
    }
    let granted = client
        .lease_grant(DEFAULT_SESSION_TTL, 0)
        .await
        .map_err(|error| concurrency_status(ConcurrencyError::Lease(error)))?;
    Ok(Session::from_lease(client, granted.id))
}

/// Runs `recipe` in its own task and answers its outcome. The future it is
/// given resolves when the caller leaves (this function's future is
/// dropped); see the invariant at the top.
pub async fn run_for_caller<T, Recipe, Run>(recipe: Recipe) -> Result<T, Status>
where
    T: Send + 'static,
    Recipe: FnOnce(CallerGone) -> Run,
    Run: Future<Output = Result<T, Status>> + Send + 'static,
{
    let (caller_present, caller_gone) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(recipe(CallerGone(caller_gone)));
    let outcome = task.await;
    drop(caller_present);
    outcome.map_err(|error| {
        tracing::error!(%error, "a lock or election recipe's task failed");
        Status::internal(format!("the recipe's task failed: {error}"))
    })?
}

/// Resolves once the caller of a [`run_for_caller`] recipe has left.
pub struct CallerGone(tokio::sync::oneshot::Receiver<()>);

impl CallerGone {
    pub async fn wait(self) {
        // The sender only ever drops (nothing is sent): that is the signal.
        let _ = self.0.await;
    }
}

/// How a recipe's failure is answered, as etcd's servers answer it (checked
/// side by side with etcd 3.4): etcd's Go client turns an etcd error the
/// member answered into a plain Go error, and gRPC sends any plain error as
/// Unknown with its text; so an etcd error ("etcdserver: requested lease
/// not found", "election: not leader") is answered as Unknown with etcd's
/// text, a transport failure keeps its status, and the recipe's own errors
/// ("lost watcher waiting for delete") are Unknown with their text.
pub fn concurrency_status(error: ConcurrencyError) -> Status {
    match error {
        ConcurrencyError::NotLeader => WireError::ElectionNotLeader.into(),
        ConcurrencyError::NoLeader => WireError::ElectionNoLeader.into(),
        ConcurrencyError::Client(error) | ConcurrencyError::Lease(LeaseError::Client(error)) => {
            client_status(error)
        }
        ConcurrencyError::Watch(error) => match error.status() {
            Some(status) => as_plain_error(status.clone()),
            None => Status::unknown(error.to_string()),
        },
        ConcurrencyError::Canceled => Status::cancelled(error.to_string()),
        other => Status::unknown(other.to_string()),
    }
}

fn client_status(error: ClientError) -> Status {
    match error {
        ClientError::Status(status) => as_plain_error(*status),
        other => Status::new(other.code(), other.to_string()),
    }
}

/// An etcd error as etcd's servers relay it (Unknown, etcd's text); any
/// other status as it is.
fn as_plain_error(status: Status) -> Status {
    match WireError::from_status(&status) {
        Some(error) => Status::unknown(error.to_string()),
        None => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback_and_a_named_one_as_it_is() {
        let any4: SocketAddr = "0.0.0.0:2379".parse().unwrap();
        let any6: SocketAddr = "[::]:2379".parse().unwrap();
        let named: SocketAddr = "127.0.0.7:2379".parse().unwrap();
        assert_eq!(loopback_address(any4), "127.0.0.1:2379".parse().unwrap());
        assert_eq!(loopback_address(any6), "[::1]:2379".parse().unwrap());
        assert_eq!(loopback_address(named), named);
    }

    #[test]
    fn etcd_errors_are_relayed_as_unknown_with_etcds_text_and_transport_failures_as_they_are() {
        let not_leader = concurrency_status(ConcurrencyError::NotLeader);
        assert_eq!(
            WireError::from_status(&not_leader),
            Some(WireError::ElectionNotLeader)
        );
        let no_leader = concurrency_status(ConcurrencyError::NoLeader);
        assert_eq!(no_leader.message(), "election: no leader");
        let member_said = WireError::LeaseNotFound.to_status();
        assert_eq!(member_said.code(), tonic::Code::NotFound);
        let relayed = concurrency_status(ConcurrencyError::Client(member_said.into()));
        assert_eq!(relayed.code(), tonic::Code::Unknown);
        assert_eq!(relayed.message(), "etcdserver: requested lease not found");
        let transport = Status::unavailable("connection reset");
        let relayed = concurrency_status(ConcurrencyError::Client(transport.into()));
        assert_eq!(relayed.code(), tonic::Code::Unavailable);
    }
}
