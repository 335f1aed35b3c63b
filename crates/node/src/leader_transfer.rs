//! Moving leadership to a named member (etcd's `MoveLeader` builds on it).
//!
//! The leader asks openraft to transfer (`trigger().transfer_leader`): it
//! stops proposing, drops its lease and tells every voter over the peer
//! protocol's `TransferLeader` RPC; the named member waits until its log has
//! everything the leader had, then campaigns in a way the other voters grant
//! despite their leases. Nothing acknowledged is lost: the new leader has
//! every entry the old one had when it stopped proposing. A write the old
//! leader receives meanwhile is refused as "leader changed".

use std::time::Duration;

use keel_raft::{KeelRaft, NodeId, TypeConfig};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

/// Why leadership did not move.
#[derive(Debug, thiserror::Error)]
pub enum LeaderTransferError {
    #[error("this member does not lead (the leader is {leader:x?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("member {0:x} is not a voter of this cluster")]
    NotAVoter(NodeId),
    #[error("member {to:x} did not take over within {waited:?}")]
    TimedOut { to: NodeId, waited: Duration },
    #[error("Raft stopped: {0}")]
    Stopped(#[from] openraft::error::Fatal<TypeConfig>),
}

/// Makes member `to` the leader; called on the leader (anywhere else it
/// fails `NotLeader`, as etcd's MoveLeader does). Returns once `to` leads a
/// newer term (at once if `to` is this leader), or fails after `limit`.
pub async fn transfer_leadership(
    raft: &KeelRaft,
    to: NodeId,
    limit: Duration,
) -> Result<(), LeaderTransferError> {
    let term = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.state != ServerState::Leader {
            return Err(LeaderTransferError::NotLeader {
                leader: metrics.current_leader,
            });
        }
        if to == metrics.id {
            return Ok(());
        }
        if !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == to)
        {
            return Err(LeaderTransferError::NotAVoter(to));
        }
        metrics.current_term
    };
    tracing::info!(to = %format!("{to:x}"), term, "transferring leadership");
    raft.trigger().transfer_leader(to).await?;
    let deadline = Instant::now() + limit;
    let mut metrics = raft.metrics();
    loop {
        let moved = {
            let now = metrics.borrow_watched();
            now.current_term > term && now.current_leader == Some(to)
        };
        if moved {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(openraft::error::Fatal::Stopped.into()),
            Err(_) => return Err(LeaderTransferError::TimedOut { to, waited: limit }),
        }
    }
}
