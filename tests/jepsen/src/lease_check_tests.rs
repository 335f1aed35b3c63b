//! Hand-made histories for the lease checks: each anomaly the checks exist
//! for makes them fail, and the unknown outcomes they must tolerate do not.

use serde_json::json;

use super::*;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Builds a history of sequential client ops (each its own process).
#[derive(Default)]
struct History {
    events: Vec<Event>,
}

impl History {
    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        f: &str,
        key: Option<&str>,
        invoked: Json,
        outcome: EventType,
        answered: Json,
        start: u64,
        end: u64,
    ) -> &mut Self {
        let process = self.events.len() as u64;
        let mut invoke = Event::invoke(process, f, key, invoked, start).with_node("m1");
        invoke.index = self.events.len() as u64;
        let mut done = Event::complete(&invoke, outcome, answered, end);
        done.index = invoke.index + 1;
        self.events.push(invoke);
        self.events.push(done);
        self
    }

    fn grant(&mut self, lease: i64, ttl: i64, start: u64, end: u64) -> &mut Self {
        self.op(
            f::LEASE_GRANT,
            None,
            json!(ttl),
            EventType::Ok,
            json!([lease, ttl]),
            start,
            end,
        )
    }

    fn put(&mut self, key: &str, lease: i64, outcome: EventType, start: u64, end: u64) -> &mut Self {
        self.op(
            f::LEASE_PUT,
            Some(key),
            json!(lease),
            outcome,
            json!(lease),
            start,
            end,
        )
    }

    fn keep_alive(&mut self, lease: i64, ttl: i64, start: u64, end: u64) -> &mut Self {
        self.op(
            f::KEEP_ALIVE,
            None,
            json!(lease),
            EventType::Ok,
            json!([lease, ttl]),
            start,
            end,
        )
    }

    fn time_to_live(&mut self, lease: i64, ttl: i64, start: u64, end: u64) -> &mut Self {
        self.op(
            f::TIME_TO_LIVE,
            None,
            json!(lease),
            EventType::Ok,
            json!([lease, ttl]),
            start,
            end,
        )
    }

    fn revoke(&mut self, lease: i64, outcome: EventType, start: u64, end: u64) -> &mut Self {
        self.op(
            f::LEASE_REVOKE,
            None,
            json!(lease),
            outcome,
            json!(lease),
            start,
            end,
        )
    }

    /// A read of `key` that found it attached to `found` (None: absent).
    fn read(&mut self, key: &str, found: Option<i64>, start: u64, end: u64) -> &mut Self {
        self.op(
            f::LEASE_READ,
            Some(key),
            Json::Null,
            EventType::Ok,
            found.map_or(Json::Null, |lease| json!(lease)),
            start,
            end,
        )
    }

    fn outcomes(&self) -> Vec<(String, Outcome)> {
        lease_checks(&self.events)
            .into_iter()
            .map(|c| (c.name, c.outcome))
            .collect()
    }

    fn outcome(&self, name: &str) -> Outcome {
        let checks = lease_checks(&self.events);
        let check = checks.iter().find(|c| c.name == name).expect("the check ran");
        check.outcome
    }
}

/// Lease 7 (TTL 2 s) granted at 0-0.1 s, key k put at 0.1-0.2 s, renewed
/// by a keep-alive sent at 1 s.
fn renewed_lease() -> History {
    let mut history = History::default();
    history
        .grant(7, 2, 0, 100 * MS)
        .put("k", 7, EventType::Ok, 100 * MS, 200 * MS)
        .keep_alive(7, 2, S, S + 50 * MS)
        .read("k", Some(7), S + 100 * MS, S + 150 * MS);
    history
}

#[test]
fn a_lease_that_expires_after_its_last_keep_alive_and_stays_gone_passes() {
    let mut history = renewed_lease();
    history
        .read("k", None, 3 * S, 3 * S + 50 * MS)
        .time_to_live(7, -1, 3 * S + 100 * MS, 3 * S + 150 * MS)
        .read("k", None, 4 * S, 4 * S + 50 * MS);
    assert_eq!(
        history.outcomes(),
        vec![
            (NO_RESURRECTION.to_string(), Outcome::Pass),
            (NO_EARLY_EXPIRY.to_string(), Outcome::Pass)
        ]
    );
}

#[test]
fn a_key_read_after_an_acknowledged_revoke_is_a_resurrection() {
    let mut history = renewed_lease();
    history.revoke(7, EventType::Ok, 2 * S, 2 * S + 10 * MS).read(
        "k",
        Some(7),
        2 * S + 20 * MS,
        2 * S + 30 * MS,
    );
    assert_eq!(history.outcome(NO_RESURRECTION), Outcome::Fail);
    // A read concurrent with the revoke may see either state.
    let mut concurrent = renewed_lease();
    concurrent.revoke(7, EventType::Ok, 2 * S, 2 * S + 10 * MS).read(
        "k",
        Some(7),
        2 * S + 5 * MS,
        2 * S + 30 * MS,
    );
    assert_eq!(concurrent.outcome(NO_RESURRECTION), Outcome::Pass);
}

#[test]
fn a_lease_alive_after_its_expiry_was_observed_is_a_resurrection() {
    let mut history = renewed_lease();
    history
        .time_to_live(7, -1, 3 * S + 100 * MS, 3 * S + 150 * MS)
        .keep_alive(7, 2, 3 * S + 200 * MS, 3 * S + 250 * MS);
    assert_eq!(history.outcome(NO_RESURRECTION), Outcome::Fail);
    let mut by_read = renewed_lease();
    by_read
        .read("k", None, 3 * S, 3 * S + 50 * MS)
        .time_to_live(7, 1, 3 * S + 200 * MS, 3 * S + 250 * MS);
    assert_eq!(by_read.outcome(NO_RESURRECTION), Outcome::Fail);
}

#[test]
fn a_key_gone_before_ttl_after_the_last_acknowledged_keep_alive_is_an_early_expiry() {
    // Renewed at 1 s with TTL 2: alive until 3 s at least; absent by 2.5 s.
    let mut history = renewed_lease();
    history.read("k", None, 2 * S + 400 * MS, 2 * S + 500 * MS);
    assert_eq!(history.outcome(NO_EARLY_EXPIRY), Outcome::Fail);
    // Within the clock tolerance it passes.
    let mut close = renewed_lease();
    close.read("k", None, 2 * S + 800 * MS, 2 * S + 850 * MS);
    assert_eq!(close.outcome(NO_EARLY_EXPIRY), Outcome::Pass);
    // A keep-alive answered TTL 0 early counts as well.
    let mut answered = renewed_lease();
    answered.keep_alive(7, 0, 2 * S, 2 * S + 10 * MS);
    assert_eq!(answered.outcome(NO_EARLY_EXPIRY), Outcome::Fail);
}

#[test]
fn a_revoke_of_unknown_outcome_explains_an_early_disappearance() {
    let mut history = renewed_lease();
    history
        .revoke(7, EventType::Info, 2 * S, 2 * S + 1_500 * MS)
        .read("k", None, 2 * S + 100 * MS, 2 * S + 200 * MS);
    assert_eq!(history.outcome(NO_EARLY_EXPIRY), Outcome::Pass);
    // ...but proves nothing: the key seen again later is no resurrection.
    history.read("k", Some(7), 2 * S + 300 * MS, 2 * S + 400 * MS);
    assert_eq!(
        history.outcome(NO_RESURRECTION),
        Outcome::Fail,
        "the absent read did"
    );
    // A failed revoke explains nothing.
    let mut failed = renewed_lease();
    failed.revoke(7, EventType::Fail, 2 * S, 2 * S + 10 * MS).read(
        "k",
        None,
        2 * S + 100 * MS,
        2 * S + 200 * MS,
    );
    assert_eq!(failed.outcome(NO_EARLY_EXPIRY), Outcome::Fail);
}

#[test]
fn absences_that_prove_nothing_are_not_sightings() {
    // The key's put had an unknown outcome, or was not acknowledged before
    // the read began: its absence says nothing about the lease.
    let mut history = History::default();
    history
        .grant(9, 3, 0, 100 * MS)
        .put("unknown", 9, EventType::Info, 100 * MS, 1_600 * MS)
        .put("late", 9, EventType::Ok, 200 * MS, 400 * MS)
        .read("unknown", None, 1_700 * MS, 1_800 * MS)
        .read("late", None, 300 * MS, 350 * MS)
        .time_to_live(9, -1, 50 * MS, 60 * MS)
        .read("late", Some(9), 2 * S, 2 * S + 10 * MS);
    assert_eq!(history.outcome(NO_EARLY_EXPIRY), Outcome::Pass);
    assert_eq!(history.outcome(NO_RESURRECTION), Outcome::Pass);
}

#[test]
fn a_keep_alive_of_unknown_outcome_promises_nothing() {
    let mut history = History::default();
    history
        .grant(5, 2, 0, 100 * MS)
        .put("k", 5, EventType::Ok, 100 * MS, 200 * MS)
        .op(
            f::KEEP_ALIVE,
            None,
            json!(5),
            EventType::Info,
            json!(5),
            S,
            2_500 * MS,
        )
        .read("k", None, 2_100 * MS, 2_200 * MS);
    assert_eq!(history.outcome(NO_EARLY_EXPIRY), Outcome::Pass);
}

#[test]
fn an_unreadable_history_is_unknown_never_valid() {
    let mut history = History::default();
    history.op(
        f::LEASE_GRANT,
        None,
        json!(2),
        EventType::Ok,
        json!("garbage"),
        0,
        1,
    );
    assert!(history.outcomes().iter().all(|(_, o)| *o == Outcome::Unknown));
}
