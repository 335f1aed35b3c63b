//! A distributed mutex, as etcd's Go client's `concurrency.Mutex` (what
//! `etcdctl lock` uses), so the two interoperate on one lock name.
//!
//! Invariant (who holds the lock): each contender puts the key
//! `<name>/<its session's lease ID in hex>` (empty value, attached to its
//! session's lease) unless it exists; the holder is the contender whose key
//! has the lowest create revision. A contender waits until every key under
//! the prefix created before its own is deleted (unlocked, or its session's
//! lease expired or was revoked), so at most one contender holds the lock at
//! a time, in create-revision order. The holder's key's create revision is
//! its fencing token: [`MutexGuard::is_owner`] compares it in a txn.

use std::future::Future;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};

use crate::session::{by_create_revision, name_prefix, session_key, wait_deletes, ConcurrencyError, Session};

/// A held lock; [`unlock`](Self::unlock) releases it (so does the end of
/// the session's lease).
#[derive(Debug, Clone)]
pub struct MutexGuard {
    key: Vec<u8>,
    revision: i64,
    header: ResponseHeader,
}

/// A compare that holds while the key `key` has create revision `revision`.
pub fn create_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The first response of `responses` as a range response's key-values.
fn range_kvs(
    responses: &[keel_api::etcdserverpb::ResponseOp],
    index: usize,
) -> Vec<keel_api::mvccpb::KeyValue> {
    match responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(range)) => range.kvs.clone(),
        _ => Vec::new(),
    }
}

/// Puts `key` attached to `session` unless it exists; returns the key's
/// create revision, the prefix's first-created key's create revision (0:
/// none) and the txn's header.
pub(crate) async fn put_once(
    session: &Session,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(i64, i64, ResponseHeader, Vec<u8>), ConcurrencyError> {
    let owner = op(Request::RequestRange(by_create_revision(prefix, false, 0)));
    let response = session
        .client()
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![
                op(Request::RequestPut(PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease: session.lease(),
                    ..Default::default()
                })),
                owner.clone(),
            ],
            failure: vec![
                op(Request::RequestRange(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
                owner,
            ],
        })
        .await?;
    let header = response.header.unwrap_or_default();
    let (revision, existing_value) = if response.succeeded {
        (header.revision, value.to_vec())
    } else {
        let mine = range_kvs(&response.responses, 0);
        let kv = mine.first().ok_or(ConcurrencyError::KeyVanished)?;
        (kv.create_revision, kv.value.clone())
    };
    let first = range_kvs(&response.responses, 1)
        .first()
        .map_or(0, |kv| kv.create_revision);
    Ok((revision, first, header, existing_value))
}

/// Waits for the lock `name` and takes it. A failure while waiting deletes
/// this contender's key.
pub async fn lock(session: &Session, name: &[u8]) -> Result<MutexGuard, ConcurrencyError> {
    lock_until(session, name, std::future::pending()).await
}

/// [`lock`], given up when `stop` resolves while it waits: then this
/// contender's key is deleted (as etcd's Go client does when the wait's
/// context ends) and it fails with [`ConcurrencyError::Canceled`]. `stop`
/// is looked at only once the key's put has answered, so a key is never put
/// after its deletion; a lock taken at once is answered even when `stop` has
/// resolved.
pub async fn lock_until(
    session: &Session,
    name: &[u8],
    stop: impl Future<Output = ()>,
) -> Result<MutexGuard, ConcurrencyError> {
    let prefix = name_prefix(name);
    let key = session_key(&prefix, session.lease());
    let (revision, first, header, _) = put_once(session, &prefix, &key, b"").await?;
    let mut guard = MutexGuard {
        key,
        revision,
        header,
    };
    if first == 0 || first == revision {
        return Ok(guard);
    }
    let waited = tokio::select! {
        waited = wait_deletes(session.client(), &prefix, revision - 1) => waited,
        () = stop => Err(ConcurrencyError::Canceled),
    };
    match waited {
        Ok(header) => {
            guard.header = header;
            Ok(guard)
        }
        Err(error) => {
            if let Err(unlock_error) = guard.unlock(session).await {
                tracing::warn!(%unlock_error, "could not delete the lock key after a failed wait");
            }
            Err(error)
        }
    }
}

impl MutexGuard {
    /// The lock's key (`<name>/<lease hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key's create revision: the fencing token of this holder.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The header of the response that granted the lock (its revision is
    /// `ETCD_LOCK_REV` of `etcdctl lock`).
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// A compare that holds while this guard still holds the lock.
    pub fn is_owner(&self) -> Compare {
        create_revision_is(&self.key, self.revision)
    }

    /// Releases the lock (deletes its key).
    pub async fn unlock(&self, session: &Session) -> Result<(), ConcurrencyError> {
        session
            .client()
            .delete_range(DeleteRangeRequest {
                key: self.key.clone(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}
