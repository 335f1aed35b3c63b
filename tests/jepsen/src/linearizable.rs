//! The linearizability checker for one register (one key's history).
//!
//! Invariant checked: there is a total order of the operations that (1)
//! respects real time — if `a` returned before `b` was called, `a` comes
//! first — and (2) is a legal sequential run of the register model
//! ([`RegOp::step`] accepts every operation from the state the previous ones
//! left). Indeterminate operations (no return) may take effect at any point
//! after their call or never; reads and definite failures that changed
//! nothing are dropped before the search by the history reader.
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
//! The search is exponential in the worst case, so it runs under a
//! [`Budget`] of steps, wall-clock time and cache size; an exhausted budget
//! yields [`Linearizability::Unknown`], never a "valid" verdict.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::model::{Op, State};

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
}

/// Checks one register history (all operations on one key) against the
/// register model starting from a missing key.
pub fn check_register(ops: &[Op], budget: &mut Budget) -> Linearizability {
    check_register_from(ops, None, budget)
}

/// As [`check_register`], from an arbitrary initial state.
pub fn check_register_from(ops: &[Op], initial: State, budget: &mut Budget) -> Linearizability {
    let mut list = EventList::new(ops);
    let mut definite_left = ops.iter().filter(|op| !op.is_optional()).count();
    let mut lifted = OpSet::new(ops.len());
    let mut cache: HashSet<(OpSet, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let (mut deepest, mut stuck_at) = (0usize, 0usize);
    let mut entry = list.next[0];
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
            if let Some(next_state) = op.op.step(state) {
                lifted.insert(node.op);
                if cache.insert((lifted.clone(), next_state)) {
                    if cache.len() > budget.max_cache {
                        return Linearizability::Unknown {
                            reason: "cache size limit reached".to_string(),
                        };
                    }
                    stack.push((entry, state));
                    state = next_state;
                    list.lift(entry);
                    if !op.is_optional() {
                        definite_left -= 1;
                    }
                    entry = list.next[0];
                    continue;
                }
                lifted.remove(node.op);
            }
            entry = list.next[entry];
        } else {
            // This operation must have taken effect by now and could not.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_at = node.op;
            }
            let Some((call, previous)) = stack.pop() else {
                return Linearizability::NotLinearizable { deepest, stuck_at };
            };
            let op_index = list.nodes[call].op;
            list.unlift(call);
            lifted.remove(op_index);
            if !ops[op_index].is_optional() {
                definite_left += 1;
            }
            state = previous;
            entry = list.next[call];
        }
    }
}
