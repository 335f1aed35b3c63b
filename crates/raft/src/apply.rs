//! Applying one committed log entry payload (a group-committed
//! `WriteBatch`) to the mvcc keyspace: each request in order, each with its
//! own revision, each with its own outcome. Deterministic: the same batch on
//! the same state gives the same bytes on every member.

use std::collections::BTreeMap;

use keel_api::keelpb::{
    write_outcome, write_request, write_response, ApplyErrorKind, LeaseCheckpointApplied, MemberAttributes,
    MemberAttributesApplied, WriteBatch, WriteBatchOutcome, WriteOutcome, WriteRequest, WriteResponse,
};
use keel_mvcc::{ApplyBatch, MvccError};

/// Client URLs and names that members published, by member id.
pub type MemberAttributeTable = BTreeMap<u64, MemberAttributes>;

/// An error that stops the state machine (the disk failed or data is corrupt);
/// request-level failures are outcomes, not errors.
#[derive(Debug, thiserror::Error)]
#[error("applying a committed entry failed: {0}")]
pub struct FatalApplyError(#[from] pub MvccError);

fn request_outcome(error: MvccError) -> Result<WriteOutcome, FatalApplyError> {
    let kind = match error {
        MvccError::Compacted { .. } => ApplyErrorKind::Compacted,
        MvccError::FutureRevision { .. } => ApplyErrorKind::FutureRevision,
        MvccError::KeyNotFound => ApplyErrorKind::KeyNotFound,
        MvccError::LeaseNotFound => ApplyErrorKind::LeaseNotFound,
        MvccError::LeaseExists => ApplyErrorKind::LeaseExists,
        fatal => return Err(FatalApplyError(fatal)),
    };
    Ok(WriteOutcome {
        outcome: Some(write_outcome::Outcome::Error(kind as i32)),
    })
}

fn response_outcome(response: write_response::Response) -> WriteOutcome {
    WriteOutcome {
        outcome: Some(write_outcome::Outcome::Response(WriteResponse {
            response: Some(response),
        })),
    }
}

pub fn apply_write_batch(
    mvcc: &mut ApplyBatch<'_>,
    members: &mut MemberAttributeTable,
    batch: &WriteBatch,
) -> Result<WriteBatchOutcome, FatalApplyError> {
    let mut outcomes = Vec::with_capacity(batch.requests.len());
    for request in &batch.requests {
        outcomes.push(apply_write_request(mvcc, members, request)?);
    }
    Ok(WriteBatchOutcome { outcomes })
}

fn apply_write_request(
    mvcc: &mut ApplyBatch<'_>,
    members: &mut MemberAttributeTable,
    request: &WriteRequest,
) -> Result<WriteOutcome, FatalApplyError> {
    use write_response::Response;
    let result = match &request.request {
        Some(write_request::Request::Put(put)) => mvcc.put(put).map(Response::Put),
        Some(write_request::Request::DeleteRange(delete)) => {
            mvcc.delete_range(delete).map(Response::DeleteRange)
        }
        Some(write_request::Request::Txn(txn)) => mvcc.txn(txn).map(Response::Txn),
        Some(write_request::Request::Compaction(compaction)) => mvcc
            .compact(compaction.revision)
            .map(|()| Response::Compaction(Default::default())),
        Some(write_request::Request::LeaseGrant(grant)) => {
            mvcc.lease_grant(grant.id, grant.ttl).map(Response::LeaseGrant)
        }
        Some(write_request::Request::LeaseRevoke(revoke)) => {
            mvcc.lease_revoke(revoke.id).map(Response::LeaseRevoke)
        }
        Some(write_request::Request::LeaseCheckpoint(checkpoint)) => {
            let checkpoints: Vec<(i64, i64)> = checkpoint
                .checkpoints
                .iter()
                .map(|c| (c.id, c.remaining_ttl))
                .collect();
            mvcc.lease_checkpoint(&checkpoints)
                .map(|()| Response::LeaseCheckpoint(LeaseCheckpointApplied {}))
        }
        Some(write_request::Request::MemberAttributes(attributes)) => {
            members.insert(attributes.member_id, attributes.clone());
            Ok(Response::MemberAttributes(MemberAttributesApplied {}))
        }
        // An empty request (from a newer member, say) changes nothing.
        None => Ok(Response::MemberAttributes(MemberAttributesApplied {})),
    };
    match result {
        Ok(response) => Ok(response_outcome(response)),
        Err(error) => request_outcome(error),
    }
}
