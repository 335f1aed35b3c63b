//! The nemesis: injects one fault at a time on a schedule — quiet for an
//! interval, a fault for an interval, its repair, and again — and records
//! each action as a `nemesis` line in the history and in `nemesis.jsonl`.
//! Most faults are one action and its repair; the scripted ones
//! (`partition-leader-pair` in `nemesis/leader_pair.rs`,
//! `kill-during-snapshot` in `nemesis/snapshot_kill.rs`, `member` in
//! `nemesis/member_change.rs`) take several steps over their fault
//! interval, each recorded as a `step` line.
//!
//! The nemesis addresses members by roster slot (the fixture's member
//! index): the `member` nemesis puts a new member in the slot of the one it
//! removed, so indices stay valid while members come and go.
//!
//! Invariant: after [`Nemesis::heal_everything`] returns Ok, every link is
//! open, every slot holds a member of the cluster, and every member is
//! running and not paused; a run calls it before its final reads whatever
//! happened before (including when the schedule failed half-way).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_client::Client;
use keel_tests::{Cluster, FixtureError, MemberState};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::NemesisKind;
use crate::history::{Event, HistoryError, HistoryWriter};
use crate::monitor::{leader_in, monitor_clients, sample_all, MemberAddress};
use crate::partition::{halves, isolate, ring, Grudge};
use crate::proxy::{Network, ProxyError};
use crate::roster::Roster;

mod leader_pair;
mod member_change;

use member_change::Filled;
mod snapshot_kill;

#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("nemesis timeline: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("a removed member's slot could not be filled: {0}")]
    Vacant(String),
}

/// A fault in force, and what undoes it.
#[derive(Debug, Clone)]
enum Fault {
    Partition(Grudge),
    Killed(Vec<usize>),
    Paused(usize),
    /// A member replaced by a new one (nothing to undo, unless the new one
    /// could not be added yet: see `Nemesis::vacancy`).
    Replaced,
}

pub struct Nemesis {
    cluster: Arc<Mutex<Cluster>>,
    network: Arc<Network>,
    history: Arc<HistoryWriter>,
    timeline: BufWriter<File>,
    roster: Arc<Roster>,
    /// The roster's members when last looked at (see `refresh_members`).
    members: Vec<MemberAddress>,
    clients: Vec<(MemberAddress, Client)>,
    kinds: Vec<NemesisKind>,
    rng: StdRng,
    /// The members' election timeout (paces the scripted faults).
    election_timeout: Duration,
    /// The members' `--snapshot-count` (None: keel's default).
    snapshot_count: Option<u64>,
    /// Members that exited without being told to (found while healing).
    pub crashed: Vec<String>,
    /// A slot whose member was removed and whose new member is not started
    /// yet (the `member` nemesis fills it before anything else).
    vacancy: Option<member_change::Vacancy>,
    /// A member whose removal failed but may still take effect (a request
    /// of unknown outcome): if it exits, it was removed, not crashed.
    maybe_removed: Option<String>,
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        network: Arc<Network>,
        history: Arc<HistoryWriter>,
        timeline_path: &Path,
        roster: Arc<Roster>,
        kinds: Vec<NemesisKind>,
        seed: u64,
    ) -> Result<Nemesis, NemesisError> {
        let timeline = BufWriter::new(File::create(timeline_path)?);
        let members = roster.members();
        let clients = monitor_clients(&members, Duration::from_millis(500));
        Ok(Nemesis {
            cluster,
            network,
            history,
            timeline,
            roster,
            members,
            clients,
            kinds,
            rng: StdRng::seed_from_u64(seed),
            election_timeout: Duration::from_millis(500),
            snapshot_count: None,
            crashed: Vec::new(),
            vacancy: None,
            maybe_removed: None,
        })
    }

    /// The members' election timeout and `--snapshot-count`, which the
    /// scripted faults pace themselves by.
    pub fn with_member_settings(
        mut self,
        election_timeout: Duration,
        snapshot_count: Option<u64>,
    ) -> Nemesis {
        self.election_timeout = election_timeout.max(Duration::from_millis(50));
        self.snapshot_count = snapshot_count;
        self
    }

    /// Takes the roster's members of now (after a member was replaced).
    fn refresh_members(&mut self) {
        self.members = self.roster.members();
        self.clients = monitor_clients(&self.members, Duration::from_millis(500));
    }

    fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// Records one nemesis action that ran from `start` to now.
    fn record(
        &mut self,
        f: &str,
        kind: Option<NemesisKind>,
        detail: String,
        start: u64,
        node: Option<usize>,
    ) {
        let value = json!({
            "nemesis": kind.map(NemesisKind::name),
            "detail": detail,
        });
        let mut event = Event::nemesis(f, value, start, self.history.now());
        if let Some(node) = node.and_then(|i| self.members.get(i)) {
            event = event.with_node(&node.name);
        }
        tracing::info!(f, detail = %event.value["detail"], "nemesis");
        if let Ok(line) = serde_json::to_string(&event) {
            let _ = writeln!(self.timeline, "{line}");
            let _ = self.timeline.flush();
        }
        if let Err(error) = self.history.record(event) {
            tracing::error!(%error, "recording a nemesis event failed");
        }
    }

    /// The current leader's index, asked of every member just now.
    async fn leader(&self) -> Option<usize> {
        let samples = sample_all(&self.clients, &self.history, Duration::from_millis(500)).await;
        leader_in(&samples, &self.members)
    }

    /// The leader half of the time (when one is known), else a random member.
    async fn victim(&mut self) -> (usize, bool) {
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = self.leader().await {
                return (leader, true);
            }
        }
        (self.rng.gen_range(0..self.members.len()), false)
    }

    /// Runs the schedule until `until`, then repairs the fault in force.
    pub async fn run_schedule(&mut self, until: Instant, interval: Duration) -> Result<(), NemesisError> {
        if self.kinds.is_empty() {
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        loop {
            tokio::time::sleep_until(until.min(Instant::now() + interval)).await;
            if Instant::now() >= until {
                return Ok(());
            }
            let Some(&kind) = self.kinds.choose(&mut self.rng) else {
                return Ok(());
            };
            let window = match kind {
                NemesisKind::KillDuringSnapshot => interval.max(snapshot_kill::SHORTEST_WINDOW),
                _ => interval,
            };
            let fault_until = until.min(Instant::now() + window);
            let fault = self.start_fault(kind, fault_until).await?;
            tokio::time::sleep_until(fault_until).await;
            self.end_fault(kind, fault).await?;
        }
    }

    /// Records members that exited without being told to (their process is
    /// reaped, so a later kill or pause cannot hide the crash) and starts
    /// them again so the run goes on.
    pub async fn note_crashes(&mut self) -> Result<(), NemesisError> {
        let start = self.history.now();
        let mut restarted = Vec::new();
        let mut removed_after_all = None;
        {
            let mut cluster = self.cluster.lock().await;
            while let Some(exited) = cluster.exited_member() {
                let Some(index) = self.members.iter().position(|m| m.name == exited) else {
                    break;
                };
                let _ = cluster.kill(index);
                if self.maybe_removed.as_ref() == Some(&exited) && self.vacancy.is_none() {
                    // A MemberRemove that seemed to fail took effect later.
                    removed_after_all = Some(index);
                    continue;
                }
                cluster.restart(index)?;
                restarted.push(index);
            }
        }
        if let Some(slot) = removed_after_all {
            self.maybe_removed = None;
            self.removed_after_all(slot, start).await?;
        }
        for index in restarted {
            let name = self.members[index].name.clone();
            let detail = format!("{name} had exited on its own (see its log); started it again");
            self.record("crash", None, detail, start, Some(index));
            self.crashed.push(name);
        }
        Ok(())
    }

    /// Injects a fault of `kind`; the scripted kinds run their steps until
    /// `fault_until` before returning. Returns the fault still in force.
    async fn start_fault(&mut self, kind: NemesisKind, fault_until: Instant) -> Result<Fault, NemesisError> {
        self.note_crashes().await?;
        let start = self.history.now();
        let n = self.members.len();
        let names = self.names();
        match kind {
            NemesisKind::PartitionHalves => {
                let (minority, majority, grudge) = halves(n, &mut self.rng);
                self.network.apply(&grudge);
                let side = |s: &[usize]| s.iter().map(|&i| names[i].clone()).collect::<Vec<_>>().join(" ");
                let detail = format!("cut {} | {}", side(&minority), side(&majority));
                self.record("start", Some(kind), detail, start, None);
                Ok(Fault::Partition(grudge))
            }
            NemesisKind::PartitionLeader => {
                let (target, detail) = match self.leader().await {
                    Some(leader) => (leader, format!("isolated the leader {}", names[leader])),
                    None => {
                        let any = self.rng.gen_range(0..n);
                        (any, format!("no leader known; isolated {}", names[any]))
                    }
                };
                let grudge = isolate(n, target);
                self.network.apply(&grudge);
                self.record("start", Some(kind), detail, start, Some(target));
                Ok(Fault::Partition(grudge))
            }
            NemesisKind::PartitionRing => {
                let (_, grudge) = ring(n, &mut self.rng);
                self.network.apply(&grudge);
                let detail = grudge.describe(&names);
                self.record("start", Some(kind), detail, start, None);
                Ok(Fault::Partition(grudge))
            }
            NemesisKind::Kill => {
                let (target, was_leader) = self.victim().await;
                let result = self.cluster.lock().await.kill(target);
                let role = if was_leader { " (leader)" } else { "" };
                let detail = match &result {
                    Ok(()) => format!("kill -9 {}{role}", names[target]),
                    Err(error) => format!("kill -9 {}{role} failed: {error}", names[target]),
                };
                self.record("start", Some(kind), detail, start, Some(target));
                Ok(Fault::Killed(vec![target]))
            }
            NemesisKind::KillAll => {
                let mut cluster = self.cluster.lock().await;
                let failures: Vec<String> = (0..n)
                    .filter_map(|i| cluster.kill(i).err().map(|e| format!("{}: {e}", names[i])))
                    .collect();
                drop(cluster);
                let detail = if failures.is_empty() {
                    "kill -9 every member".to_string()
                } else {
                    format!("kill -9 every member; failed for {}", failures.join(", "))
                };
                self.record("start", Some(kind), detail, start, None);
                Ok(Fault::Killed((0..n).collect()))
            }
            NemesisKind::Pause => {
                let (target, was_leader) = self.victim().await;
                let result = self.cluster.lock().await.pause(target);
                let role = if was_leader { " (leader)" } else { "" };
                let detail = match &result {
                    Ok(()) => format!("SIGSTOP {}{role}", names[target]),
                    Err(error) => format!("SIGSTOP {}{role} failed: {error}", names[target]),
                };
                self.record("start", Some(kind), detail, start, Some(target));
                Ok(Fault::Paused(target))
            }
            NemesisKind::PartitionLeaderPair => self.leader_pair_rounds(fault_until).await,
            NemesisKind::KillDuringSnapshot => self.kill_during_snapshot(fault_until).await,
            NemesisKind::Member => self.replace_a_member().await,
        }
    }

    async fn end_fault(&mut self, kind: NemesisKind, fault: Fault) -> Result<(), NemesisError> {
        self.note_crashes().await?;
        let start = self.history.now();
        let names = self.names();
        match fault {
            Fault::Partition(grudge) => {
                self.network.heal_all();
                let pairs: Vec<String> = grudge
                    .pairs()
                    .map(|(a, b)| format!("{}-{}", names[a], names[b]))
                    .collect();
                let detail = if pairs.is_empty() {
                    "healed every link (nothing was left cut)".to_string()
                } else {
                    format!("healed {}", pairs.join(" "))
                };
                self.record("stop", Some(kind), detail, start, None);
            }
            Fault::Killed(targets) => {
                let restarted: Result<(), FixtureError> = {
                    let mut cluster = self.cluster.lock().await;
                    targets.iter().try_for_each(|&target| cluster.restart(target))
                };
                let who: Vec<&str> = targets.iter().map(|&t| names[t].as_str()).collect();
                let node = (targets.len() == 1).then(|| targets[0]);
                self.record(
                    "stop",
                    Some(kind),
                    format!("restarted {}", who.join(" ")),
                    start,
                    node,
                );
                restarted?;
            }
            Fault::Paused(target) => {
                let resumed = self.cluster.lock().await.resume(target);
                self.record(
                    "stop",
                    Some(kind),
                    format!("SIGCONT {}", names[target]),
                    start,
                    Some(target),
                );
                resumed?;
            }
            Fault::Replaced => {
                let detail = self.fill_vacancy().await?.describe();
                self.record("stop", Some(kind), detail, start, None);
            }
        }
        Ok(())
    }

    /// Opens every link, resumes paused members and (re)starts stopped or
    /// crashed ones, whatever the schedule left behind.
    pub async fn heal_everything(&mut self) -> Result<(), NemesisError> {
        self.note_crashes().await?;
        let start = self.history.now();
        self.network.heal_all();
        let mut actions = vec!["healed every link".to_string()];
        match self.fill_vacancy().await? {
            Filled::Nothing => {}
            Filled::Added(detail) => actions.push(detail),
            Filled::NotYet(why) => {
                self.record(
                    "heal-all",
                    None,
                    format!("a slot stays vacant: {why}"),
                    start,
                    None,
                );
                return Err(NemesisError::Vacant(why));
            }
        }
        let mut cluster = self.cluster.lock().await;
        for index in 0..self.members.len() {
            match cluster.state(index) {
                MemberState::Running => {}
                MemberState::Paused => {
                    cluster.resume(index)?;
                    actions.push(format!("SIGCONT {}", self.members[index].name));
                }
                MemberState::Stopped => {
                    cluster.restart(index)?;
                    actions.push(format!("started {}", self.members[index].name));
                }
            }
        }
        drop(cluster);
        self.record("heal-all", None, actions.join("; "), start, None);
        Ok(())
    }
}
