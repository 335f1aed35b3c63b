//! A session, as etcd's Go client's `concurrency.Session`: a lease granted
//! for it and kept alive in the background; the keys a lock or an election
//! writes are attached to it, so they vanish when the session's owner dies
//! (its lease expires) or closes it (revokes it). Also the errors of the
//! recipes built on sessions (`lock`, `election`), and the waits they share.

use std::time::Duration;

use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader, WatchCreateRequest};
use keel_api::key_range::prefix_range_end;
use keel_api::mvccpb::event::EventType;
use keel_api::WireError;
use tokio::time::Instant;

use crate::lease::{KeepAliveInterval, LeaseError, LeaseKeeper, LeaseLost};
use crate::watch::{cancellation, WatchError, WatchStreamOptions};
use crate::{Client, ClientError};

/// etcd's Go client's default session TTL, in seconds.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// How a lock or election step fails.
#[derive(Debug, thiserror::Error)]
pub enum ConcurrencyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// A watch waiting for a key's deletion was ended by the server.
    #[error("lost watcher waiting for delete")]
    WatchEnded,
    /// The session's lease is gone.
    #[error("session lost: {0}")]
    SessionLost(LeaseLost),
    /// The caller is not (or no longer) the election's leader.
    #[error("{}", WireError::ElectionNotLeader)]
    NotLeader,
    /// The election has no leader.
    #[error("{}", WireError::ElectionNoLeader)]
    NoLeader,
    /// A contender's key was deleted while its put-or-read ran.
    #[error("the key was deleted while it was being read")]
    KeyVanished,
    /// A leader stepped down (see `leader_elector`).
    #[error("{0}")]
    SteppedDown(crate::leader_elector::StepDown),
    /// The caller stopped the wait (etcd's Go client's context error).
    #[error("context canceled")]
    Canceled,
    /// Timings that cannot keep two leaders from acting at once.
    #[error("invalid election timings: {0}")]
    InvalidTimings(String),
}

/// A lease kept alive for the keys of locks and elections, or (made by
/// [`Session::from_lease`]) a lease someone else keeps alive.
pub struct Session {
    client: Client,
    lease: i64,
    /// 0 when the session did not grant its lease.
    ttl: i64,
    /// When the grant was sent: the lease lives at least `ttl` from then.
    granted_at: Instant,
    /// `None` when the lease's owner renews it, not this session.
    keeper: Option<LeaseKeeper>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and renews it every third of its TTL.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, ConcurrencyError> {
        Session::with_interval(client, ttl, KeepAliveInterval::ThirdOfTtl).await
    }

    /// Grants a lease of `ttl` seconds and renews it at `interval`.
    pub async fn with_interval(
        client: &Client,
        ttl: i64,
        interval: KeepAliveInterval,
    ) -> Result<Session, ConcurrencyError> {
        let sent_at = Instant::now();
        let granted = client.lease_grant(ttl, 0).await?;
        let alive_until = sent_at + Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(0));
        let keeper = client.keep_lease_alive(granted.id, interval, Some(alive_until));
        Ok(Session {
            client: client.clone(),
            lease: granted.id,
            ttl: granted.ttl,
            granted_at: sent_at,
            keeper: Some(keeper),
        })
    }

    /// A session over an existing lease that its owner keeps alive (etcd's
    /// Go client's `WithLease` session, orphaned): nothing renews it here,
    /// and [`done`](Self::done) never reports it lost. The lease is not
    /// checked: a recipe's put on a lease that does not exist fails with
    /// etcd's "requested lease not found".
    pub fn from_lease(client: &Client, lease: i64) -> Session {
        Session {
            client: client.clone(),
            lease,
            ttl: 0,
            granted_at: Instant::now(),
            keeper: None,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's lease ID.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL the server granted, in seconds (0 for [`Session::from_lease`]).
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The send instant of the last answered renewal, or of the grant (or
    /// of [`Session::from_lease`]).
    pub fn renewed_at(&self) -> Instant {
        self.keeper
            .as_ref()
            .and_then(LeaseKeeper::renewed_at)
            .unwrap_or(self.granted_at)
    }

    /// What renews the lease (`None` for [`Session::from_lease`]).
    pub fn keeper(&self) -> Option<&LeaseKeeper> {
        self.keeper.as_ref()
    }

    /// Waits until the session's lease is lost (forever for
    /// [`Session::from_lease`]: nothing here watches that lease).
    pub async fn done(&self) -> LeaseLost {
        match &self.keeper {
            Some(keeper) => keeper.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Stops renewing and revokes the lease (deleting its keys), also a
    /// lease the session was made [`from`](Self::from_lease).
    pub async fn close(self) -> Result<(), ConcurrencyError> {
        let Session {
            client,
            lease,
            keeper,
            ..
        } = self;
        drop(keeper);
        match client.lease_revoke(lease).await {
            Ok(_) | Err(LeaseError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// `key` + `/`: the prefix of a lock's or an election's keys.
pub(crate) fn name_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// A session's key under `prefix`: the prefix and its lease ID in hex.
pub(crate) fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The first key created under `prefix` (with a maximum create revision
/// when `max_create_revision` > 0), or the last with `last`.
pub(crate) fn by_create_revision(prefix: &[u8], last: bool, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_target: SortTarget::Create as i32,
        sort_order: if last {
            SortOrder::Descend
        } else {
            SortOrder::Ascend
        } as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// Waits until `key` is deleted, watching from `revision`.
pub(crate) async fn wait_delete(client: &Client, key: &[u8], revision: i64) -> Result<(), ConcurrencyError> {
    let (sender, mut receiver) = client.watch_stream(WatchStreamOptions { require_leader: true });
    sender.create(WatchCreateRequest {
        key: key.to_vec(),
        start_revision: revision,
        ..Default::default()
    })?;
    loop {
        let Some(response) = receiver.response().await? else {
            return Err(ConcurrencyError::WatchEnded);
        };
        if cancellation(&response).is_some() {
            return Err(ConcurrencyError::WatchEnded);
        }
        if response
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            sender.close();
            return Ok(());
        }
    }
}

/// Waits until every key under `prefix` created at or before
/// `max_create_revision` is deleted; the header of the read that saw none.
pub(crate) async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<ResponseHeader, ConcurrencyError> {
    loop {
        let response: RangeResponse = client
            .range(by_create_revision(prefix, true, max_create_revision))
            .await?;
        let header = response.header.unwrap_or_default();
        let Some(last) = response.kvs.first() else {
            return Ok(header);
        };
        wait_delete(client, &last.key, header.revision).await?;
    }
}
