//! The end of a run, after everything is healed and the workers stopped:
//! wait until every member has applied the same log (convergence), hash
//! every member's keyspace at that one revision, and take the workloads'
//! final reads on every member (the set's `read-all`, the registers' last
//! keys). The outcome is saved as the run directory's `final.json`.

use std::path::Path;
use std::time::Duration;

use futures::future::join_all;
use keel_client::Client;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::history::{EventType, HistoryError, HistoryWriter};
use crate::invariants::{FinalState, StatusSample};
use crate::monitor::{monitor_clients, sample_all, MemberAddress};
use crate::worker::{member_client, perform};
use crate::workload::Invocation;

pub use crate::history::FINAL_PROCESS_BASE;

/// What the end of the run found; `final.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalReport {
    pub states: Vec<FinalState>,
    /// Members that gave no final state, and why.
    pub unreachable: Vec<(String, String)>,
    /// Members that exited during the run without being told to.
    pub crashed: Vec<String>,
    /// Why the run could not complete as designed, if it could not.
    pub broken: Option<String>,
    /// Connections through the link proxies: forwarded, blackholed, killed.
    pub proxy_connections: (u64, u64, u64),
}

impl FinalReport {
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    pub fn load(path: &Path) -> std::io::Result<FinalReport> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

fn same_point(a: &[StatusSample], b: &[StatusSample]) -> bool {
    let point = |s: &[StatusSample]| -> Vec<(String, u64, i64)> {
        let mut v: Vec<_> = s
            .iter()
            .map(|x| (x.member.clone(), x.applied_index, x.revision))
            .collect();
        v.sort();
        v
    };
    point(a) == point(b)
}

async fn hash_states(
    clients: &[(MemberAddress, Client)],
    samples: &[StatusSample],
    at_revision: Option<i64>,
) -> (Vec<FinalState>, Vec<(String, String)>) {
    let asks = clients.iter().map(|(member, client)| async move {
        let sample = samples.iter().find(|s| s.member == member.name)?;
        let revision = at_revision.unwrap_or(sample.revision);
        let answer =
            tokio::time::timeout(Duration::from_secs(5), client.hash_kv(&member.endpoint, revision)).await;
        Some(match answer {
            Ok(Ok(hash)) => Ok(FinalState {
                member: member.name.clone(),
                applied_index: sample.applied_index,
                revision: sample.revision,
                hash: hash.hash,
                hash_revision: hash.hash_revision,
            }),
            Ok(Err(error)) => Err((member.name.clone(), format!("HashKV failed: {error}"))),
            Err(_) => Err((member.name.clone(), "HashKV timed out".to_string())),
        })
    });
    let mut states = Vec::new();
    let mut unreachable = Vec::new();
    for answer in join_all(asks).await.into_iter().flatten() {
        match answer {
            Ok(state) => states.push(state),
            Err(why) => unreachable.push(why),
        }
    }
    (states, unreachable)
}

/// Polls every member until all report the same applied index and revision
/// twice in a row, one second apart, then hashes every keyspace at that
/// revision. At `timeout` it gives up and hashes each member at its own
/// revision, so the report shows how far apart they are.
pub async fn await_convergence(
    members: &[MemberAddress],
    history: &HistoryWriter,
    timeout: Duration,
) -> (Vec<FinalState>, Vec<(String, String)>) {
    let clients = monitor_clients(members, Duration::from_secs(2));
    let deadline = Instant::now() + timeout;
    let mut previous: Vec<StatusSample> = Vec::new();
    loop {
        let samples = sample_all(&clients, history, Duration::from_secs(1)).await;
        let all_answered = samples.len() == members.len();
        let agreed = all_answered
            && samples
                .iter()
                .all(|s| (s.applied_index, s.revision) == (samples[0].applied_index, samples[0].revision));
        if agreed && same_point(&samples, &previous) {
            return hash_states(&clients, &samples, Some(samples[0].revision)).await;
        }
        if Instant::now() >= deadline {
            let (states, mut unreachable) = hash_states(&clients, &samples, None).await;
            for member in members {
                if !samples.iter().any(|s| s.member == member.name) {
                    unreachable.push((member.name.clone(), "no Status answer".to_string()));
                }
            }
            return (states, unreachable);
        }
        previous = samples;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Performs `invocation` on every member, each retried until it succeeds
/// or `timeout` passes; the attempts go into the history as their own
/// processes. Returns the members on which it never succeeded.
pub async fn read_on_every_member(
    members: &[MemberAddress],
    history: &HistoryWriter,
    invocations: &[Invocation],
    op_timeout: Duration,
    timeout: Duration,
    first_process: u64,
) -> Result<Vec<String>, HistoryError> {
    let deadline = Instant::now() + timeout;
    let mut failed_members = Vec::new();
    let mut process = first_process;
    for member in members {
        let Ok(client) = member_client(&member.endpoint, op_timeout) else {
            failed_members.push(member.name.clone());
            continue;
        };
        for invocation in invocations {
            loop {
                let completion =
                    perform(&client, history, process, &member.name, invocation, op_timeout).await?;
                process += 1;
                if completion.kind == EventType::Ok {
                    break;
                }
                if Instant::now() >= deadline {
                    failed_members.push(member.name.clone());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    failed_members.dedup();
    Ok(failed_members)
}
