//! The `lease` workload's operations: leases granted with short TTLs, keys
//! attached to them, keep-alives, revokes, TimeToLive queries and
//! linearizable reads of the attached keys, chosen from a pool of leases
//! that every worker shares (so a lease granted through one member is
//! renewed, revoked and read through the others).
//!
//! Invariants that keep the history checkable (`lease_check.rs`):
//! - each key is put once, attached to one lease, and never deleted by a
//!   client (it goes only when its lease is revoked or expires); its value
//!   is that lease's ID;
//! - a keep-alive is one request on a fresh `LeaseKeepAlive` stream, and
//!   its invocation is recorded before the stream opens, so the recorded
//!   start is no later than the send;
//! - a keep-alive or TimeToLive that finds no lease is an acknowledged
//!   observation (`ok` with TTL 0 or -1), not a failure;
//! - every lease gets a fate when its grant is acknowledged: kept alive for
//!   a while (then left to expire), left to expire at once, or revoked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_api::etcdserverpb::{PutRequest, RangeRequest};
use keel_client::{Client, LeaseError};
use rand::Rng;
use serde_json::{json, Value as Json};

use crate::history::{f, EventType};
use crate::outcome::classify;
use crate::workload::Completion;

/// Prefix of the keys attached to the workload's leases
/// (`jepsen/lease/<lease ID in hex>/<n>`).
pub const LEASE_PREFIX: &str = "jepsen/lease/";
/// Shortest and longest TTL asked for, in seconds.
pub const TTL_RANGE: (i64, i64) = (2, 4);
/// Leases the pool holds while it grants new ones.
const POOL_TARGET: usize = 8;
/// Keys and leases kept for reads and TimeToLive after their lease left
/// the pool (so reads go on after an expiry or a revoke).
const RECENT: usize = 64;
/// How long a lease keeps its place in the pool beyond its last expected
/// deadline before it is dropped (reads of its keys go on).
const LINGER: Duration = Duration::from_secs(1);

/// One operation of the lease workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    Grant {
        ttl: i64,
    },
    /// A put of a fresh key attached to `lease`.
    Put {
        key: String,
        lease: i64,
    },
    KeepAlive {
        lease: i64,
    },
    Revoke {
        lease: i64,
    },
    TimeToLive {
        lease: i64,
    },
    /// A linearizable read of one attached key.
    Read {
        key: String,
    },
}

impl LeaseOp {
    pub fn f(&self) -> &'static str {
        match self {
            LeaseOp::Grant { .. } => f::LEASE_GRANT,
            LeaseOp::Put { .. } => f::LEASE_PUT,
            LeaseOp::KeepAlive { .. } => f::KEEP_ALIVE,
            LeaseOp::Revoke { .. } => f::LEASE_REVOKE,
            LeaseOp::TimeToLive { .. } => f::TIME_TO_LIVE,
            LeaseOp::Read { .. } => f::LEASE_READ,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            LeaseOp::Put { key, .. } | LeaseOp::Read { key } => Some(key),
            _ => None,
        }
    }

    /// The invocation's value: the TTL asked for, or the lease concerned.
    pub fn value(&self) -> Json {
        match self {
            LeaseOp::Grant { ttl } => json!(ttl),
            LeaseOp::Put { lease, .. }
            | LeaseOp::KeepAlive { lease }
            | LeaseOp::Revoke { lease }
            | LeaseOp::TimeToLive { lease } => json!(lease),
            LeaseOp::Read { .. } => Json::Null,
        }
    }
}

/// What the workload intends for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Renewed until `until`, then left to expire.
    KeepAlive { until: Instant },
    /// Never renewed.
    Expire,
    /// Revoked once it is a second old.
    Revoke,
}

#[derive(Debug, Clone)]
struct PooledLease {
    id: i64,
    ttl: i64,
    granted: Instant,
    fate: Fate,
}

impl PooledLease {
    /// When the workload stops caring about this lease.
    fn retires_at(&self) -> Instant {
        let ttl = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(0));
        let last_renewal = match self.fate {
            Fate::KeepAlive { until } => until,
            Fate::Expire | Fate::Revoke => self.granted,
        };
        last_renewal + ttl + LINGER
    }
}

#[derive(Default)]
struct PoolState {
    leases: Vec<PooledLease>,
    recent_keys: VecDeque<String>,
    recent_leases: VecDeque<i64>,
    /// Grants sent and not yet answered (so the pool does not overshoot).
    granting: usize,
}

/// The leases every worker of a run shares.
#[derive(Default)]
pub struct LeasePool {
    state: Mutex<PoolState>,
    next_key: AtomicU64,
}

fn push_recent<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == RECENT {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl LeasePool {
    /// The next operation for a worker.
    pub fn next(&self, rng: &mut impl Rng) -> LeaseOp {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.leases.retain(|lease| lease.retires_at() > now);
        if state.leases.len() + state.granting < POOL_TARGET && rng.gen_bool(0.5) || state.leases.is_empty() {
            state.granting += 1;
            return LeaseOp::Grant {
                ttl: rng.gen_range(TTL_RANGE.0..=TTL_RANGE.1),
            };
        }
        let roll = rng.gen_range(0..100);
        if roll < 20 {
            let lease = state.leases[rng.gen_range(0..state.leases.len())].id;
            let n = self.next_key.fetch_add(1, Ordering::Relaxed);
            let key = format!("{LEASE_PREFIX}{lease:x}/{n}");
            push_recent(&mut state.recent_keys, key.clone());
            return LeaseOp::Put { key, lease };
        }
        if roll < 40 {
            let renewed: Vec<i64> = state
                .leases
                .iter()
                .filter(|l| matches!(l.fate, Fate::KeepAlive { until } if until > now))
                .map(|l| l.id)
                .collect();
            if !renewed.is_empty() {
                return LeaseOp::KeepAlive {
                    lease: renewed[rng.gen_range(0..renewed.len())],
                };
            }
        }
        if roll < 50 {
            let due = state
                .leases
                .iter()
                .position(|l| l.fate == Fate::Revoke && now - l.granted > Duration::from_secs(1));
            if let Some(index) = due {
                let lease = state.leases.swap_remove(index);
                return LeaseOp::Revoke { lease: lease.id };
            }
        }
        if roll < 60 && !state.recent_leases.is_empty() {
            let lease = state.recent_leases[rng.gen_range(0..state.recent_leases.len())];
            return LeaseOp::TimeToLive { lease };
        }
        match state.recent_keys.len() {
            0 => LeaseOp::TimeToLive {
                lease: state.leases[rng.gen_range(0..state.leases.len())].id,
            },
            n => LeaseOp::Read {
                key: state.recent_keys[rng.gen_range(0..n)].clone(),
            },
        }
    }

    /// Learns from a completed operation: a granted lease joins the pool
    /// with a fate drawn from its ID.
    pub fn observe(&self, op: &LeaseOp, completion: &Completion) {
        let LeaseOp::Grant { .. } = op else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.granting = state.granting.saturating_sub(1);
        if completion.kind != EventType::Ok {
            return;
        }
        let Some([id, ttl]) = completion
            .value
            .as_array()
            .and_then(|v| Some([v.first()?.as_i64()?, v.get(1)?.as_i64()?]))
        else {
            return;
        };
        let granted = Instant::now();
        let fate = match id.rem_euclid(3) {
            0 => Fate::KeepAlive {
                until: granted + Duration::from_secs(3 + id.rem_euclid(6) as u64),
            },
            1 => Fate::Expire,
            _ => Fate::Revoke,
        };
        state.leases.push(PooledLease {
            id,
            ttl,
            granted,
            fate,
        });
        push_recent(&mut state.recent_leases, id);
    }
}

/// The completion of a lease call that failed with `error`.
pub(crate) fn lease_failure(error: &LeaseError) -> Completion {
    match error {
        LeaseError::Client(error) => {
            let failure = classify(error);
            Completion::failed(failure.kind, failure.error)
        }
        // The server answered "no such lease" (a revoke of a lease that is
        // gone) or refused the TTL: nothing happened.
        LeaseError::NotFound { .. } | LeaseError::TtlTooLarge(_) | LeaseError::AlreadyExists(_) => {
            Completion::failed(EventType::Fail, error.to_string())
        }
        LeaseError::StreamEnded => Completion::failed(EventType::Info, error.to_string()),
    }
}

/// Carries out `op` on `client` (pinned to one member).
pub async fn execute(client: &Client, op: &LeaseOp) -> Completion {
    match op {
        LeaseOp::Grant { ttl } => match client.lease_grant(*ttl, 0).await {
            Ok(granted) => Completion::ok(json!([granted.id, granted.ttl])),
            Err(error) => lease_failure(&error),
        },
        LeaseOp::Put { key, lease } => {
            let request = PutRequest {
                key: key.as_bytes().to_vec(),
                value: lease.to_string().into_bytes(),
                lease: *lease,
                ..PutRequest::default()
            };
            match client.put(request).await {
                Ok(response) => Completion::ok(json!(lease)).at(response.header.as_ref()),
                Err(error) => Completion::from_client_error(&error),
            }
        }
        LeaseOp::KeepAlive { lease } => {
            let mut stream = client.lease_keep_alive_stream();
            match stream.renew(*lease).await {
                Ok(answer) => Completion::ok(json!([lease, answer.ttl])),
                // The leader answered TTL <= 0: it knows no such lease.
                Err(LeaseError::NotFound { .. }) => Completion::ok(json!([lease, 0])),
                Err(error) => lease_failure(&error),
            }
        }
        LeaseOp::Revoke { lease } => match client.lease_revoke(*lease).await {
            Ok(response) => Completion::ok(json!(lease)).at(response.header.as_ref()),
            Err(error) => lease_failure(&error),
        },
        LeaseOp::TimeToLive { lease } => match client.lease_time_to_live(*lease, false).await {
            Ok(answer) => Completion::ok(json!([lease, answer.ttl])),
            Err(error) => lease_failure(&error),
        },
        LeaseOp::Read { key } => {
            let request = RangeRequest {
                key: key.as_bytes().to_vec(),
                ..RangeRequest::default()
            };
            match client.range(request).await {
                // The value: the lease the key is attached to, null when
                // the key is absent.
                Ok(response) => Completion::ok(response.kvs.first().map_or(Json::Null, |kv| json!(kv.lease)))
                    .at(response.header.as_ref()),
                Err(error) => Completion::from_client_error(&error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    fn granted(id: i64, ttl: i64) -> Completion {
        Completion::ok(json!([id, ttl]))
    }

    #[test]
    fn an_empty_pool_grants_and_granted_leases_get_every_kind_of_op() {
        let pool = LeasePool::default();
        let mut rng = StdRng::seed_from_u64(11);
        assert!(matches!(pool.next(&mut rng), LeaseOp::Grant { ttl } if (2..=4).contains(&ttl)));
        // IDs 3, 4, 5: kept alive, left to expire, revoked.
        for id in [3, 4, 5] {
            pool.observe(&LeaseOp::Grant { ttl: 2 }, &granted(id, 2));
        }
        let mut kinds = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut revoked = Vec::new();
        for _ in 0..2_000 {
            let op = pool.next(&mut rng);
            kinds.insert(op.f());
            match op {
                LeaseOp::Put { key, lease } => {
                    assert!(key.starts_with(&format!("{LEASE_PREFIX}{lease:x}/")), "{key}");
                    assert!(keys.insert(key), "a key is put once");
                }
                LeaseOp::KeepAlive { lease } => assert_eq!(lease, 3, "only the kept lease is renewed"),
                LeaseOp::Revoke { lease } => revoked.push(lease),
                LeaseOp::Grant { .. } => pool.observe(&op, &Completion::failed(EventType::Fail, "x".into())),
                _ => {}
            }
        }
        assert_eq!(
            kinds,
            BTreeSet::from([
                f::LEASE_GRANT,
                f::LEASE_PUT,
                f::KEEP_ALIVE,
                f::TIME_TO_LIVE,
                f::LEASE_READ
            ]),
            "no revoke before the lease is a second old"
        );
        assert!(revoked.is_empty());
    }
}
