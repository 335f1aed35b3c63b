//! The status monitor: samples `Maintenance.Status` from every member on a
//! fixed period for the whole run (the roster's members of the moment), appends each answer to `status.jsonl`
//! (the input of the leader-per-term check) and keeps the latest samples in
//! memory so the nemesis can find the current leader. Each round also
//! flushes the history file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use keel_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::history::HistoryWriter;
use crate::invariants::StatusSample;
use crate::roster::Roster;
use crate::worker::member_client;

/// One member as the monitor sees it.
#[derive(Debug, Clone)]
pub struct MemberAddress {
    pub name: String,
    pub endpoint: String,
}

/// Asks every member for its status at once; members that do not answer
/// within `timeout` are left out.
pub async fn sample_all(
    members: &[(MemberAddress, Client)],
    history: &HistoryWriter,
    timeout: Duration,
) -> Vec<StatusSample> {
    let asks = members.iter().map(|(member, client)| async move {
        let answer = tokio::time::timeout(timeout, client.status(&member.endpoint)).await;
        let status = answer.ok()?.ok()?;
        let header = status.header.unwrap_or_default();
        Some(StatusSample {
            time: history.now(),
            member: member.name.clone(),
            member_id: header.member_id,
            leader: status.leader,
            term: status.raft_term,
            raft_index: status.raft_index,
            applied_index: status.raft_applied_index,
            revision: header.revision,
        })
    });
    join_all(asks).await.into_iter().flatten().collect()
}

/// Clients for the monitor: one per member, short timeouts.
pub fn monitor_clients(members: &[MemberAddress], timeout: Duration) -> Vec<(MemberAddress, Client)> {
    members
        .iter()
        .filter_map(|member| {
            let client = member_client(&member.endpoint, timeout).ok()?;
            Some((member.clone(), client))
        })
        .collect()
}

/// The member (index into `members`) that the freshest samples show as
/// leader: one that names itself leader, in the highest term seen.
pub fn leader_in(samples: &[StatusSample], members: &[MemberAddress]) -> Option<usize> {
    samples
        .iter()
        .filter(|s| s.leader != 0 && s.leader == s.member_id)
        .max_by_key(|s| (s.term, s.time))
        .and_then(|s| members.iter().position(|m| m.name == s.member))
}

/// The running sampler.
pub struct Monitor {
    latest: Arc<Mutex<Vec<StatusSample>>>,
    all: Arc<Mutex<Vec<StatusSample>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Monitor {
    /// Starts sampling every `period` into `out` (`status.jsonl`).
    pub fn start(
        roster: Arc<Roster>,
        history: Arc<HistoryWriter>,
        out: &Path,
        period: Duration,
    ) -> std::io::Result<Monitor> {
        let mut file = BufWriter::new(File::create(out)?);
        let latest = Arc::new(Mutex::new(Vec::new()));
        let all = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let client_timeout = period.max(Duration::from_millis(300));
        let (latest_w, all_w) = (latest.clone(), all.clone());
        let task = tokio::spawn(async move {
            let mut members = roster.members();
            let mut clients = monitor_clients(&members, client_timeout);
            loop {
                let now = roster.members();
                let endpoints =
                    |m: &[MemberAddress]| m.iter().map(|a| a.endpoint.clone()).collect::<Vec<_>>();
                if endpoints(&now) != endpoints(&members) {
                    clients = monitor_clients(&now, client_timeout);
                    members = now;
                }
                let samples = sample_all(&clients, &history, period.max(Duration::from_millis(300))).await;
                for sample in &samples {
                    if let Ok(line) = serde_json::to_string(sample) {
                        writeln!(file, "{line}")?;
                    }
                }
                file.flush()?;
                // Keep the history on disk current too, so a run that dies
                // half-way still leaves a checkable prefix.
                if let Err(error) = history.flush() {
                    tracing::warn!(%error, "flushing the history");
                }
                all_w
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(samples.iter().cloned());
                *latest_w.lock().unwrap_or_else(|p| p.into_inner()) = samples;
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.changed() => {}
                }
                if *stopped.borrow() {
                    return Ok(());
                }
            }
        });
        Ok(Monitor {
            latest,
            all,
            stop,
            task,
        })
    }

    /// The most recent round of samples.
    pub fn latest(&self) -> Vec<StatusSample> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops sampling; returns every sample taken.
    pub async fn stop(self) -> std::io::Result<Vec<StatusSample>> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result?,
            Err(join) => return Err(std::io::Error::other(join.to_string())),
        }
        Ok(std::mem::take(
            &mut *self.all.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}
