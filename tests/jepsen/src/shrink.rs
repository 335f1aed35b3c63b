//! Shrinking a non-linearizable register history to a small failing
//! sub-history, so a report shows the anomaly in a handful of operations.
//!
//! Removing operations is not monotone for linearizability: dropping a
//! write can strand a read of its value and fail for a reason the original
//! history did not have. So only *sound* removals are made — ones after
//! which a linearizable history would stay linearizable, so that a failing
//! sub-history proves the original fails:
//! - a read-like op (a read, a failed CAS) may go alone: it only constrains;
//! - an op that may install a value `v` goes together with every op that
//!   depends on `v` (reads of `v`, CASes from `v`, and transitively what they
//!   install), and with every failed CAS that did not return before it was
//!   called (those are the only ones whose state it could have shielded).
//!
//! Strategy: cut the history to the shortest failing prefix by call time
//! (binary search), then drop single operations greedily while the rest still
//! fails, all under a time bound; the best sub-history found so far is kept.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::linearizable::{check_register, Budget, Linearizability};
use crate::model::{Op, RegOp};

/// The indices (into `ops`) removed, closed under the soundness rule above.
pub fn removal_closure(ops: &[Op], kept: &BTreeSet<usize>, start: &[usize]) -> BTreeSet<usize> {
    let mut removed: BTreeSet<usize> = BTreeSet::new();
    let mut work: Vec<usize> = start.iter().copied().filter(|i| kept.contains(i)).collect();
    while let Some(index) = work.pop() {
        if !removed.insert(index) {
            continue;
        }
        let op = &ops[index];
        let Some(value) = op.op.written_value() else {
            continue;
        };
        for &other in kept {
            if removed.contains(&other) {
                continue;
            }
            let candidate = &ops[other];
            let depends = candidate.op.depends_on() == Some(value);
            let shielded = matches!(candidate.op, RegOp::CasFail { .. })
                && candidate.ret.is_none_or(|ret| ret >= op.call);
            if depends || shielded {
                work.push(other);
            }
        }
    }
    removed
}

fn fails(ops: &[Op], kept: &BTreeSet<usize>, per_check: Duration) -> bool {
    let subset: Vec<Op> = kept.iter().map(|&i| ops[i].clone()).collect();
    let mut budget = Budget::new(per_check, 50_000_000);
    matches!(
        check_register(&subset, &mut budget),
        Linearizability::NotLinearizable { .. }
    )
}

/// Returns the indices (into `ops`, ascending) of a small sub-history that is
/// still not linearizable. `ops` must itself be non-linearizable; if the time
/// bound runs out, the smallest failing sub-history found so far is returned.
pub fn shrink(ops: &[Op], limit: Duration) -> Vec<usize> {
    let deadline = Instant::now() + limit;
    let per_check = (limit / 20).max(Duration::from_millis(50));
    let mut kept: BTreeSet<usize> = (0..ops.len()).collect();

    // Shortest failing prefix by call time.
    let mut by_call: Vec<usize> = (0..ops.len()).collect();
    by_call.sort_by_key(|&i| (ops[i].call, i));
    let prefix = |k: usize| -> BTreeSet<usize> {
        let all: BTreeSet<usize> = (0..ops.len()).collect();
        let removed = removal_closure(ops, &all, &by_call[k..]);
        all.difference(&removed).copied().collect()
    };
    let (mut lo, mut hi) = (0usize, ops.len());
    while lo + 1 < hi && Instant::now() < deadline {
        let mid = lo + (hi - lo) / 2;
        if fails(ops, &prefix(mid), per_check) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if hi < ops.len() {
        let candidate = prefix(hi);
        if fails(ops, &candidate, per_check) {
            kept = candidate;
        }
    }

    // Greedy single removals, latest call first, until a fixpoint.
    let mut changed = true;
    while changed && Instant::now() < deadline {
        changed = false;
        let order: Vec<usize> = by_call
            .iter()
            .rev()
            .copied()
            .filter(|i| kept.contains(i))
            .collect();
        for index in order {
            if Instant::now() >= deadline {
                break;
            }
            if !kept.contains(&index) {
                continue;
            }
            let removed = removal_closure(ops, &kept, &[index]);
            let candidate: BTreeSet<usize> = kept.difference(&removed).copied().collect();
            if !candidate.is_empty() && fails(ops, &candidate, per_check) {
                kept = candidate;
                changed = true;
            }
        }
    }
    kept.into_iter().collect()
}
