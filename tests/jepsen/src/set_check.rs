//! The `set` workload's checker. Workers add unique elements (a put of a
//! unique key under the set's prefix); after healing, one `read-all` of the
//! prefix on every member must contain every acknowledged add (none lost),
//! nothing that was never attempted, and nothing whose add definitely
//! failed. Adds whose outcome is unknown may or may not be present, but
//! the final reads are linearizable and taken one after another, so an
//! element one of them saw must be in every later one (an unknown add may
//! appear late, never vanish). A member counts as read when any of its
//! read attempts succeeded (the harness retries a read that failed).

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

/// One successful final read: who answered, when it started and ended,
/// and what it saw.
struct FinalRead {
    node: String,
    start: u64,
    end: u64,
    present: BTreeSet<u64>,
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
    let mut reads: Vec<FinalRead> = Vec::new();
    let mut asked: BTreeSet<String> = BTreeSet::new();
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
                asked.insert(node.clone());
                let seen = pair.completion.and_then(|c| elements(&c.value));
                if let (EventType::Ok, Some(present), Some(end)) = (pair.outcome(), seen, pair.end()) {
                    reads.push(FinalRead {
                        node,
                        start: pair.invoke.start,
                        end,
                        present,
                    });
                } else if pair.outcome() == EventType::Ok {
                    return CheckResult::new(
                        NAME,
                        Outcome::Unknown,
                        format!("line {}: unreadable read-all value", pair.invoke.index),
                    );
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
    for read in &reads {
        let lost: BTreeSet<u64> = acked.difference(&read.present).copied().collect();
        let unexpected: BTreeSet<u64> = read.present.difference(&attempted).copied().collect();
        let resurrected: BTreeSet<u64> = read.present.intersection(&failed).copied().collect();
        for (what, set) in [
            ("acknowledged adds lost", &lost),
            ("elements never added", &unexpected),
            ("elements whose add definitely failed", &resurrected),
        ] {
            if !set.is_empty() {
                anomaly = true;
                details.push(format!("{}: {} {what}: {}", read.node, set.len(), sample(set)));
            }
        }
    }
    // An element seen by a read that ended before another began must be in
    // that later read too.
    for earlier in &reads {
        for later in reads.iter().filter(|r| r.start > earlier.end) {
            let vanished: BTreeSet<u64> = earlier.present.difference(&later.present).copied().collect();
            if !vanished.is_empty() {
                anomaly = true;
                details.push(format!(
                    "{} no longer has {} elements {} had read before: {}",
                    later.node,
                    vanished.len(),
                    earlier.node,
                    sample(&vanished)
                ));
            }
        }
    }
    let read_nodes: BTreeSet<String> = reads.iter().map(|r| r.node.clone()).collect();
    let unread: Vec<&String> = asked.difference(&read_nodes).collect();
    let recovered = reads
        .last()
        .map_or(0, |read| read.present.intersection(&unknown).count());
    let summary = format!(
        "{} attempted, {} acknowledged, {} failed, {} unknown ({} of them present); read on {} members",
        attempted.len(),
        acked.len(),
        failed.len(),
        unknown.len(),
        recovered,
        read_nodes.len()
    );
    for node in &unread {
        details.push(format!("{node}: no final read succeeded"));
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
