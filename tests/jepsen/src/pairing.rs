//! Pairs each client invocation in a history with its completion. Every
//! process is sequential, so a completion belongs to the open invocation of
//! the same process; an invocation still open when the history ends was
//! never answered and counts as indeterminate (`info`).

use std::collections::HashMap;

use crate::history::{Event, EventType, Process};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    #[error("line {line}: process {process} invoked again while its op from line {open} is still open")]
    Overlap { line: u64, process: u64, open: u64 },
    #[error("line {line}: completion for process {process}, which has no open invocation")]
    Orphan { line: u64, process: u64 },
    #[error("line {line}: completion of {got:?} does not match the open invocation of {expected:?}")]
    Mismatch {
        line: u64,
        expected: String,
        got: String,
    },
}

/// One client operation: its invocation and, unless it never completed,
/// its completion.
#[derive(Debug, Clone, Copy)]
pub struct Paired<'a> {
    pub invoke: &'a Event,
    pub completion: Option<&'a Event>,
}

impl Paired<'_> {
    /// The outcome, `info` when the op never completed.
    pub fn outcome(&self) -> EventType {
        self.completion.map_or(EventType::Info, |c| c.kind)
    }

    /// Completion time; `None` when the op is indeterminate (no return).
    pub fn end(&self) -> Option<u64> {
        self.completion.and_then(|c| c.end)
    }

    pub fn process(&self) -> u64 {
        match self.invoke.process {
            Process::Worker(p) => p,
            Process::Nemesis(_) => u64::MAX,
        }
    }
}

/// Pairs the client events of `events` (nemesis lines are skipped), in
/// invocation order.
pub fn pair_operations(events: &[Event]) -> Result<Vec<Paired<'_>>, PairingError> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut paired: Vec<Paired<'_>> = Vec::new();
    for event in events {
        let Process::Worker(process) = event.process else {
            continue;
        };
        if event.kind == EventType::Invoke {
            if let Some(&slot) = open.get(&process) {
                return Err(PairingError::Overlap {
                    line: event.index,
                    process,
                    open: paired[slot].invoke.index,
                });
            }
            open.insert(process, paired.len());
            paired.push(Paired {
                invoke: event,
                completion: None,
            });
            continue;
        }
        let slot = open.remove(&process).ok_or(PairingError::Orphan {
            line: event.index,
            process,
        })?;
        let invoke = paired[slot].invoke;
        if invoke.f != event.f || invoke.key != event.key {
            return Err(PairingError::Mismatch {
                line: event.index,
                expected: format!("{} {:?}", invoke.f, invoke.key),
                got: format!("{} {:?}", event.f, event.key),
            });
        }
        paired[slot].completion = Some(event);
    }
    Ok(paired)
}
