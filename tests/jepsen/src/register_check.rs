//! The register workloads' checker: turns the history's read / write / cas
//! operations into one register history per key (keys are independent, so
//! each is checked alone), runs the linearizability search on each under a
//! shared time bound, and for a failing key prints the smallest failing
//! sub-history the shrinker finds.
//!
//! Outcome mapping: an `ok` read constrains the state; a read that failed or
//! timed out tells nothing and is dropped; a write or CAS that `fail`ed with
//! an error did not happen and is dropped; a CAS that `fail`ed without an
//! error ran and found a different value; an `info` (or never completed)
//! write or CAS may or may not have taken effect.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::history::{f, Event, EventType};
use crate::linearizable::{check_register, Budget, Linearizability};
use crate::model::{Op, RegOp};
use crate::pairing::{pair_operations, Paired, PairingError};
use crate::shrink::shrink;
use crate::verdict::{CheckResult, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum RegisterHistoryError {
    #[error(transparent)]
    Pairing(#[from] PairingError),
    #[error("line {line}: {f} value {value} is not what the register workload records")]
    BadValue { line: u64, f: String, value: String },
}

/// Limits for checking one history.
#[derive(Debug, Clone)]
pub struct CheckLimits {
    /// Wall-clock bound for the linearizability search over all keys.
    pub search: Duration,
    /// Step bound for the search over all keys.
    pub steps: u64,
    /// Wall-clock bound for shrinking each failing key.
    pub shrink: Duration,
    /// How many failing keys to shrink and print.
    pub keys_to_report: usize,
}

impl Default for CheckLimits {
    fn default() -> CheckLimits {
        CheckLimits {
            search: Duration::from_secs(120),
            steps: 2_000_000_000,
            shrink: Duration::from_secs(10),
            keys_to_report: 3,
        }
    }
}

fn as_u64(value: &Json, event: &Event) -> Result<u64, RegisterHistoryError> {
    value.as_u64().ok_or_else(|| bad(event, value))
}

fn bad(event: &Event, value: &Json) -> RegisterHistoryError {
    RegisterHistoryError::BadValue {
        line: event.index,
        f: event.f.clone(),
        value: value.to_string(),
    }
}

fn cas_args(event: &Event) -> Result<(u64, u64), RegisterHistoryError> {
    match event.value.as_array().map(Vec::as_slice) {
        Some([from, to]) => Ok((as_u64(from, event)?, as_u64(to, event)?)),
        _ => Err(bad(event, &event.value)),
    }
}

/// The register op a paired operation contributes, or `None` if it tells
/// the checker nothing.
fn register_op(pair: &Paired<'_>) -> Result<Option<Op>, RegisterHistoryError> {
    let invoke = pair.invoke;
    let outcome = pair.outcome();
    let definite_error = pair.completion.is_some_and(|c| c.error.is_some());
    let op = match (invoke.f.as_str(), outcome) {
        (f::READ, EventType::Ok) => {
            let Some(completion) = pair.completion else {
                return Ok(None);
            };
            let seen = match &completion.value {
                Json::Null => None,
                other => Some(as_u64(other, completion)?),
            };
            RegOp::Read(seen)
        }
        (f::READ, _) => return Ok(None),
        (f::WRITE, EventType::Ok | EventType::Info) => RegOp::Write(as_u64(&invoke.value, invoke)?),
        (f::WRITE, _) => return Ok(None),
        (f::CAS, EventType::Ok) => {
            let (from, to) = cas_args(invoke)?;
            RegOp::CasOk { from, to }
        }
        (f::CAS, EventType::Fail) if !definite_error => RegOp::CasFail {
            from: cas_args(invoke)?.0,
        },
        (f::CAS, EventType::Info) => {
            let (from, to) = cas_args(invoke)?;
            RegOp::CasUnknown { from, to }
        }
        _ => return Ok(None),
    };
    let ret = if outcome == EventType::Info {
        None
    } else {
        pair.end()
    };
    Ok(Some(Op {
        process: pair.process(),
        call: invoke.start,
        ret,
        op,
        line: invoke.index,
    }))
}

/// Splits the register operations of a history by key.
pub fn register_histories(events: &[Event]) -> Result<BTreeMap<String, Vec<Op>>, RegisterHistoryError> {
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for pair in pair_operations(events)? {
        let Some(key) = &pair.invoke.key else { continue };
        if let Some(op) = register_op(&pair)? {
            by_key.entry(key.clone()).or_default().push(op);
        }
    }
    Ok(by_key)
}

/// What the search said about one key.
#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    pub verdict: Linearizability,
    /// For a failing key that was shrunk: the small failing sub-history.
    pub witness: Option<Vec<Op>>,
}

/// Checks every key's history. Keys are searched smallest first, each with
/// an equal share of the time and steps left; the keys that ran out get a
/// second try with whatever the others left unused.
pub fn check_keys(by_key: &BTreeMap<String, Vec<Op>>, limits: &CheckLimits) -> Vec<KeyVerdict> {
    let deadline = Instant::now() + limits.search;
    let mut keys: Vec<(&String, &Vec<Op>)> = by_key.iter().collect();
    keys.sort_by_key(|(key, ops)| (ops.len(), key.as_str()));
    let mut steps_left = limits.steps;
    let mut verdicts: Vec<Linearizability> = Vec::with_capacity(keys.len());
    let search = |ops: &[Op], keys_left: usize, steps_left: &mut u64| {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let keys_left = u32::try_from(keys_left).unwrap_or(u32::MAX).max(1);
        let step_share = *steps_left / u64::from(keys_left);
        let mut budget = Budget::new(remaining / keys_left, step_share.max(1));
        let verdict = check_register(ops, &mut budget);
        *steps_left = steps_left.saturating_sub(step_share.saturating_sub(budget.steps_left()));
        verdict
    };
    for (position, (_, ops)) in keys.iter().enumerate() {
        verdicts.push(search(ops, keys.len() - position, &mut steps_left));
    }
    let unknown: Vec<usize> = (0..keys.len())
        .filter(|&i| matches!(verdicts[i], Linearizability::Unknown { .. }))
        .collect();
    for (position, &index) in unknown.iter().enumerate() {
        if Instant::now() >= deadline || steps_left == 0 {
            break;
        }
        verdicts[index] = search(keys[index].1, unknown.len() - position, &mut steps_left);
    }
    let mut shrunk = 0usize;
    let mut results: Vec<KeyVerdict> = keys
        .iter()
        .zip(verdicts)
        .map(|((key, ops), verdict)| {
            let mut witness = None;
            if matches!(verdict, Linearizability::NotLinearizable { .. }) && shrunk < limits.keys_to_report {
                shrunk += 1;
                let kept = shrink(ops, limits.shrink);
                witness = Some(kept.into_iter().map(|i| ops[i].clone()).collect());
            }
            KeyVerdict {
                key: (*key).clone(),
                ops: ops.len(),
                verdict,
                witness,
            }
        })
        .collect();
    results.sort_by(|a, b| a.key.cmp(&b.key));
    results
}

fn secs(ns: u64) -> String {
    format!("{:.6}s", ns as f64 / 1e9)
}

/// Renders ops as one line each: process, interval, operation, history line.
pub fn render_ops(ops: &[Op]) -> Vec<String> {
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|op| (op.call, op.line));
    sorted
        .iter()
        .map(|op| {
            let end = op.ret.map_or_else(|| "   (never returned)".to_string(), secs);
            format!(
                "process {:>4}  [{:>12}, {:>19}]  {:<22} (history line {})",
                op.process,
                secs(op.call),
                end,
                op.op.to_string(),
                op.line
            )
        })
        .collect()
}

/// The `linearizability` check over a whole history.
pub fn linearizability_check(events: &[Event], limits: &CheckLimits) -> CheckResult {
    named_linearizability_check("linearizability", events, limits)
}

/// The same check under another name (e.g. over a history with its reads
/// removed).
pub fn named_linearizability_check(name: &str, events: &[Event], limits: &CheckLimits) -> CheckResult {
    let by_key = match register_histories(events) {
        Ok(by_key) => by_key,
        Err(error) => {
            return CheckResult::new(name, Outcome::Unknown, format!("unreadable history: {error}"))
        }
    };
    if by_key.is_empty() {
        return CheckResult::new(name, Outcome::Unknown, "no register operations in the history");
    }
    let total_ops: usize = by_key.values().map(Vec::len).sum();
    let verdicts = check_keys(&by_key, limits);
    let failing: Vec<&KeyVerdict> = verdicts
        .iter()
        .filter(|v| matches!(v.verdict, Linearizability::NotLinearizable { .. }))
        .collect();
    let unknown: Vec<&KeyVerdict> = verdicts
        .iter()
        .filter(|v| matches!(v.verdict, Linearizability::Unknown { .. }))
        .collect();
    let mut details = Vec::new();
    let mut not_shrunk: Vec<&str> = Vec::new();
    for verdict in &failing {
        let Some(witness) = &verdict.witness else {
            not_shrunk.push(&verdict.key);
            continue;
        };
        details.push(format!(
            "key {}: not linearizable ({} ops); smallest failing sub-history found ({} ops):",
            verdict.key,
            verdict.ops,
            witness.len()
        ));
        details.extend(render_ops(witness).into_iter().map(|line| format!("  {line}")));
    }
    if !not_shrunk.is_empty() {
        const LISTED: usize = 10;
        let more = not_shrunk.len().saturating_sub(LISTED);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        details.push(format!(
            "also not linearizable (not shrunk): {}{tail}",
            not_shrunk[..not_shrunk.len().min(LISTED)].join(", ")
        ));
    }
    for verdict in &unknown {
        if let Linearizability::Unknown { reason } = &verdict.verdict {
            details.push(format!(
                "key {}: unknown after {} ops: {reason}",
                verdict.key, verdict.ops
            ));
        }
    }
    let summary = format!(
        "{} keys, {} ops: {} linearizable, {} not, {} unknown",
        verdicts.len(),
        total_ops,
        verdicts.len() - failing.len() - unknown.len(),
        failing.len(),
        unknown.len()
    );
    let outcome = if !failing.is_empty() {
        Outcome::Fail
    } else if !unknown.is_empty() {
        Outcome::Unknown
    } else {
        Outcome::Pass
    };
    CheckResult::new(name, outcome, summary).with_details(details)
}
