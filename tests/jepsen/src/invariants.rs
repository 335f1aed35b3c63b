//! The cluster invariants checked besides the client history:
//! - election safety: at most one leader per term, over the `Status`
//!   samples taken from every member throughout the run;
//! - convergence: once everything is healed and restarted, every member
//!   reaches the same applied revision and the same keyspace hash there.
//!
//! Also derives the leader changes seen in the samples for the summary.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::verdict::{CheckResult, Outcome};

/// One `Maintenance.Status` answer from one member (one line of
/// `status.jsonl` in the run directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSample {
    /// ns since the run started.
    pub time: u64,
    /// The member's name (n1…).
    pub member: String,
    /// The member's id as it reports it.
    pub member_id: u64,
    /// The leader it believes in (0: none).
    pub leader: u64,
    pub term: u64,
    pub raft_index: u64,
    pub applied_index: u64,
    pub revision: i64,
}

/// What one member reports once the cluster is healed and quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    pub member: String,
    pub applied_index: u64,
    pub revision: i64,
    /// `HashKV` at the revision all members were compared at.
    pub hash: u32,
    pub hash_revision: i64,
}

/// At most one leader per term, over all samples of all members.
pub fn leader_per_term_check(samples: &[StatusSample]) -> CheckResult {
    const NAME: &str = "leader-per-term";
    let mut leaders: BTreeMap<u64, BTreeMap<u64, BTreeSet<String>>> = BTreeMap::new();
    for sample in samples.iter().filter(|s| s.leader != 0) {
        leaders
            .entry(sample.term)
            .or_default()
            .entry(sample.leader)
            .or_default()
            .insert(sample.member.clone());
    }
    if samples.is_empty() {
        return CheckResult::new(NAME, Outcome::Unknown, "no status samples were taken");
    }
    let mut details = Vec::new();
    for (term, by_leader) in &leaders {
        if by_leader.len() > 1 {
            let claims: Vec<String> = by_leader
                .iter()
                .map(|(leader, seen_by)| {
                    format!(
                        "{leader:x} (per {})",
                        seen_by.iter().cloned().collect::<Vec<_>>().join(",")
                    )
                })
                .collect();
            details.push(format!(
                "term {term}: {} leaders: {}",
                by_leader.len(),
                claims.join("; ")
            ));
        }
    }
    let summary = format!(
        "{} samples, {} terms with a known leader",
        samples.len(),
        leaders.len()
    );
    let outcome = if details.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    CheckResult::new(NAME, outcome, summary).with_details(details)
}

/// The distinct (term, leader) pairs in time order: how leadership moved.
pub fn leader_changes(samples: &[StatusSample]) -> Vec<(u64, u64, u64)> {
    let mut sorted: Vec<&StatusSample> = samples.iter().filter(|s| s.leader != 0).collect();
    sorted.sort_by_key(|s| s.time);
    let mut seen = BTreeSet::new();
    let mut changes = Vec::new();
    for sample in sorted {
        if seen.insert((sample.term, sample.leader)) {
            changes.push((sample.time, sample.term, sample.leader));
        }
    }
    changes
}

/// After healing, every member reached the same applied index, revision
/// and keyspace hash. `unreachable` lists members that never answered.
pub fn convergence_check(states: &[FinalState], unreachable: &[(String, String)]) -> CheckResult {
    const NAME: &str = "convergence";
    let mut details: Vec<String> = states
        .iter()
        .map(|s| {
            format!(
                "{}: applied index {}, revision {}, hash {:08x} at revision {}",
                s.member, s.applied_index, s.revision, s.hash, s.hash_revision
            )
        })
        .collect();
    details.extend(
        unreachable
            .iter()
            .map(|(member, why)| format!("{member}: no answer: {why}")),
    );
    let Some(first) = states.first() else {
        return CheckResult::new(NAME, Outcome::Unknown, "no member answered after healing")
            .with_details(details);
    };
    let same = |f: &dyn Fn(&FinalState) -> String| states.iter().all(|s| f(s) == f(first));
    let revision_agrees = same(&|s| s.revision.to_string());
    let hash_agrees = same(&|s| format!("{}@{}", s.hash, s.hash_revision));
    let applied_agrees = same(&|s| s.applied_index.to_string());
    let (outcome, summary) = if !revision_agrees || !hash_agrees {
        (
            Outcome::Fail,
            "members did not converge to one revision and keyspace hash".to_string(),
        )
    } else if !applied_agrees {
        (
            Outcome::Fail,
            "members agree on the keyspace but not on the applied index".to_string(),
        )
    } else if !unreachable.is_empty() {
        (
            Outcome::Unknown,
            format!(
                "{} members agree; {} never answered",
                states.len(),
                unreachable.len()
            ),
        )
    } else {
        (
            Outcome::Pass,
            format!(
                "{} members at revision {}, applied index {}, hash {:08x}",
                states.len(),
                first.revision,
                first.applied_index,
                first.hash
            ),
        )
    };
    CheckResult::new(NAME, outcome, summary).with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(member: &str, term: u64, leader: u64) -> StatusSample {
        StatusSample {
            time: term * 10,
            member: member.into(),
            member_id: 0,
            leader,
            term,
            raft_index: 0,
            applied_index: 0,
            revision: 1,
        }
    }

    #[test]
    fn two_leaders_in_one_term_fail() {
        let samples = vec![
            sample("n1", 2, 7),
            sample("n2", 2, 7),
            sample("n3", 2, 9),
            sample("n3", 3, 9),
        ];
        let result = leader_per_term_check(&samples);
        assert_eq!(result.outcome, Outcome::Fail);
        assert!(result.details[0].contains("term 2"));
        let ok = leader_per_term_check(&[sample("n1", 2, 7), sample("n2", 3, 9)]);
        assert_eq!(ok.outcome, Outcome::Pass);
        assert_eq!(leader_changes(&samples).len(), 3);
    }

    #[test]
    fn diverging_hashes_fail_convergence() {
        let state = |member: &str, hash| FinalState {
            member: member.into(),
            applied_index: 10,
            revision: 5,
            hash,
            hash_revision: 5,
        };
        assert_eq!(
            convergence_check(&[state("n1", 1), state("n2", 1)], &[]).outcome,
            Outcome::Pass
        );
        assert_eq!(
            convergence_check(&[state("n1", 1), state("n2", 2)], &[]).outcome,
            Outcome::Fail
        );
        let missing = vec![("n3".to_string(), "refused".to_string())];
        assert_eq!(
            convergence_check(&[state("n1", 1)], &missing).outcome,
            Outcome::Unknown
        );
    }
}
