//! Which endpoints a run's connections go to: the leader, the followers or
//! all, found by asking every endpoint for `Maintenance.Status` (the member
//! whose own id the others report as leader is the leader), and the
//! connections themselves: one `keel_client::Client` per `--conns`, each its
//! own HTTP/2 connection, used through its raw KV stub for low overhead.
//! [`Access`] says how those clients reach the members: the CA that
//! `https://` endpoints are verified against, and the user the clients
//! authenticate as (the token then goes with every request).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use keel_api::etcdserverpb::kv_client::KvClient;
use keel_client::{Client, ClientChannel, ClientConfig, TlsOptions};

use crate::load::spec::Target;

/// A KV stub on one connection, sending the client's token (if any) with
/// every request.
pub type KvStub = KvClient<ClientChannel>;

/// How a load's clients reach the members (plaintext and anonymous by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// The CA `https://` endpoints' certificates must chain to (etcdctl's
    /// `--cacert`); `None`: the system's roots.
    pub trusted_ca_file: Option<PathBuf>,
    /// The user and password the clients authenticate as.
    pub credentials: Option<(String, String)>,
}

impl Access {
    /// A client configuration for `endpoints` with this access.
    pub fn client_config<S: Into<String>>(&self, endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        let config = ClientConfig::new(endpoints).with_tls(TlsOptions {
            trusted_ca_file: self.trusted_ca_file.clone(),
            ..TlsOptions::default()
        });
        match &self.credentials {
            Some((user, password)) => config.with_credentials(user, password),
            None => config,
        }
    }
}

/// What one endpoint says about itself.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader_id: u64,
    pub raft_index: u64,
}

/// Asks `endpoint` for its status (bounded by `timeout`).
pub async fn member_status(
    endpoint: &str,
    access: &Access,
    timeout: Duration,
) -> anyhow::Result<MemberStatus> {
    // Status needs no token (etcd serves it to anyone), so no user here.
    let anonymous = Access {
        credentials: None,
        ..access.clone()
    };
    let client = Client::connect_lazy(anonymous.client_config([endpoint]).with_dial_timeout(timeout))?;
    let status = tokio::time::timeout(timeout, client.status(endpoint))
        .await
        .with_context(|| format!("status of {endpoint} timed out after {timeout:?}"))?
        .with_context(|| format!("status of {endpoint}"))?;
    Ok(MemberStatus {
        endpoint: endpoint.to_string(),
        member_id: status.header.map(|h| h.member_id).unwrap_or(0),
        leader_id: status.leader,
        raft_index: status.raft_index,
    })
}

/// The endpoint of the member the others name as leader, if they agree.
pub async fn find_leader(endpoints: &[String], access: &Access) -> anyhow::Result<String> {
    let statuses = all_statuses(endpoints, access).await;
    let answered: Vec<&MemberStatus> = statuses.iter().filter_map(|s| s.as_ref().ok()).collect();
    let leader_of = |id: u64| answered.iter().find(|s| s.member_id == id && id != 0);
    for status in &answered {
        if let Some(leader) = leader_of(status.leader_id) {
            return Ok(leader.endpoint.clone());
        }
    }
    let reasons: Vec<String> = statuses
        .iter()
        .zip(endpoints)
        .map(|(status, endpoint)| match status {
            Ok(s) => format!(
                "{endpoint}: member {:x} reports leader {:x}",
                s.member_id, s.leader_id
            ),
            Err(e) => format!("{endpoint}: {e:#}"),
        })
        .collect();
    bail!("no endpoint is the leader: {}", reasons.join("; "))
}

async fn all_statuses(endpoints: &[String], access: &Access) -> Vec<anyhow::Result<MemberStatus>> {
    let asks = endpoints
        .iter()
        .map(|endpoint| member_status(endpoint, access, Duration::from_secs(3)));
    futures::future::join_all(asks).await
}

/// The endpoints `target` selects among `endpoints`.
pub async fn resolve_targets(
    endpoints: &[String],
    target: Target,
    access: &Access,
) -> anyhow::Result<Vec<String>> {
    match target {
        Target::All => Ok(endpoints.to_vec()),
        Target::Leader => Ok(vec![find_leader(endpoints, access).await?]),
        Target::Followers => {
            let leader = find_leader(endpoints, access).await?;
            let followers: Vec<String> = endpoints.iter().filter(|e| **e != leader).cloned().collect();
            if followers.is_empty() {
                bail!("--target followers: the only endpoint ({leader}) is the leader");
            }
            Ok(followers)
        }
    }
}

/// `count` KV stubs, each on its own connection, spread round-robin over
/// `targets`; every connection is checked to answer (and, with a user,
/// authenticated) before the run starts.
pub async fn open_connections(
    targets: &[String],
    count: usize,
    access: &Access,
) -> anyhow::Result<Vec<KvStub>> {
    let opens = (0..count).map(|index| {
        let endpoint = targets[index % targets.len()].clone();
        async move {
            let client = Client::connect(access.client_config([endpoint.as_str()]))
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            Ok::<_, anyhow::Error>(client.kv_stub_with_token())
        }
    });
    futures::future::try_join_all(opens).await
}
