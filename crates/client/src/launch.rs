//! What the launchers of real member processes share (keel's
//! `local-cluster` and the test fixtures, which start keel or etcd): the
//! command line of one member of a new cluster, in etcd's flags, which keel
//! takes too, and the wait until the members agree on a leader.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::{Client, ClientConfig, TlsOptions};

/// One member of a new cluster, as its command line describes it.
#[derive(Debug, Clone)]
pub struct MemberLaunch<'a> {
    pub name: &'a str,
    pub data_dir: &'a Path,
    /// `http://host:port` it listens on for clients and advertises.
    pub client_url: &'a str,
    /// `http://host:port` it listens on for peers and advertises.
    pub peer_url: &'a str,
    /// Every member's `name=peer_url`, comma-separated.
    pub initial_cluster: &'a str,
    pub token: &'a str,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// A member added to a running cluster (`--initial-cluster-state
    /// existing`), not one of a new cluster's first members.
    pub joins_running_cluster: bool,
}

impl MemberLaunch<'_> {
    /// The member's flags (`--name ... --election-timeout ...`).
    pub fn args(&self) -> Vec<OsString> {
        let flags: [(&str, OsString); 11] = [
            ("--name", self.name.into()),
            ("--data-dir", self.data_dir.into()),
            ("--listen-client-urls", self.client_url.into()),
            ("--advertise-client-urls", self.client_url.into()),
            ("--listen-peer-urls", self.peer_url.into()),
            ("--initial-advertise-peer-urls", self.peer_url.into()),
            ("--initial-cluster", self.initial_cluster.into()),
            ("--initial-cluster-token", self.token.into()),
            (
                "--initial-cluster-state",
                if self.joins_running_cluster {
                    "existing"
                } else {
                    "new"
                }
                .into(),
            ),
            (
                "--heartbeat-interval",
                self.heartbeat_interval_ms.to_string().into(),
            ),
            ("--election-timeout", self.election_timeout_ms.to_string().into()),
        ];
        flags
            .into_iter()
            .flat_map(|(flag, value)| [OsString::from(flag), value])
            .collect()
    }
}

/// The `--initial-cluster` a member added by `response` starts with, as
/// etcdctl's `member add` prints it: every member's `name=peer_url`, in the
/// response's order, the added member (which has no name yet) as `name`.
pub fn initial_cluster_after_add(response: &keel_api::etcdserverpb::MemberAddResponse, name: &str) -> String {
    let added_id = response.member.as_ref().map(|member| member.id);
    response
        .members
        .iter()
        .flat_map(|member| {
            let member_name = if Some(member.id) == added_id {
                name
            } else {
                member.name.as_str()
            };
            member
                .peer_ur_ls
                .iter()
                .map(move |url| format!("{member_name}={url}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How long one member may take to say whom it follows.
const STATUS_WAIT: Duration = Duration::from_millis(500);

/// The index of the member that leads, as the members asked report it: a
/// majority of all of `endpoints` must name the same member, and that
/// member must answer itself. A `None` endpoint is a member not to ask (a
/// stopped or paused one); it still counts towards the majority.
pub async fn agreed_leader(endpoints: &[Option<String>], tls: &TlsOptions) -> Option<usize> {
    let asked = endpoints.iter().map(|endpoint| async move {
        let endpoint = endpoint.as_deref()?;
        let config = ClientConfig::new([endpoint])
            .with_dial_timeout(STATUS_WAIT)
            .with_request_timeout(STATUS_WAIT)
            .with_tls(tls.clone());
        let client = Client::connect_lazy(config).ok()?;
        tokio::time::timeout(STATUS_WAIT, client.status(endpoint))
            .await
            .ok()?
            .ok()
    });
    let statuses = futures::future::join_all(asked).await;
    let named: Vec<u64> = statuses
        .iter()
        .flatten()
        .map(|status| status.leader)
        .filter(|leader| *leader != 0)
        .collect();
    let majority = endpoints.len() / 2 + 1;
    statuses.iter().position(|status| {
        let member_id = status
            .as_ref()
            .and_then(|status| status.header.as_ref())
            .map(|h| h.member_id);
        member_id.is_some_and(|id| named.iter().filter(|leader| **leader == id).count() >= majority)
    })
}

/// Why [`wait_for_leader`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum LeaderWaitError {
    #[error("member {member} exited while waiting for a leader")]
    MemberExited { member: String },
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
}

/// Asks the members every `poll` until they agree on a leader (see
/// [`agreed_leader`]) and returns its index; gives up after `timeout`, or
/// as soon as `exited` names a member whose process has ended.
pub async fn wait_for_leader(
    endpoints: &[Option<String>],
    tls: &TlsOptions,
    timeout: Duration,
    poll: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<usize, LeaderWaitError> {
    let give_up = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(leader) = agreed_leader(endpoints, tls).await {
            return Ok(leader);
        }
        if let Some(member) = exited() {
            return Err(LeaderWaitError::MemberExited { member });
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(LeaderWaitError::NoLeader(timeout));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_listens_on_and_advertises_its_urls() {
        let member = MemberLaunch {
            name: "m1",
            data_dir: Path::new("/data/m1"),
            client_url: "http://127.0.0.1:2379",
            peer_url: "http://127.0.0.1:2380",
            initial_cluster: "m1=http://127.0.0.1:2380",
            token: "t",
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            joins_running_cluster: false,
        };
        let args: Vec<String> = member
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--name m1 --data-dir /data/m1 \
             --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
             --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
             --initial-cluster m1=http://127.0.0.1:2380 --initial-cluster-token t \
             --initial-cluster-state new --heartbeat-interval 100 --election-timeout 1000"
        );
    }

    #[tokio::test]
    async fn no_member_answering_is_no_leader_and_an_exit_ends_the_wait() {
        // Port 9 (discard) on loopback: nothing listens there.
        let endpoints = vec![Some("127.0.0.1:9".to_string()), None, None];
        assert_eq!(agreed_leader(&endpoints, &TlsOptions::default()).await, None);
        let waited = wait_for_leader(
            &endpoints,
            &TlsOptions::default(),
            Duration::from_secs(30),
            Duration::from_millis(10),
            || Some("m2".to_string()),
        )
        .await;
        assert!(
            matches!(&waited, Err(LeaderWaitError::MemberExited { member }) if member == "m2"),
            "{waited:?}"
        );
        let timed_out = wait_for_leader(
            &endpoints,
            &TlsOptions::default(),
            Duration::ZERO,
            Duration::from_millis(10),
            || None,
        )
        .await;
        assert!(
            matches!(timed_out, Err(LeaderWaitError::NoLeader(_))),
            "{timed_out:?}"
        );
    }
}
