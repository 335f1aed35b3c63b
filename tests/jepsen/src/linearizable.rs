//! The linearizability checker for one register (one key's history).
//!
//! Invariant checked: there is a total order of the operations that (1)
//! respects real time — if `a` returned before `b` was called, `a` comes
//! first — and (2) is a legal sequential run of the register model
//! ([`RegOp::step`] accepts every operation from the state the previous ones
//! left). Indeterminate operations (no return) may take effect at any point
//! after their call or never; reads that returned nothing and updates that
//! definitely failed are dropped before the search by the history reader.
//!
//! Algorithm: the Wing–Gong search as refined by Lowe, in the form Porcupine
//! popularised. The calls and returns are laid out in one doubly linked list
//! in time order (a call sorts before a return at the same instant, so ties
//! are treated as concurrent). Scanning from the head, a call whose operation
//! the model accepts from the current state is *lifted* (its call and return
//! leave the list) and the scan restarts; reaching a return means that
//! operation had to take effect already but could not, so the last lift is
//! undone and the scan continues after it. An empty list (or one holding only
//! indeterminate operations, which any state accepts) is a linearization.
//! A cache of (set of lifted operations, state) pairs already explored prunes
//! the search: reaching the same pair again cannot succeed where it failed.
//!
//! Two further prunings keep histories with many indeterminate ("optional")
//! operations tractable; both rest on one fact: an optional op never has to
//! be lifted (leaving it out is the same as placing it last), and its
//! return lies at the end of time, so it never blocks another lift. Hence a
//! configuration B with the same definite ops lifted and the same state as
//! a configuration A, but a subset of A's optional ops lifted, can do all
//! that A can.
//! - An optional op whose step leaves the state unchanged is never lifted
//!   (the configuration it leads to is subsumed by the current one).
//! - An optional write is never lifted right after another optional op:
//!   it overwrites that op's effect before anything observed it, so the
//!   configuration is subsumed by lifting the write alone one step
//!   earlier, which the search tries as a sibling (the write was a
//!   candidate there too: the only difference is the earlier op's call,
//!   and its return lies at the end of time).
//! - When the search backtracks out of a configuration, that configuration
//!   is recorded as failed; a new configuration subsumed by a failed one
//!   (same definite set and state, superset of its optional set) is
//!   skipped. Only finished configurations prune this way, so the argument
//!   never depends on a configuration still being explored.
//!
//! Order of exploration (it changes speed, not verdicts): the candidates of
//! a configuration — the calls before the first return in the list — are
//! tried definite ops first, optional ops only after every definite
//! candidate failed, so an indeterminate op takes effect only when some
//! observation needs it.
//!
//! The search is exponential in the worst case, so it runs under a
//! [`Budget`] of steps, wall-clock time and cache size; an exhausted budget
//! yields [`Linearizability::Unknown`], never a "valid" verdict.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::{Op, RegOp, State};

/// How much searching the checker may do before it gives up with "unknown".
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: Instant,
    steps_left: u64,
    max_cache: usize,
}

impl Budget {
    pub fn new(time: Duration, steps: u64) -> Budget {
        Budget {
            deadline: Instant::now() + time,
            steps_left: steps,
            max_cache: 4_000_000,
        }
    }

    /// Caps the number of cached configurations (memory bound).
    pub fn with_max_cache(mut self, entries: usize) -> Budget {
        self.max_cache = entries;
        self
    }

    /// A budget large enough for any history the tests build by hand.
    pub fn generous() -> Budget {
        Budget::new(Duration::from_secs(60), 1 << 40)
    }

    /// Spends one step; `Err` names what ran out.
    fn spend(&mut self) -> Result<(), &'static str> {
        if self.steps_left == 0 {
            return Err("step limit reached");
        }
        self.steps_left -= 1;
        if self.steps_left.is_multiple_of(1024) && Instant::now() >= self.deadline {
            self.steps_left = 0;
            return Err("time limit reached");
        }
        Ok(())
    }

    pub fn steps_left(&self) -> u64 {
        self.steps_left
    }

    pub fn is_exhausted(&self) -> bool {
        self.steps_left == 0 || Instant::now() >= self.deadline
    }
}

/// The verdict for one register history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linearizability {
    Linearizable,
    /// No linearization exists. `deepest` is the largest number of operations
    /// the search managed to order, and `stuck_at` the index (into the input
    /// slice) of the operation whose return the search could not get past
    /// there — usually the op that exposes the anomaly.
    NotLinearizable {
        deepest: usize,
        stuck_at: usize,
    },
    /// The budget ran out before the search finished: no verdict.
    Unknown {
        reason: String,
    },
}

impl Linearizability {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Linearizability::Linearizable)
    }
}

/// One node of the event list: a call or a return of operation `op`.
#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call node, the node of its return.
    partner: usize,
}

/// The event list: node 0 is the head sentinel, the last node the tail.
struct EventList {
    nodes: Vec<Node>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    fn new(ops: &[Op]) -> EventList {
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            let ret = op.ret.map_or(u64::MAX, |ret| ret.max(op.call));
            events.push((op.call, 0, index));
            events.push((ret, 1, index));
        }
        events.sort_unstable();
        let total = events.len() + 2;
        let sentinel = Node {
            op: usize::MAX,
            is_call: false,
            partner: 0,
        };
        let mut nodes = vec![sentinel; total];
        let mut return_node = vec![0usize; ops.len()];
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            nodes[position + 1] = Node {
                op,
                is_call: kind == 0,
                partner: 0,
            };
            if kind == 1 {
                return_node[op] = position + 1;
            }
        }
        for node in nodes.iter_mut().take(total - 1).skip(1) {
            if node.is_call {
                node.partner = return_node[node.op];
            }
        }
        let next = (0..total).map(|i| (i + 1).min(total - 1)).collect();
        let prev = (0..total).map(|i| i.saturating_sub(1)).collect();
        EventList { nodes, next, prev }
    }

    fn tail(&self) -> usize {
        self.nodes.len() - 1
    }

    fn is_empty(&self) -> bool {
        self.next[0] == self.tail()
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    /// Puts back a node removed by `unlink`; valid in LIFO order.
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].partner);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].partner);
        self.relink(call);
    }
}

/// A fixed-size set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct OpSet(Box<[u64]>);

impl OpSet {
    fn new(len: usize) -> OpSet {
        OpSet(vec![0; len.div_ceil(64)].into_boxed_slice())
    }

    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }

    fn is_subset_of(&self, other: &OpSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & !b == 0)
    }
}

/// The lifted ops of a configuration, split into definite and optional.
#[derive(Clone)]
struct Lifted {
    definite: OpSet,
    optional: OpSet,
}

impl Lifted {
    fn new(len: usize) -> Lifted {
        Lifted {
            definite: OpSet::new(len),
            optional: OpSet::new(len),
        }
    }

    fn part(&mut self, optional: bool) -> &mut OpSet {
        if optional {
            &mut self.optional
        } else {
            &mut self.definite
        }
    }
}

/// Configurations seen, keyed by (definite ops lifted, state); for each,
/// the optional sets seen and whether that configuration is known to fail.
#[derive(Default)]
struct Seen {
    by_key: HashMap<(OpSet, State), Vec<(OpSet, bool)>>,
    entries: usize,
}

impl Seen {
    /// Records a configuration about to be explored; false when it was seen
    /// before or is subsumed by one known to fail.
    fn enter(&mut self, lifted: &Lifted, state: State) -> bool {
        let entries = self.by_key.entry((lifted.definite.clone(), state)).or_default();
        let known = entries.iter().any(|(optional, failed)| {
            *optional == lifted.optional || (*failed && optional.is_subset_of(&lifted.optional))
        });
        if known {
            return false;
        }
        entries.push((lifted.optional.clone(), false));
        self.entries += 1;
        true
    }

    /// Marks a configuration fully explored without success.
    fn fail(&mut self, lifted: &Lifted, state: State) {
        if let Some(entries) = self.by_key.get_mut(&(lifted.definite.clone(), state)) {
            if let Some(entry) = entries
                .iter_mut()
                .find(|(optional, _)| *optional == lifted.optional)
            {
                entry.1 = true;
            }
        }
    }
}

/// Checks one register history (all operations on one key) against the
/// register model starting from a missing key.
pub fn check_register(ops: &[Op], budget: &mut Budget) -> Linearizability {
    check_register_from(ops, None, budget)
}

/// Which candidates a scan of the event list considers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Definite,
    Optional,
}

/// As [`check_register`], from an arbitrary initial state.
pub fn check_register_from(ops: &[Op], initial: State, budget: &mut Budget) -> Linearizability {
    let mut list = EventList::new(ops);
    let mut definite_left = ops.iter().filter(|op| !op.is_optional()).count();
    let mut lifted = Lifted::new(ops.len());
    let mut seen = Seen::default();
    // (call node lifted, state before it, pass it was lifted in)
    let mut stack: Vec<(usize, State, Pass)> = Vec::new();
    let mut state = initial;
    let (mut deepest, mut stuck_at) = (0usize, 0usize);
    let mut entry = list.next[0];
    let mut pass = Pass::Definite;
    loop {
        // Optional operations (indeterminate, accepted by any state) may come
        // last, so once only they remain the order found so far extends.
        if definite_left == 0 || list.is_empty() {
            return Linearizability::Linearizable;
        }
        if let Err(reason) = budget.spend() {
            return Linearizability::Unknown {
                reason: reason.to_string(),
            };
        }
        let node = list.nodes[entry];
        if node.is_call {
            let op = &ops[node.op];
            let optional = op.is_optional();
            let in_pass = optional == (pass == Pass::Optional);
            let after_optional = stack
                .last()
                .is_some_and(|&(call, _, _)| ops[list.nodes[call].op].is_optional());
            let overwrites_unobserved = optional && after_optional && matches!(op.op, RegOp::Write(_));
            let next_state = op
                .op
                .step(state)
                .filter(|next| in_pass && !overwrites_unobserved && !(optional && *next == state));
            if let Some(next_state) = next_state {
                lifted.part(optional).insert(node.op);
                if seen.enter(&lifted, next_state) {
                    if seen.entries > budget.max_cache {
                        return Linearizability::Unknown {
                            reason: "cache size limit reached".to_string(),
                        };
                    }
                    stack.push((entry, state, pass));
                    state = next_state;
                    list.lift(entry);
                    if !optional {
                        definite_left -= 1;
                    }
                    entry = list.next[0];
                    pass = Pass::Definite;
                    continue;
                }
                lifted.part(optional).remove(node.op);
            }
            entry = list.next[entry];
        } else if pass == Pass::Definite {
            // Every definite candidate failed: now the optional ones.
            pass = Pass::Optional;
            entry = list.next[0];
        } else {
            // This operation must have taken effect by now and could not.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_at = node.op;
            }
            let Some((call, previous, call_pass)) = stack.pop() else {
                return Linearizability::NotLinearizable { deepest, stuck_at };
            };
            // Every continuation of the configuration being left has failed.
            seen.fail(&lifted, state);
            let op_index = list.nodes[call].op;
            let optional = ops[op_index].is_optional();
            list.unlift(call);
            lifted.part(optional).remove(op_index);
            if !optional {
                definite_left += 1;
            }
            state = previous;
            entry = list.next[call];
            pass = call_pass;
        }
    }
}
