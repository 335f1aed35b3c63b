//! The `lock` workload's checks, on the history alone: the increments the
//! workers attempted (each with its holder's token, the count it read and
//! the count it wrote) and the final reads of the counter and the
//! increment log, one per member, after healing.
//!
//! - `lock-counter` (no lost or doubled increment): every final read agrees;
//!   the log holds exactly the counts `1..=N`, each key written once
//!   (version 1); the counter is `N` with the last entry's token and
//!   revision; every entry is an increment that was attempted with that
//!   token and count and did not definitely fail; every acknowledged
//!   increment is in the log with its token at the revision its response
//!   named. So `N` = the acknowledged increments + a subset of the unknown.
//! - `lock-fencing` (holders never interleave): ordered by revision, the
//!   increments (the log; the acknowledged ones when no final read
//!   succeeded) have increasing counts, each token's increments form one
//!   contiguous run, and tokens (the lock keys' create revisions) increase
//!   from run to run.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;

use crate::history::{f, Event, EventType, FINAL_PROCESS_BASE};
use crate::pairing::{pair_operations, Paired};
use crate::verdict::{CheckResult, Outcome};

const COUNTER: &str = "lock-counter";
const FENCING: &str = "lock-fencing";
const SHOWN: usize = 10;

/// One increment the workers attempted.
#[derive(Debug, Clone)]
struct Attempt {
    line: u64,
    outcome: EventType,
    token: i64,
    /// The count it would write (unknown when the op never completed).
    to: Option<u64>,
    revision: Option<i64>,
}

/// One log entry (or acknowledged increment), in revision order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    count: u64,
    token: i64,
    revision: i64,
}

/// A final read: the counter `(count, token, revision)`, the log entries
/// `(count, token, revision, version)` and what could not be parsed.
#[derive(Debug, Clone, PartialEq)]
struct LockData {
    node: String,
    counter: Option<(u64, i64, i64)>,
    log: Vec<(u64, i64, i64, i64)>,
    unparsable: Vec<Json>,
}

fn parse_attempt(pair: &Paired<'_>) -> Option<Attempt> {
    let value = pair.completion.map_or(&pair.invoke.value, |c| &c.value);
    let fields = value.as_array()?;
    let token = fields.first()?.as_i64()?;
    Some(Attempt {
        line: pair.invoke.index,
        outcome: pair.outcome(),
        token,
        to: fields.get(2).and_then(Json::as_u64),
        revision: pair.completion.and_then(|c| c.revision),
    })
}

fn parse_data(pair: &Paired<'_>) -> Option<LockData> {
    let value = &pair.completion?.value;
    let counter = match value.get("counter")? {
        Json::Null => None,
        c => Some((c.get(0)?.as_u64()?, c.get(1)?.as_i64()?, c.get(2)?.as_i64()?)),
    };
    let log = value
        .get("log")?
        .as_array()?
        .iter()
        .map(|e| {
            Some((
                e.get(0)?.as_u64()?,
                e.get(1)?.as_i64()?,
                e.get(2)?.as_i64()?,
                e.get(3)?.as_i64()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(LockData {
        node: pair.invoke.node.clone().unwrap_or_default(),
        counter,
        log,
        unparsable: value.get("unparsable")?.as_array()?.clone(),
    })
}

fn result(name: &str, anomalies: Vec<String>, summary: String) -> CheckResult {
    if anomalies.is_empty() {
        return CheckResult::new(name, Outcome::Pass, summary);
    }
    let mut details: Vec<String> = anomalies.iter().take(SHOWN).cloned().collect();
    if anomalies.len() > SHOWN {
        details.push(format!("... and {} more", anomalies.len() - SHOWN));
    }
    CheckResult::new(name, Outcome::Fail, summary).with_details(details)
}

fn counter_check(attempts: &[Attempt], data: &LockData, others: &[LockData]) -> CheckResult {
    let mut anomalies = Vec::new();
    for other in others
        .iter()
        .filter(|o| (&o.counter, &o.log) != (&data.counter, &data.log))
    {
        anomalies.push(format!(
            "the final reads disagree: {} read counter {:?} and {} log entries, {} read {:?} and {}",
            data.node,
            data.counter,
            data.log.len(),
            other.node,
            other.counter,
            other.log.len()
        ));
    }
    for raw in &data.unparsable {
        anomalies.push(format!("a key this workload never writes, or a bad value: {raw}"));
    }
    let n = data.log.len() as u64;
    for (expected, &(count, token, _, version)) in (1..).zip(&data.log) {
        if count != expected {
            anomalies.push(format!(
                "log entry {count} where {expected} was due (a lost or skipped count)"
            ));
            break;
        }
        if version != 1 {
            anomalies.push(format!(
                "log entry {count} (token {token}) was written {version} times (a doubled increment)"
            ));
        }
    }
    match (data.counter, data.log.last()) {
        (None, None) => {}
        (Some((count, token, revision)), Some(&(last, last_token, last_revision, _))) => {
            if (count, token, revision) != (last, last_token, last_revision) {
                anomalies.push(format!(
                    "the counter is {count} (token {token}, revision {revision}) but the last log entry is {last} (token {last_token}, revision {last_revision})"
                ));
            }
        }
        (counter, last) => anomalies.push(format!(
            "the counter {counter:?} and the last log entry {last:?} disagree"
        )),
    }
    let mut by_token: HashMap<i64, Vec<&Attempt>> = HashMap::new();
    for attempt in attempts {
        by_token.entry(attempt.token).or_default().push(attempt);
    }
    let mut unknown_applied = 0;
    for &(count, token, _, _) in &data.log {
        let candidates = by_token.get(&token).map(Vec::as_slice).unwrap_or_default();
        // An acknowledged match first: an unknown attempt with the same
        // token and count may have been retried by an acknowledged one.
        let matching = candidates
            .iter()
            .filter(|a| a.to.is_none_or(|to| to == count) && a.outcome != EventType::Fail)
            .min_by_key(|a| a.outcome != EventType::Ok);
        match matching {
            Some(attempt) if attempt.outcome != EventType::Ok => unknown_applied += 1,
            Some(_) => {}
            None => anomalies.push(format!(
                "log entry {count} with token {token} matches no increment that may have happened (attempts with that token: {})",
                candidates
                    .iter()
                    .map(|a| format!("line {} {:?} to {:?}", a.line, a.outcome, a.to))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    let log: BTreeMap<u64, (i64, i64)> = data.log.iter().map(|&(c, t, r, _)| (c, (t, r))).collect();
    let acknowledged: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome == EventType::Ok).collect();
    for attempt in &acknowledged {
        let found = attempt.to.and_then(|to| log.get(&to));
        let fits = found.is_some_and(|&(token, revision)| {
            token == attempt.token && attempt.revision.is_none_or(|r| r == revision)
        });
        if !fits {
            anomalies.push(format!(
                "acknowledged increment (line {}, token {}, to {:?}, revision {:?}) is not in the log: found {found:?} (a lost increment)",
                attempt.line, attempt.token, attempt.to, attempt.revision
            ));
        }
    }
    let unknown = attempts.iter().filter(|a| a.outcome == EventType::Info).count();
    let summary = format!(
        "counter {n} = {} acknowledged + {unknown_applied} of {unknown} unknown increments ({} definitely failed); {} final reads agree",
        acknowledged.len(),
        attempts.iter().filter(|a| a.outcome == EventType::Fail).count(),
        others.len() + 1
    );
    result(COUNTER, anomalies, summary)
}

fn fencing_check(mut applied: Vec<Applied>, source: &str) -> CheckResult {
    applied.sort_by_key(|a| a.revision);
    let mut anomalies = Vec::new();
    let mut runs = 0;
    for pair in applied.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after.count <= before.count {
            anomalies.push(format!(
                "count {} at revision {} after count {} at revision {}",
                after.count, after.revision, before.count, before.revision
            ));
        }
        if after.token < before.token {
            anomalies.push(format!(
                "token {} (count {}, revision {}) after token {} (count {}, revision {}): holders interleaved or went back",
                after.token, after.count, after.revision, before.token, before.count, before.revision
            ));
        }
        if after.token != before.token {
            runs += 1;
        }
    }
    if !applied.is_empty() {
        runs += 1;
    }
    let summary = format!(
        "{} increments ({source}) in revision order: {runs} holder runs, tokens increasing",
        applied.len()
    );
    result(FENCING, anomalies, summary)
}

/// The lock workload's two checks.
pub fn lock_checks(events: &[Event]) -> Vec<CheckResult> {
    let unknown = |why: String| {
        [COUNTER, FENCING]
            .into_iter()
            .map(|name| CheckResult::new(name, Outcome::Unknown, why.clone()))
            .collect()
    };
    let pairs = match pair_operations(events) {
        Ok(pairs) => pairs,
        Err(error) => return unknown(format!("unreadable history: {error}")),
    };
    let mut attempts = Vec::new();
    let mut reads = Vec::new();
    for pair in &pairs {
        match pair.invoke.f.as_str() {
            f::INCREMENT => match parse_attempt(pair) {
                Some(attempt) => attempts.push(attempt),
                None => return unknown(format!("line {}: unreadable increment", pair.invoke.index)),
            },
            f::READ_LOCK_DATA if pair.process() >= FINAL_PROCESS_BASE && pair.outcome() == EventType::Ok => {
                match parse_data(pair) {
                    Some(data) => reads.push(data),
                    None => return unknown(format!("line {}: unreadable final read", pair.invoke.index)),
                }
            }
            _ => {}
        }
    }
    let acknowledged: Vec<Applied> = attempts
        .iter()
        .filter(|a| a.outcome == EventType::Ok)
        .filter_map(|a| {
            Some(Applied {
                count: a.to?,
                token: a.token,
                revision: a.revision?,
            })
        })
        .collect();
    let Some((data, others)) = reads.split_first() else {
        return vec![
            CheckResult::new(
                COUNTER,
                Outcome::Unknown,
                "no final read of the counter succeeded",
            ),
            fencing_check(acknowledged, "acknowledged, no final read"),
        ];
    };
    let logged = data
        .log
        .iter()
        .map(|&(count, token, revision, _)| Applied {
            count,
            token,
            revision,
        })
        .collect();
    vec![
        counter_check(&attempts, data, others),
        fencing_check(logged, "the final log"),
    ]
}

#[cfg(test)]
#[path = "lock_check_tests.rs"]
mod tests;
