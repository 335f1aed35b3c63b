//! The register checker on hand-written histories: linearizable ones (with
//! concurrent and indeterminate operations) pass; a stale read, a lost write
//! and a value read before it was written fail; a search that runs out of
//! budget says "unknown", never "valid"; shrinking keeps the anomaly.

use std::time::Duration;

use keel_jepsen::history::parse_history;
use keel_jepsen::linearizable::{check_register, Budget, Linearizability};
use keel_jepsen::model::{Op, RegOp};
use keel_jepsen::register_check::{linearizability_check, register_histories, CheckLimits};
use keel_jepsen::shrink::shrink;
use keel_jepsen::verdict::Outcome;

/// An op on process `p` over [call, ret]; `ret == None`: indeterminate.
fn op(process: u64, call: u64, ret: Option<u64>, op: RegOp) -> Op {
    Op {
        process,
        call,
        ret,
        op,
        line: call,
    }
}

fn verdict(ops: &[Op]) -> Linearizability {
    check_register(ops, &mut Budget::generous())
}

fn linearizable(ops: &[Op]) -> bool {
    verdict(ops).is_linearizable()
}

use RegOp::{CasFail, CasOk, CasUnknown, Read, Write};

#[test]
fn empty_and_sequential_histories_pass() {
    assert!(linearizable(&[]));
    assert!(linearizable(&[
        op(0, 0, Some(1), Read(None)),
        op(0, 2, Some(3), Write(1)),
        op(1, 4, Some(5), Read(Some(1))),
        op(1, 6, Some(7), CasOk { from: 1, to: 2 }),
        op(0, 8, Some(9), CasFail { from: 1 }),
        op(0, 10, Some(11), Read(Some(2))),
    ]));
}

#[test]
fn concurrent_ops_may_take_effect_in_any_order() {
    // Two overlapping writes; readers during and after see them in an
    // order opposite to their calls.
    assert!(linearizable(&[
        op(0, 0, Some(10), Write(1)),
        op(1, 1, Some(11), Write(2)),
        op(2, 2, Some(3), Read(Some(2))),
        op(3, 4, Some(5), Read(Some(1))),
        op(2, 12, Some(13), Read(Some(1))),
    ]));
    // A read concurrent with a write sees either value.
    for seen in [None, Some(1)] {
        assert!(linearizable(&[
            op(0, 0, Some(10), Write(1)),
            op(1, 2, Some(4), Read(seen))
        ]));
    }
}

#[test]
fn indeterminate_ops_may_or_may_not_take_effect() {
    // A timed-out write that later shows up.
    assert!(linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(1, 2, None, Write(2)),
        op(0, 3, Some(4), Read(Some(1))),
        op(0, 50, Some(51), Read(Some(2))),
    ]));
    // A timed-out write that never shows up.
    assert!(linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(1, 2, None, Write(2)),
        op(0, 50, Some(51), Read(Some(1))),
    ]));
    // An indeterminate CAS that took effect, one that did not.
    assert!(linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(1, 2, None, CasUnknown { from: 1, to: 3 }),
        op(2, 4, None, CasUnknown { from: 9, to: 4 }),
        op(0, 10, Some(11), Read(Some(3))),
    ]));
    // But an indeterminate op still cannot take effect before its call.
    assert!(!linearizable(&[
        op(0, 0, Some(1), Read(Some(2))),
        op(1, 5, None, Write(2)),
    ]));
}

#[test]
fn a_stale_read_fails() {
    let history = [
        op(0, 0, Some(1), Write(1)),
        op(0, 2, Some(3), Write(2)),
        op(1, 4, Some(5), Read(Some(1))),
    ];
    assert!(matches!(
        verdict(&history),
        Linearizability::NotLinearizable { .. }
    ));
}

#[test]
fn a_lost_write_fails() {
    let history = [
        op(0, 0, Some(1), Write(1)),
        op(1, 2, Some(3), Write(2)),
        op(2, 4, Some(5), Read(Some(2))),
        op(0, 6, Some(7), Read(Some(1))),
    ];
    assert!(!linearizable(&history));
    // The acknowledged write vanished: the key reads as never written.
    assert!(!linearizable(&[
        op(0, 0, Some(1), Write(5)),
        op(1, 2, Some(3), Read(None))
    ]));
}

#[test]
fn a_value_read_before_it_was_written_fails() {
    assert!(!linearizable(&[
        op(0, 0, Some(1), Read(Some(7))),
        op(1, 2, Some(3), Write(7))
    ]));
    // A CAS cannot observe a value before its write either.
    assert!(!linearizable(&[
        op(0, 0, Some(1), CasOk { from: 7, to: 8 }),
        op(1, 2, Some(3), Write(7))
    ]));
}

#[test]
fn cas_outcomes_constrain_the_state() {
    // A CAS that succeeded although the value was different.
    assert!(!linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(0, 2, Some(3), CasOk { from: 2, to: 3 })
    ]));
    // A CAS whose comparison failed although the value matched.
    assert!(!linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(0, 2, Some(3), CasFail { from: 1 })
    ]));
    // Two CASes from the same value cannot both succeed.
    assert!(!linearizable(&[
        op(0, 0, Some(1), Write(1)),
        op(1, 2, Some(5), CasOk { from: 1, to: 2 }),
        op(2, 2, Some(5), CasOk { from: 1, to: 3 }),
    ]));
}

#[test]
fn sequentially_consistent_is_not_linearizable() {
    // Reads overlapping one write must not go back in time.
    assert!(!linearizable(&[
        op(0, 0, Some(100), Write(1)),
        op(1, 10, Some(20), Read(Some(1))),
        op(2, 30, Some(40), Read(None)),
    ]));
}

/// Many overlapping writes and a read of a value nobody wrote: the search
/// must visit every subset of the writes before it can say no.
fn explosive_history(writers: u64) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..writers)
        .map(|i| op(i, i, Some(1_000 + i), Write(i + 1)))
        .collect();
    ops.extend((0..writers).map(|i| op(100 + i, 500 + i, Some(2_000 + i), Read(Some(i + 1)))));
    ops.push(op(999, 5_000, Some(5_001), Read(Some(1_000_000))));
    ops
}

#[test]
fn an_exhausted_budget_is_unknown_never_valid() {
    let ops = explosive_history(40);
    let mut budget = Budget::new(Duration::from_millis(300), u64::MAX);
    assert!(matches!(
        check_register(&ops, &mut budget),
        Linearizability::Unknown { .. }
    ));
    let mut budget = Budget::new(Duration::from_secs(30), 10_000);
    assert!(matches!(
        check_register(&ops, &mut budget),
        Linearizability::Unknown { .. }
    ));
}

#[test]
fn shrinking_keeps_a_small_failing_core() {
    // A long valid history with one stale read buried in it.
    let mut ops = Vec::new();
    for i in 0..60u64 {
        let t = i * 10;
        ops.push(op(0, t, Some(t + 3), Write(i + 1)));
        ops.push(op(1, t + 4, Some(t + 6), Read(Some(i + 1))));
    }
    ops.push(op(2, 700, Some(701), Read(Some(30))));
    assert!(!linearizable(&ops));
    let kept = shrink(&ops, Duration::from_secs(10));
    let core: Vec<Op> = kept.iter().map(|&i| ops[i].clone()).collect();
    assert!(!linearizable(&core), "the shrunk history must still fail");
    assert!(core.len() <= 4, "expected a tiny core, got {core:?}");
    assert!(core.iter().any(|o| o.op == Read(Some(30)) && o.process == 2));
}

/// History lines as the harness writes them.
const JSON_HISTORY: &str = r#"
{"index":0,"process":0,"type":"invoke","f":"write","key":"k","value":1,"start":0}
{"index":1,"process":0,"type":"ok","f":"write","key":"k","value":1,"start":0,"end":10}
{"index":2,"process":"nemesis","type":"info","f":"partition-leader","value":"n1 | n2 n3","start":11,"end":12}
{"index":3,"process":1,"type":"invoke","f":"write","key":"k","value":2,"start":20}
{"index":4,"process":1,"type":"fail","f":"write","key":"k","value":2,"start":20,"end":30,"error":"etcdserver: no leader"}
{"index":5,"process":2,"type":"invoke","f":"cas","key":"k","value":[5,6],"start":31}
{"index":6,"process":2,"type":"fail","f":"cas","key":"k","value":[5,6],"start":31,"end":35}
{"index":7,"process":3,"type":"invoke","f":"write","key":"k","value":3,"start":40}
{"index":8,"process":3,"type":"info","f":"write","key":"k","value":3,"start":40,"end":2040,"error":"timeout"}
{"index":9,"process":4,"type":"invoke","f":"read","key":"k","start":50}
{"index":10,"process":4,"type":"ok","f":"read","key":"k","value":1,"start":50,"end":60}
{"index":11,"process":5,"type":"invoke","f":"read","key":"j","start":50}
"#;

#[test]
fn history_lines_map_onto_register_ops() {
    let events = parse_history(JSON_HISTORY).expect("parses");
    let by_key = register_histories(&events).expect("pairs");
    let ops = &by_key["k"];
    let kinds: Vec<(RegOp, Option<u64>)> = ops.iter().map(|o| (o.op, o.ret)).collect();
    assert_eq!(
        kinds,
        vec![
            (Write(1), Some(10)),
            (CasFail { from: 5 }, Some(35)),
            (Write(3), None),
            (Read(Some(1)), Some(60)),
        ],
        "a failed write is dropped, a failed CAS constrains, a timed-out write is open-ended"
    );
    assert!(!by_key.contains_key("j"), "an unanswered read tells nothing");
    let result = linearizability_check(&events, &CheckLimits::default());
    assert_eq!(result.outcome, Outcome::Pass, "{result:?}");
}

#[test]
fn a_failing_key_is_reported_with_its_witness() {
    let stale = format!(
        "{JSON_HISTORY}{}\n{}\n",
        r#"{"index":12,"process":6,"type":"invoke","f":"read","key":"k","start":3000}"#,
        r#"{"index":13,"process":6,"type":"ok","f":"read","key":"k","value":null,"start":3000,"end":3010}"#
    );
    let events = parse_history(&stale).expect("parses");
    let result = linearizability_check(&events, &CheckLimits::default());
    assert_eq!(result.outcome, Outcome::Fail, "{result:?}");
    assert!(
        result.details.iter().any(|l| l.contains("read -> nil")),
        "{:#?}",
        result.details
    );
}

#[test]
fn a_check_out_of_time_reports_unknown() {
    let mut lines = String::new();
    let mut index = 0;
    for op in explosive_history(40) {
        let (f, invoke_value, done_value) = match op.op {
            Write(v) => ("write", v.to_string(), v.to_string()),
            Read(seen) => (
                "read",
                "null".to_string(),
                seen.map_or("null".to_string(), |v| v.to_string()),
            ),
            _ => unreachable!(),
        };
        let end = op.ret.expect("all complete");
        lines.push_str(&format!(
            "{{\"index\":{index},\"process\":{},\"type\":\"invoke\",\"f\":\"{f}\",\"key\":\"k\",\"value\":{invoke_value},\"start\":{}}}\n",
            op.process, op.call
        ));
        lines.push_str(&format!(
            "{{\"index\":{},\"process\":{},\"type\":\"ok\",\"f\":\"{f}\",\"key\":\"k\",\"value\":{done_value},\"start\":{},\"end\":{end}}}\n",
            index + 1,
            op.process,
            op.call
        ));
        index += 2;
    }
    let events = parse_history(&lines).expect("parses");
    let limits = CheckLimits {
        search: Duration::from_millis(300),
        ..CheckLimits::default()
    };
    let result = linearizability_check(&events, &limits);
    assert_eq!(result.outcome, Outcome::Unknown, "{result:?}");
}

/// A long run of reads and writes on one process while `pending` other
/// processes each left a write in doubt (values nobody ever reads), as a
/// partition leaves behind; `stale` adds a read of an overwritten value.
fn history_with_writes_in_doubt(pending: u64, stale: bool) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..pending)
        .map(|i| op(100 + i, 5 + i, None, Write(1_000 + i)))
        .collect();
    for i in 0..60u64 {
        let t = 100 + i * 10;
        ops.push(op(0, t, Some(t + 3), Write(i + 1)));
        ops.push(op(1, t + 4, Some(t + 6), Read(Some(i + 1))));
        ops.push(op(2, t + 4, Some(t + 6), CasFail { from: 999 }));
    }
    if stale {
        ops.push(op(3, 800, Some(801), Read(Some(30))));
    }
    ops
}

#[test]
fn many_writes_in_doubt_stay_cheap_to_check() {
    // Each write in doubt may or may not have happened: 2^40 combinations
    // for a naive search; the checker must decide both ways quickly.
    let valid = history_with_writes_in_doubt(40, false);
    let mut budget = Budget::new(Duration::from_secs(30), 2_000_000);
    assert_eq!(check_register(&valid, &mut budget), Linearizability::Linearizable);
    let invalid = history_with_writes_in_doubt(40, true);
    let mut budget = Budget::new(Duration::from_secs(30), 2_000_000);
    assert!(matches!(
        check_register(&invalid, &mut budget),
        Linearizability::NotLinearizable { .. }
    ));
}
