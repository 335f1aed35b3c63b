//! Validation of client requests before they reach Raft, with etcd's
//! errors: empty keys, oversized requests, too many txn operations, and a
//! txn that writes the same key twice.

use std::collections::HashSet;

use keel_api::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_api::key_range::KeySelection;
use keel_api::WireError;

#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl RequestLimits {
    pub fn check_size(&self, encoded_len: usize) -> Result<(), WireError> {
        if encoded_len > self.max_request_bytes {
            return Err(WireError::RequestTooLarge);
        }
        Ok(())
    }

    pub fn check_txn(&self, txn: &TxnRequest) -> Result<(), WireError> {
        if txn.compare.len() > self.max_txn_ops
            || txn.success.len() > self.max_txn_ops
            || txn.failure.len() > self.max_txn_ops
        {
            return Err(WireError::TooManyOps);
        }
        for compare in &txn.compare {
            if compare.key.is_empty() {
                return Err(WireError::EmptyKey);
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(range)) => check_range(range)?,
                Some(request_op::Request::RequestPut(put)) => check_put(put)?,
                Some(request_op::Request::RequestDeleteRange(delete)) => check_delete(delete)?,
                Some(request_op::Request::RequestTxn(nested)) => self.check_txn(nested)?,
                None => {}
            }
        }
        branch_writes(&txn.success)?;
        branch_writes(&txn.failure)?;
        Ok(())
    }
}

pub fn check_range(range: &RangeRequest) -> Result<(), WireError> {
    if range.key.is_empty() {
        return Err(WireError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(put: &PutRequest) -> Result<(), WireError> {
    if put.key.is_empty() {
        return Err(WireError::EmptyKey);
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(WireError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(WireError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(delete: &DeleteRangeRequest) -> Result<(), WireError> {
    if delete.key.is_empty() {
        return Err(WireError::EmptyKey);
    }
    Ok(())
}

struct BranchWrites<'a> {
    puts: HashSet<&'a [u8]>,
    deletes: Vec<&'a DeleteRangeRequest>,
}

/// The keys a txn branch may put and the ranges it may delete; a key put
/// twice, or put and deleted, in one branch is etcd's "duplicate key". The
/// two branches of a nested txn are alternatives, so they may overlap each
/// other but not the enclosing branch.
fn branch_writes(ops: &[RequestOp]) -> Result<BranchWrites<'_>, WireError> {
    let mut writes = BranchWrites {
        puts: HashSet::new(),
        deletes: Vec::new(),
    };
    let mut nested_puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => {
                if !writes.puts.insert(put.key.as_slice()) {
                    return Err(WireError::DuplicateKey);
                }
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => writes.deletes.push(delete),
            Some(request_op::Request::RequestTxn(nested)) => {
                let success = branch_writes(&nested.success)?;
                let failure = branch_writes(&nested.failure)?;
                for alternative in [success, failure] {
                    nested_puts.extend(alternative.puts);
                    writes.deletes.extend(alternative.deletes);
                }
            }
            Some(request_op::Request::RequestRange(_)) | None => {}
        }
    }
    if nested_puts.iter().any(|key| writes.puts.contains(key)) {
        return Err(WireError::DuplicateKey);
    }
    writes.puts.extend(nested_puts);
    for delete in &writes.deletes {
        let selection = KeySelection::from_request(&delete.key, &delete.range_end);
        if writes.puts.iter().any(|key| selection.contains(key)) {
            return Err(WireError::DuplicateKey);
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_request_bytes: 100,
        max_txn_ops: 2,
    };

    #[test]
    fn txn_with_more_ops_than_the_limit_is_refused() {
        let txn = TxnRequest {
            success: vec![put("a"), put("b"), put("c")],
            ..Default::default()
        };
        assert_eq!(LIMITS.check_txn(&txn), Err(WireError::TooManyOps));
    }

    #[test]
    fn txn_writing_a_key_twice_in_one_branch_is_refused() {
        let twice = TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(LIMITS.check_txn(&twice), Err(WireError::DuplicateKey));
        let put_and_delete = TxnRequest {
            success: vec![put("ab"), delete("a", "b")],
            ..Default::default()
        };
        assert_eq!(LIMITS.check_txn(&put_and_delete), Err(WireError::DuplicateKey));
        let across_branches = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(LIMITS.check_txn(&across_branches), Ok(()));
    }

    #[test]
    fn empty_key_and_size_limits() {
        assert_eq!(check_put(&PutRequest::default()), Err(WireError::EmptyKey));
        assert_eq!(LIMITS.check_size(101), Err(WireError::RequestTooLarge));
        assert_eq!(LIMITS.check_size(100), Ok(()));
    }
}
