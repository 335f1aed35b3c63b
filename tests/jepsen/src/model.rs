//! The sequential specification of one etcd key used as a register: the
//! operations the `register` workloads perform, as the checker sees them once
//! their outcome is known, and how each one steps the register's state.
//!
//! The state is `Option<Value>`: `None` while the key does not exist. A
//! compare-and-set is an etcd `Txn` whose compare is `value(key) == from`;
//! etcd's compare on a missing key is false, so it only succeeds on
//! `Some(from)`.

use std::fmt;

/// A value written to a register. The harness never writes the same value
/// twice, which keeps the search small, but the model does not rely on it.
pub type Value = u64;

/// The register's state: the key's value, or `None` when it does not exist.
pub type State = Option<Value>;

/// One operation with its outcome, as far as the client learned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    /// A read that completed and observed this value (`None`: no key).
    Read(Option<Value>),
    /// A write that succeeded, or whose outcome is unknown (then the op has
    /// no return time and may take effect at any point after its call, or
    /// never: placing it last is the same as never).
    Write(Value),
    /// A compare-and-set that reported success: the state was `Some(from)`.
    CasOk { from: Value, to: Value },
    /// A compare-and-set whose comparison definitely failed: the state was
    /// not `Some(from)`. It changes nothing, so it constrains like a read.
    CasFail { from: Value },
    /// A compare-and-set whose outcome is unknown: if it took effect at a
    /// point where the state was `Some(from)`, it set `to`; otherwise it
    /// changed nothing.
    CasUnknown { from: Value, to: Value },
}

impl RegOp {
    /// The state after applying this operation to `state`, or `None` when the
    /// operation's observed outcome is impossible from `state`.
    pub fn step(&self, state: State) -> Option<State> {
        match *self {
            RegOp::Read(seen) => (seen == state).then_some(state),
            RegOp::Write(value) => Some(Some(value)),
            RegOp::CasOk { from, to } => (state == Some(from)).then_some(Some(to)),
            RegOp::CasFail { from } => (state != Some(from)).then_some(state),
            RegOp::CasUnknown { from, to } => Some(if state == Some(from) { Some(to) } else { state }),
        }
    }

    /// Whether every state accepts this operation (so an indeterminate one
    /// can always be placed last, which is the same as never).
    pub fn accepts_any_state(&self) -> bool {
        matches!(self, RegOp::Write(_) | RegOp::CasUnknown { .. })
    }

    /// Whether the operation can change the state.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            RegOp::Write(_) | RegOp::CasOk { .. } | RegOp::CasUnknown { .. }
        )
    }

    /// The value this operation may install, if any.
    pub fn written_value(&self) -> Option<Value> {
        match *self {
            RegOp::Write(value) | RegOp::CasOk { to: value, .. } | RegOp::CasUnknown { to: value, .. } => {
                Some(value)
            }
            RegOp::Read(_) | RegOp::CasFail { .. } => None,
        }
    }

    /// The value this operation needs to have been installed before it, if
    /// any: what a read observed, or what a successful CAS compared against.
    pub fn depends_on(&self) -> Option<Value> {
        match *self {
            RegOp::Read(seen) => seen,
            RegOp::CasOk { from, .. } | RegOp::CasUnknown { from, .. } => Some(from),
            RegOp::Write(_) | RegOp::CasFail { .. } => None,
        }
    }
}

impl fmt::Display for RegOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegOp::Read(Some(value)) => write!(f, "read -> {value}"),
            RegOp::Read(None) => write!(f, "read -> nil"),
            RegOp::Write(value) => write!(f, "write {value}"),
            RegOp::CasOk { from, to } => write!(f, "cas {from}->{to} ok"),
            RegOp::CasFail { from } => write!(f, "cas {from}->? failed"),
            RegOp::CasUnknown { from, to } => write!(f, "cas {from}->{to} ?"),
        }
    }
}

/// One operation of a single key's history: its real-time interval and its
/// outcome. `ret == None` means the client never learned the outcome (a
/// timeout or a broken connection): the interval is open to the end of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client process that issued it (processes are sequential).
    pub process: u64,
    /// Invocation time, ns since the run started.
    pub call: u64,
    /// Completion time, ns since the run started; `None` when indeterminate.
    pub ret: Option<u64>,
    pub op: RegOp,
    /// Index of the invocation line in the history file, for reports.
    pub line: u64,
}

impl Op {
    pub fn is_indeterminate(&self) -> bool {
        self.ret.is_none()
    }

    /// Whether the search may leave this op out of the order it builds: it
    /// never returned and any state accepts it.
    pub fn is_optional(&self) -> bool {
        self.ret.is_none() && self.op.accepts_any_state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_on_a_missing_key_fails_its_comparison() {
        assert_eq!(RegOp::CasOk { from: 1, to: 2 }.step(None), None);
        assert_eq!(RegOp::CasFail { from: 1 }.step(None), Some(None));
        assert_eq!(RegOp::CasUnknown { from: 1, to: 2 }.step(None), Some(None));
        assert_eq!(RegOp::CasUnknown { from: 1, to: 2 }.step(Some(1)), Some(Some(2)));
    }

    #[test]
    fn reads_constrain_and_writes_always_apply() {
        assert_eq!(RegOp::Read(Some(3)).step(Some(3)), Some(Some(3)));
        assert_eq!(RegOp::Read(Some(3)).step(Some(4)), None);
        assert_eq!(RegOp::Read(None).step(None), Some(None));
        assert_eq!(RegOp::Write(9).step(None), Some(Some(9)));
    }
}
