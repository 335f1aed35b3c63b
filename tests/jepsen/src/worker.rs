//! A client worker: a sequential process pinned to one slot of the roster
//! (the member in it now, or the member that took its place), invoking the
//! generator's operations one at a time and recording each invocation and
//! completion in the history.
//!
//! Invariants:
//! - the invocation is recorded (with its time) before the request is sent,
//!   and the completion after the answer came back, so every op's recorded
//!   interval contains its real effect;
//! - a process never has two operations open: after an indeterminate
//!   (`info`) completion, whose request may still be in flight, the worker
//!   continues as a fresh process id (old id + number of workers), as
//!   Jepsen does.

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Client, ClientConfig, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::history::{Event, EventType, HistoryError, HistoryWriter};
use crate::monitor::MemberAddress;
use crate::roster::Roster;
use crate::workload::{execute, Completion, Generator, Invocation};

/// Who a worker is and where it sends its requests.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// 0-based worker number; also its first process id.
    pub index: u64,
    /// Total number of workers (the stride between a worker's process ids).
    pub workers: u64,
    /// The roster slot whose member the worker talks to.
    pub slot: usize,
    pub roster: Arc<Roster>,
    pub op_timeout: Duration,
    /// Mean pause between two operations.
    pub pace: Duration,
    pub seed: u64,
}

/// A client pinned to one member, with the run's timeouts.
pub fn member_client(endpoint: &str, op_timeout: Duration) -> Result<Client, ClientError> {
    Client::connect_lazy(
        ClientConfig::new([endpoint.to_string()])
            .with_dial_timeout(op_timeout.min(Duration::from_secs(1)))
            .with_request_timeout(op_timeout),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SlotClientError {
    #[error("no roster slot {0}")]
    NoSlot(usize),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A worker's client for the member in its slot, built anew when another
/// member takes the slot.
pub struct SlotClient {
    roster: Arc<Roster>,
    slot: usize,
    op_timeout: Duration,
    current: Option<(MemberAddress, Client)>,
}

impl SlotClient {
    pub fn new(spec: &WorkerSpec) -> SlotClient {
        SlotClient {
            roster: spec.roster.clone(),
            slot: spec.slot,
            op_timeout: spec.op_timeout,
            current: None,
        }
    }

    /// The slot's member now and a client for it.
    pub fn get(&mut self) -> Result<(&MemberAddress, &Client), SlotClientError> {
        let member = self
            .roster
            .member(self.slot)
            .ok_or(SlotClientError::NoSlot(self.slot))?;
        let current = match self.current.take() {
            Some(held) if held.0.endpoint == member.endpoint => held,
            _ => {
                let client = member_client(&member.endpoint, self.op_timeout)?;
                (member, client)
            }
        };
        let (member, client) = self.current.insert(current);
        Ok((member, client))
    }
}

/// Invokes `invocation` as `process`, recording both ends; returns the
/// completion.
pub async fn perform(
    client: &Client,
    history: &HistoryWriter,
    process: u64,
    node: &str,
    invocation: &Invocation,
    op_timeout: Duration,
) -> Result<Completion, HistoryError> {
    let op = RecordedOp {
        process,
        node,
        f: invocation.f(),
        key: invocation.key(),
        value: invocation.value(),
    };
    // The client's own request timeout bounds the call; this outer bound
    // only guards against a call that ignores it.
    let guard = op_timeout + Duration::from_millis(500);
    perform_recorded(history, &op, guard, execute(client, invocation)).await
}

/// How one operation appears on its invocation line.
#[derive(Debug, Clone)]
pub struct RecordedOp<'a> {
    pub process: u64,
    pub node: &'a str,
    pub f: &'a str,
    pub key: Option<&'a str>,
    pub value: Json,
}

/// Records `op`'s invocation, runs `call` (an `info` completion if it takes
/// longer than `guard`), records its completion (with the invocation's
/// value when the completion has none) and returns it.
pub async fn perform_recorded(
    history: &HistoryWriter,
    op: &RecordedOp<'_>,
    guard: Duration,
    call: impl std::future::Future<Output = Completion>,
) -> Result<Completion, HistoryError> {
    let start = history.now();
    let invoke = Event::invoke(op.process, op.f, op.key, op.value.clone(), start).with_node(op.node);
    history.record(invoke.clone())?;
    let completion = match tokio::time::timeout(guard, call).await {
        Ok(completion) => completion,
        Err(_) => Completion {
            kind: EventType::Info,
            value: Json::Null,
            error: Some(format!("no answer within {guard:?}")),
            revision: None,
        },
    };
    let end = history.now();
    let value = if completion.value.is_null() {
        op.value.clone()
    } else {
        completion.value.clone()
    };
    let mut done = Event::complete(&invoke, completion.kind, value, end);
    if let Some(error) = &completion.error {
        done = done.with_error(error.clone());
    }
    done.revision = completion.revision;
    history.record(done)?;
    Ok(completion)
}

/// What a worker did, for the run's summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerReport {
    pub ops: u64,
    pub processes: u64,
}

/// Runs until `stop` turns true; the op in flight then completes (or times
/// out) before the worker returns.
pub async fn run_worker(
    spec: WorkerSpec,
    generator: Arc<Generator>,
    history: Arc<HistoryWriter>,
    mut stop: watch::Receiver<bool>,
) -> Result<WorkerReport, HistoryError> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut report = WorkerReport { ops: 0, processes: 1 };
    let mut slot_client = SlotClient::new(&spec);
    let mut process = spec.index;
    loop {
        if !paced(&spec, &mut rng, &mut stop).await {
            break;
        }
        let (member, client) = match slot_client.get() {
            Ok(current) => current,
            Err(error) => {
                tracing::error!(%error, slot = spec.slot, "worker cannot build its client");
                return Ok(report);
            }
        };
        let invocation = generator.next(&mut rng);
        let completion = perform(
            client,
            &history,
            process,
            &member.name,
            &invocation,
            spec.op_timeout,
        )
        .await?;
        generator.observe(&invocation, &completion);
        report.ops += 1;
        if completion.kind == EventType::Info {
            process += spec.workers;
            report.processes += 1;
        }
    }
    Ok(report)
}

/// Waits the worker's random pause before its next operation; false when
/// the run is stopping.
pub(crate) async fn paced(spec: &WorkerSpec, rng: &mut StdRng, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    if !spec.pace.is_zero() {
        // Uniform in [0, 2 * pace): the mean holds the target rate.
        let pause = spec.pace.mul_f64(rng.gen_range(0.0..2.0));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    !*stop.borrow()
}
