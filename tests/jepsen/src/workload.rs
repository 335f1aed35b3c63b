//! The workloads' operations: what a worker invokes next and how one
//! invocation is carried out against keel through `keel-client`.
//!
//! Invariants that keep histories checkable:
//! - every value written (register, watch) or element added (set) is unique
//!   in the run: it comes from one shared counter;
//! - an acknowledged update records the revision of its response header
//!   (the watch check finds it among the watchers' events by it);
//! - a register key takes at most `ops_per_key` invocations; then its slot
//!   moves to a fresh key (`jepsen/r/<slot>/<generation>`), which starts out
//!   missing, as the checker's model assumes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use keel_api::key_range::prefix_range_end;
use keel_client::Client;
use rand::Rng;
use serde_json::{json, Value as Json};

use crate::config::Workload;
use crate::history::{f, EventType};
use crate::lease_workload::{LeaseOp, LeasePool};
use crate::outcome::classify;

/// Prefix of the register workloads' keys.
pub const REGISTER_PREFIX: &str = "jepsen/r/";
/// Prefix under which the set workload adds its elements.
pub const SET_PREFIX: &str = "jepsen/set/";
/// Prefix of the watch workload's keys (`jepsen/w/<i>`), which its watchers
/// watch.
pub const WATCH_PREFIX: &str = "jepsen/w/";

/// One operation a worker is about to invoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Read {
        key: String,
        serializable: bool,
    },
    Write {
        key: String,
        value: u64,
    },
    Cas {
        key: String,
        from: u64,
        to: u64,
    },
    Add {
        element: u64,
    },
    ReadAll,
    /// One Txn putting unique values on distinct keys (one revision, several
    /// events).
    Txn {
        puts: Vec<(String, u64)>,
    },
    Delete {
        key: String,
    },
    /// A linearizable read of every key under the watch prefix.
    ReadPrefix,
    /// One operation of the lease workload.
    Lease(LeaseOp),
    /// A linearizable read of the lock workload's counter and log.
    ReadLockData,
}

impl Invocation {
    pub fn f(&self) -> &'static str {
        match self {
            Invocation::Read { .. } => f::READ,
            Invocation::Write { .. } => f::WRITE,
            Invocation::Cas { .. } => f::CAS,
            Invocation::Add { .. } => f::ADD,
            Invocation::ReadAll => f::READ_ALL,
            Invocation::Txn { .. } => f::TXN,
            Invocation::Delete { .. } => f::DELETE,
            Invocation::ReadPrefix => f::READ_PREFIX,
            Invocation::Lease(op) => op.f(),
            Invocation::ReadLockData => f::READ_LOCK_DATA,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Invocation::Read { key, .. }
            | Invocation::Write { key, .. }
            | Invocation::Cas { key, .. }
            | Invocation::Delete { key } => Some(key),
            Invocation::Lease(op) => op.key(),
            Invocation::Add { .. }
            | Invocation::ReadAll
            | Invocation::Txn { .. }
            | Invocation::ReadPrefix
            | Invocation::ReadLockData => None,
        }
    }

    /// The `value` of the invocation line.
    pub fn value(&self) -> Json {
        match self {
            Invocation::Read { .. }
            | Invocation::ReadAll
            | Invocation::Delete { .. }
            | Invocation::ReadPrefix
            | Invocation::ReadLockData => Json::Null,
            Invocation::Lease(op) => op.value(),
            Invocation::Write { value, .. } => json!(value),
            Invocation::Cas { from, to, .. } => json!([from, to]),
            Invocation::Add { element } => json!(element),
            Invocation::Txn { puts } => json!(puts),
        }
    }
}

/// What came back: the completion's type, value, error text and, when the
/// member answered, its header's revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub kind: EventType,
    pub value: Json,
    pub error: Option<String>,
    pub revision: Option<i64>,
}

impl Completion {
    pub(crate) fn ok(value: Json) -> Completion {
        Completion {
            kind: EventType::Ok,
            value,
            error: None,
            revision: None,
        }
    }

    /// A failed or indeterminate completion with no value of its own.
    pub(crate) fn failed(kind: EventType, error: String) -> Completion {
        Completion {
            kind,
            value: Json::Null,
            error: Some(error),
            revision: None,
        }
    }

    /// The completion of a call that failed with `error`, as `outcome.rs`
    /// classifies it.
    pub(crate) fn from_client_error(error: &keel_client::ClientError) -> Completion {
        let failure = classify(error);
        Completion::failed(failure.kind, failure.error)
    }

    pub(crate) fn at(mut self, header: Option<&ResponseHeader>) -> Completion {
        self.revision = header.map(|h| h.revision);
        self
    }
}

struct Slot {
    generation: u64,
    used: u64,
}

/// Chooses operations for every worker of one run.
pub struct Generator {
    workload: Workload,
    ops_per_key: u64,
    slots: Mutex<Vec<Slot>>,
    next_value: AtomicU64,
    /// The latest value each key was seen to hold, to aim CASes at.
    known: Mutex<HashMap<String, u64>>,
    /// The lease workload's shared leases.
    leases: LeasePool,
}

impl Generator {
    pub fn new(workload: Workload, keys: usize, ops_per_key: u64) -> Generator {
        Generator {
            workload,
            ops_per_key,
            slots: Mutex::new(
                (0..keys)
                    .map(|_| Slot {
                        generation: 0,
                        used: 0,
                    })
                    .collect(),
            ),
            next_value: AtomicU64::new(1),
            known: Mutex::new(HashMap::new()),
            leases: LeasePool::default(),
        }
    }

    fn unique(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// A register key for one more operation, rotating a slot to a fresh key
    /// once it has had `ops_per_key` operations.
    fn pick_key(&self, rng: &mut impl Rng) -> String {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let index = rng.gen_range(0..slots.len());
        let slot = &mut slots[index];
        if slot.used >= self.ops_per_key {
            slot.generation += 1;
            slot.used = 0;
        }
        slot.used += 1;
        format!("{REGISTER_PREFIX}{index}/{}", slot.generation)
    }

    /// The key each slot uses now (the final reads read these).
    pub fn current_keys(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.used > 0)
            .map(|(index, slot)| format!("{REGISTER_PREFIX}{index}/{}", slot.generation))
            .collect()
    }

    /// The next operation for a worker.
    pub fn next(&self, rng: &mut impl Rng) -> Invocation {
        match self.workload {
            Workload::Set => Invocation::Add {
                element: self.unique(),
            },
            Workload::Watch => self.next_watch_update(rng),
            Workload::Lease => Invocation::Lease(self.leases.next(rng)),
            // The lock workload's workers run their own rounds
            // (`lock_workload.rs`); a plain worker only reads its data.
            Workload::Lock => Invocation::ReadLockData,
            Workload::Register | Workload::RegisterSerializable => {
                let key = self.pick_key(rng);
                let serializable = self.workload == Workload::RegisterSerializable;
                match rng.gen_range(0..3) {
                    0 => Invocation::Read { key, serializable },
                    1 => Invocation::Write {
                        key,
                        value: self.unique(),
                    },
                    _ => {
                        let known = self
                            .known
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&key)
                            .copied();
                        match known {
                            Some(from) => Invocation::Cas {
                                key,
                                from,
                                to: self.unique(),
                            },
                            None => Invocation::Write {
                                key,
                                value: self.unique(),
                            },
                        }
                    }
                }
            }
        }
    }

    /// Mostly puts, one in ten a delete, one in ten a Txn putting two keys.
    fn next_watch_update(&self, rng: &mut impl Rng) -> Invocation {
        let keys = self.slots.lock().unwrap_or_else(|p| p.into_inner()).len();
        let first = rng.gen_range(0..keys);
        match rng.gen_range(0..10) {
            0 => Invocation::Delete {
                key: watch_key(first),
            },
            1 if keys > 1 => {
                let second = (first + rng.gen_range(1..keys)) % keys;
                Invocation::Txn {
                    puts: vec![
                        (watch_key(first), self.unique()),
                        (watch_key(second), self.unique()),
                    ],
                }
            }
            _ => Invocation::Write {
                key: watch_key(first),
                value: self.unique(),
            },
        }
    }

    /// Learns from a completed operation which value a key holds now.
    pub fn observe(&self, invocation: &Invocation, completion: &Completion) {
        if let Invocation::Lease(op) = invocation {
            self.leases.observe(op, completion);
            return;
        }
        if completion.kind != EventType::Ok {
            return;
        }
        let seen = match invocation {
            Invocation::Read { key, .. } => completion.value.as_u64().map(|v| (key, v)),
            Invocation::Write { key, value } => Some((key, *value)),
            Invocation::Cas { key, to, .. } => Some((key, *to)),
            Invocation::Add { .. }
            | Invocation::ReadAll
            | Invocation::Txn { .. }
            | Invocation::Delete { .. }
            | Invocation::ReadPrefix
            | Invocation::Lease(_)
            | Invocation::ReadLockData => None,
        };
        if let Some((key, value)) = seen {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), value);
        }
    }
}

fn failure(error: &keel_client::ClientError) -> Completion {
    Completion::from_client_error(error)
}

fn parse_value(bytes: &[u8]) -> Json {
    let text = String::from_utf8_lossy(bytes);
    match text.parse::<u64>() {
        Ok(value) => json!(value),
        // Not a value this harness writes: keep the text so the checker
        // can name it.
        Err(_) => json!(text),
    }
}

/// Carries out `invocation` on `client` (pinned to one member).
pub async fn execute(client: &Client, invocation: &Invocation) -> Completion {
    match invocation {
        Invocation::Read { key, serializable } => {
            let request = RangeRequest {
                key: key.as_bytes().to_vec(),
                serializable: *serializable,
                ..RangeRequest::default()
            };
            match client.range(request).await {
                Ok(response) => Completion::ok(
                    response
                        .kvs
                        .first()
                        .map_or(Json::Null, |kv| parse_value(&kv.value)),
                ),
                Err(error) => failure(&error),
            }
        }
        Invocation::Write { key, value } => {
            let request = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_string().into_bytes(),
                ..PutRequest::default()
            };
            match client.put(request).await {
                Ok(response) => Completion::ok(json!(value)).at(response.header.as_ref()),
                Err(error) => failure(&error),
            }
        }
        Invocation::Cas { key, from, to } => {
            let request = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::Value(from.to_string().into_bytes())),
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: to.to_string().into_bytes(),
                        ..PutRequest::default()
                    })),
                }],
                failure: Vec::new(),
            };
            match client.txn(request).await {
                Ok(response) if response.succeeded => Completion::ok(json!([from, to])),
                // The comparison ran and failed: a definite `fail` with no
                // error, which the checker reads as "the value was not `from`".
                Ok(_) => Completion {
                    kind: EventType::Fail,
                    value: json!([from, to]),
                    error: None,
                    revision: None,
                },
                Err(error) => failure(&error),
            }
        }
        Invocation::Add { element } => {
            let request = PutRequest {
                key: set_key(*element).into_bytes(),
                value: element.to_string().into_bytes(),
                ..PutRequest::default()
            };
            match client.put(request).await {
                Ok(_) => Completion::ok(json!(element)),
                Err(error) => failure(&error),
            }
        }
        Invocation::ReadAll => {
            let prefix = SET_PREFIX.as_bytes().to_vec();
            let request = RangeRequest {
                range_end: prefix_range_end(&prefix),
                key: prefix,
                ..RangeRequest::default()
            };
            match client.range(request).await {
                Ok(response) => {
                    let mut elements: Vec<Json> = response
                        .kvs
                        .iter()
                        .map(|kv| {
                            let key = String::from_utf8_lossy(&kv.key);
                            let suffix = key.strip_prefix(SET_PREFIX).unwrap_or(&key);
                            match suffix.parse::<u64>() {
                                Ok(element) => json!(element),
                                Err(_) => json!(key),
                            }
                        })
                        .collect();
                    elements.sort_by_key(|e| e.as_u64().unwrap_or(u64::MAX));
                    Completion::ok(Json::Array(elements))
                }
                Err(error) => failure(&error),
            }
        }
        Invocation::Txn { puts } => {
            let request = TxnRequest {
                compare: Vec::new(),
                success: puts
                    .iter()
                    .map(|(key, value)| RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key.as_bytes().to_vec(),
                            value: value.to_string().into_bytes(),
                            ..PutRequest::default()
                        })),
                    })
                    .collect(),
                failure: Vec::new(),
            };
            match client.txn(request).await {
                Ok(response) => Completion::ok(json!(puts)).at(response.header.as_ref()),
                Err(error) => failure(&error),
            }
        }
        Invocation::Delete { key } => {
            let request = DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..DeleteRangeRequest::default()
            };
            match client.delete_range(request).await {
                // The value says how many keys went: a delete of a missing
                // key makes no revision and no event.
                Ok(response) => Completion::ok(json!(response.deleted)).at(response.header.as_ref()),
                Err(error) => failure(&error),
            }
        }
        Invocation::ReadPrefix => {
            let prefix = WATCH_PREFIX.as_bytes().to_vec();
            let request = RangeRequest {
                range_end: prefix_range_end(&prefix),
                key: prefix,
                ..RangeRequest::default()
            };
            match client.range(request).await {
                Ok(response) => {
                    let kvs: Vec<Json> = response
                        .kvs
                        .iter()
                        .map(|kv| {
                            json!([
                                String::from_utf8_lossy(&kv.key),
                                String::from_utf8_lossy(&kv.value),
                                kv.mod_revision
                            ])
                        })
                        .collect();
                    Completion::ok(Json::Array(kvs)).at(response.header.as_ref())
                }
                Err(error) => failure(&error),
            }
        }
        Invocation::Lease(op) => crate::lease_workload::execute(client, op).await,
        Invocation::ReadLockData => crate::lock_workload::read_lock_data(client).await,
    }
}

/// The key under which the set workload adds `element`.
pub fn set_key(element: u64) -> String {
    format!("{SET_PREFIX}{element:020}")
}

/// The watch workload's key number `index`.
pub fn watch_key(index: usize) -> String {
    format!("{WATCH_PREFIX}{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn register_keys_rotate_after_their_share_of_ops() {
        let generator = Generator::new(Workload::Register, 4, 25);
        let mut rng = StdRng::seed_from_u64(1);
        let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
        let mut values = BTreeSet::new();
        for _ in 0..1_000 {
            let invocation = generator.next(&mut rng);
            *per_key.entry(invocation.key().unwrap().to_string()).or_default() += 1;
            if let Invocation::Write { value, .. } | Invocation::Cas { to: value, .. } = invocation {
                assert!(values.insert(value), "value {value} written twice");
            }
        }
        assert!(per_key.values().all(|&n| n <= 25), "{per_key:?}");
        assert!(per_key.len() >= 40, "keys must rotate: {per_key:?}");
    }

    #[test]
    fn cas_aims_at_the_last_value_seen() {
        let generator = Generator::new(Workload::Register, 1, 1_000);
        let key = format!("{REGISTER_PREFIX}0/0");
        let write = Invocation::Write {
            key: key.clone(),
            value: 77,
        };
        generator.observe(&write, &Completion::ok(json!(77)));
        let mut rng = StdRng::seed_from_u64(3);
        let cas = (0..50)
            .map(|_| generator.next(&mut rng))
            .find(|i| matches!(i, Invocation::Cas { .. }))
            .expect("some cas");
        assert!(matches!(cas, Invocation::Cas { from: 77, .. }), "{cas:?}");
    }

    #[test]
    fn set_elements_are_unique_and_sort_as_keys() {
        let generator = Generator::new(Workload::Set, 8, 100);
        let mut rng = StdRng::seed_from_u64(5);
        let elements: Vec<u64> = (0..100)
            .map(|_| match generator.next(&mut rng) {
                Invocation::Add { element } => element,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let unique: BTreeSet<u64> = elements.iter().copied().collect();
        assert_eq!(unique.len(), elements.len());
        assert!(set_key(9) < set_key(10));
    }

    #[test]
    fn watch_updates_use_the_prefix_distinct_txn_keys_and_unique_values() {
        let generator = Generator::new(Workload::Watch, 3, 200);
        let mut rng = StdRng::seed_from_u64(7);
        let mut values = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut kinds = BTreeSet::new();
        for _ in 0..500 {
            let invocation = generator.next(&mut rng);
            kinds.insert(invocation.f());
            let written = match invocation {
                Invocation::Write { key, value } => vec![(key, value)],
                Invocation::Txn { puts } => {
                    assert_eq!(puts.len(), 2);
                    assert_ne!(puts[0].0, puts[1].0, "a Txn may not put one key twice");
                    puts
                }
                Invocation::Delete { key } => {
                    keys.insert(key);
                    Vec::new()
                }
                other => panic!("unexpected {other:?}"),
            };
            for (key, value) in written {
                assert!(values.insert(value), "value {value} written twice");
                keys.insert(key);
            }
        }
        assert_eq!(kinds, BTreeSet::from([f::WRITE, f::TXN, f::DELETE]));
        assert_eq!(keys, (0..3).map(watch_key).collect::<BTreeSet<_>>());
    }
}
