//! The `partition-leader-pair` nemesis: a scripted fault that builds, on
//! its own, the partitions of a "retried write applied twice" bug. Each
//! round: (1) the leader L and one follower F are cut off together, so what
//! L appends reaches only F and cannot commit; (2) after a randomized wait
//! in which the other members may elect a new leader N, the links are
//! rearranged into a NEW majority around F that leaves out L and (on 5
//! members) N, with L and N still connected to each other: N can truncate
//! L's uncommitted entries (a write that keel then retries through N),
//! while F, still holding them, may win the next term and commit them;
//! (3) every link heals. Rounds repeat while the fault interval allows.
//!
//! The shape needs 5 members: on 3, the leader and a follower are a
//! majority, so L's entries still commit during step (1), and step (2)
//! (`F + third | L`) only moves the leadership to F's side. It runs on 3
//! members all the same, as a plain leader-change fault.
//!
//! F can win only if its log is at least as up to date as the other
//! members of the new majority: if N's first entries of its term already
//! reached them, one of them wins instead and F's extra entries are
//! truncated. The wait in step (2) is therefore drawn from "shorter than an
//! election" to "a few elections", so some rounds cut N off before (or
//! while) it is elected.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

use super::{Fault, Nemesis, NemesisError};
use crate::config::NemesisKind;
use crate::monitor::{leader_in, sample_all};
use crate::partition::{leader_pair, stale_majority, Grudge};

const KIND: NemesisKind = NemesisKind::PartitionLeaderPair;

/// How long each step of a round lasts, in election timeouts.
struct Steps {
    /// Step (1): the pair cut off, from half an election timeout to three.
    pair: Duration,
    /// Step (2): the new majority, long enough for F to be elected.
    majority: Duration,
    /// After step (3): a quiet spell before the next round.
    quiet: Duration,
}

/// The steps of one round that fits in `left`, or None when none fits.
fn plan(left: Duration, election: Duration, rng: &mut impl Rng) -> Option<Steps> {
    let shortest_pair = election / 2;
    let shortest_majority = election * 2;
    if left < shortest_pair + shortest_majority {
        return None;
    }
    let longest_pair = (election * 3).min(left - shortest_majority).max(shortest_pair);
    let pair = rng.gen_range(shortest_pair..=longest_pair);
    let majority = (election * 4).min(left - pair);
    let quiet = (election * 2).min(left - pair - majority);
    Some(Steps {
        pair,
        majority,
        quiet,
    })
}

impl Nemesis {
    fn side(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| self.members[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs rounds until `until`; returns the partition still in force (none:
    /// every round ends healed).
    pub(super) async fn leader_pair_rounds(&mut self, until: Instant) -> Result<Fault, NemesisError> {
        let n = self.members.len();
        let mut told_no_leader = false;
        loop {
            self.note_crashes().await?;
            let left = until.saturating_duration_since(Instant::now());
            let Some(steps) = plan(left, self.election_timeout, &mut self.rng) else {
                break;
            };
            let start = self.history.now();
            let Some(leader) = self.leader().await else {
                if !told_no_leader {
                    told_no_leader = true;
                    self.record(
                        "start",
                        Some(KIND),
                        "no leader known; waiting".into(),
                        start,
                        None,
                    );
                }
                tokio::time::sleep(self.election_timeout.min(left)).await;
                continue;
            };
            let others: Vec<usize> = (0..n).filter(|&m| m != leader).collect();
            let Some(&follower) = others.choose(&mut self.rng) else {
                break;
            };

            // (1) The leader and one follower alone together.
            let (_, rest, grudge) = leader_pair(n, leader, follower);
            self.network.apply(&grudge);
            let reach = if 2 < n / 2 + 1 {
                format!("the leader's new entries reach 2 of {n} and cannot commit")
            } else {
                format!("2 of {n} are a majority: the leader's entries still commit")
            };
            let detail = format!(
                "cut the leader {} with the follower {} | {}: {reach}",
                self.members[leader].name,
                self.members[follower].name,
                self.side(&rest)
            );
            self.record("start", Some(KIND), detail, start, Some(leader));
            tokio::time::sleep(steps.pair).await;

            // (2) A new majority around the follower, without either leader.
            let start = self.history.now();
            let mut samples = sample_all(&self.clients, &self.history, Duration::from_millis(300)).await;
            samples.retain(|s| rest.iter().any(|&i| self.members[i].name == s.member));
            let elected = leader_in(&samples, &self.members);
            let new_leader = match elected {
                Some(new) => Some(new),
                None if n >= 5 => rest.choose(&mut self.rng).copied(),
                None => None,
            };
            let (majority, minority, grudge) = stale_majority(n, leader, follower, new_leader);
            self.network.apply(&grudge);
            let who = match (elected, new_leader) {
                (Some(new), _) => format!("the new leader {}", self.members[new].name),
                (None, Some(new)) => format!(
                    "{} (no new leader yet; left out as if it led)",
                    self.members[new].name
                ),
                (None, None) => "no new leader".to_string(),
            };
            let detail = format!(
                "new majority {} around {} (holding {}'s uncommitted entries) | {}: left out the old leader {} and {who}, {:.2} s after the first cut",
                self.side(&majority),
                self.members[follower].name,
                self.members[leader].name,
                self.side(&minority),
                self.members[leader].name,
                steps.pair.as_secs_f64(),
            );
            self.record("step", Some(KIND), detail, start, Some(follower));
            tokio::time::sleep(steps.majority).await;

            // (3) Everything heals; the record says who led the new majority.
            let start = self.history.now();
            let mut samples = sample_all(&self.clients, &self.history, Duration::from_millis(300)).await;
            samples.retain(|s| majority.iter().any(|&i| self.members[i].name == s.member));
            let winner = match leader_in(&samples, &self.members) {
                Some(w) if w == follower => {
                    format!("{} (the follower) led the new majority", self.members[w].name)
                }
                Some(w) => format!("{} (not the follower) led the new majority", self.members[w].name),
                None => "no leader known in the new majority".to_string(),
            };
            self.network.heal_all();
            let pairs: Vec<String> = grudge
                .pairs()
                .map(|(a, b)| format!("{}-{}", self.members[a].name, self.members[b].name))
                .collect();
            self.record(
                "step",
                Some(KIND),
                format!("{winner}; healed {}", pairs.join(" ")),
                start,
                None,
            );
            tokio::time::sleep(steps.quiet).await;
        }
        Ok(Fault::Partition(Grudge::new(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_round_fits_in_what_is_left_and_varies_its_first_cut() {
        let election = Duration::from_millis(500);
        let mut rng = StdRng::seed_from_u64(3);
        let mut pairs = Vec::new();
        for left_ms in [1250u64, 2000, 3000, 5000, 10_000] {
            let left = Duration::from_millis(left_ms);
            for _ in 0..50 {
                let steps = plan(left, election, &mut rng).expect("a round fits");
                assert!(steps.pair + steps.majority + steps.quiet <= left);
                assert!(steps.pair >= election / 2 && steps.pair <= election * 3);
                assert!(steps.majority >= election * 2, "time for the follower to win");
                pairs.push(steps.pair);
            }
        }
        assert!(
            pairs.iter().any(|p| *p < election),
            "some rounds cut before an election"
        );
        assert!(pairs.iter().any(|p| *p > election * 2), "some after one");
        assert!(plan(Duration::from_millis(1000), election, &mut rng).is_none());
    }
}
