//! The watch workload's checks, over `watches.jsonl` (what every watcher
//! received) and `history.jsonl` (the writes with their revisions, and the
//! final linearizable reads of the prefix):
//!
//! - `watch-order`: each watcher's events have strictly increasing
//!   (revision, position in revision) — no revision comes twice or out of
//!   order, no key twice in one revision; all watchers agree on every
//!   revision they both saw (same events, same order), which makes their
//!   union one total order; and each watcher's sequence is a contiguous
//!   prefix of that order from its start revision (no gap), except for the
//!   revisions a compaction cancel told it were gone;
//! - `watch-final-state`: replaying the total order gives exactly what every
//!   final read of the prefix returned (value and mod_revision per key,
//!   deleted keys absent), and no event carries a value that was never
//!   written or whose write definitely failed;
//! - `watch-complete`: every watcher reached the final revision, and every
//!   acknowledged update is, at the revision its response named, in every
//!   watcher that got that far.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value as Json;

use crate::history::{f, Event, EventType};
use crate::pairing::{pair_operations, Paired};
use crate::verdict::{CheckResult, Outcome};
use crate::watch_log::{ChangeKind, WatchRecord, WatchedEvent};

pub const ORDER: &str = "watch-order";
pub const FINAL_STATE: &str = "watch-final-state";
pub const COMPLETE: &str = "watch-complete";

/// Anomaly lines shown per kind before "... and N more".
const SHOWN: usize = 8;

/// An event without its revision: what two watchers must agree on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    kind: ChangeKind,
    key: String,
    value: String,
}

impl Change {
    fn of(event: &WatchedEvent) -> Change {
        Change {
            kind: event.kind,
            key: event.key.clone(),
            value: event.value.clone(),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ChangeKind::Put => write!(out, "put {}={}", self.key, self.value),
            ChangeKind::Delete => write!(out, "delete {}", self.key),
        }
    }
}

fn show(changes: &[Change]) -> String {
    let shown: Vec<String> = changes.iter().map(Change::to_string).collect();
    format!("[{}]", shown.join(", "))
}

/// One watcher, rebuilt from its log lines.
#[derive(Debug, Default)]
struct WatcherView {
    node: String,
    /// The start revision of its first stream.
    start: i64,
    /// Its events grouped by revision, each group in the order received.
    revisions: BTreeMap<i64, Vec<Change>>,
    events: usize,
    streams: usize,
    broken: usize,
    /// `[from, to)` ranges a compaction cancel excused.
    compacted: Vec<(i64, i64)>,
    /// Order anomalies found while reading its events.
    anomalies: Vec<String>,
}

impl WatcherView {
    fn last_revision(&self) -> i64 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    fn excused(&self, revision: i64) -> bool {
        self.compacted
            .iter()
            .any(|&(from, to)| from <= revision && revision < to)
    }
}

/// Reads every watcher's log lines in order, noting order anomalies.
fn watcher_views(records: &[WatchRecord]) -> BTreeMap<String, WatcherView> {
    let mut views: BTreeMap<String, WatcherView> = BTreeMap::new();
    for record in records {
        let view = views.entry(record.watcher().to_string()).or_default();
        match record {
            WatchRecord::Connect {
                node, start_revision, ..
            } => {
                if view.streams == 0 {
                    view.node = node.clone();
                    view.start = *start_revision;
                }
                view.streams += 1;
            }
            WatchRecord::Events { events, time, .. } => {
                for event in events {
                    view.events += 1;
                    let last = view.last_revision();
                    let change = Change::of(event);
                    let at = format!("{:.3} s", *time as f64 / 1e9);
                    if event.revision < view.start {
                        view.anomalies.push(format!(
                            "{change} at revision {} (at {at}) is before its start revision {}",
                            event.revision, view.start
                        ));
                    } else if event.revision < last {
                        view.anomalies.push(format!(
                            "{change} at revision {} (at {at}) came after revision {last}: out of order or duplicated",
                            event.revision
                        ));
                    } else {
                        let group = view.revisions.entry(event.revision).or_default();
                        if group.iter().any(|c| c.key == change.key) {
                            view.anomalies.push(format!(
                                "{change} at revision {} (at {at}) is the second event of {} in that revision: duplicated",
                                event.revision, change.key
                            ));
                        } else {
                            group.push(change);
                        }
                    }
                }
            }
            WatchRecord::Broken { .. } => view.broken += 1,
            WatchRecord::Compacted { compact_revision, .. } => {
                let from = view.last_revision().max(view.start - 1) + 1;
                view.compacted.push((from, *compact_revision));
            }
            WatchRecord::End { .. } => {}
        }
    }
    views
}

/// Keeps the first `SHOWN` lines and says how many more there were.
fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > SHOWN {
        let more = lines.len() - SHOWN;
        lines.truncate(SHOWN);
        lines.push(format!("... and {more} more"));
    }
    lines
}

/// The union of all watchers' revisions; disagreements go to `anomalies`.
fn total_order(
    views: &BTreeMap<String, WatcherView>,
    anomalies: &mut Vec<String>,
) -> BTreeMap<i64, (Vec<Change>, String)> {
    let mut total: BTreeMap<i64, (Vec<Change>, String)> = BTreeMap::new();
    for (name, view) in views {
        for (revision, changes) in &view.revisions {
            match total.get(revision) {
                None => {
                    total.insert(*revision, (changes.clone(), name.clone()));
                }
                Some((agreed, first)) if agreed != changes => anomalies.push(format!(
                    "revision {revision}: {first} saw {}, {name} saw {}",
                    show(agreed),
                    show(changes)
                )),
                Some(_) => {}
            }
        }
    }
    total
}

fn order_check(
    views: &BTreeMap<String, WatcherView>,
    total: &BTreeMap<i64, (Vec<Change>, String)>,
    mut disagreements: Vec<String>,
    members: usize,
) -> CheckResult {
    let mut details = Vec::new();
    let mut out_of_order = Vec::new();
    let mut gaps = Vec::new();
    for (name, view) in views {
        out_of_order.extend(view.anomalies.iter().map(|a| format!("{name}: {a}")));
        let last = view.last_revision();
        for (revision, (changes, seen_by)) in total.range(view.start..=last) {
            if !view.revisions.contains_key(revision) && !view.excused(*revision) {
                let before = view.revisions.range(..revision).next_back().map(|(r, _)| *r);
                let after = view.revisions.range(revision..).next().map(|(r, _)| *r);
                gaps.push(format!(
                    "{name} has no revision {revision} (it saw {} then {}); {seen_by} saw {}",
                    before.map_or("nothing".to_string(), |r| r.to_string()),
                    after.map_or("nothing".to_string(), |r| r.to_string()),
                    show(changes)
                ));
            }
        }
    }
    let anomaly = !(out_of_order.is_empty() && disagreements.is_empty() && gaps.is_empty());
    details.extend(capped(out_of_order));
    disagreements = capped(disagreements);
    details.extend(disagreements);
    details.extend(capped(gaps));
    for (name, view) in views {
        details.push(format!(
            "{name} on {}: {} events, {} revisions from {} to {}, {} streams ({} broken{})",
            view.node,
            view.events,
            view.revisions.len(),
            view.start,
            view.last_revision(),
            view.streams,
            view.broken,
            if view.compacted.is_empty() {
                String::new()
            } else {
                format!(", {} canceled for compaction", view.compacted.len())
            }
        ));
    }
    let nodes: BTreeSet<&str> = views.values().map(|v| v.node.as_str()).collect();
    let events: usize = total.values().map(|(changes, _)| changes.len()).sum();
    let summary = format!(
        "{} watchers on {} members; total order of {} revisions, {events} events",
        views.len(),
        nodes.len(),
        total.len()
    );
    let outcome = if anomaly {
        Outcome::Fail
    } else if nodes.len() < members {
        details.insert(
            0,
            format!("only {} of {members} members had a watcher", nodes.len()),
        );
        Outcome::Unknown
    } else {
        Outcome::Pass
    };
    CheckResult::new(ORDER, outcome, summary).with_details(details)
}

/// An acknowledged or attempted update of the history.
struct Update<'a> {
    pair: Paired<'a>,
    changes: Vec<Change>,
}

/// The changes an update asks for (a delete's value is empty).
fn update_changes(invoke: &Event) -> Option<Vec<Change>> {
    let put = |key: &str, value: &Json| {
        Some(Change {
            kind: ChangeKind::Put,
            key: key.to_string(),
            value: value.as_u64()?.to_string(),
        })
    };
    match invoke.f.as_str() {
        f::WRITE => Some(vec![put(invoke.key.as_deref()?, &invoke.value)?]),
        f::TXN => invoke
            .value
            .as_array()?
            .iter()
            .map(|pair| put(pair.get(0)?.as_str()?, pair.get(1)?))
            .collect(),
        f::DELETE => Some(vec![Change {
            kind: ChangeKind::Delete,
            key: invoke.key.clone()?,
            value: String::new(),
        }]),
        _ => None,
    }
}

/// Keys with their value and mod_revision.
type KeyValues = BTreeMap<String, (String, i64)>;

/// One successful final read of the prefix.
struct FinalRead {
    node: String,
    /// Its response header's revision.
    revision: i64,
    kvs: KeyValues,
}

/// A final read's answer: key -> (value, mod_revision).
fn read_kvs(value: &Json) -> Option<KeyValues> {
    value
        .as_array()?
        .iter()
        .map(|kv| {
            Some((
                kv.get(0)?.as_str()?.to_string(),
                (kv.get(1)?.as_str()?.to_string(), kv.get(2)?.as_i64()?),
            ))
        })
        .collect()
}

fn final_state_check(
    total: &BTreeMap<i64, (Vec<Change>, String)>,
    updates: &[Update<'_>],
    final_reads: &[FinalRead],
) -> CheckResult {
    let mut replayed: KeyValues = BTreeMap::new();
    for (revision, (changes, _)) in total {
        for change in changes {
            match change.kind {
                ChangeKind::Put => {
                    replayed.insert(change.key.clone(), (change.value.clone(), *revision));
                }
                ChangeKind::Delete => {
                    replayed.remove(&change.key);
                }
            }
        }
    }
    let mut mismatches = Vec::new();
    for FinalRead { node, revision, kvs } in final_reads {
        let keys: BTreeSet<&String> = replayed.keys().chain(kvs.keys()).collect();
        for key in keys {
            let (watched, read) = (replayed.get(key), kvs.get(key));
            if watched != read {
                let at = |v: Option<&(String, i64)>| {
                    v.map_or("absent".to_string(), |(value, rev)| {
                        format!("{value} at revision {rev}")
                    })
                };
                mismatches.push(format!(
                    "{key}: the watched events end with {}, the final read on {node} (revision {revision}) has {}",
                    at(watched),
                    at(read)
                ));
            }
        }
    }
    let mut attempted: BTreeSet<&Change> = BTreeSet::new();
    let mut failed: BTreeSet<&Change> = BTreeSet::new();
    for update in updates {
        let into = if update.pair.outcome() == EventType::Fail {
            &mut failed
        } else {
            &mut attempted
        };
        into.extend(update.changes.iter());
    }
    let mut phantoms = Vec::new();
    for (revision, (changes, seen_by)) in total {
        for change in changes {
            // A delete of a key names no value: any delete of it will do.
            let written = attempted.contains(change);
            if !written {
                let why = if failed.contains(change) {
                    "whose update definitely failed"
                } else {
                    "that no client ever asked for"
                };
                phantoms.push(format!("revision {revision} ({seen_by}): {change}, {why}"));
            }
        }
    }
    let summary = format!(
        "{} keys at the end of the total order, checked against {} final reads",
        replayed.len(),
        final_reads.len()
    );
    let anomaly = !(mismatches.is_empty() && phantoms.is_empty());
    let mut details = capped(mismatches);
    details.extend(capped(phantoms));
    let outcome = if anomaly {
        Outcome::Fail
    } else if final_reads.is_empty() {
        details.push("no final read of the prefix succeeded".to_string());
        Outcome::Unknown
    } else {
        Outcome::Pass
    };
    CheckResult::new(FINAL_STATE, outcome, summary).with_details(details)
}

fn complete_check(
    views: &BTreeMap<String, WatcherView>,
    updates: &[Update<'_>],
    final_revision: i64,
) -> CheckResult {
    let mut behind = Vec::new();
    for (name, view) in views {
        if view.last_revision() < final_revision {
            behind.push(format!(
                "{name} on {} stopped at revision {}, the final revision is {final_revision}",
                view.node,
                view.last_revision()
            ));
        }
    }
    let mut missing = Vec::new();
    let mut acknowledged = 0;
    for update in updates {
        let revision = match (
            update.pair.outcome(),
            update.pair.completion.and_then(|c| c.revision),
        ) {
            (EventType::Ok, Some(revision)) => revision,
            _ => continue,
        };
        // A delete that found nothing makes no revision and no event.
        let deleted = update.pair.completion.and_then(|c| c.value.as_i64());
        if update.pair.invoke.f == f::DELETE && deleted == Some(0) {
            continue;
        }
        acknowledged += 1;
        for (name, view) in views {
            if view.last_revision() < revision || revision < view.start || view.excused(revision) {
                continue;
            }
            let seen = view
                .revisions
                .get(&revision)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for change in &update.changes {
                if !seen.contains(change) {
                    missing.push(format!(
                        "{change}, acknowledged at revision {revision} by {}, is not in {name}'s revision {revision}: {}",
                        update.pair.invoke.node.as_deref().unwrap_or("?"),
                        show(seen)
                    ));
                }
            }
        }
    }
    let summary = format!(
        "{acknowledged} acknowledged updates found in every watcher past them; {} of {} watchers reached the final revision {final_revision}",
        views.len() - behind.len(),
        views.len()
    );
    let anomaly = !(missing.is_empty() && behind.is_empty());
    let mut details = capped(behind);
    details.extend(capped(missing));
    let outcome = if anomaly {
        Outcome::Fail
    } else if final_revision <= 0 {
        details.push("no final revision: no write was acknowledged and no final read succeeded".into());
        Outcome::Unknown
    } else {
        Outcome::Pass
    };
    CheckResult::new(COMPLETE, outcome, summary).with_details(details)
}

/// The three watch checks; `members` is the cluster's size (every member
/// must have had a watcher).
pub fn watch_checks(events: &[Event], records: &[WatchRecord], members: usize) -> Vec<CheckResult> {
    let pairs = match pair_operations(events) {
        Ok(pairs) => pairs,
        Err(error) => {
            let why = format!("unreadable history: {error}");
            return [ORDER, FINAL_STATE, COMPLETE]
                .into_iter()
                .map(|name| CheckResult::new(name, Outcome::Unknown, why.clone()))
                .collect();
        }
    };
    let views = watcher_views(records);
    if views.is_empty() {
        return [ORDER, FINAL_STATE, COMPLETE]
            .into_iter()
            .map(|name| CheckResult::new(name, Outcome::Unknown, "no watcher recorded anything"))
            .collect();
    }
    let mut disagreements = Vec::new();
    let total = total_order(&views, &mut disagreements);
    let updates: Vec<Update<'_>> = pairs
        .iter()
        .filter_map(|pair| update_changes(pair.invoke).map(|changes| Update { pair: *pair, changes }))
        .collect();
    let final_reads: Vec<FinalRead> = pairs
        .iter()
        .filter(|pair| pair.invoke.f == f::READ_PREFIX && pair.outcome() == EventType::Ok)
        .filter_map(|pair| {
            let completion = pair.completion?;
            Some(FinalRead {
                node: pair.invoke.node.clone().unwrap_or_default(),
                revision: completion.revision?,
                kvs: read_kvs(&completion.value)?,
            })
        })
        .collect();
    let acknowledged_revision = updates
        .iter()
        .filter(|u| u.pair.outcome() == EventType::Ok)
        .filter_map(|u| u.pair.completion.and_then(|c| c.revision))
        .max()
        .unwrap_or(0);
    let final_revision = final_reads
        .iter()
        .map(|read| read.revision)
        .max()
        .unwrap_or(0)
        .max(acknowledged_revision);
    vec![
        order_check(&views, &total, disagreements, members),
        final_state_check(&total, &updates, &final_reads),
        complete_check(&views, &updates, final_revision),
    ]
}

#[cfg(test)]
#[path = "watch_check_tests.rs"]
mod tests;
