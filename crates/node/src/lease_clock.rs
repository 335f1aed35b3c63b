//! The leader's lease deadlines: in memory, valid for one term.
//!
//! Invariants owned here:
//! - Deadlines exist only while this member leads: [`LeaseClock::take_office`]
//!   fills them for one term, [`LeaseClock::step_down`] drops them, and a
//!   deadline is never kept across a change of term.
//! - Taking office never expires a lease early: every lease gets
//!   `now + its checkpointed remaining TTL` (or its whole TTL when none is
//!   recorded), which is never before its deadline under the previous leader
//!   (that leader checkpointed a remaining time at least as long as what
//!   was left, rounded up to whole seconds, before it could be deposed).
//! - A lease handed to a revoke is not renewed meanwhile: it is "revoking"
//!   until the revoke's outcome is known; a failed revoke puts it back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_mvcc::LeaseRecord;
use tokio::time::Instant;

#[derive(Default)]
struct ClockState {
    /// The term whose deadlines these are; `None` while not leading.
    term: Option<u64>,
    deadlines: HashMap<i64, Instant>,
    revoking: HashSet<i64>,
}

/// Shared by the lessor and the proposer (which reports grants as they apply).
#[derive(Clone, Default)]
pub(crate) struct LeaseClock {
    state: Arc<Mutex<ClockState>>,
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// The deadline a lease gets when a leader takes office or adopts it.
fn first_deadline(now: Instant, record: &LeaseRecord) -> Instant {
    let left = if record.remaining_ttl > 0 {
        record.remaining_ttl
    } else {
        record.ttl
    };
    now + seconds(left)
}

impl LeaseClock {
    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term the deadlines belong to, if this member keeps them.
    pub(crate) fn term(&self) -> Option<u64> {
        self.lock().term
    }

    /// Starts keeping deadlines for `term`, one per lease in `leases`.
    pub(crate) fn take_office(&self, term: u64, leases: &[LeaseRecord]) {
        let now = Instant::now();
        let mut state = self.lock();
        state.term = Some(term);
        state.revoking.clear();
        state.deadlines = leases
            .iter()
            .map(|record| (record.id, first_deadline(now, record)))
            .collect();
        tracing::info!(term, leases = leases.len(), "keeping lease deadlines as leader");
    }

    /// Drops every deadline: this member no longer leads.
    pub(crate) fn step_down(&self) {
        let mut state = self.lock();
        if state.term.take().is_some() {
            state.deadlines.clear();
            state.revoking.clear();
            tracing::info!("dropped lease deadlines: no longer leading");
        }
    }

    /// Matches the deadlines to the applied leases: adopts leases it does
    /// not know (granted under another leader's proposer) and forgets gone ones.
    pub(crate) fn reconcile(&self, leases: &[LeaseRecord]) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.term.is_none() {
            return;
        }
        let present: HashSet<i64> = leases.iter().map(|record| record.id).collect();
        state.deadlines.retain(|id, _| present.contains(id));
        state.revoking.retain(|id| present.contains(id));
        for record in leases {
            if !state.revoking.contains(&record.id) {
                state
                    .deadlines
                    .entry(record.id)
                    .or_insert_with(|| first_deadline(now, record));
            }
        }
    }

    /// A grant applied through this member's proposer: its TTL starts now.
    pub(crate) fn granted(&self, id: i64, ttl: i64) {
        let mut state = self.lock();
        if state.term.is_some() {
            state.deadlines.insert(id, Instant::now() + seconds(ttl));
        }
    }

    /// A renewal: the lease lives `ttl` from now. False when the lease is
    /// being revoked or the clock is not kept (the caller answers TTL 0 or
    /// retries).
    pub(crate) fn renewed(&self, id: i64, ttl: i64) -> bool {
        let mut state = self.lock();
        if state.term.is_none() || state.revoking.contains(&id) {
            return false;
        }
        state.deadlines.insert(id, Instant::now() + seconds(ttl));
        true
    }

    /// True while lease `id` is handed to a revoke.
    pub(crate) fn is_revoking(&self, id: i64) -> bool {
        self.lock().revoking.contains(&id)
    }

    /// The time lease `id` has left, if a deadline is kept for it.
    pub(crate) fn remaining(&self, id: i64) -> Option<Duration> {
        let state = self.lock();
        let deadline = state.deadlines.get(&id)?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Up to `limit` leases past their deadline, now marked revoking.
    pub(crate) fn take_expired(&self, limit: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.lock();
        let expired: Vec<i64> = state
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        for id in &expired {
            state.deadlines.remove(id);
            state.revoking.insert(*id);
        }
        expired
    }

    /// The revoke of `id` applied (or found the lease gone): forget it.
    pub(crate) fn forget(&self, id: i64) {
        let mut state = self.lock();
        state.deadlines.remove(&id);
        state.revoking.remove(&id);
    }

    /// The revoke of `id` failed (not applied): it expires again at once.
    pub(crate) fn revoke_failed(&self, id: i64) {
        let mut state = self.lock();
        if state.revoking.remove(&id) && state.term.is_some() {
            state.deadlines.insert(id, Instant::now());
        }
    }

    /// Whole seconds each kept lease has left, rounded up (a checkpoint
    /// must never shorten a lease), for leases not being revoked.
    pub(crate) fn checkpoints(&self) -> Vec<(i64, i64)> {
        let now = Instant::now();
        let state = self.lock();
        let mut checkpoints: Vec<(i64, i64)> = state
            .deadlines
            .iter()
            .map(|(id, deadline)| {
                let left = deadline.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                (*id, i64::try_from(secs).unwrap_or(i64::MAX).max(1))
            })
            .collect();
        checkpoints.sort_unstable();
        checkpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, ttl: i64, remaining_ttl: i64) -> LeaseRecord {
        LeaseRecord {
            id,
            ttl,
            remaining_ttl,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn taking_office_starts_each_lease_at_its_checkpointed_remaining_ttl() {
        let clock = LeaseClock::default();
        clock.take_office(3, &[record(1, 100, 40), record(2, 100, 0)]);
        assert_eq!(clock.remaining(1), Some(Duration::from_secs(40)));
        assert_eq!(clock.remaining(2), Some(Duration::from_secs(100)));
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(clock.take_expired(10), vec![1]);
        assert!(clock.is_revoking(1));
        assert!(!clock.renewed(1, 100), "a revoking lease is not renewed");
        clock.revoke_failed(1);
        assert_eq!(clock.take_expired(10), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_restarts_the_whole_ttl_and_checkpoints_round_up() {
        let clock = LeaseClock::default();
        clock.take_office(1, &[record(5, 10, 3)]);
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(clock.checkpoints(), vec![(5, 1)]);
        assert!(clock.renewed(5, 10));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(clock.checkpoints(), vec![(5, 10)]);
        assert!(clock.take_expired(10).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stepping_down_drops_every_deadline_and_grants_are_ignored_until_office() {
        let clock = LeaseClock::default();
        clock.granted(1, 10);
        assert_eq!(clock.remaining(1), None);
        clock.take_office(2, &[record(1, 10, 0)]);
        clock.step_down();
        assert_eq!(clock.term(), None);
        assert_eq!(clock.remaining(1), None);
        assert!(!clock.renewed(1, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_adopts_unknown_leases_and_forgets_gone_ones() {
        let clock = LeaseClock::default();
        clock.take_office(2, &[record(1, 10, 0), record(2, 10, 0)]);
        clock.reconcile(&[record(2, 10, 0), record(3, 20, 0)]);
        assert_eq!(clock.remaining(1), None);
        assert_eq!(clock.remaining(3), Some(Duration::from_secs(20)));
    }
}
