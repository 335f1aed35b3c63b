//! The lessor: etcd's leases on top of the write path, with the deadlines
//! kept by the leader alone (`lease_clock.rs`).
//!
//! Invariants owned here:
//! - Expiry is the leader's decision and goes through Raft: the expiry loop
//!   proposes a revoke entry for a lease past its deadline, only through
//!   [`WritePath::propose_as_leader`] (which refuses on a member that does
//!   not lead), so every member deletes its keys at the same revision.
//! - A member that takes office first confirms with a quorum that it leads
//!   and waits until it has applied its own term's first entry (a ReadIndex
//!   round), so it sees every lease granted and every checkpoint recorded
//!   before its term, and only then starts deadlines (`LeaseClock::take_office`).
//! - A renewal (keep-alive) is answered by the leader only, after a quorum
//!   confirmed it still leads; a lease is answered expired (TTL 0) only once
//!   it is gone from the applied state, never while its revoke may still
//!   fail; when a checkpointed remaining TTL is
//!   recorded for the lease, the leader first commits a checkpoint that
//!   clears it, so a failover after the renewal restarts the lease at its
//!   full TTL, never at the stale shorter one (etcd's bug). A periodic
//!   checkpoint is computed and committed under the checkpoint gate's write
//!   side and a renewal runs under its read side, so a checkpoint computed
//!   before a renewal can never be applied after it. Followers
//!   forward renewals and TimeToLive over the peer service.
//! - Checkpoints (every `--lease-checkpoint-interval`) record the rounded-up
//!   time each lease has left, so a new leader keeps its true deadline.
//! - Granted IDs: a client's ID, or a random positive one picked by the
//!   member that takes the request; a random ID that is taken answers
//!   "lease already exists" deterministically with no effect, so only then
//!   is it retried with another.

use std::time::Duration;

use keel_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use keel_api::keelpb::peer_client::PeerClient;
use keel_api::keelpb::{
    write_request, write_response, LeaseCheckpoint, LeaseCheckpointRequest, WriteRequest, WriteResponse,
};
use keel_api::WireError;
use keel_mvcc::{LeaseRecord, MvccStore};
use rand::Rng;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::leader_call::{AttemptFailure, LeaderAt, LeaderCall, Repeat};
use crate::leadership::LeaderRoute;
use crate::lease_clock::LeaseClock;
use crate::network::PeerMessage;
use crate::read_path::ReadPath;
use crate::renewal_forwarder::RenewalForwarder;
use crate::request_error::RequestError;
use crate::write_path::WritePath;

/// etcd's largest TTL, seconds (`MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Revokes proposed per expiry tick at most (etcd bounds its rate too).
const MAX_REVOKES_PER_TICK: usize = 64;
/// Leases per checkpoint entry at most.
const MAX_CHECKPOINTS_PER_ENTRY: usize = 1000;
/// How often the leader matches its deadlines to the applied leases.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How often a renewal waiting on a lease's revoke looks again.
const REVOKE_POLL: Duration = Duration::from_millis(10);
/// Random IDs tried before a grant gives up (each collision is one entry).
const GRANT_ID_ATTEMPTS: usize = 8;

/// etcd's minimum TTL for an election timeout and heartbeat: 1.5 election
/// timeouts in whole heartbeats, rounded up to whole seconds (a shorter
/// TTL is raised, not refused).
pub fn min_lease_ttl(election_timeout: Duration, heartbeat: Duration) -> i64 {
    let heartbeat_ms = heartbeat.as_millis().max(1);
    let election_ticks = election_timeout.as_millis() / heartbeat_ms;
    let min_ms = (3 * election_ticks / 2) * heartbeat_ms;
    i64::try_from(min_ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// A random positive lease ID.
fn random_lease_id() -> i64 {
    rand::thread_rng().gen_range(1..=i64::MAX)
}

/// Asks the leader's peer service for a lease's time to live, within
/// `deadline` (renewals go through the batching `RenewalForwarder`).
async fn ask_time_to_live(
    mut client: PeerClient<Channel>,
    asked: &LeaseTimeToLiveRequest,
    deadline: Instant,
) -> Result<LeaderAnswer, tonic::Status> {
    let mut request = tonic::Request::new(*asked);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let answer = client.lease_time_to_live(request).await?;
    Ok(LeaderAnswer::TimeToLive(answer.into_inner()))
}

/// A renewal's answer, or the news that the lease is being revoked.
enum RenewalOutcome {
    Answered(LeaseKeepAliveResponse),
    BeingRevoked,
}

/// What only the leader answers.
enum LeaderQuery {
    Renew(i64),
    TimeToLive(LeaseTimeToLiveRequest),
}

enum LeaderAnswer {
    Renew(LeaseKeepAliveResponse),
    TimeToLive(LeaseTimeToLiveResponse),
}

#[derive(Clone)]
pub struct Lessor {
    clock: LeaseClock,
    route: LeaderRoute,
    leader_call: LeaderCall,
    /// Renewals forwarded to the leader, batched.
    renewals: RenewalForwarder,
    write_path: WritePath,
    read_path: ReadPath,
    store: MvccStore,
    min_ttl: i64,
    /// One takeover at a time.
    takeover: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Renewals (read) exclude a periodic checkpoint (write) from its
    /// computation to its commit.
    checkpoint_gate: std::sync::Arc<tokio::sync::RwLock<()>>,
}

impl Lessor {
    pub(crate) fn new(
        clock: LeaseClock,
        route: LeaderRoute,
        write_path: WritePath,
        read_path: ReadPath,
        store: MvccStore,
        min_ttl: i64,
        retry_pause: Duration,
    ) -> Self {
        Lessor {
            clock,
            leader_call: LeaderCall::new(&route, retry_pause),
            renewals: RenewalForwarder::start(),
            route,
            write_path,
            read_path,
            store,
            min_ttl,
            takeover: Default::default(),
            checkpoint_gate: Default::default(),
        }
    }

    /// etcd's LeaseGrant from any member.
    pub async fn grant(&self, request: LeaseGrantRequest) -> Result<LeaseGrantResponse, RequestError> {
        if request.ttl > MAX_LEASE_TTL {
            return Err(WireError::LeaseTtlTooLarge.into());
        }
        let ttl = request.ttl.max(self.min_ttl);
        let server_chosen = request.id == 0;
        for _ in 0..GRANT_ID_ATTEMPTS {
            let id = if server_chosen {
                random_lease_id()
            } else {
                request.id
            };
            let grant = write_request::Request::LeaseGrant(LeaseGrantRequest { ttl, id });
            match self.write(grant).await {
                Ok(write_response::Response::LeaseGrant(granted)) => return Ok(granted),
                Ok(_) => return Err(unexpected_response()),
                Err(RequestError::Wire(WireError::LeaseExists)) if server_chosen => {
                    tracing::debug!(id, "a random lease id was taken; trying another");
                }
                Err(error) => return Err(error),
            }
        }
        Err(WireError::LeaseExists.into())
    }

    /// etcd's LeaseRevoke from any member.
    pub async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse, RequestError> {
        match self
            .write(write_request::Request::LeaseRevoke(LeaseRevokeRequest { id }))
            .await?
        {
            write_response::Response::LeaseRevoke(revoked) => {
                self.clock.forget(id);
                Ok(revoked)
            }
            _ => Err(unexpected_response()),
        }
    }

    /// One keep-alive from any member: the lease's TTL, or 0 when it is
    /// unknown (etcd answers a keep-alive of an unknown lease with TTL 0).
    pub async fn renew(&self, id: i64) -> Result<LeaseKeepAliveResponse, RequestError> {
        match self.ask_leader(LeaderQuery::Renew(id)).await? {
            LeaderAnswer::Renew(answer) => Ok(answer),
            LeaderAnswer::TimeToLive(_) => Err(unexpected_response()),
        }
    }

    /// etcd's LeaseTimeToLive from any member (TTL -1 for an unknown lease).
    pub async fn time_to_live(
        &self,
        request: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, RequestError> {
        match self.ask_leader(LeaderQuery::TimeToLive(request)).await? {
            LeaderAnswer::TimeToLive(answer) => Ok(answer),
            LeaderAnswer::Renew(_) => Err(unexpected_response()),
        }
    }

    /// Every lease in this member's applied state (etcd's LeaseLeases).
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, keel_mvcc::MvccError> {
        self.store.leases()
    }

    async fn write(&self, request: write_request::Request) -> Result<write_response::Response, RequestError> {
        let written: WriteResponse = self
            .write_path
            .write(WriteRequest {
                checked_auth_revision: 0,
                request: Some(request),
            })
            .await?;
        written.response.ok_or_else(unexpected_response)
    }

    /// Answers `query` on the leader: here when this member leads, else
    /// over the peer service; a not-leader refusal or a lost connection is
    /// asked again (both queries may be answered twice harmlessly).
    async fn ask_leader(&self, query: LeaderQuery) -> Result<LeaderAnswer, RequestError> {
        let deadline = Instant::now() + self.route.request_timeout;
        match tokio::time::timeout_at(deadline, self.ask_leader_until(&query, deadline)).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(WireError::Timeout.into()),
        }
    }

    async fn ask_leader_until(
        &self,
        query: &LeaderQuery,
        deadline: Instant,
    ) -> Result<LeaderAnswer, RequestError> {
        let kind = match query {
            LeaderQuery::Renew(_) => PeerMessage::LeaseRenew,
            LeaderQuery::TimeToLive(_) => PeerMessage::LeaseTimeToLive,
        };
        // A renewal or a query asked twice has the effect of asking once.
        self.leader_call
            .until_answered(kind, Repeat::Harmless, deadline, |at| async move {
                match at {
                    LeaderAt::Here => self.answer_as_leader(query).await.map_err(AttemptFailure::Here),
                    LeaderAt::Peer(leader, client) => match query {
                        LeaderQuery::Renew(id) => self
                            .renewals
                            .forward(leader, client, *id, deadline)
                            .await
                            .map(LeaderAnswer::Renew)
                            .map_err(AttemptFailure::Peer),
                        LeaderQuery::TimeToLive(asked) => ask_time_to_live(client, asked, deadline)
                            .await
                            .map_err(AttemptFailure::Peer),
                    },
                }
            })
            .await
    }

    async fn answer_as_leader(&self, query: &LeaderQuery) -> Result<LeaderAnswer, RequestError> {
        match query {
            LeaderQuery::Renew(id) => self.renew_as_leader(*id).await.map(LeaderAnswer::Renew),
            LeaderQuery::TimeToLive(request) => self
                .time_to_live_as_leader(request)
                .await
                .map(LeaderAnswer::TimeToLive),
        }
    }

    /// A renewal on the leader (refused with `RefusedNotLeader` elsewhere).
    /// A lease being revoked is not answered "expired" (TTL 0) until its
    /// revoke is applied: a revoke can still fail (this member may lose
    /// office first, and the next leader keeps the lease), and a client told
    /// its lease is gone must never see it, or its keys, alive afterwards
    /// (etcd waits for the revoke too). While it waits, the renewal is
    /// refused if this member stops leading, and asked again of the next
    /// leader.
    pub(crate) async fn renew_as_leader(&self, id: i64) -> Result<LeaseKeepAliveResponse, RequestError> {
        loop {
            match self.try_renew_as_leader(id).await? {
                RenewalOutcome::Answered(answer) => return Ok(answer),
                RenewalOutcome::BeingRevoked => self.wait_while_revoking(id).await?,
            }
        }
    }

    async fn try_renew_as_leader(&self, id: i64) -> Result<RenewalOutcome, RequestError> {
        self.confirm_leading().await?;
        let _no_checkpoint_meanwhile = self.checkpoint_gate.read().await;
        let Some(record) = self.store.lease(id).map_err(storage_failure)? else {
            return Ok(RenewalOutcome::Answered(LeaseKeepAliveResponse {
                header: None,
                id,
                ttl: 0,
            }));
        };
        if self.clock.is_revoking(id) {
            return Ok(RenewalOutcome::BeingRevoked);
        }
        if record.remaining_ttl != 0 {
            // The recorded remaining TTL is stale once renewed: clear it
            // before answering, or a failover would restart it short.
            self.propose_checkpoints(vec![(id, 0)]).await?;
        }
        if !self.clock.renewed(id, record.ttl) {
            if self.clock.is_revoking(id) {
                return Ok(RenewalOutcome::BeingRevoked);
            }
            return Err(RequestError::RefusedNotLeader);
        }
        Ok(RenewalOutcome::Answered(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl: record.ttl,
        }))
    }

    /// Waits until lease `id` is no longer being revoked here: its revoke
    /// was applied (or failed), or this member stopped leading (refused).
    async fn wait_while_revoking(&self, id: i64) -> Result<(), RequestError> {
        while self.clock.is_revoking(id) {
            if !self.route.leadership.is_leader() {
                return Err(RequestError::RefusedNotLeader);
            }
            tokio::time::sleep(REVOKE_POLL).await;
        }
        Ok(())
    }

    /// TimeToLive on the leader (refused with `RefusedNotLeader` elsewhere).
    pub(crate) async fn time_to_live_as_leader(
        &self,
        request: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, RequestError> {
        self.confirm_leading().await?;
        // A lease being revoked has no deadline here; it is answered once
        // the revoke is applied (-1) or has failed (its time left, 0).
        self.wait_while_revoking(request.id).await?;
        let Some(record) = self.store.lease(request.id).map_err(storage_failure)? else {
            return Ok(LeaseTimeToLiveResponse {
                header: None,
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let remaining = self.clock.remaining(request.id).map_or(record.ttl, |left| {
            i64::try_from(left.as_secs()).unwrap_or(i64::MAX)
        });
        let keys = if request.keys {
            self.store.lease_keys(request.id).map_err(storage_failure)?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id: request.id,
            ttl: remaining,
            granted_ttl: record.ttl,
            keys,
        })
    }

    /// Confirms with a quorum that this member leads and, on the first
    /// confirmation of a term, takes office: waits until its term's first
    /// entry is applied, then starts every lease's deadline.
    async fn confirm_leading(&self) -> Result<(), RequestError> {
        let term_before = self.route.leadership.current_term();
        let read_index = self.read_path.serve_follower_request().await?;
        let term = self.route.leadership.current_term();
        if term != term_before {
            return Err(RequestError::RefusedNotLeader);
        }
        if self.clock.term() == Some(term) {
            return Ok(());
        }
        let _one_takeover = self.takeover.lock().await;
        if self.clock.term() == Some(term) {
            return Ok(());
        }
        self.route
            .raft
            .wait(Some(self.route.request_timeout))
            .applied_index_at_least(Some(read_index), "lease takeover")
            .await
            .map_err(|_| WireError::Timeout)?;
        if self.route.leadership.current_term() != term {
            return Err(RequestError::RefusedNotLeader);
        }
        let leases = self.store.leases().map_err(storage_failure)?;
        self.clock.take_office(term, &leases);
        Ok(())
    }

    async fn propose_checkpoints(&self, checkpoints: Vec<(i64, i64)>) -> Result<(), RequestError> {
        let checkpoint = LeaseCheckpointRequest {
            checkpoints: checkpoints
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        };
        self.write_path
            .propose_as_leader(WriteRequest {
                checked_auth_revision: 0,
                request: Some(write_request::Request::LeaseCheckpoint(checkpoint)),
            })
            .await
            .map(|_| ())
    }

    /// The leader's loop: keeps the deadlines for the current term, revokes
    /// expired leases through Raft, checkpoints remaining TTLs. Ends when
    /// the Raft core is gone (the node shut down), releasing the keyspace.
    pub(crate) async fn run_expiry(self, tick: Duration, checkpoint_interval: Duration) {
        let mut last_reconcile = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let raft_gone = raft_core_gone(self.route.raft.clone());
        tokio::pin!(raft_gone);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = &mut raft_gone => return,
            }
            let Some(term) = self.route.leadership.raft_leader_term() else {
                self.clock.step_down();
                continue;
            };
            if self.clock.term() != Some(term) {
                self.clock.step_down();
                if !self.route.leadership.is_leader() {
                    continue;
                }
                if let Err(error) = self.confirm_leading().await {
                    tracing::debug!(%error, "not taking office for leases yet");
                    continue;
                }
                last_checkpoint = Instant::now();
            }
            if last_reconcile.elapsed() >= RECONCILE_EVERY {
                last_reconcile = Instant::now();
                match self.store.leases() {
                    Ok(leases) => self.clock.reconcile(&leases),
                    Err(error) => tracing::warn!(%error, "reading leases failed"),
                }
            }
            if !self.route.leadership.is_leader() {
                continue;
            }
            for id in self.clock.take_expired(MAX_REVOKES_PER_TICK) {
                let lessor = self.clone();
                tokio::spawn(async move { lessor.revoke_expired(id).await });
            }
            if last_checkpoint.elapsed() >= checkpoint_interval {
                last_checkpoint = Instant::now();
                let lessor = self.clone();
                tokio::spawn(async move { lessor.checkpoint_all().await });
            }
        }
    }

    async fn revoke_expired(&self, id: i64) {
        let revoke = WriteRequest {
            checked_auth_revision: 0,
            request: Some(write_request::Request::LeaseRevoke(LeaseRevokeRequest { id })),
        };
        match self.write_path.propose_as_leader(revoke).await {
            Ok(_) | Err(RequestError::Wire(WireError::LeaseNotFound)) => {
                tracing::debug!(lease = id, "expired lease revoked");
                self.clock.forget(id);
            }
            Err(error) => {
                tracing::debug!(lease = id, %error, "revoking an expired lease failed; retrying");
                self.clock.revoke_failed(id);
            }
        }
    }

    async fn checkpoint_all(&self) {
        let _no_renewal_meanwhile = self.checkpoint_gate.write().await;
        let checkpoints = self.clock.checkpoints();
        for chunk in checkpoints.chunks(MAX_CHECKPOINTS_PER_ENTRY) {
            if let Err(error) = self.propose_checkpoints(chunk.to_vec()).await {
                tracing::debug!(%error, "a lease checkpoint was not applied");
                return;
            }
        }
    }
}

/// Resolves once the Raft core has stopped (its metrics channel closed).
async fn raft_core_gone(raft: keel_raft::KeelRaft) {
    use openraft::async_runtime::watch::WatchReceiver;
    // The server metrics: they change with leadership, not with every write.
    let mut metrics = raft.server_metrics();
    while metrics.changed().await.is_ok() {}
}

fn unexpected_response() -> RequestError {
    RequestError::UnexpectedResponse
}

fn storage_failure(error: keel_mvcc::MvccError) -> RequestError {
    tracing::error!(%error, "reading leases from the keyspace failed");
    RequestError::Keyspace(std::sync::Arc::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_is_etcds_for_its_default_timing_and_others() {
        let ms = Duration::from_millis;
        assert_eq!(min_lease_ttl(ms(1000), ms(100)), 2);
        assert_eq!(min_lease_ttl(ms(500), ms(100)), 1);
        assert_eq!(min_lease_ttl(ms(5000), ms(250)), 8);
    }

    #[test]
    fn random_lease_ids_are_positive() {
        assert!((0..1000).map(|_| random_lease_id()).all(|id| id > 0));
    }
}
