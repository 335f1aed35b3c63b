//! Transactions, as etcd 3.4's `applierV3backend.Txn`:
//! 1. every compare of the txn and of the nested txns in the chosen branches
//!    is evaluated up front against the state before the txn;
//! 2. the chosen operations are checked against that same state (puts first:
//!    `ignore_value`/`ignore_lease` need the key, a lease must exist; then
//!    ranges: their revision must be neither future nor compacted), so a bad
//!    request fails before anything is written;
//! 3. the operations run in order, each seeing the earlier ones' writes,
//!    all sharing one main revision.
//!
//! Response headers: the top-level one carries the store revision after the
//! txn; nested range/put/delete responses carry only the revision their
//! operation reported; nested txn responses carry an empty header (as etcd's
//! `newTxnResp` leaves them).
//!
//! A failure while running (e.g. `ignore_value` on a key deleted earlier in
//! the same txn, where etcd would panic) fails the whole request and the
//! batch undoes its writes.

use std::cmp::Ordering;

use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::response_op::Response;
use keel_api::etcdserverpb::{Compare, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse};
use keel_api::key_range::KeySelection;
use keel_api::mvccpb::KeyValue;

use crate::apply::{ApplyBatch, WriteCursor};
use crate::error::{corrupt, MvccError, Result};
use crate::range::{self, header, key_candidates};
use crate::view::View;

/// Which branch a txn takes, and the decisions of the nested txns in it, in
/// order of appearance.
struct Decision {
    succeeded: bool,
    nested: Vec<Decision>,
}

fn branch(txn: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

pub(crate) fn apply_txn(batch: &mut ApplyBatch<'_>, request: &TxnRequest) -> Result<TxnResponse> {
    let decision = decide(&batch.view(), request)?;
    check_operations(batch, request, &decision, &check_put)?;
    check_operations(batch, request, &decision, &check_range)?;
    let mut cursor = batch.cursor();
    let mut response = execute(batch, &mut cursor, request, &decision)?;
    batch.revision = cursor.revision();
    response.header = header(cursor.revision());
    Ok(response)
}

fn decide(view: &dyn View, txn: &TxnRequest) -> Result<Decision> {
    let mut succeeded = true;
    for compare in &txn.compare {
        if !compare_holds(view, compare)? {
            succeeded = false;
            break;
        }
    }
    let nested = branch(txn, succeeded)
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(nested)) => Some(decide(view, nested)),
            _ => None,
        })
        .collect::<Result<_>>()?;
    Ok(Decision { succeeded, nested })
}

/// A compare over a key or a range: every key present must satisfy it; with
/// no key present it is judged on an empty `KeyValue`, except that a VALUE
/// compare on a missing key is false. Only a VALUE compare reads records;
/// the others are answered from the index.
fn compare_holds(view: &dyn View, compare: &Compare) -> Result<bool> {
    let selection = KeySelection::from_request(&compare.key, &compare.range_end);
    let with_value = compare.target == CompareTarget::Value as i32;
    let mut any = false;
    for (key, state) in key_candidates(view, &selection, false) {
        let Some(live) = state.live() else {
            continue;
        };
        any = true;
        if !compare_kv(compare, &range::current_kv(view, key, live, with_value)?) {
            return Ok(false);
        }
    }
    if any {
        return Ok(true);
    }
    if compare.target == CompareTarget::Value as i32 {
        return Ok(false);
    }
    Ok(compare_kv(compare, &KeyValue::default()))
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let union = compare.target_union.as_ref();
    // A target union of another kind compares against zero / empty, as etcd.
    let order = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let expected = match union {
                Some(TargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(expected)
        }
        Ok(CompareTarget::Version) => kv.version.cmp(&match union {
            Some(TargetUnion::Version(version)) => *version,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&match union {
            Some(TargetUnion::CreateRevision(revision)) => *revision,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&match union {
            Some(TargetUnion::ModRevision(revision)) => *revision,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&match union {
            Some(TargetUnion::Lease(lease)) => *lease,
            _ => 0,
        }),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => order == Ordering::Equal,
        Ok(CompareResult::NotEqual) => order != Ordering::Equal,
        Ok(CompareResult::Greater) => order == Ordering::Greater,
        Ok(CompareResult::Less) => order == Ordering::Less,
        Err(_) => true,
    }
}

type CheckOperation = dyn Fn(&ApplyBatch<'_>, &RequestOp) -> Result<()>;

/// Runs `check` over every non-txn operation the decision selects.
fn check_operations(
    batch: &ApplyBatch<'_>,
    txn: &TxnRequest,
    decision: &Decision,
    check: &CheckOperation,
) -> Result<()> {
    let mut nested = decision.nested.iter();
    for op in branch(txn, decision.succeeded) {
        match &op.request {
            Some(Request::RequestTxn(nested_txn)) => {
                let nested_decision = nested
                    .next()
                    .ok_or_else(|| corrupt("txn decision tree out of step"))?;
                check_operations(batch, nested_txn, nested_decision, check)?;
            }
            _ => check(batch, op)?,
        }
    }
    Ok(())
}

fn check_put(batch: &ApplyBatch<'_>, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestPut(put)) = &op.request else {
        return Ok(());
    };
    if put.ignore_value || put.ignore_lease {
        let present = batch
            .view()
            .key_state(&put.key)
            .is_some_and(|state| state.live().is_some());
        if !present {
            return Err(MvccError::KeyNotFound);
        }
    }
    batch.check_lease_exists(put.lease)
}

fn check_range(batch: &ApplyBatch<'_>, op: &RequestOp) -> Result<()> {
    let Some(Request::RequestRange(range)) = &op.request else {
        return Ok(());
    };
    let requested = range.revision;
    if requested == 0 {
        Ok(())
    } else if requested > batch.revision {
        Err(MvccError::FutureRevision {
            requested,
            current: batch.revision,
        })
    } else if requested < batch.compact_revision {
        Err(MvccError::Compacted {
            requested,
            compacted: batch.compact_revision,
        })
    } else {
        Ok(())
    }
}

fn execute(
    batch: &mut ApplyBatch<'_>,
    cursor: &mut WriteCursor,
    txn: &TxnRequest,
    decision: &Decision,
) -> Result<TxnResponse> {
    let ops = branch(txn, decision.succeeded);
    let mut nested = decision.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(range)) => {
                Some(Response::ResponseRange(batch.apply_range(cursor, range)?))
            }
            Some(Request::RequestPut(put)) => Some(Response::ResponsePut(batch.apply_put(cursor, put)?)),
            Some(Request::RequestDeleteRange(delete)) => Some(Response::ResponseDeleteRange(
                batch.apply_delete_range(cursor, delete)?,
            )),
            Some(Request::RequestTxn(nested_txn)) => {
                let nested_decision = nested
                    .next()
                    .ok_or_else(|| corrupt("txn decision tree out of step"))?;
                Some(Response::ResponseTxn(execute(
                    batch,
                    cursor,
                    nested_txn,
                    nested_decision,
                )?))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: decision.succeeded,
        responses,
    })
}
