//! Leader election, as etcd's Go client's `concurrency.Election` (what
//! `etcdctl elect` uses), so the two interoperate on one election name:
//! campaign, proclaim, resign, the current leader, and observing leaders.
//!
//! Invariant (who leads): each candidate puts `<name>/<its session's lease
//! ID in hex>` (its proposal as the value, attached to its session's lease)
//! unless it exists; the leader is the candidate whose key has the lowest
//! create revision, and a candidate becomes leader only once every key
//! under the prefix created before its own is deleted. The leader's key's
//! create revision is its fencing token: every write of a leader
//! (proclaim, resign, and guarded writes) compares it, so a deposed leader's
//! write cannot apply.

use std::future::Future;

use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, WatchCreateRequest,
};
use keel_api::key_range::prefix_range_end;
use keel_api::mvccpb::event::EventType;
use keel_api::mvccpb::KeyValue;
use tokio::sync::mpsc;

use crate::lock::{create_revision_is, put_once};
use crate::session::{by_create_revision, name_prefix, session_key, wait_deletes, ConcurrencyError, Session};
use crate::watch::{cancellation, WatchStreamOptions};
use crate::Client;

/// This candidate's key while it campaigns or leads.
#[derive(Debug, Clone)]
struct Candidacy {
    key: Vec<u8>,
    revision: i64,
}

/// One election (`name`), from one candidate's or observer's side.
#[derive(Debug, Clone)]
pub struct Election {
    prefix: Vec<u8>,
    candidacy: Option<Candidacy>,
    header: Option<ResponseHeader>,
}

impl Election {
    pub fn new(name: &[u8]) -> Election {
        Election {
            prefix: name_prefix(name),
            candidacy: None,
            header: None,
        }
    }

    /// A candidacy this process did not start: the key `key` with create
    /// revision `revision` in election `name` (etcd's Go client's
    /// `ResumeElection`), so that it can proclaim or resign.
    pub fn resume(name: &[u8], key: &[u8], revision: i64) -> Election {
        Election {
            prefix: name_prefix(name),
            candidacy: Some(Candidacy {
                key: key.to_vec(),
                revision,
            }),
            header: None,
        }
    }

    /// Puts this session's proposal and waits until it leads. Dropping the
    /// future leaves the key in place until the session ends (close the
    /// session, or resign, to withdraw).
    pub async fn campaign(&mut self, session: &Session, value: &[u8]) -> Result<(), ConcurrencyError> {
        self.campaign_until(session, value, std::future::pending()).await
    }

    /// [`campaign`](Self::campaign), given up when `stop` resolves while it
    /// waits: then the candidacy is withdrawn (its key deleted, as etcd's Go
    /// client resigns when the campaign's context ends) and it fails with
    /// [`ConcurrencyError::Canceled`]. `stop` is looked at only once the
    /// key's put has answered, so a key is never put after its deletion.
    pub async fn campaign_until(
        &mut self,
        session: &Session,
        value: &[u8],
        stop: impl Future<Output = ()>,
    ) -> Result<(), ConcurrencyError> {
        let key = session_key(&self.prefix, session.lease());
        let (revision, _, header, existing) = put_once(session, &self.prefix, &key, value).await?;
        self.candidacy = Some(Candidacy { key, revision });
        if existing != value {
            if let Err(error) = self.proclaim(session, value).await {
                let _ = self.resign(session).await;
                return Err(error);
            }
        }
        let waited = tokio::select! {
            waited = wait_deletes(session.client(), &self.prefix, revision - 1) => waited,
            () = stop => Err(ConcurrencyError::Canceled),
        };
        match waited {
            Ok(_) => {
                self.header = Some(header);
                Ok(())
            }
            Err(ConcurrencyError::Canceled) => {
                if let Err(resign_error) = self.resign(session).await {
                    tracing::warn!(%resign_error, "could not delete a canceled campaign's key");
                }
                Err(ConcurrencyError::Canceled)
            }
            Err(error) => {
                self.candidacy = None;
                Err(error)
            }
        }
    }

    /// The fencing compare: the leader's key still has its create revision.
    fn is_leader_compare(&self) -> Result<(Candidacy, keel_api::etcdserverpb::Compare), ConcurrencyError> {
        let candidacy = self.candidacy.clone().ok_or(ConcurrencyError::NotLeader)?;
        let compare = create_revision_is(&candidacy.key, candidacy.revision);
        Ok((candidacy, compare))
    }

    /// Sets the leader's value without a new election.
    pub async fn proclaim(&mut self, session: &Session, value: &[u8]) -> Result<(), ConcurrencyError> {
        let (candidacy, compare) = self.is_leader_compare()?;
        let response = session
            .client()
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: candidacy.key,
                        value: value.to_vec(),
                        lease: session.lease(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            })
            .await?;
        if !response.succeeded {
            self.candidacy = None;
            return Err(ConcurrencyError::NotLeader);
        }
        self.header = response.header;
        Ok(())
    }

    /// Gives up leadership (or the candidacy): deletes the key if it is
    /// still this candidate's.
    pub async fn resign(&mut self, session: &Session) -> Result<(), ConcurrencyError> {
        let Ok((candidacy, compare)) = self.is_leader_compare() else {
            return Ok(());
        };
        self.candidacy = None;
        let response = session
            .client()
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: candidacy.key,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            })
            .await?;
        self.header = response.header;
        Ok(())
    }

    /// The current leader's key-value (the first-created key), or
    /// [`ConcurrencyError::NoLeader`].
    pub async fn leader(&self, client: &Client) -> Result<RangeResponse, ConcurrencyError> {
        let response = client.range(by_create_revision(&self.prefix, false, 0)).await?;
        if response.kvs.is_empty() {
            return Err(ConcurrencyError::NoLeader);
        }
        Ok(response)
    }

    /// The leader's key (empty when not campaigning).
    pub fn key(&self) -> &[u8] {
        self.candidacy.as_ref().map_or(&[], |c| c.key.as_slice())
    }

    /// The leader key's create revision: the fencing token (0 when not
    /// campaigning).
    pub fn revision(&self) -> i64 {
        self.candidacy.as_ref().map_or(0, |c| c.revision)
    }

    /// The header of the last write that made or kept this candidate leader.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// Every leader in turn, and each new value of a leader's key, as
    /// etcd's Go client reports them (a get response of the one key-value).
    /// The channel closes when a read or watch fails; dropping the receiver
    /// stops the observer.
    pub fn observe(&self, client: &Client) -> mpsc::Receiver<RangeResponse> {
        let (sender, receiver) = mpsc::channel(1);
        let prefix = self.prefix.clone();
        let client = client.clone();
        tokio::spawn(async move {
            // Ends as soon as the receiver is dropped, not only at the next
            // leader change it could not send.
            tokio::select! {
                observed = observe_leaders(&client, &prefix, &sender) => {
                    if let Err(error) = observed {
                        tracing::debug!(%error, "election observer stopped");
                    }
                }
                () = sender.closed() => {}
            }
        });
        receiver
    }
}

/// `observe`'s loop: the first-created key (or, when there is none, the
/// first put under the prefix), then its puts until it is deleted.
async fn observe_leaders(
    client: &Client,
    prefix: &[u8],
    sender: &mpsc::Sender<RangeResponse>,
) -> Result<(), ConcurrencyError> {
    loop {
        let mut response = client.range(by_create_revision(prefix, false, 0)).await?;
        let (header, leader) = match response.kvs.first() {
            Some(kv) => (response.header.unwrap_or_default(), kv.clone()),
            None => {
                let revision = response.header.map_or(0, |h| h.revision);
                first_put(client, prefix, revision).await?
            }
        };
        let first = RangeResponse {
            header: Some(header),
            kvs: vec![leader.clone()],
            ..Default::default()
        };
        if sender.send(first).await.is_err() {
            return Ok(());
        }
        let (watch, mut events) = client.watch_stream(WatchStreamOptions { require_leader: true });
        watch.create(WatchCreateRequest {
            key: leader.key.clone(),
            start_revision: header.revision + 1,
            ..Default::default()
        })?;
        'leader: loop {
            let Some(update) = events.response().await? else {
                return Err(ConcurrencyError::WatchEnded);
            };
            if cancellation(&update).is_some() {
                return Err(ConcurrencyError::WatchEnded);
            }
            for event in &update.events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                // As the Go client: the first get's response, with the
                // watch's header and the new key-value.
                response.header = update.header;
                response.kvs = event.kv.clone().into_iter().collect();
                if sender.send(response.clone()).await.is_err() {
                    return Ok(());
                }
            }
        }
        watch.close();
    }
}

/// The first put under `prefix` from `revision` on; its header carries the
/// put's revision.
async fn first_put(
    client: &Client,
    prefix: &[u8],
    revision: i64,
) -> Result<(ResponseHeader, KeyValue), ConcurrencyError> {
    let (watch, mut events) = client.watch_stream(WatchStreamOptions { require_leader: true });
    watch.create(WatchCreateRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        start_revision: revision,
        ..Default::default()
    })?;
    loop {
        let Some(update) = events.response().await? else {
            return Err(ConcurrencyError::WatchEnded);
        };
        if cancellation(&update).is_some() {
            return Err(ConcurrencyError::WatchEnded);
        }
        let put = update.events.iter().find(|e| e.r#type == EventType::Put as i32);
        if let Some(kv) = put.and_then(|e| e.kv.clone()) {
            let mut header = update.header.unwrap_or_default();
            header.revision = kv.mod_revision;
            watch.close();
            return Ok((header, kv));
        }
    }
}
