//! The watch checks on hand-made runs: one valid run (three watchers, one
//! of them reconnecting, a Txn's two events in one revision, a delete, an
//! indeterminate write that took effect), then that run broken in one way
//! at a time — a gap, a duplicate, two watchers disagreeing on a revision,
//! a stale final read, an event no one wrote, an acknowledged write no
//! watcher saw, a watcher that stopped early — each of which must fail.

use serde_json::json;

use super::*;
use crate::history::{Event, EventType};
use crate::watch_log::{ChangeKind, WatchRecord, WatchedEvent};

fn put(revision: i64, key: &str, value: u64) -> WatchedEvent {
    WatchedEvent {
        revision,
        kind: ChangeKind::Put,
        key: format!("jepsen/w/{key}"),
        value: value.to_string(),
    }
}

fn delete(revision: i64, key: &str) -> WatchedEvent {
    WatchedEvent {
        revision,
        kind: ChangeKind::Delete,
        key: format!("jepsen/w/{key}"),
        value: String::new(),
    }
}

/// Client operations in order, each on a fresh process, one ns apart.
#[derive(Default)]
struct Ops {
    events: Vec<Event>,
}

impl Ops {
    /// `completion`: outcome, value and header revision.
    fn op(
        &mut self,
        node: &str,
        f: &str,
        key: Option<&str>,
        value: serde_json::Value,
        completion: (EventType, serde_json::Value, Option<i64>),
    ) {
        let (outcome, result, revision) = completion;
        let process = self.events.len() as u64;
        let start = 10 * process;
        let key = key.map(|k| format!("jepsen/w/{k}"));
        let invoke = Event::invoke(process, f, key.as_deref(), value, start).with_node(node);
        let mut done = Event::complete(&invoke, outcome, result, start + 1);
        done.revision = revision;
        self.events.push(invoke);
        self.events.push(done);
    }

    fn write(&mut self, key: &str, value: u64, outcome: EventType, revision: Option<i64>) {
        self.op(
            "m1",
            f::WRITE,
            Some(key),
            json!(value),
            (outcome, json!(value), revision),
        );
    }

    fn final_read(&mut self, node: &str, revision: i64, kvs: serde_json::Value) {
        self.op(
            node,
            f::READ_PREFIX,
            None,
            json!(null),
            (EventType::Ok, kvs, Some(revision)),
        );
    }
}

fn connect(watcher: &str, start_revision: i64) -> WatchRecord {
    WatchRecord::Connect {
        watcher: watcher.into(),
        node: watcher[..2].into(),
        time: 0,
        start_revision,
    }
}

fn batch(watcher: &str, events: Vec<WatchedEvent>) -> WatchRecord {
    WatchRecord::Events {
        watcher: watcher.into(),
        time: 0,
        events,
    }
}

fn broken(watcher: &str) -> WatchRecord {
    WatchRecord::Broken {
        watcher: watcher.into(),
        time: 0,
        error: "transport error".into(),
    }
}

/// Revisions 2-5: put w/0=1; Txn w/1=2, w/2=3; delete w/0; put w/1=4
/// (timed out, but applied).
fn valid_ops() -> Ops {
    let mut ops = Ops::default();
    ops.write("0", 1, EventType::Ok, Some(2));
    let txn = json!([["jepsen/w/1", 2], ["jepsen/w/2", 3]]);
    ops.op("m2", f::TXN, None, txn.clone(), (EventType::Ok, txn, Some(3)));
    ops.op(
        "m3",
        f::DELETE,
        Some("0"),
        json!(null),
        (EventType::Ok, json!(1), Some(4)),
    );
    ops.write("1", 4, EventType::Info, None);
    // A write that definitely failed, and a delete of a missing key.
    ops.write("1", 5, EventType::Fail, None);
    ops.op(
        "m1",
        f::DELETE,
        Some("3"),
        json!(null),
        (EventType::Ok, json!(0), Some(4)),
    );
    let state = json!([["jepsen/w/1", "4", 5], ["jepsen/w/2", "3", 3]]);
    for node in ["m1", "m2", "m3"] {
        ops.final_read(node, 5, state.clone());
    }
    ops
}

/// m1 in three responses; m2 breaks after revision 3 and reconnects from
/// 4; m3 in one response.
fn valid_watches() -> Vec<WatchRecord> {
    vec![
        connect("m1-w0", 1),
        connect("m2-w0", 1),
        connect("m3-w0", 1),
        batch("m1-w0", vec![put(2, "0", 1)]),
        batch("m2-w0", vec![put(2, "0", 1), put(3, "1", 2), put(3, "2", 3)]),
        batch("m1-w0", vec![put(3, "1", 2), put(3, "2", 3)]),
        broken("m2-w0"),
        connect("m2-w0", 4),
        batch("m1-w0", vec![delete(4, "0"), put(5, "1", 4)]),
        batch("m2-w0", vec![delete(4, "0")]),
        batch("m2-w0", vec![put(5, "1", 4)]),
        batch(
            "m3-w0",
            vec![
                put(2, "0", 1),
                put(3, "1", 2),
                put(3, "2", 3),
                delete(4, "0"),
                put(5, "1", 4),
            ],
        ),
    ]
}

fn outcomes(ops: &Ops, watches: &[WatchRecord]) -> Vec<(String, Outcome)> {
    watch_checks(&ops.events, watches, 3)
        .into_iter()
        .map(|c| (c.name, c.outcome))
        .collect()
}

fn outcome_of(ops: &Ops, watches: &[WatchRecord], name: &str) -> (Outcome, String) {
    let check = watch_checks(&ops.events, watches, 3)
        .into_iter()
        .find(|c| c.name == name)
        .expect("check present");
    (
        check.outcome,
        format!("{}\n{}", check.summary, check.details.join("\n")),
    )
}

/// Replaces m2's watch lines after its first batch.
fn with_m2(tail: Vec<WatchRecord>) -> Vec<WatchRecord> {
    let mut watches: Vec<WatchRecord> = valid_watches()
        .into_iter()
        .filter(|r| r.watcher() != "m2-w0")
        .collect();
    watches.push(connect("m2-w0", 1));
    watches.extend(tail);
    watches
}

#[test]
fn a_valid_run_passes_every_watch_check() {
    let checks = watch_checks(&valid_ops().events, &valid_watches(), 3);
    for check in &checks {
        assert_eq!(check.outcome, Outcome::Pass, "{check:?}");
    }
    let order = &checks[0];
    assert!(order.summary.contains("3 watchers on 3 members"), "{order:?}");
    assert!(
        order
            .details
            .iter()
            .any(|d| d.starts_with("m2-w0 on m2: 5 events, 4 revisions from 1 to 5, 2 streams (1 broken)")),
        "{order:?}"
    );
}

#[test]
fn a_watcher_that_skips_a_revision_has_a_gap() {
    let watches = with_m2(vec![
        batch("m2-w0", vec![put(2, "0", 1), put(3, "1", 2), put(3, "2", 3)]),
        broken("m2-w0"),
        // Reconnected one revision too far: the delete at 4 is lost.
        connect("m2-w0", 5),
        batch("m2-w0", vec![put(5, "1", 4)]),
    ]);
    let (outcome, text) = outcome_of(&valid_ops(), &watches, ORDER);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("m2-w0 has no revision 4 (it saw 3 then 5)"),
        "{text}"
    );
    assert_eq!(outcome_of(&valid_ops(), &watches, COMPLETE).0, Outcome::Fail);
}

#[test]
fn a_revision_delivered_twice_is_a_duplicate() {
    // Reconnected from its last revision instead of the one after.
    let again = with_m2(vec![
        batch("m2-w0", vec![put(2, "0", 1), put(3, "1", 2), put(3, "2", 3)]),
        broken("m2-w0"),
        connect("m2-w0", 3),
        batch(
            "m2-w0",
            vec![put(3, "1", 2), put(3, "2", 3), delete(4, "0"), put(5, "1", 4)],
        ),
    ]);
    let (outcome, text) = outcome_of(&valid_ops(), &again, ORDER);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(text.contains("duplicated"), "{text}");
    // An older revision coming back later.
    let older = with_m2(vec![
        batch("m2-w0", vec![put(2, "0", 1), put(3, "1", 2), put(3, "2", 3)]),
        batch("m2-w0", vec![put(2, "0", 1), delete(4, "0"), put(5, "1", 4)]),
    ]);
    let (outcome, text) = outcome_of(&valid_ops(), &older, ORDER);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("came after revision 3: out of order or duplicated"),
        "{text}"
    );
}

#[test]
fn watchers_that_disagree_on_a_revision_fail() {
    // The same two events of the Txn, in the other order.
    let swapped = with_m2(vec![batch(
        "m2-w0",
        vec![
            put(2, "0", 1),
            put(3, "2", 3),
            put(3, "1", 2),
            delete(4, "0"),
            put(5, "1", 4),
        ],
    )]);
    let (outcome, text) = outcome_of(&valid_ops(), &swapped, ORDER);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("revision 3: m1-w0 saw [put jepsen/w/1=2, put jepsen/w/2=3], m2-w0 saw [put jepsen/w/2=3, put jepsen/w/1=2]"),
        "{text}"
    );
    // One event of the revision missing on one member.
    let short = with_m2(vec![batch(
        "m2-w0",
        vec![put(2, "0", 1), put(3, "1", 2), delete(4, "0"), put(5, "1", 4)],
    )]);
    assert_eq!(outcome_of(&valid_ops(), &short, ORDER).0, Outcome::Fail);
}

#[test]
fn a_final_read_that_disagrees_with_the_events_fails() {
    let mut ops = valid_ops();
    // m2's final read still has the Txn's value of w/1.
    ops.final_read("m2", 5, json!([["jepsen/w/1", "2", 3], ["jepsen/w/2", "3", 3]]));
    let (outcome, text) = outcome_of(&ops, &valid_watches(), FINAL_STATE);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("jepsen/w/1: the watched events end with 4 at revision 5, the final read on m2 (revision 5) has 2 at revision 3"),
        "{text}"
    );
    // A deleted key still present.
    let mut ops = valid_ops();
    ops.final_read(
        "m3",
        5,
        json!([
            ["jepsen/w/0", "1", 2],
            ["jepsen/w/1", "4", 5],
            ["jepsen/w/2", "3", 3]
        ]),
    );
    let (outcome, text) = outcome_of(&ops, &valid_watches(), FINAL_STATE);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("jepsen/w/0: the watched events end with absent"),
        "{text}"
    );
}

#[test]
fn an_event_nobody_wrote_or_whose_write_failed_fails() {
    for (value, why) in [
        (99, "that no client ever asked for"),
        (5, "whose update definitely failed"),
    ] {
        let mut watches = valid_watches();
        for record in &mut watches {
            if let WatchRecord::Events { events, .. } = record {
                for event in events.iter_mut().filter(|e| e.revision == 5) {
                    event.value = value.to_string();
                }
            }
        }
        let mut ops = valid_ops();
        ops.events.retain(|e| e.f != f::READ_PREFIX);
        let state = json!([["jepsen/w/1", value.to_string(), 5], ["jepsen/w/2", "3", 3]]);
        ops.final_read("m1", 5, state);
        let (outcome, text) = outcome_of(&ops, &watches, FINAL_STATE);
        assert_eq!(outcome, Outcome::Fail, "{text}");
        assert!(text.contains(why), "{text}");
    }
}

#[test]
fn an_acknowledged_write_no_watcher_saw_fails() {
    // Every watcher lacks revision 2: they agree, and the final state (w/0
    // deleted at 4) hides it, but the write was acknowledged at 2.
    let mut watches = valid_watches();
    for record in &mut watches {
        if let WatchRecord::Events { events, .. } = record {
            events.retain(|e| e.revision != 2);
        }
    }
    watches.retain(|r| !matches!(r, WatchRecord::Events { events, .. } if events.is_empty()));
    let ops = valid_ops();
    assert_eq!(outcome_of(&ops, &watches, ORDER).0, Outcome::Pass);
    assert_eq!(outcome_of(&ops, &watches, FINAL_STATE).0, Outcome::Pass);
    let (outcome, text) = outcome_of(&ops, &watches, COMPLETE);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("put jepsen/w/0=1, acknowledged at revision 2 by m1, is not in m1-w0's revision 2: []"),
        "{text}"
    );
}

#[test]
fn a_watcher_that_never_reaches_the_final_revision_fails() {
    let watches: Vec<WatchRecord> = valid_watches()
        .into_iter()
        .filter(|r| !matches!(r, WatchRecord::Events { watcher, events, .. } if watcher == "m1-w0" && events.len() == 2 && events[0].revision == 4))
        .collect();
    let ops = valid_ops();
    assert_eq!(outcome_of(&ops, &watches, ORDER).0, Outcome::Pass);
    let (outcome, text) = outcome_of(&ops, &watches, COMPLETE);
    assert_eq!(outcome, Outcome::Fail, "{text}");
    assert!(
        text.contains("m1-w0 on m1 stopped at revision 3, the final revision is 5"),
        "{text}"
    );
}

#[test]
fn revisions_a_compaction_cancel_skipped_are_no_gap() {
    let watches = with_m2(vec![
        batch("m2-w0", vec![put(2, "0", 1)]),
        WatchRecord::Compacted {
            watcher: "m2-w0".into(),
            time: 0,
            compact_revision: 4,
        },
        connect("m2-w0", 4),
        batch("m2-w0", vec![delete(4, "0"), put(5, "1", 4)]),
    ]);
    assert_eq!(
        outcomes(&valid_ops(), &watches),
        vec![
            (ORDER.to_string(), Outcome::Pass),
            (FINAL_STATE.to_string(), Outcome::Pass),
            (COMPLETE.to_string(), Outcome::Pass),
        ]
    );
    // The same skip without the cancel is a gap.
    let gap = with_m2(vec![
        batch("m2-w0", vec![put(2, "0", 1)]),
        broken("m2-w0"),
        connect("m2-w0", 4),
        batch("m2-w0", vec![delete(4, "0"), put(5, "1", 4)]),
    ]);
    assert_eq!(outcome_of(&valid_ops(), &gap, ORDER).0, Outcome::Fail);
}

#[test]
fn a_member_without_a_watcher_is_no_verdict() {
    let watches: Vec<WatchRecord> = valid_watches()
        .into_iter()
        .filter(|r| r.watcher() != "m3-w0")
        .collect();
    let (outcome, text) = outcome_of(&valid_ops(), &watches, ORDER);
    assert_eq!(outcome, Outcome::Unknown, "{text}");
    assert!(text.contains("only 2 of 3 members had a watcher"), "{text}");
    assert!(watch_checks(&valid_ops().events, &[], 3)
        .iter()
        .all(|c| c.outcome == Outcome::Unknown));
}
