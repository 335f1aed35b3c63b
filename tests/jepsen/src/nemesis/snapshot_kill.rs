//! The `kill-during-snapshot` nemesis: a scripted fault that kills -9 a
//! member while it receives or installs a snapshot from the leader. A
//! follower falls behind (killed, or cut off from everyone) until the
//! leader's log has grown by more than two snapshot counts, so the entries
//! it lacks are purged and only a snapshot can bring it up to date; it is
//! then brought back (restarted on its data dir, or its links healed) while
//! the nemesis watches its `snap/` directory, where keel writes the
//! incoming snapshot to `incoming-<nanos>.partial` from the first byte of
//! the transfer until the install commits it. When such a file appears the
//! member is killed -9 after a random short delay (0 to 50 ms), up to three
//! times (the fault lasts at least [`SHORTEST_WINDOW`], whatever the
//! interval); at last it is restarted once more and must catch up. A member
//! that then exits on its own is recorded by `note_crashes` and makes the
//! run report it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use super::{Fault, Nemesis, NemesisError};
use crate::config::NemesisKind;
use crate::invariants::StatusSample;
use crate::monitor::{leader_in, sample_all};
use crate::partition::{isolate, Grudge};

const KIND: NemesisKind = NemesisKind::KillDuringSnapshot;

/// keel's own `--snapshot-count` when the run sets none.
const KEEL_DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// Kills during one fault, at most.
const KILLS: usize = 3;
/// How long to wait for a snapshot transfer to start after bringing the
/// member back.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);
/// The shortest fault window this nemesis asks for, whatever `--interval`:
/// time for a member to fall two snapshot counts behind, be killed a few
/// times and catch up.
pub(super) const SHORTEST_WINDOW: Duration = Duration::from_secs(15);
/// Delays between seeing the incoming snapshot file and the kill.
const KILL_DELAYS_MS: [u64; 8] = [0, 0, 1, 2, 5, 10, 20, 50];
/// The line keel logs once a received snapshot is installed.
const INSTALLED_LINE: &str = "installed snapshot received from the leader";

/// How far the leader's log must run ahead of a member at `behind` before
/// that member can only catch up through a snapshot: a snapshot every
/// `count` entries, and `count` entries kept behind it (keel's
/// `max_in_snapshot_log_to_keep`), plus a margin.
pub fn compacted_past(behind: u64, count: u64) -> u64 {
    behind.saturating_add(count.saturating_mul(2)).saturating_add(64)
}

/// The names of incoming snapshot files in `snap_dir`.
fn incoming_files(snap_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_incoming(name))
        .collect()
}

fn is_incoming(name: &str) -> bool {
    name.starts_with("incoming-") && name.ends_with(".partial")
}

/// How many installs the member's log shows so far.
fn installs_in(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches(INSTALLED_LINE).count())
        .unwrap_or(0)
}

/// The highest log index among the samples of members other than `victim`.
fn leader_index(samples: &[StatusSample], victim: &str) -> u64 {
    samples
        .iter()
        .filter(|s| s.member != victim)
        .map(|s| s.raft_index)
        .max()
        .unwrap_or(0)
}

impl Nemesis {
    /// Runs the fault until `until`; returns what is still in force.
    pub(super) async fn kill_during_snapshot(&mut self, until: Instant) -> Result<Fault, NemesisError> {
        let n = self.members.len();
        let began = Instant::now();
        let samples = sample_all(&self.clients, &self.history, Duration::from_millis(500)).await;
        let leader = leader_in(&samples, &self.members);
        let followers: Vec<usize> = (0..n).filter(|&m| Some(m) != leader).collect();
        let Some(&victim) = followers.choose(&mut self.rng) else {
            return Ok(Fault::Partition(Grudge::new(n)));
        };
        let name = self.members[victim].name.clone();
        let behind = samples
            .iter()
            .find(|s| s.member == name)
            .map(|s| s.raft_index)
            .unwrap_or_else(|| leader_index(&samples, &name));
        let count = self.snapshot_count.unwrap_or(KEEL_DEFAULT_SNAPSHOT_COUNT);
        let (snap_dir, log): (PathBuf, PathBuf) = {
            let cluster = self.cluster.lock().await;
            (
                cluster.data_dir(victim).join("snap"),
                cluster.log_path(victim).to_path_buf(),
            )
        };
        let installs_at_start = installs_in(&log);

        // 1. The victim falls behind: killed, or cut off from everyone.
        let start = self.history.now();
        let killed_to_fall_behind = self.rng.gen_bool(0.5);
        let role = if leader.is_some() {
            "a follower"
        } else {
            "no leader known; a member"
        };
        let detail = if killed_to_fall_behind {
            let result = self.cluster.lock().await.kill(victim);
            match result {
                Ok(()) => format!("kill -9 {name} ({role} at log index {behind}) so that it falls behind"),
                Err(error) => format!("kill -9 {name} failed: {error}"),
            }
        } else {
            self.network.apply(&isolate(n, victim));
            format!("isolated {name} ({role} at log index {behind}) so that it falls behind")
        };
        self.record("start", Some(KIND), detail, start, Some(victim));
        let mut in_force = if killed_to_fall_behind {
            Fault::Killed(vec![victim])
        } else {
            Fault::Partition(isolate(n, victim))
        };

        // 2. Until the leader's log is compacted past it (at most 3/5 of the fault).
        let start = self.history.now();
        let target = compacted_past(behind, count);
        let behind_until = began + until.saturating_duration_since(began) * 3 / 5;
        let mut reached = 0;
        while Instant::now() < behind_until {
            let samples = sample_all(&self.clients, &self.history, Duration::from_millis(300)).await;
            reached = reached.max(leader_index(&samples, &name));
            if reached >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let verdict = if reached >= target {
            "it can only catch up through a snapshot"
        } else {
            "it may not be far enough behind to need a snapshot"
        };
        let detail = format!(
            "the others' log reached index {reached} (snapshot count {count}, {name} at {behind}): {verdict}"
        );
        self.record("step", Some(KIND), detail, start, Some(victim));

        // 3. Back, and killed -9 while a snapshot comes in; up to KILLS times.
        let mut kills = 0;
        while kills < KILLS && Instant::now() + Duration::from_millis(500) < until {
            let start = self.history.now();
            let old_files = incoming_files(&snap_dir);
            let installs_before = installs_in(&log);
            let how = match in_force {
                Fault::Killed(_) => {
                    self.cluster.lock().await.restart(victim)?;
                    "restarted"
                }
                _ => {
                    self.network.heal_all();
                    "healed the links of"
                }
            };
            in_force = Fault::Partition(Grudge::new(n));
            self.record(
                "step",
                Some(KIND),
                format!(
                    "{how} {name}; watching {} for an incoming snapshot",
                    snap_dir.display()
                ),
                start,
                Some(victim),
            );
            let watch_until = until.min(Instant::now() + TRANSFER_WAIT);
            let crashes_of = |crashed: &[String]| crashed.iter().filter(|c| **c == name).count();
            let crashes_before = crashes_of(&self.crashed);
            let mut seen = None;
            while Instant::now() < watch_until {
                if let Some(file) = incoming_files(&snap_dir)
                    .into_iter()
                    .find(|f| !old_files.contains(f))
                {
                    seen = Some(file);
                    break;
                }
                // Crashed members (this one or others) are recorded and
                // restarted; a crashed victim ends the kills.
                self.note_crashes().await?;
                if crashes_of(&self.crashed) > crashes_before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let start = self.history.now();
            let Some(file) = seen else {
                let installs = installs_in(&log) - installs_before;
                let detail = if crashes_of(&self.crashed) > crashes_before {
                    format!("{name} exited on its own before any incoming snapshot ({installs} installs finished meanwhile); stop killing")
                } else {
                    format!(
                        "no incoming snapshot on {name} within {:.1} s ({installs} installs finished meanwhile); stop killing",
                        TRANSFER_WAIT.as_secs_f64()
                    )
                };
                self.record("step", Some(KIND), detail, start, Some(victim));
                break;
            };
            let delay = Duration::from_millis(*KILL_DELAYS_MS.choose(&mut self.rng).unwrap_or(&0));
            tokio::time::sleep(delay).await;
            // A member that exited on its own is recorded, not killed (the
            // kill would reap it and hide the crash).
            self.note_crashes().await?;
            let result = self.cluster.lock().await.kill(victim);
            let still_there = snap_dir.join(&file).exists();
            let installed = installs_in(&log) > installs_before;
            let phase = match (still_there, installed) {
                (true, _) => "before the snapshot was committed (during its transfer or install)",
                (false, true) => "after the install finished",
                (false, false) => "after the incoming file went away without an install logged",
            };
            let detail = match result {
                Ok(()) => format!(
                    "kill -9 {name} {} ms after {file} appeared: {phase}",
                    delay.as_millis()
                ),
                Err(error) => format!("kill -9 {name} failed ({error}); it may have exited on its own"),
            };
            self.record("step", Some(KIND), detail, start, Some(victim));
            in_force = Fault::Killed(vec![victim]);
            kills += 1;
        }

        // 4. Restarted on its data dir; it must come up and catch up.
        if let Fault::Killed(_) = in_force {
            if Instant::now() >= until {
                return Ok(in_force);
            }
            let start = self.history.now();
            self.cluster.lock().await.restart(victim)?;
            self.record(
                "step",
                Some(KIND),
                format!("restarted {name} on its data dir"),
                start,
                Some(victim),
            );
        }
        self.await_catch_up(victim, until, installs_at_start, &log)
            .await?;
        Ok(Fault::Partition(Grudge::new(n)))
    }

    /// Waits until `victim` has applied what the others had applied when
    /// the wait began (or `until`); records the outcome. A member that exits
    /// on its own meanwhile is recorded and restarted by `note_crashes`.
    async fn await_catch_up(
        &mut self,
        victim: usize,
        until: Instant,
        installs_at_start: usize,
        log: &Path,
    ) -> Result<(), NemesisError> {
        let start = self.history.now();
        let name = self.members[victim].name.clone();
        let mut goal = None;
        let mut applied = None;
        while Instant::now() < until {
            self.note_crashes().await?;
            let samples = sample_all(&self.clients, &self.history, Duration::from_millis(300)).await;
            let others = samples
                .iter()
                .filter(|s| s.member != name)
                .map(|s| s.applied_index)
                .max();
            if goal.is_none() {
                goal = others;
            }
            applied = samples.iter().find(|s| s.member == name).map(|s| s.applied_index);
            if let (Some(goal), Some(applied)) = (goal, applied) {
                if applied >= goal {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let installs = installs_in(log).saturating_sub(installs_at_start);
        let caught_up = matches!((goal, applied), (Some(g), Some(a)) if a >= g);
        let detail = match (caught_up, applied) {
            (true, Some(applied)) => format!(
                "{name} caught up (applied index {applied}); {installs} snapshot installs in its log during this fault"
            ),
            (_, applied) => format!(
                "{name} did not catch up before the fault ended (applied {}, the others at {}); {installs} snapshot installs in its log during this fault",
                applied.map_or("unknown".to_string(), |a| a.to_string()),
                goal.map_or("unknown".to_string(), |g| g.to_string()),
            ),
        };
        self.record("stop", Some(KIND), detail, start, Some(victim));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_is_awaited_past_two_snapshot_counts() {
        assert_eq!(compacted_past(1000, 200), 1464);
        assert_eq!(compacted_past(u64::MAX - 1, 200), u64::MAX);
    }

    #[test]
    fn only_incoming_partial_files_count_as_transfers() {
        assert!(is_incoming("incoming-1733000000000000000.partial"));
        assert!(!is_incoming("build-1733000000000000000.partial"));
        assert!(!is_incoming("current.meta.partial"));
        assert!(!is_incoming("snapshot-3-1-200.data"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("incoming-7.partial"), b"").unwrap();
        std::fs::write(dir.path().join("snapshot-x.data"), b"").unwrap();
        assert_eq!(incoming_files(dir.path()), vec!["incoming-7.partial".to_string()]);
        assert!(incoming_files(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn the_leader_index_ignores_the_victim() {
        let sample = |member: &str, raft_index| StatusSample {
            time: 0,
            member: member.into(),
            member_id: 1,
            leader: 1,
            term: 1,
            raft_index,
            applied_index: raft_index,
            revision: 1,
        };
        let samples = [sample("m1", 10), sample("m2", 500), sample("m3", 30)];
        assert_eq!(leader_index(&samples, "m2"), 30);
        assert_eq!(leader_index(&samples, "m1"), 500);
        assert_eq!(leader_index(&[], "m1"), 0);
    }
}
