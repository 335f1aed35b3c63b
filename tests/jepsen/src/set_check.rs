//! The `set` workload's checker. Workers add unique elements (a put of a
//! unique key under the set's prefix); after healing, one `read-all` of the
//! prefix on every member must contain every acknowledged add (none lost),
//! nothing that was never attempted, and nothing whose add definitely
//! failed. Adds whose outcome is unknown may or may not be present.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use crate::history::{f, Event, EventType};
use crate::pairing::pair_operations;
use crate::verdict::{CheckResult, Outcome};

const NAME: &str = "set";

fn element(value: &Json) -> Option<u64> {
    value.as_u64()
}

fn elements(value: &Json) -> Option<BTreeSet<u64>> {
    value.as_array()?.iter().map(Json::as_u64).collect()
}

fn sample(set: &BTreeSet<u64>) -> String {
    let shown: Vec<String> = set.iter().take(12).map(u64::to_string).collect();
    let more = if set.len() > 12 {
        format!(" … (+{})", set.len() - 12)
    } else {
        String::new()
    };
    format!("[{}{more}]", shown.join(" "))
}

/// Checks the set workload's history.
pub fn set_check(events: &[Event]) -> CheckResult {
    let pairs = match pair_operations(events) {
        Ok(pairs) => pairs,
        Err(error) => {
            return CheckResult::new(NAME, Outcome::Unknown, format!("unreadable history: {error}"))
        }
    };
    let (mut attempted, mut acked, mut failed, mut unknown) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut reads: Vec<(String, BTreeSet<u64>)> = Vec::new();
    let mut unread: Vec<String> = Vec::new();
    for pair in &pairs {
        match pair.invoke.f.as_str() {
            f::ADD => {
                let Some(value) = element(&pair.invoke.value) else {
                    return CheckResult::new(
                        NAME,
                        Outcome::Unknown,
                        format!("line {}: bad add", pair.invoke.index),
                    );
                };
                attempted.insert(value);
                match pair.outcome() {
                    EventType::Ok => acked.insert(value),
                    EventType::Fail => failed.insert(value),
                    _ => unknown.insert(value),
                };
            }
            f::READ_ALL => {
                let node = pair
                    .invoke
                    .node
                    .clone()
                    .unwrap_or_else(|| format!("process {}", pair.process()));
                match (pair.outcome(), pair.completion.and_then(|c| elements(&c.value))) {
                    (EventType::Ok, Some(set)) => reads.push((node, set)),
                    _ => unread.push(node),
                }
            }
            _ => {}
        }
    }
    if attempted.is_empty() {
        return CheckResult::new(NAME, Outcome::Unknown, "no adds in the history");
    }
    let mut details = Vec::new();
    let mut anomaly = false;
    for (node, present) in &reads {
        let lost: BTreeSet<u64> = acked.difference(present).copied().collect();
        let unexpected: BTreeSet<u64> = present.difference(&attempted).copied().collect();
        let resurrected: BTreeSet<u64> = present.intersection(&failed).copied().collect();
        if !lost.is_empty() {
            anomaly = true;
            details.push(format!(
                "{node}: {} acknowledged adds lost: {}",
                lost.len(),
                sample(&lost)
            ));
        }
        if !unexpected.is_empty() {
            anomaly = true;
            details.push(format!(
                "{node}: {} elements never added: {}",
                unexpected.len(),
                sample(&unexpected)
            ));
        }
        if !resurrected.is_empty() {
            anomaly = true;
            details.push(format!(
                "{node}: {} elements whose add definitely failed: {}",
                resurrected.len(),
                sample(&resurrected)
            ));
        }
    }
    if let Some((first_node, first)) = reads.first() {
        for (node, present) in reads.iter().skip(1) {
            if present != first {
                anomaly = true;
                let only_there: BTreeSet<u64> = present.symmetric_difference(first).copied().collect();
                details.push(format!(
                    "{node} and {first_node} disagree on {}",
                    sample(&only_there)
                ));
            }
        }
    }
    let recovered = reads
        .first()
        .map_or(0, |(_, present)| present.intersection(&unknown).count());
    let summary = format!(
        "{} attempted, {} acknowledged, {} failed, {} unknown ({} of them present); read on {} members",
        attempted.len(),
        acked.len(),
        failed.len(),
        unknown.len(),
        recovered,
        reads.len()
    );
    for node in &unread {
        details.push(format!("{node}: the final read did not succeed"));
    }
    let outcome = if anomaly {
        Outcome::Fail
    } else if reads.is_empty() || !unread.is_empty() {
        Outcome::Unknown
    } else {
        Outcome::Pass
    };
    CheckResult::new(NAME, outcome, summary).with_details(details)
}
