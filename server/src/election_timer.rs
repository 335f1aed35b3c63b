//! keel's own election timer, replacing openraft 0.9's.
//!
//! Invariant: every election round waits a FRESH random timeout drawn
//! uniformly from [election-timeout, 2 x election-timeout) since the later
//! of the last contact from a legitimate leader (or a vote this member
//! granted) and this member's own last election attempt. openraft 0.9.25
//! draws one timeout per member at start, so two members with close draws can
//! split the vote round after round; redrawing each round breaks such ties.
//!
//! A round starts a real election only if a pre-vote (pre_vote.rs) finds a
//! quorum that would vote for this member, and only if the member neither
//! granted a vote nor heard from a leader while that pre-vote ran. A member
//! that refuses a pre-vote because its own log is longer is nudged: its
//! current round ends at the lower bound of the range, one election timeout
//! after its last contact, instead of at its draw; the member that can win
//! then need not wait for its own (possibly long) draw after the one that
//! cannot has timed out.
//!
//! openraft's built-in election is disabled (`enable_elect = false`) and its
//! `election_timeout_max`, which is also the leader lease during which
//! followers reject vote requests, is set one heartbeat below the election
//! timeout (member.rs); since every draw here is at least the election
//! timeout, a candidate asks for votes only after voters whose last contact
//! with the old leader was up to a heartbeat later than its own have stopped
//! honouring that leader's lease.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use keel_raft::{KeelRaft, NodeId, PeerNetwork, SledLogStore};

use crate::pre_vote::{ask_voters, PreVoteOutcome};

/// When this member last heard from a leader (or granted a vote), and the
/// nudge that shortens the current round.
#[derive(Clone)]
pub struct LeaderContact {
    origin: Instant,
    last_contact_micros: Arc<AtomicU64>,
    nudge: Arc<tokio::sync::Notify>,
}

impl LeaderContact {
    pub fn new() -> Self {
        LeaderContact {
            origin: Instant::now(),
            last_contact_micros: Arc::new(AtomicU64::new(0)),
            nudge: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A peer with a shorter log asked for a pre-vote: this member can win
    /// where it cannot, so its current round shortens to the lower bound of
    /// the draw range (still at least one election timeout of silence).
    pub fn nudge_election(&self) {
        self.nudge.notify_one();
    }

    pub fn touch(&self) {
        let now = self.origin.elapsed().as_micros() as u64;
        self.last_contact_micros.fetch_max(now, Ordering::Relaxed);
    }

    pub fn since_last_contact(&self) -> Duration {
        let last = Duration::from_micros(self.last_contact_micros.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

pub fn draw_election_timeout(election_timeout: Duration) -> Duration {
    let min = election_timeout.as_micros() as u64;
    Duration::from_micros(rand::thread_rng().gen_range(min..min.saturating_mul(2).max(min + 1)))
}

/// What the timer needs to run a pre-vote round (see pre_vote.rs).
pub struct PreVoter {
    pub network: PeerNetwork,
    pub log_store: SledLogStore,
    pub self_id: NodeId,
}

impl PreVoter {
    async fn ask(&self, raft: &KeelRaft, timeout: Duration) -> PreVoteOutcome {
        ask_voters(raft, &self.network, &self.log_store, self.self_id, timeout).await
    }
}

/// Runs until the raft instance shuts down.
pub async fn run_election_timer(
    raft: KeelRaft,
    contact: LeaderContact,
    pre_voter: PreVoter,
    election_timeout: Duration,
) {
    let mut since_attempt = Instant::now();
    loop {
        let mut timeout = draw_election_timeout(election_timeout);
        // A lone voter has nobody to hear from: it elects itself at once.
        let single_voter = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            == 1;
        loop {
            let quiet = contact.since_last_contact().min(since_attempt.elapsed());
            if quiet >= timeout || (single_voter && since_attempt.elapsed() >= election_timeout / 10) {
                break;
            }
            let wait = if single_voter {
                election_timeout / 10
            } else {
                timeout - quiet
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = contact.nudge.notified() => timeout = election_timeout,
            }
        }
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.running_state.is_err() {
            return;
        }
        since_attempt = Instant::now();
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == metrics.id);
        if metrics.state == ServerState::Leader || !is_voter {
            continue;
        }
        let pre_vote = pre_voter.ask(&raft, election_timeout / 2).await;
        if !pre_vote.quorum {
            tracing::debug!(
                longer_log_seen = pre_vote.longer_log_seen,
                "no quorum would vote for this member; not raising the term"
            );
            continue;
        }
        // While the pre-vote ran, this member may have granted another
        // candidate its vote or heard from a new leader: campaigning now
        // would only raise the term under them and start the race again.
        let term_moved = raft.metrics().borrow_watched().current_term != metrics.current_term;
        if term_moved || contact.since_last_contact() < since_attempt.elapsed() {
            continue;
        }
        tracing::info!(
            term = metrics.current_term,
            waited_ms = timeout.as_millis() as u64,
            "no leader heard from within the election timeout; starting an election"
        );
        if raft.trigger().elect(false).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_fall_in_one_to_two_election_timeouts_and_vary() {
        let base = Duration::from_millis(300);
        let draws: Vec<Duration> = (0..200).map(|_| draw_election_timeout(base)).collect();
        assert!(draws.iter().all(|d| *d >= base && *d < base * 2));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 150, "draws should differ round to round");
    }
}
