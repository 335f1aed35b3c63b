//! etcd's space quota (`--quota-backend-bytes`): before a write that can
//! grow the keyspace (`keel_api::space_cost`) is proposed, the member that
//! took it checks that its keyspace's live bytes (`MvccStore::live_bytes`,
//! Status' `db_size_in_use` less the Raft log) plus the write's cost stay
//! under the quota. etcd compares its backend file's size; keel's file
//! shrinks only at a defragmentation and grows in sled's segments whatever
//! a write's size, while the live bytes fall at once with a compaction and
//! match what a defragmentation would leave. On the live bytes, the
//! operator's way out is
//! etcd's: compact (and defragment), then disarm the alarm. A write that would not is refused with etcd's
//! "etcdserver: mvcc: database space exceeded" (ResourceExhausted), and the
//! member raises the NOSPACE alarm through Raft, so every member then
//! refuses such writes at apply (`keel_raft::apply`) until an operator
//! disarms it. Reads, deletes, compactions and revokes never cost space.

use keel_api::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use keel_api::keelpb::{write_request::Request, WriteRequest};
use keel_api::space_cost::space_cost;
use keel_api::WireError;
use keel_raft::apply::space_exhausted;

use crate::context::MemberContext;

/// etcd's default quota when the flag is 0: 2 GiB.
const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The space a member's keyspace may take; `None`: no quota (a negative flag,
/// as in etcd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceQuota {
    limit: Option<u64>,
}

impl SpaceQuota {
    /// `--quota-backend-bytes`: 0 is etcd's default (2 GiB), negative
    /// disables the quota.
    pub fn from_flag(bytes: i64) -> SpaceQuota {
        let limit = match bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            b if b < 0 => None,
            b => Some(b as u64),
        };
        SpaceQuota { limit }
    }

    /// True when a write of `cost` bytes fits (etcd's `backendQuota.Available`).
    fn admits(&self, used: u64, cost: u64) -> bool {
        match self.limit {
            None => true,
            Some(_) if cost == 0 => true,
            Some(limit) => used.saturating_add(cost) < limit,
        }
    }
}

/// Checks `request` against the member's quota before it is proposed; over
/// the quota it raises NOSPACE (once: not while it is raised already) and
/// refuses.
pub async fn admit(context: &MemberContext, request: &Request) -> Result<(), WireError> {
    let live_bytes = context.node.state().store().live_bytes();
    if context.space_quota.admits(live_bytes, space_cost(request)) {
        return Ok(());
    }
    if !space_exhausted(&context.node.state().alarms()) {
        tracing::warn!(
            live_bytes,
            quota = ?context.space_quota,
            "the keyspace is over its space quota: raising the NOSPACE alarm"
        );
        let alarm = WriteRequest {
            checked_auth_revision: 0,
            request: Some(Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: context.member_id,
                alarm: AlarmType::Nospace as i32,
            })),
        };
        if let Err(error) = context.node.write(alarm).await {
            tracing::warn!(%error, "raising the NOSPACE alarm failed; the next refused write tries again");
        }
    }
    Err(WireError::NoSpace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_follows_etcd_and_only_writes_with_a_cost_count() {
        assert_eq!(SpaceQuota::from_flag(0).limit, Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(SpaceQuota::from_flag(-1).limit, None);
        let quota = SpaceQuota::from_flag(1000);
        assert!(quota.admits(900, 99));
        assert!(!quota.admits(900, 100), "etcd admits only below the quota");
        assert!(quota.admits(5000, 0), "a write without a cost always passes");
        assert!(SpaceQuota::from_flag(-1).admits(u64::MAX, 1));
    }
}
