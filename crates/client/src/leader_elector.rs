//! Leader election with Kubernetes' timings (client-go's leader elector:
//! lease duration, renew deadline, retry period) on etcd's election recipe
//! (`election`), with a fencing token for the leader's writes.
//!
//! A candidate campaigns with a session whose lease TTL is the lease
//! duration (whole seconds, rounded up), renewed every retry period. The
//! leader is the candidate whose key was created first; its fencing token is
//! that key's create revision, and [`Leadership::guarded_txn`] makes a write
//! that applies only while the key still has it.
//!
//! Invariant (two leaders never act at once): a leader counts itself leader
//! only until the send instant of its last answered renewal plus the renew
//! deadline ([`Leadership::lost`] resolves then and the leader must stop
//! acting). The server keeps that lease, and so the key, at least until the
//! same send instant plus the lease duration, which is longer; a candidate
//! becomes leader only after the key is deleted. So the old leader has
//! stopped before a new one can start, as long as the clocks' rates agree
//! within lease duration / renew deadline (1.5 with Kubernetes' defaults).
//! The fencing token covers what the timing cannot: a write the old leader
//! sent before it stopped is refused once its key is gone.
//!
//! Takeover: when the leader dies its lease expires within the lease
//! duration of its last renewal; the candidates' watches see the key
//! deleted at once. A candidate whose campaign fails (a broken watch, a
//! lost session) starts again after the retry period, so one takes over
//! within lease duration + retry period.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use keel_api::etcdserverpb::{Compare, RequestOp, TxnRequest, TxnResponse};
use tokio::time::Instant;

use crate::election::Election;
use crate::lease::{KeepAliveInterval, LeaseKeeper, LeaseLost};
use crate::session::{ConcurrencyError, Session};
use crate::Client;

/// client-go's `JitterFactor`: the renew deadline must exceed the retry
/// period by this factor.
const JITTER_FACTOR: f64 = 1.2;

/// Kubernetes' leader-election timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimings {
    /// How long a leader's claim lasts without renewal (the lease TTL).
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and a failed candidate retries.
    pub retry_period: Duration,
}

impl Default for ElectionTimings {
    /// Kubernetes' defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        ElectionTimings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectionTimings {
    /// client-go's checks: lease duration > renew deadline > 1.2 × retry
    /// period > 0.
    pub fn validate(&self) -> Result<(), ConcurrencyError> {
        let invalid = |text: &str| Err(ConcurrencyError::InvalidTimings(text.to_string()));
        if self.retry_period.is_zero() {
            return invalid("the retry period must be above zero");
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid("the lease duration must be longer than the renew deadline");
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return invalid("the renew deadline must be longer than 1.2 × the retry period");
        }
        Ok(())
    }

    /// The lease TTL: the lease duration in whole seconds, rounded up.
    pub fn lease_ttl_seconds(&self) -> i64 {
        let duration = self.lease_duration;
        let whole = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
        i64::try_from(whole).unwrap_or(i64::MAX)
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepDown {
    /// No renewal was answered within the renew deadline.
    #[error("leadership lost: not renewed within the renew deadline ({0:?})")]
    NotRenewed(Duration),
    /// The session's lease is gone (revoked, or expired).
    #[error("leadership lost: {0}")]
    LeaseLost(LeaseLost),
}

/// A candidate in election `name` with `proposal` as its value.
pub struct LeaderElector {
    client: Client,
    name: Vec<u8>,
    proposal: Vec<u8>,
    timings: ElectionTimings,
}

impl LeaderElector {
    pub fn new(
        client: &Client,
        name: &[u8],
        proposal: &[u8],
        timings: ElectionTimings,
    ) -> Result<LeaderElector, ConcurrencyError> {
        timings.validate()?;
        Ok(LeaderElector {
            client: client.clone(),
            name: name.to_vec(),
            proposal: proposal.to_vec(),
            timings,
        })
    }

    pub fn timings(&self) -> ElectionTimings {
        self.timings
    }

    /// Campaigns until this candidate leads; a failed attempt (the session
    /// or the watch lost) is retried after the retry period with a new
    /// session. Fails only when the server refuses the session's lease.
    pub async fn campaign(&self) -> Result<Leadership, ConcurrencyError> {
        self.campaign_until(std::future::pending()).await
    }

    /// [`campaign`](Self::campaign) until `stop` resolves: then the
    /// candidacy is withdrawn (its session's lease revoked, which deletes
    /// its key) and the campaign fails with [`ConcurrencyError::Canceled`].
    pub async fn campaign_until(
        &self,
        stop: impl Future<Output = ()>,
    ) -> Result<Leadership, ConcurrencyError> {
        tokio::pin!(stop);
        loop {
            match self.try_campaign(stop.as_mut()).await {
                Ok(leadership) => return Ok(leadership),
                Err(
                    error @ (ConcurrencyError::Lease(_)
                    | ConcurrencyError::InvalidTimings(_)
                    | ConcurrencyError::Canceled),
                ) => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "campaign failed; retrying after the retry period");
                    tokio::select! {
                        () = tokio::time::sleep(self.timings.retry_period) => {}
                        () = stop.as_mut() => return Err(ConcurrencyError::Canceled),
                    }
                }
            }
        }
    }

    async fn try_campaign(
        &self,
        stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Leadership, ConcurrencyError> {
        let interval = KeepAliveInterval::Every(self.timings.retry_period);
        let session =
            Session::with_interval(&self.client, self.timings.lease_ttl_seconds(), interval).await?;
        let mut election = Election::new(&self.name);
        let campaign = election.campaign(&session, &self.proposal);
        let outcome = tokio::select! {
            outcome = campaign => outcome,
            lost = session.done() => Err(ConcurrencyError::SessionLost(lost)),
            () = stop => Err(ConcurrencyError::Canceled),
        };
        if let Err(error) = outcome {
            if let Err(close_error) = session.close().await {
                tracing::debug!(%close_error, "could not revoke a failed campaign's session");
            }
            return Err(error);
        }
        let leadership = Leadership {
            session,
            election,
            renew_deadline: self.timings.renew_deadline,
        };
        if let Some(step_down) = leadership.stepped_down() {
            let _ = leadership.resign().await;
            return Err(ConcurrencyError::SteppedDown(step_down));
        }
        Ok(leadership)
    }
}

/// This candidate leads (until [`lost`](Self::lost) resolves).
pub struct Leadership {
    session: Session,
    election: Election,
    renew_deadline: Duration,
}

impl Leadership {
    /// The leader's key (`<name>/<lease hex>`).
    pub fn key(&self) -> &[u8] {
        self.election.key()
    }

    /// The fencing token: the leader key's create revision.
    pub fn fencing_token(&self) -> i64 {
        self.election.revision()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Until when this leader may act (see the invariant at the top).
    pub fn acting_until(&self) -> Instant {
        self.session.renewed_at() + self.renew_deadline
    }

    /// Why this leader must stop, if it must already.
    pub fn stepped_down(&self) -> Option<StepDown> {
        if let Some(lost) = self.session.keeper().and_then(LeaseKeeper::lost_reason) {
            return Some(StepDown::LeaseLost(lost));
        }
        (Instant::now() >= self.acting_until()).then_some(StepDown::NotRenewed(self.renew_deadline))
    }

    /// Resolves when this leader must stop acting.
    pub async fn lost(&self) -> StepDown {
        loop {
            if let Some(step_down) = self.stepped_down() {
                return step_down;
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.acting_until()) => {}
                lost = self.session.done() => return StepDown::LeaseLost(lost),
            }
        }
    }

    /// The compare that fences this leader's writes.
    pub fn fence(&self) -> Compare {
        crate::lock::create_revision_is(self.election.key(), self.election.revision())
    }

    /// A txn that applies `writes` only while this candidate still leads
    /// (its key has its create revision); otherwise it runs `otherwise`.
    pub fn guarded_txn(&self, writes: Vec<RequestOp>, otherwise: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![self.fence()],
            success: writes,
            failure: otherwise,
        }
    }

    /// Sends [`guarded_txn`](Self::guarded_txn) of `writes`, unless this
    /// leader has stepped down; [`ConcurrencyError::NotLeader`] when the
    /// fence did not hold.
    pub async fn guarded_write(&self, writes: Vec<RequestOp>) -> Result<TxnResponse, ConcurrencyError> {
        if let Some(step_down) = self.stepped_down() {
            return Err(ConcurrencyError::SteppedDown(step_down));
        }
        let response = self
            .session
            .client()
            .txn(self.guarded_txn(writes, Vec::new()))
            .await?;
        if !response.succeeded {
            return Err(ConcurrencyError::NotLeader);
        }
        Ok(response)
    }

    /// Gives up leadership: deletes the key (if still this leader's) and
    /// revokes the session's lease.
    pub async fn resign(mut self) -> Result<(), ConcurrencyError> {
        let resigned = self.election.resign(&self.session).await;
        let closed = self.session.close().await;
        resigned.and(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_defaults_are_valid_and_bad_timings_are_refused() {
        let defaults = ElectionTimings::default();
        assert!(defaults.validate().is_ok());
        assert_eq!(defaults.lease_ttl_seconds(), 15);
        let secs = Duration::from_secs;
        let bad = [
            (secs(10), secs(10), secs(2)),
            (secs(15), secs(2), secs(2)),
            (secs(15), secs(10), Duration::ZERO),
        ];
        for (lease_duration, renew_deadline, retry_period) in bad {
            let timings = ElectionTimings {
                lease_duration,
                renew_deadline,
                retry_period,
            };
            assert!(
                matches!(timings.validate(), Err(ConcurrencyError::InvalidTimings(_))),
                "{timings:?}"
            );
        }
        let fractional = ElectionTimings {
            lease_duration: Duration::from_millis(2500),
            ..defaults
        };
        assert_eq!(fractional.lease_ttl_seconds(), 3);
    }
}
