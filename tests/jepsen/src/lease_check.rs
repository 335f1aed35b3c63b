//! The `lease` workload's checks, on the history alone.
//!
//! Sightings of a lease L: it is **alive** in `[start, end]` of a read that
//! returned a key attached to L, a keep-alive answered with TTL > 0, or a
//! TimeToLive answered with TTL >= 0; it is **gone** by the `end` of a read
//! that found one of L's keys absent although that key's put (attached to
//! L) was acknowledged before the read was invoked, of a keep-alive
//! answered TTL 0 or a TimeToLive answered -1 invoked after L's grant was
//! acknowledged, and of an acknowledged revoke. A workload key is put once
//! and never deleted by a client, and a lease never comes back, so:
//!
//! - `lease-no-resurrection`: no alive sighting of L is invoked after L
//!   was first gone (reads and lease answers are linearizable, on every
//!   member);
//! - `lease-no-early-expiry`: a gone sighting of L that no revoke can
//!   explain (no revoke of L acknowledged or of unknown outcome was
//!   invoked before the sighting ended) ends no earlier than
//!   `send + TTL - CLOCK_TOLERANCE` for L's grant and for every
//!   acknowledged keep-alive of L sent before the sighting ended. `send` is
//!   the invocation's recorded start, which precedes the real send, and the
//!   server starts a renewed TTL when it processes the renewal (later
//!   still), so the bound is conservative: only a real early expiry can
//!   break it. keel's rules only ever extend a lease past that bound (a new
//!   leader restarts every lease at its full or checkpointed, rounded-up,
//!   remaining TTL; expiry is checked once a heartbeat), so none of them
//!   needs slack beyond the clock tolerance: client and members share this
//!   machine's clock, and the 200 ms cover the history's timestamps being
//!   taken around, not at, the sends and receives.
//!
//! Operations of unknown outcome are never evidence: a grant or put of
//! unknown outcome names no lease or key the checks rely on, a keep-alive
//! of unknown outcome promises nothing, and a revoke of unknown outcome
//! excuses every later gone sighting of its lease from the early-expiry
//! check while proving nothing for the resurrection check.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;

use crate::history::{f, Event, EventType};
use crate::pairing::{pair_operations, Paired};
use crate::verdict::{CheckResult, Outcome};

/// Slack for the history's clock against the members' (same machine).
pub const CLOCK_TOLERANCE_NS: u64 = 200_000_000;
const NO_RESURRECTION: &str = "lease-no-resurrection";
const NO_EARLY_EXPIRY: &str = "lease-no-early-expiry";
/// Anomalies listed per check.
const SHOWN: usize = 10;

/// One operation that saw a lease alive or gone.
#[derive(Debug, Clone)]
struct Sighting {
    line: u64,
    start: u64,
    end: u64,
    node: String,
    what: String,
}

impl Sighting {
    fn of(pair: &Paired<'_>, end: u64, what: String) -> Sighting {
        Sighting {
            line: pair.invoke.index,
            start: pair.invoke.start,
            end,
            node: pair.invoke.node.clone().unwrap_or_default(),
            what,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} on {} [{:.3} s, {:.3} s] (line {})",
            self.what,
            self.node,
            seconds(self.start),
            seconds(self.end),
            self.line
        )
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn ttl_ns(ttl: i64) -> u64 {
    u64::try_from(ttl).unwrap_or(0).saturating_mul(1_000_000_000)
}

#[derive(Debug, Default)]
struct LeaseFacts {
    /// The acknowledged grant: (invoked, acknowledged, TTL granted).
    grant: Option<(u64, u64, i64)>,
    /// Acknowledged renewals: (invoked, TTL answered > 0).
    renewals: Vec<(u64, i64)>,
    /// Revokes that may have taken effect: (invoked, acknowledged at).
    revokes: Vec<(u64, Option<u64>)>,
    alive: Vec<Sighting>,
    gone: Vec<Sighting>,
}

impl LeaseFacts {
    fn granted_before(&self, instant: u64) -> bool {
        self.grant.is_some_and(|(_, acked, _)| acked < instant)
    }
}

/// `[lease, ttl]` of a lease answer.
fn lease_and_ttl(value: &Json) -> Option<(i64, i64)> {
    let pair = value.as_array()?;
    Some((pair.first()?.as_i64()?, pair.get(1)?.as_i64()?))
}

/// Everything the history says about each lease.
fn collect(pairs: &[Paired<'_>]) -> Result<BTreeMap<i64, LeaseFacts>, String> {
    let mut leases: BTreeMap<i64, LeaseFacts> = BTreeMap::new();
    // key → (lease, acknowledged at) for acknowledged puts.
    let mut puts: HashMap<&str, (i64, u64)> = HashMap::new();
    let bad = |pair: &Paired<'_>| format!("line {}: unreadable {}", pair.invoke.index, pair.invoke.f);
    for pair in pairs {
        let (Some(completion), Some(end)) = (pair.completion, pair.end()) else {
            continue;
        };
        if completion.kind != EventType::Ok {
            continue;
        }
        match pair.invoke.f.as_str() {
            f::LEASE_GRANT => {
                let (id, ttl) = lease_and_ttl(&completion.value).ok_or_else(|| bad(pair))?;
                leases.entry(id).or_default().grant = Some((pair.invoke.start, end, ttl));
            }
            f::LEASE_PUT => {
                let lease = pair.invoke.value.as_i64().ok_or_else(|| bad(pair))?;
                let key = pair.invoke.key.as_deref().ok_or_else(|| bad(pair))?;
                puts.insert(key, (lease, end));
            }
            _ => {}
        }
    }
    for pair in pairs {
        let start = pair.invoke.start;
        let end = pair.end();
        match (pair.invoke.f.as_str(), pair.outcome(), end) {
            (f::LEASE_REVOKE, EventType::Ok | EventType::Info, _) => {
                let lease = pair.invoke.value.as_i64().ok_or_else(|| bad(pair))?;
                let acked = end.filter(|_| pair.outcome() == EventType::Ok);
                leases.entry(lease).or_default().revokes.push((start, acked));
            }
            (f::KEEP_ALIVE | f::TIME_TO_LIVE, EventType::Ok, Some(end)) => {
                let value = pair.completion.map_or(&Json::Null, |c| &c.value);
                let (lease, ttl) = lease_and_ttl(value).ok_or_else(|| bad(pair))?;
                let facts = leases.entry(lease).or_default();
                let keep_alive = pair.invoke.f == f::KEEP_ALIVE;
                let alive = if keep_alive { ttl > 0 } else { ttl >= 0 };
                let what = format!("{} of {lease:x} answered TTL {ttl}", pair.invoke.f);
                if alive {
                    if keep_alive {
                        facts.renewals.push((start, ttl));
                    }
                    facts.alive.push(Sighting::of(pair, end, what));
                } else if facts.granted_before(start) {
                    facts.gone.push(Sighting::of(pair, end, what));
                }
            }
            (f::LEASE_READ, EventType::Ok, Some(end)) => {
                let key = pair.invoke.key.as_deref().ok_or_else(|| bad(pair))?;
                let value = pair.completion.map_or(&Json::Null, |c| &c.value);
                match value.as_i64() {
                    Some(lease) => {
                        let what = format!("read of {key} found it attached to {lease:x}");
                        leases
                            .entry(lease)
                            .or_default()
                            .alive
                            .push(Sighting::of(pair, end, what));
                    }
                    None if value.is_null() => {
                        if let Some(&(lease, put_acked)) = puts.get(key) {
                            if put_acked < start {
                                let what = format!("read of {key} (attached to {lease:x}) found it absent");
                                leases
                                    .entry(lease)
                                    .or_default()
                                    .gone
                                    .push(Sighting::of(pair, end, what));
                            }
                        }
                    }
                    None => return Err(bad(pair)),
                }
            }
            _ => {}
        }
    }
    Ok(leases)
}

/// When L was first known gone, and by what.
fn first_gone(facts: &LeaseFacts) -> Option<(u64, String)> {
    let revoked = facts
        .revokes
        .iter()
        .filter_map(|&(start, acked)| {
            acked.map(|end| {
                (
                    end,
                    format!("a revoke [{:.3} s, {:.3} s]", seconds(start), seconds(end)),
                )
            })
        })
        .min_by_key(|(end, _)| *end);
    let seen = facts
        .gone
        .iter()
        .min_by_key(|s| s.end)
        .map(|s| (s.end, s.describe()));
    match (revoked, seen) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn resurrection_check(leases: &BTreeMap<i64, LeaseFacts>) -> CheckResult {
    let mut anomalies = Vec::new();
    let mut gone_leases = 0;
    for (id, facts) in leases {
        let Some((gone_at, how)) = first_gone(facts) else {
            continue;
        };
        gone_leases += 1;
        for alive in facts.alive.iter().filter(|s| s.start > gone_at) {
            anomalies.push(format!(
                "lease {id:x} was gone by {:.3} s ({how}), yet {} was invoked after",
                seconds(gone_at),
                alive.describe()
            ));
        }
    }
    let sightings: usize = leases.values().map(|f| f.alive.len()).sum();
    let summary = format!(
        "{gone_leases} leases known gone (revoked or seen expired), {sightings} alive sightings, {} after their lease was gone",
        anomalies.len()
    );
    result(NO_RESURRECTION, anomalies, summary)
}

fn early_expiry_check(leases: &BTreeMap<i64, LeaseFacts>) -> CheckResult {
    let mut anomalies = Vec::new();
    let (mut judged, mut excused) = (0, 0);
    // The smallest (sighting end - promised deadline), in ns: how close the
    // history came to the bound.
    let mut closest: Option<i128> = None;
    for (id, facts) in leases {
        let Some((grant_sent, _, grant_ttl)) = facts.grant else {
            continue;
        };
        for gone in &facts.gone {
            if facts.revokes.iter().any(|&(start, _)| start < gone.end) {
                excused += 1;
                continue;
            }
            judged += 1;
            let promises = std::iter::once((grant_sent, grant_ttl, "its grant")).chain(
                facts
                    .renewals
                    .iter()
                    .filter(|&&(sent, _)| sent <= gone.end)
                    .map(|&(sent, ttl)| (sent, ttl, "a keep-alive")),
            );
            let Some((sent, ttl, by)) = promises.max_by_key(|&(sent, ttl, _)| sent + ttl_ns(ttl)) else {
                continue;
            };
            let alive_until = sent + ttl_ns(ttl);
            let margin = i128::from(gone.end) - i128::from(alive_until);
            closest = Some(closest.map_or(margin, |c| c.min(margin)));
            if gone.end + CLOCK_TOLERANCE_NS < alive_until {
                anomalies.push(format!(
                    "lease {id:x} expired early: {}, but {by} sent at {:.3} s answered TTL {ttl} s (alive until {:.3} s, {} ms later)",
                    gone.describe(),
                    seconds(sent),
                    seconds(alive_until),
                    (alive_until - gone.end) / 1_000_000
                ));
            }
        }
    }
    let renewals: usize = leases.values().map(|f| f.renewals.len()).sum();
    let expired = leases
        .values()
        .filter(|f| f.grant.is_some() && !f.gone.is_empty() && f.revokes.is_empty())
        .count();
    let closest = closest.map_or("none".to_string(), |c| format!("{} ms", c / 1_000_000));
    let summary = format!(
        "{judged} gone sightings with no revoke ({expired} leases expired), each against its grant and acknowledged keep-alives ({renewals} in all); {excused} sightings after a revoke; closest to its deadline: {closest}; tolerance {} ms",
        CLOCK_TOLERANCE_NS / 1_000_000
    );
    result(NO_EARLY_EXPIRY, anomalies, summary)
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

/// The lease workload's two checks.
pub fn lease_checks(events: &[Event]) -> Vec<CheckResult> {
    let leases = pair_operations(events)
        .map_err(|e| format!("unreadable history: {e}"))
        .and_then(|pairs| collect(&pairs));
    match leases {
        Ok(leases) => vec![resurrection_check(&leases), early_expiry_check(&leases)],
        Err(error) => [NO_RESURRECTION, NO_EARLY_EXPIRY]
            .into_iter()
            .map(|name| CheckResult::new(name, Outcome::Unknown, error.clone()))
            .collect(),
    }
}

#[cfg(test)]
#[path = "lease_check_tests.rs"]
mod tests;
