//! The `lock` workload: each worker, pinned to one member, repeatedly takes
//! the lock `jepsen/lock-mutex` with the client crate's recipe (a session
//! with a short TTL), does one to three fenced read-modify-writes of a
//! counter, and releases the lock; after healing every member reads the
//! counter and the increment log (`read-lock-data`). One holder in eight
//! loses the lock after its first increment (`drop-lock`: it revokes its
//! own session's lease, as if the lease had expired while it stalled),
//! waits for a rival to take the lock, and tries its next increments
//! anyway: they must be refused by the fencing compare.
//!
//! Invariants that keep the history checkable (`lock_check.rs`):
//! - an increment reads the counter (`"<count> <token>"`, absent = 0), then
//!   commits one Txn that compares the lock key's create revision (the
//!   holder's fencing token, `MutexGuard::is_owner`) AND the counter's
//!   mod_revision, and puts the counter `count+1` with the token and the
//!   log key `log/<count+1>` with the token; so every applied increment
//!   leaves exactly one log key, written once, at the counter's revision;
//! - the increment's invocation and completion both carry `[token, from,
//!   to]` (the completion of a failed counter read only `[token]`), so an
//!   unknown increment is still known by what it would have written.

use std::time::Duration;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_api::key_range::prefix_range_end;
use keel_client::lock::{lock, MutexGuard};
use keel_client::session::{ConcurrencyError, Session};
use keel_client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};
use std::sync::Arc;
use tokio::sync::watch;

use crate::history::{f, EventType, HistoryError, HistoryWriter};
use crate::lease_workload::lease_failure;
use crate::worker::{member_client, paced, perform_recorded, RecordedOp, WorkerReport, WorkerSpec};
use crate::workload::Completion;

/// The lock's name (its contenders' keys are `<name>/<lease hex>`).
pub const LOCK_NAME: &str = "jepsen/lock-mutex";
/// Prefix of the counter and the increment log.
pub const LOCK_DATA_PREFIX: &str = "jepsen/lock-data/";
/// The counter's key.
pub const COUNTER_KEY: &str = "jepsen/lock-data/counter";
/// Prefix of the increment log's keys (`log/<count, 20 digits>`).
pub const LOG_PREFIX: &str = "jepsen/lock-data/log/";
/// TTL of each holder's session, in seconds.
pub const SESSION_TTL: i64 = 3;
/// A holder increments 1 to this many times.
const MAX_INCREMENTS_PER_HOLD: u32 = 3;
/// One holder in this many loses its lock after its first increment.
const STALE_HOLDER_ONE_IN: u32 = 8;
/// How long a holder that lost its lock waits before incrementing again.
const STALE_HOLDER_PAUSE: Duration = Duration::from_millis(300);
/// How many op timeouts a contender may wait for the lock.
const LOCK_WAIT_OP_TIMEOUTS: u32 = 4;

/// The log key of the increment that made the counter `count`.
pub fn log_key(count: u64) -> String {
    format!("{LOG_PREFIX}{count:020}")
}

/// `"<count> <token>"`, the counter's value.
fn counter_value(count: u64, token: i64) -> String {
    format!("{count} {token}")
}

/// The count and token of a counter value.
pub fn parse_counter(text: &str) -> Option<(u64, i64)> {
    let (count, token) = text.split_once(' ')?;
    Some((count.parse().ok()?, token.parse().ok()?))
}

fn concurrency_failure(error: &ConcurrencyError) -> Completion {
    match error {
        ConcurrencyError::Client(error) => Completion::from_client_error(error),
        ConcurrencyError::Lease(error) => lease_failure(error),
        other => Completion::failed(EventType::Info, other.to_string()),
    }
}

/// Revokes a session's lease (deleting its lock key), bounded by `timeout`.
async fn close_quietly(session: Session, timeout: Duration) {
    match tokio::time::timeout(timeout, session.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "closing a lock session; its lease will expire"),
        Err(_) => tracing::debug!("closing a lock session timed out; its lease will expire"),
    }
}

/// A fresh session and the lock, or the completion of the failed attempt
/// (the session closed).
async fn acquire(
    client: &Client,
    wait: Duration,
    op_timeout: Duration,
) -> Result<(Session, MutexGuard), Completion> {
    let session = Session::new(client, SESSION_TTL)
        .await
        .map_err(|e| concurrency_failure(&e))?;
    let failure = match tokio::time::timeout(wait, lock(&session, LOCK_NAME.as_bytes())).await {
        Ok(Ok(guard)) => return Ok((session, guard)),
        Ok(Err(error)) => concurrency_failure(&error),
        Err(_) => Completion::failed(EventType::Info, format!("lock not acquired within {wait:?}")),
    };
    close_quietly(session, op_timeout).await;
    Err(failure)
}

fn put(key: &str, value: String) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            ..PutRequest::default()
        })),
    }
}

/// One fenced increment by the holder of `guard`.
async fn increment(client: &Client, guard: &MutexGuard) -> Completion {
    let token = guard.revision();
    let request = RangeRequest {
        key: COUNTER_KEY.as_bytes().to_vec(),
        ..RangeRequest::default()
    };
    let (from, mod_revision) = match client.range(request).await {
        Ok(response) => match response.kvs.first() {
            None => (0, 0),
            Some(kv) => match parse_counter(&String::from_utf8_lossy(&kv.value)) {
                Some((count, _)) => (count, kv.mod_revision),
                None => {
                    return Completion::failed(
                        EventType::Fail,
                        format!("the counter holds {:?}", String::from_utf8_lossy(&kv.value)),
                    )
                }
            },
        },
        // A read changes nothing: the increment definitely did not happen.
        Err(error) => return Completion::failed(EventType::Fail, error.to_string()),
    };
    let to = from + 1;
    let attempted = json!([token, from, to]);
    let request = TxnRequest {
        compare: vec![
            guard.is_owner(),
            Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: COUNTER_KEY.as_bytes().to_vec(),
                target_union: Some(TargetUnion::ModRevision(mod_revision)),
                ..Compare::default()
            },
        ],
        success: vec![
            put(COUNTER_KEY, counter_value(to, token)),
            put(&log_key(to), token.to_string()),
        ],
        failure: Vec::new(),
    };
    match client.txn(request).await {
        Ok(response) if response.succeeded => Completion::ok(attempted).at(response.header.as_ref()),
        // A comparison failed (the lock was lost, or the counter moved):
        // definitely not applied.
        Ok(_) => Completion {
            kind: EventType::Fail,
            value: attempted,
            error: Some("fenced comparison failed".to_string()),
            revision: None,
        },
        Err(error) => Completion {
            value: attempted,
            ..Completion::from_client_error(&error)
        },
    }
}

/// Runs lock rounds until `stop` turns true.
pub async fn run_lock_worker(
    spec: WorkerSpec,
    history: Arc<HistoryWriter>,
    mut stop: watch::Receiver<bool>,
) -> Result<WorkerReport, HistoryError> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut report = WorkerReport { ops: 0, processes: 1 };
    // Lock workers stay with their slot's first member (the `member`
    // nemesis, which replaces members, does not run the lock workload).
    let Some(member) = spec.roster.member(spec.slot) else {
        tracing::error!(slot = spec.slot, "lock worker has no member");
        return Ok(report);
    };
    let client = match member_client(&member.endpoint, spec.op_timeout) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, endpoint = %member.endpoint, "lock worker cannot build its client");
            return Ok(report);
        }
    };
    let guard_slack = Duration::from_millis(500);
    let wait = spec.op_timeout * LOCK_WAIT_OP_TIMEOUTS;
    let mut process = spec.index;
    let workers = spec.workers;
    let next_process = |completion: &Completion, process: &mut u64, report: &mut WorkerReport| {
        report.ops += 1;
        if completion.kind == EventType::Info {
            // The op may still be in flight: go on as a fresh process.
            *process += workers;
            report.processes += 1;
        }
    };
    while paced(&spec, &mut rng, &mut stop).await {
        let mut held = None;
        let op = RecordedOp {
            process,
            node: &member.name,
            f: f::LOCK,
            key: None,
            value: Json::Null,
        };
        // Session grant + the wait + cleanup of a failed wait.
        let bound = spec.op_timeout * 2 + wait + guard_slack;
        let completion = perform_recorded(&history, &op, bound, async {
            match acquire(&client, wait, spec.op_timeout).await {
                Ok((session, guard)) => {
                    let token = guard.revision();
                    held = Some((session, guard));
                    Completion::ok(json!(token))
                }
                Err(failure) => failure,
            }
        })
        .await?;
        next_process(&completion, &mut process, &mut report);
        let Some((session, guard)) = held else {
            continue;
        };
        let token = json!(guard.revision());
        let increments = rng.gen_range(1..=MAX_INCREMENTS_PER_HOLD);
        // Now and then the holder loses the lock behind its back after its
        // first increment (its lease revoked, as if it had expired while
        // the holder stalled) and goes on incrementing: fencing must refuse.
        let goes_stale = increments > 1 && rng.gen_ratio(1, STALE_HOLDER_ONE_IN);
        for done in 0..increments {
            if goes_stale && done == 1 {
                let op = RecordedOp {
                    process,
                    node: &member.name,
                    f: f::DROP_LOCK,
                    key: None,
                    value: token.clone(),
                };
                let lease = session.lease();
                let completion = perform_recorded(&history, &op, spec.op_timeout + guard_slack, async {
                    match client.lease_revoke(lease).await {
                        Ok(_) => Completion::ok(Json::Null),
                        Err(error) => lease_failure(&error),
                    }
                })
                .await?;
                next_process(&completion, &mut process, &mut report);
                // Time for another contender to take the lock.
                tokio::time::sleep(STALE_HOLDER_PAUSE).await;
            }
            let op = RecordedOp {
                process,
                node: &member.name,
                f: f::INCREMENT,
                key: None,
                value: json!([guard.revision()]),
            };
            let completion = perform_recorded(
                &history,
                &op,
                spec.op_timeout * 2 + guard_slack,
                increment(&client, &guard),
            )
            .await?;
            next_process(&completion, &mut process, &mut report);
        }
        let op = RecordedOp {
            process,
            node: &member.name,
            f: f::UNLOCK,
            key: None,
            value: token,
        };
        let completion = perform_recorded(&history, &op, spec.op_timeout * 2 + guard_slack, async {
            let unlocked = guard.unlock(&session).await;
            let closed = session.close().await;
            match unlocked.and(closed) {
                Ok(()) => Completion::ok(Json::Null),
                Err(error) => concurrency_failure(&error),
            }
        })
        .await?;
        next_process(&completion, &mut process, &mut report);
    }
    Ok(report)
}

/// Reads the counter and the increment log: `{"counter": [count, token,
/// mod_revision] or null, "log": [[count, token, mod_revision, version],
/// ...]}`, and under `"unparsable"` any key or value this workload does
/// not write.
pub async fn read_lock_data(client: &Client) -> Completion {
    let prefix = LOCK_DATA_PREFIX.as_bytes().to_vec();
    let request = RangeRequest {
        range_end: prefix_range_end(&prefix),
        key: prefix,
        ..RangeRequest::default()
    };
    let response = match client.range(request).await {
        Ok(response) => response,
        Err(error) => return Completion::from_client_error(&error),
    };
    let mut counter = Json::Null;
    let mut log = Vec::new();
    let mut unparsable = Vec::new();
    for kv in &response.kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let value = String::from_utf8_lossy(&kv.value);
        if key == COUNTER_KEY {
            match parse_counter(&value) {
                Some((count, token)) => counter = json!([count, token, kv.mod_revision]),
                None => unparsable.push(json!([key, value])),
            }
            continue;
        }
        let count = key.strip_prefix(LOG_PREFIX).and_then(|c| c.parse::<u64>().ok());
        match (count, value.parse::<i64>()) {
            (Some(count), Ok(token)) => log.push(json!([count, token, kv.mod_revision, kv.version])),
            _ => unparsable.push(json!([key, value])),
        }
    }
    Completion::ok(json!({"counter": counter, "log": log, "unparsable": unparsable}))
        .at(response.header.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_values_round_trip_and_log_keys_sort_by_count() {
        assert_eq!(parse_counter(&counter_value(41, 977)), Some((41, 977)));
        assert_eq!(parse_counter("41"), None);
        assert_eq!(parse_counter("x 3"), None);
        assert!(log_key(9) < log_key(10));
        assert!(log_key(1).starts_with(LOG_PREFIX) && log_key(1).starts_with(LOCK_DATA_PREFIX));
        assert!(COUNTER_KEY.starts_with(LOCK_DATA_PREFIX) && !COUNTER_KEY.starts_with(LOG_PREFIX));
    }
}
