//! Hand-made histories for the lock checks: lost, doubled, phantom and
//! interleaved increments make them fail; increments of unknown outcome
//! may or may not be in the log.

use serde_json::json;

use super::*;

#[derive(Default)]
struct History {
    events: Vec<Event>,
}

impl History {
    fn push(&mut self, process: u64, f: &str, invoked: Json, done: Option<(EventType, Json, Option<i64>)>) {
        let at = self.events.len() as u64;
        let mut invoke = Event::invoke(process, f, None, invoked, at * 10).with_node("m1");
        invoke.index = at;
        self.events.push(invoke.clone());
        if let Some((kind, value, revision)) = done {
            let mut completion = Event::complete(&invoke, kind, value, at * 10 + 5);
            completion.index = at + 1;
            completion.revision = revision;
            self.events.push(completion);
        }
    }

    /// An increment by the holder of `token` from `to - 1` to `to`.
    fn increment(&mut self, token: i64, to: u64, outcome: EventType, revision: Option<i64>) -> &mut Self {
        let process = self.events.len() as u64;
        self.push(
            process,
            f::INCREMENT,
            json!([token]),
            Some((outcome, json!([token, to - 1, to]), revision)),
        );
        self
    }

    /// The final read on member `node`: log entries `(count, token, revision)`.
    fn final_read(&mut self, node: u64, log: &[(u64, i64, i64)]) -> &mut Self {
        let counter = log.last().map_or(Json::Null, |&(c, t, r)| json!([c, t, r]));
        let entries: Vec<Json> = log.iter().map(|&(c, t, r)| json!([c, t, r, 1])).collect();
        self.push(
            FINAL_PROCESS_BASE + node,
            f::READ_LOCK_DATA,
            Json::Null,
            Some((
                EventType::Ok,
                json!({"counter": counter, "log": entries, "unparsable": []}),
                None,
            )),
        );
        self
    }

    fn outcomes(&self) -> (Outcome, Outcome) {
        let checks = lock_checks(&self.events);
        assert_eq!(checks.len(), 2);
        (checks[0].outcome, checks[1].outcome)
    }
}

#[test]
fn acknowledged_and_some_unknown_increments_in_token_order_pass() {
    let mut history = History::default();
    history
        .increment(10, 1, EventType::Ok, Some(11))
        .increment(12, 2, EventType::Info, None)
        .increment(14, 2, EventType::Fail, None)
        .increment(15, 3, EventType::Info, None)
        .increment(16, 3, EventType::Ok, Some(17))
        .final_read(1, &[(1, 10, 11), (2, 12, 13), (3, 16, 17)])
        .final_read(2, &[(1, 10, 11), (2, 12, 13), (3, 16, 17)]);
    assert_eq!(history.outcomes(), (Outcome::Pass, Outcome::Pass));
}

#[test]
fn a_lost_acknowledged_increment_fails_the_counter() {
    let mut history = History::default();
    history
        .increment(10, 1, EventType::Ok, Some(11))
        .increment(12, 2, EventType::Ok, Some(13))
        .final_read(1, &[(1, 10, 11)]);
    assert_eq!(history.outcomes().0, Outcome::Fail);
}

#[test]
fn a_definitely_failed_increment_in_the_log_is_a_phantom() {
    let mut history = History::default();
    history
        .increment(10, 1, EventType::Ok, Some(11))
        .increment(12, 2, EventType::Fail, None)
        .final_read(1, &[(1, 10, 11), (2, 12, 13)]);
    assert_eq!(history.outcomes().0, Outcome::Fail);
}

#[test]
fn a_doubled_increment_or_a_gap_fails_the_counter() {
    let mut doubled = History::default();
    doubled.increment(10, 1, EventType::Ok, Some(11));
    doubled.push(
        FINAL_PROCESS_BASE,
        f::READ_LOCK_DATA,
        Json::Null,
        Some((
            EventType::Ok,
            json!({"counter": [1, 10, 12], "log": [[1, 10, 12, 2]], "unparsable": []}),
            None,
        )),
    );
    assert_eq!(doubled.outcomes().0, Outcome::Fail);
    let mut gap = History::default();
    gap.increment(10, 1, EventType::Ok, Some(11))
        .increment(12, 3, EventType::Ok, Some(13))
        .final_read(1, &[(1, 10, 11), (3, 12, 13)]);
    assert_eq!(gap.outcomes().0, Outcome::Fail);
}

#[test]
fn members_that_disagree_fail_the_counter() {
    let mut history = History::default();
    history
        .increment(10, 1, EventType::Info, None)
        .final_read(1, &[(1, 10, 11)])
        .final_read(2, &[]);
    assert_eq!(history.outcomes().0, Outcome::Fail);
}

#[test]
fn holders_whose_fenced_writes_interleave_fail_the_fencing_check() {
    // Token 20's increment lands between two of token 10's (the old holder
    // wrote after the new one): tokens go back at revision 15.
    let mut history = History::default();
    history
        .increment(10, 1, EventType::Ok, Some(11))
        .increment(20, 2, EventType::Ok, Some(21))
        .increment(10, 3, EventType::Ok, Some(22))
        .final_read(1, &[(1, 10, 11), (2, 20, 21), (3, 10, 22)]);
    assert_eq!(history.outcomes(), (Outcome::Pass, Outcome::Fail));
}

#[test]
fn without_a_final_read_the_counter_is_unknown_and_fencing_uses_the_acknowledged() {
    let mut history = History::default();
    history
        .increment(20, 1, EventType::Ok, Some(21))
        .increment(10, 2, EventType::Ok, Some(22));
    assert_eq!(history.outcomes(), (Outcome::Unknown, Outcome::Fail));
}
