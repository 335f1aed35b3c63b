//! An in-process test cluster: real keel members (the server library's
//! `run_member`, real gRPC on 127.0.0.1, real sled data dirs) in one test
//! process, each on its own Tokio runtime and thread, so that a test can
//! - cut any directed member-to-member link for one kind of message
//!   ([`LinkFaults`]: drop AppendEntries, pass votes),
//! - stop a member's storage at a named step ([`FailPoints`]) and crash it
//!   there: its runtime is torn down with every task on it, the way a
//!   killed process loses its threads, and it restarts on its data dir,
//! - reach each member's Raft handle (to trigger an election, read metrics),
//! - reset a member's accepted peer connections ([`LeaderConnectionWatch`]).
//!
//! Members and the data directory are removed when the cluster is dropped,
//! also when a test fails.

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use clap::Parser;
use keel_client::{Client, ClientConfig};
use keel_node::leader_connection::LeaderConnectionWatch;
use keel_node::network::{LinkFaults, PeerMessage};
use keel_node::NodeTestHooks;
use keel_raft::{FailPoints, KeelRaft, NodeId};
use keel_server::config::MemberFlags;
use keel_server::member::{run_member_with_test_hooks, MemberTestHooks};
use tokio::sync::oneshot;

use crate::ports::free_port;

/// Every kind of message a member sends its peers (lease renewals and
/// time-to-live queries included).
pub const ALL_PEER_MESSAGES: [PeerMessage; 10] = PeerMessage::ALL;

#[derive(Parser)]
struct MemberCommandLine {
    #[command(flatten)]
    flags: MemberFlags,
}

/// A running member: its thread, and how to stop it.
struct RunningMember {
    raft: KeelRaft,
    leader_connections: LeaderConnectionWatch,
    crash: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

struct MemberSlot {
    name: String,
    client_port: u16,
    peer_port: u16,
    running: Option<RunningMember>,
}

pub struct InProcessCluster {
    dir: tempfile::TempDir,
    members: Vec<MemberSlot>,
    initial_cluster: String,
    extra_flags: Vec<String>,
    /// The links cut, shared by every member.
    pub links: LinkFaults,
}

impl InProcessCluster {
    /// Starts `size` members with `extra_flags` (etcd's flags, e.g.
    /// `--snapshot-count 50`), all on 127.0.0.1 and free ports.
    pub async fn start(size: usize, extra_flags: &[&str]) -> anyhow::Result<InProcessCluster> {
        let dir = tempfile::tempdir()?;
        let mut members = Vec::new();
        for i in 1..=size {
            members.push(MemberSlot {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                running: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = InProcessCluster {
            dir,
            members,
            initial_cluster,
            extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
            links: LinkFaults::default(),
        };
        for index in 0..size {
            cluster.start_member(index, FailPoints::default()).await?;
        }
        Ok(cluster)
    }

    /// Starts member `index` (again) on its data dir, stopping at the steps
    /// `fail_points` arms; fails if it cannot start. A crashed member's
    /// databases may stay locked for a moment while sled's threads let go
    /// of them: that one failure is waited out.
    pub async fn start_member(&mut self, index: usize, fail_points: FailPoints) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match self.start_member_once(index, fail_points.clone()).await {
                Err(error) if data_dir_locked(&error) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn start_member_once(&mut self, index: usize, fail_points: FailPoints) -> anyhow::Result<()> {
        let slot = &self.members[index];
        let data_dir = self.dir.path().join(&slot.name);
        let client_url = format!("http://127.0.0.1:{}", slot.client_port);
        let peer_url = format!("http://127.0.0.1:{}", slot.peer_port);
        let mut args = vec![
            "keel".to_string(),
            format!("--name={}", slot.name),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={}", self.initial_cluster),
            "--initial-cluster-token=in-process".to_string(),
        ];
        args.extend(self.extra_flags.iter().cloned());
        let flags = MemberCommandLine::try_parse_from(args)?.flags;
        let (started_tx, started_rx) = oneshot::channel();
        let (crash_tx, crash_rx) = oneshot::channel::<()>();
        let leader_connections = LeaderConnectionWatch::default();
        let hooks = MemberTestHooks {
            node: NodeTestHooks {
                link_faults: Some(self.links.clone()),
                fail_points,
                leader_connections: leader_connections.clone(),
            },
            started: Some(started_tx),
        };
        let thread = std::thread::Builder::new()
            .name(format!("member-{}", slot.name))
            .spawn(move || -> anyhow::Result<()> {
                // The binary's runtime (no LIFO slot), with 2 workers per
                // member however many cores the machine has.
                let runtime = keel_server::member_runtime::member_runtime_builder()
                    .worker_threads(2)
                    .build()?;
                let outcome = runtime.block_on(async move {
                    // A crash drops the member with every task it spawned.
                    let never = std::future::pending::<()>();
                    tokio::select! {
                        outcome = run_member_with_test_hooks(flags, hooks, never) => outcome,
                        _ = crash_rx => Ok(()),
                    }
                });
                // Blocking tasks (a crashed fail point's) end promptly.
                runtime.shutdown_timeout(Duration::from_secs(5));
                outcome
            })?;
        let raft = match tokio::time::timeout(Duration::from_secs(30), started_rx).await {
            Ok(Ok(raft)) => raft,
            _ => {
                // It did not start: its thread says why.
                let outcome = tokio::task::spawn_blocking(move || thread.join()).await?;
                return match outcome {
                    Ok(Err(error)) => Err(error.context(format!("member m{} did not start", index + 1))),
                    _ => Err(anyhow::anyhow!("member m{} did not start", index + 1)),
                };
            }
        };
        self.members[index].running = Some(RunningMember {
            raft,
            leader_connections,
            crash: Some(crash_tx),
            thread: Some(thread),
        });
        Ok(())
    }

    /// Crashes member `index`: every task of it is dropped where it stands.
    pub async fn crash_member(&mut self, index: usize) {
        let Some(mut running) = self.members[index].running.take() else {
            return;
        };
        if let Some(crash) = running.crash.take() {
            let _ = crash.send(());
        }
        if let Some(thread) = running.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Waits up to `limit` for member `index` to stop by itself (not
    /// crashed by the test); `None` if it still runs, else what it returned.
    pub async fn wait_until_stopped_by_itself(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> Option<anyhow::Result<()>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let finished = match &self.members[index].running {
                Some(RunningMember {
                    thread: Some(thread), ..
                }) => thread.is_finished(),
                _ => return None,
            };
            if finished {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut running = self.members[index].running.take()?;
        let thread = running.thread.take()?;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(outcome)) => Some(outcome),
            _ => Some(Err(anyhow::anyhow!("member m{} panicked", index + 1))),
        }
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].running.is_some()
    }

    /// Member `index`'s Raft handle (it must be running).
    pub fn raft(&self, index: usize) -> &KeelRaft {
        match &self.members[index].running {
            Some(running) => &running.raft,
            None => panic!("member m{} is not running", index + 1),
        }
    }

    /// Member `index`'s accepted peer connections (it must be running).
    pub fn leader_connections(&self, index: usize) -> &LeaderConnectionWatch {
        match &self.members[index].running {
            Some(running) => &running.leader_connections,
            None => panic!("member m{} is not running", index + 1),
        }
    }

    pub fn id(&self, index: usize) -> NodeId {
        self.raft(index).metrics().borrow_watched().id
    }

    /// Member `index`'s peer URL (where the peer protocol is served).
    pub fn peer_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[index].peer_port)
    }

    /// Member `index`'s data dir.
    pub fn data_dir(&self, index: usize) -> std::path::PathBuf {
        self.dir.path().join(&self.members[index].name)
    }

    /// Member `index`'s client address (`127.0.0.1:<port>`).
    pub fn client_endpoint(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.members[index].client_port)
    }

    /// A client of member `index` alone.
    pub fn client(&self, index: usize) -> anyhow::Result<Client> {
        let config =
            ClientConfig::new([self.client_endpoint(index)]).with_request_timeout(Duration::from_secs(30));
        Ok(Client::connect_lazy(config)?)
    }

    /// Cuts every directed link between `from` and `to`, for `kinds`.
    pub fn cut(&self, from: &[usize], to: &[usize], kinds: &[PeerMessage]) {
        for &a in from {
            for &b in to {
                if a != b {
                    for &kind in kinds {
                        self.links.cut(self.id(a), self.id(b), kind);
                    }
                }
            }
        }
    }

    /// Waits until every running member's metrics satisfy `condition`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        condition: impl Fn(usize, &openraft::RaftMetrics<keel_raft::TypeConfig>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let all = self
                .members
                .iter()
                .enumerate()
                .all(|(index, slot)| match &slot.running {
                    Some(running) => condition(index, &running.raft.metrics().borrow_watched()),
                    None => true,
                });
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last index in member `index`'s log.
    pub fn last_log_index(&self, index: usize) -> u64 {
        self.raft(index)
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0)
    }

    /// Waits until every running member applied the log up to `index`.
    pub async fn wait_until_all_applied(&self, index: u64, limit: Duration) -> anyhow::Result<()> {
        self.wait_for(&format!("every member to apply index {index}"), limit, |_, m| {
            m.last_applied.is_some_and(|id| id.index >= index)
        })
        .await
    }

    /// [`Self::elect`], then waits until a quorum has acknowledged member
    /// `index`: keel refuses writes on a leader before that
    /// (`Leadership::known_leader_in`), and a loaded CI machine once
    /// forwarded a batch in between (answered "not leader"). Not for a
    /// member elected apart from a quorum.
    pub async fn elect_acknowledged_by_a_quorum(&self, index: usize) -> anyhow::Result<()> {
        self.elect(index).await?;
        self.wait_for(
            &format!("a quorum to acknowledge m{}", index + 1),
            Duration::from_secs(30),
            |member, metrics| member != index || metrics.last_quorum_acked.is_some(),
        )
        .await
    }

    /// Makes member `index` campaign, round after round (a round in a term
    /// the voters already gave away is lost), until it leads. Generous: on
    /// a loaded CI machine (debug builds, two cores) a round can be lost
    /// again and again for several seconds.
    pub async fn elect(&self, index: usize) -> anyhow::Result<()> {
        const ELECTION_LIMIT: Duration = Duration::from_secs(30);
        let candidate = self.id(index);
        let deadline = tokio::time::Instant::now() + ELECTION_LIMIT;
        loop {
            self.raft(index).trigger().elect(false).await?;
            let round_end = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < round_end {
                if self.raft(index).metrics().borrow_watched().current_leader == Some(candidate) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("m{} was not elected within {ELECTION_LIMIT:?}", index + 1);
            }
        }
    }
}

/// True when `error` is a database of the member found locked by another
/// open database (a crashed member's, not let go of yet).
fn data_dir_locked(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<keel_storage::StorageError>(),
            Some(keel_storage::StorageError::Locked { .. })
        )
    })
}

impl Drop for InProcessCluster {
    fn drop(&mut self) {
        for slot in &mut self.members {
            if let Some(mut running) = slot.running.take() {
                if let Some(crash) = running.crash.take() {
                    let _ = crash.send(());
                }
                if let Some(thread) = running.thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}
